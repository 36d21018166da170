package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/model"
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
		{[]string{"-model", "model/testdata/parity/tiny", "-data", good, "-precision", "fp8"}, 2, `precision "fp8" is not one of auto, fp32, bf16, fp16`},
	} {
		_, code, stderr := runEvalJSON(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("eval %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

// TestEvalNonFiniteLoss: a model with a NaN weight gives an error naming the
// non-finite loss, not a JSON encoder's "unsupported value: NaN".
func TestEvalNonFiniteLoss(t *testing.T) {
	cfg, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeRandomModel(t, filepath.Join(t.TempDir(), "nan"), cfg, func(w *model.Weights) { w.FinalNorm[0] = float32(math.NaN()) })
	data := filepath.Join(t.TempDir(), "tokens.jsonl")
	os.WriteFile(data, []byte("{\"input_ids\": [1, 2, 3, 4]}\n"), 0o644)
	var out, errOut bytes.Buffer
	code := mainExit([]string{"eval", "-model", dir, "-data", data}, &out, &errOut)
	if code != 1 || out.Len() != 0 || !strings.Contains(errOut.String(), "the loss over 3 tokens is NaN, not a number") {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 naming the NaN loss", code, out.String(), errOut.String())
	}
}

// TestEvalRefusesLongExamples: an example longer than the model's
// max_position_embeddings (stories260K: 512) is refused, naming it, unless
// -allow-long-seq; -tokenizer takes the model's directory.
func TestEvalRefusesLongExamples(t *testing.T) {
	if _, err := os.Stat(filepath.Join(storiesDir, "model.safetensors")); err != nil {
		t.Skipf("stories260K is not at %s: %v", storiesDir, err)
	}
	data := filepath.Join(t.TempDir(), "long.jsonl")
	long, _ := json.Marshal(map[string]string{"text": strings.Repeat("Once upon a time there was a girl. ", 80)})
	os.WriteFile(data, []byte("{\"text\": \"Once upon a time\"}\n"+string(long)+"\n"), 0o644)
	_, code, stderr := runEvalJSON(t, "-model", storiesDir, "-tokenizer", storiesDir, "-data", data)
	if code != 1 || !strings.Contains(stderr, "1 of 2 examples are longer than the model's context of 512 tokens") ||
		!strings.Contains(stderr, "example 2 has") || !strings.Contains(stderr, "-allow-long-seq") {
		t.Errorf("exit %d, stderr %q; want a refusal naming example 2 and -allow-long-seq", code, stderr)
	}
	res, code, stderr := runEvalJSON(t, "-model", storiesDir, "-tokenizer", storiesDir, "-data", data, "-allow-long-seq")
	if code != 0 || res["examples"] != 2 || !(res["tokens"] > 512) {
		t.Errorf("with -allow-long-seq: exit %d, %v, %s", code, res, stderr)
	}
}
