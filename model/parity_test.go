package model_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"train/format/peft"
	"train/format/safetensors"
	"train/model"
	"train/ops"
)

// Parity with Hugging Face transformers: the fixtures under testdata/parity were
// computed in float64 by scripts/make-parity-fixtures.py (transformers 5.17, peft
// 0.21, torch 2.11). Our float32 CPU results must match: loss within 1e-5 relative,
// logits and every gradient within 1e-4 relative L2.

type parityInputs struct {
	InputIDs [][]int `json:"input_ids"`
	Labels   [][]int `json:"labels"`
	Loss     float64 `json:"loss"`
}

func readParityInputs(t *testing.T, dir string) parityInputs {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "inputs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in parityInputs
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	return in
}

func parityBatch(in parityInputs) *model.Batch {
	b := &model.Batch{B: len(in.InputIDs), T: len(in.InputIDs[0])}
	for r := range in.InputIDs {
		for t := range in.InputIDs[r] {
			b.IDs = append(b.IDs, int32(in.InputIDs[r][t]))
			b.Labels = append(b.Labels, int32(in.Labels[r][t]))
		}
	}
	return b
}

// relL2 is ‖got − want‖ / ‖want‖.
func relL2(got []float32, want []float64) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// runParity runs forward and backward on the fixture in dir (base model in
// testdata/parity/tiny, adapter when lora is set) and compares with its reference.
func runParity(t *testing.T, dir string, withLoRA bool) {
	w, err := model.LoadModel("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	opt := model.Options{}
	if withLoRA {
		l, err := peft.Read(dir, w.Config)
		if err != nil {
			t.Fatal(err)
		}
		opt.LoRA = l
	}
	m, err := model.NewModel(ops.NewCPU(), w, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.SetTraining(true)
	in := readParityInputs(t, dir)
	lossSum, count, err := m.Forward(parityBatch(in))
	if err != nil {
		t.Fatal(err)
	}
	loss := lossSum / float64(count)
	if rel := math.Abs(loss-in.Loss) / math.Abs(in.Loss); rel > 1e-5 {
		t.Errorf("loss %.9g, transformers %.9g: relative error %.2g > 1e-5", loss, in.Loss, rel)
	}
	ref, err := safetensors.Open(filepath.Join(dir, "reference.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	logits, err := m.Logits()
	if err != nil {
		t.Fatal(err)
	}
	wantLogits, _, err := ref.ReadFloat64("logits")
	if err != nil {
		t.Fatal(err)
	}
	if rel := relL2(logits, wantLogits); rel > 1e-5 {
		t.Errorf("logits: relative L2 error %.2g > 1e-5", rel)
	}
	if err := m.Backward(float32(1 / float64(count))); err != nil {
		t.Fatal(err)
	}
	grads, err := m.Grads()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ti := range ref.Tensors() {
		if name, ok := strings.CutPrefix(ti.Name, "grad."); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 || len(names) != len(grads) {
		t.Fatalf("reference has %d gradients, model %d", len(names), len(grads))
	}
	worst := 0.0
	for _, name := range names {
		got, ok := grads[name]
		if !ok {
			t.Errorf("model has no gradient for %s", name)
			continue
		}
		want, _, err := ref.ReadFloat64("grad." + name)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d values, reference %d", name, len(got), len(want))
			continue
		}
		rel := relL2(got, want)
		worst = max(worst, rel)
		if rel > 1e-4 {
			t.Errorf("gradient %s: relative L2 error %.2g > 1e-4", name, rel)
		}
	}
	t.Logf("loss %.9g (transformers %.9g), %d gradients, worst relative L2 %.2g", loss, in.Loss, len(names), worst)
}

func TestParityTinyFull(t *testing.T)   { runParity(t, "testdata/parity/tiny", false) }
func TestParityTinyLoRA(t *testing.T)   { runParity(t, "testdata/parity/lora", true) }
func TestParityTinyRSLoRA(t *testing.T) { runParity(t, "testdata/parity/rslora", true) }

// TestParityStories260K: the real pretrained model's loss on two sequences (its own
// greedy continuation of BOS, and random tokens) matches transformers, and its
// greedy choice at every position is transformers' greedy continuation.
func TestParityStories260K(t *testing.T) {
	dir := "../../shared/models/stories260K"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("the real model is not here (%v): run from a checkout beside ../shared", err)
	}
	w, err := model.LoadModel(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.NewModel(ops.NewCPU(), w, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	raw, err := os.ReadFile("testdata/parity/stories260k.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref map[string]json.RawMessage
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"greedy", "random"} {
		var seq struct {
			InputIDs []int   `json:"input_ids"`
			LossF64  float64 `json:"loss_f64"`
		}
		if err := json.Unmarshal(ref[key], &seq); err != nil {
			t.Fatal(err)
		}
		b := &model.Batch{B: 1, T: len(seq.InputIDs)}
		for _, id := range seq.InputIDs {
			b.IDs = append(b.IDs, int32(id))
		}
		lossSum, count, err := m.Forward(b)
		if err != nil {
			t.Fatal(err)
		}
		loss := lossSum / float64(count)
		if rel := math.Abs(loss-seq.LossF64) / seq.LossF64; rel > 1e-5 {
			t.Errorf("%s: loss %.9g, transformers %.9g: relative error %.2g", key, loss, seq.LossF64, rel)
		}
		if key != "greedy" {
			continue
		}
		logits, err := m.Logits()
		if err != nil {
			t.Fatal(err)
		}
		V := w.Config.VocabSize
		for pos := 0; pos+1 < len(seq.InputIDs); pos++ {
			row := logits[pos*V : (pos+1)*V]
			best := 0
			for v := range row {
				if row[v] > row[best] {
					best = v
				}
			}
			if best != seq.InputIDs[pos+1] {
				t.Errorf("greedy choice at position %d is %d, transformers chose %d", pos, best, seq.InputIDs[pos+1])
				break
			}
		}
	}
}

// TestParityFixtureNeedsRopeScaling guards the fixture itself: with the Llama 3
// rope scaling removed from its config the loss must move well beyond the parity
// tolerance, or the parity test would not notice scaling done wrong.
func TestParityFixtureNeedsRopeScaling(t *testing.T) {
	w, err := model.LoadModel("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.Rope.Type != "llama3" {
		t.Fatalf("fixture rope type %q, want llama3", w.Config.Rope.Type)
	}
	w.Config.Rope.Type = "default"
	m, err := model.NewModel(ops.NewCPU(), w, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	in := readParityInputs(t, "testdata/parity/tiny")
	lossSum, count, err := m.Forward(parityBatch(in))
	if err != nil {
		t.Fatal(err)
	}
	if rel := math.Abs(lossSum/float64(count)-in.Loss) / in.Loss; rel < 1e-3 {
		t.Fatalf("loss without rope scaling is within %.2g of the reference: the fixture does not exercise scaling", rel)
	}
}
