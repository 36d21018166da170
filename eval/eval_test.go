package eval

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

const parity = "../model/testdata/parity"

// fixtureTokens writes the parity fixture's rows (model/testdata/parity/NAME) as a
// token JSONL file and returns its path and transformers' loss.
func fixtureTokens(t *testing.T, name string) (string, float64) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(parity, name, "inputs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		InputIDs [][]int `json:"input_ids"`
		Labels   [][]int `json:"labels"`
		Loss     float64 `json:"loss"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for i := range in.InputIDs {
		line, _ := json.Marshal(map[string]any{"input_ids": in.InputIDs[i], "labels": in.Labels[i]})
		buf.Write(append(line, '\n'))
	}
	path := filepath.Join(t.TempDir(), "tokens.jsonl")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, in.Loss
}

// TestMatchesTransformers: the loss on the parity fixtures is transformers',
// with and without a peft adapter, batched or not.
func TestMatchesTransformers(t *testing.T) {
	for _, tc := range []struct{ fixture, adapter string }{
		{"tiny", ""}, {"lora", parity + "/lora"}, {"rslora", parity + "/rslora"},
	} {
		path, want := fixtureTokens(t, tc.fixture)
		for _, batch := range []int{1, 8} {
			o := Options{Model: parity + "/tiny", ModelSeed: 1, Adapter: tc.adapter, Data: path, Batch: batch, Device: "cpu", Precision: "auto"}
			res, err := Run(o)
			if err != nil {
				t.Fatalf("%s: %v", tc.fixture, err)
			}
			if rel := math.Abs(res.Loss-want) / want; rel > 1e-5 {
				t.Errorf("%s batch %d: loss %.9g, transformers %.9g (relative error %.2g)", tc.fixture, batch, res.Loss, want, rel)
			}
			// 2 rows x 23 scored positions, less the -100 labels among labels[1:]: 4 + 4 + 3.
			if res.Tokens != 35 || res.Examples != 2 {
				t.Errorf("%s: %d tokens of %d examples, want 35 of 2", tc.fixture, res.Tokens, res.Examples)
			}
		}
	}
}
