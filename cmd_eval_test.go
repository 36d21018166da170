package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runEvalJSON(t *testing.T, args ...string) (map[string]float64, int, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := mainExit(append([]string{"eval"}, args...), &out, &errOut)
	var res map[string]float64
	if code == 0 {
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("eval output %q is not one JSON object: %v", out.String(), err)
		}
	}
	return res, code, errOut.String()
}

// TestEvalCommand: the flags reach the evaluation and stdout is one JSON
// object of the loss, the scored tokens and the examples.
func TestEvalCommand(t *testing.T) {
	data := filepath.Join(t.TempDir(), "tokens.jsonl")
	if err := os.WriteFile(data, []byte("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, code, stderr := runEvalJSON(t, "-model", "model/testdata/parity/tiny", "-data", data, "-batch", "1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if len(res) != 3 || res["examples"] != 2 || res["tokens"] != 3 || !(res["loss"] > 0) {
		t.Errorf("result %v, want 2 examples, 3 scored tokens and a positive loss", res)
	}
}

func TestEvalErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 500]}\n"), 0o644)
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, []byte("{\"input_ids\": [1, 2]}\n"), 0o644)
	masked := filepath.Join(dir, "masked.jsonl")
	os.WriteFile(masked, []byte("{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-model", "model/testdata/parity/tiny"}, 2, "-model and -data are required"},
		{[]string{"-model", "model/testdata/parity/tiny", "-data", bad}, 1, "bad.jsonl:2: input_ids[1] = 500 is outside the vocabulary [0, 101)"},
		{[]string{"-model", "model/testdata/parity/tiny", "-data", masked}, 1, "every label is masked"},
		{[]string{"-model", "model/testdata/parity/tiny", "-data", good, "-adapter", dir}, 1, "adapter_config.json"},
		{[]string{"-model", dir, "-data", bad}, 1, "config.json"},
		{[]string{"-model", "model/testdata/parity/tiny", "-data", good, "-precision", "fp16"}, 2, `precision "fp16" is not one of auto, fp32, bf16`},
	} {
		_, code, stderr := runEvalJSON(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("eval %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}
