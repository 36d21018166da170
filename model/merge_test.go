package model_test

import (
	"math"
	"testing"

	"train/format/peft"
	"train/model"
	"train/ops"
)

// forwardLogits runs the model w (with adapter l when not nil) on the parity
// fixture's input and returns its logits.
func forwardLogits(t *testing.T, w *model.Weights, l *model.LoRA, in parityInputs) []float32 {
	t.Helper()
	m, err := model.NewModel(ops.NewCPU(), w, model.Options{LoRA: l})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, _, err := m.Forward(parityBatch(in)); err != nil {
		t.Fatal(err)
	}
	logits, err := m.Logits()
	if err != nil {
		t.Fatal(err)
	}
	return logits
}

// relL2F32 is ‖a − b‖ / ‖b‖, the measure the parity tests use.
func relL2F32(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / max(den, 1e-300))
}

func TestMergeLoRAForwardEqual(t *testing.T) {
	for _, dir := range []string{"testdata/parity/lora", "testdata/parity/rslora"} {
		w, err := model.LoadModel("testdata/parity/tiny")
		if err != nil {
			t.Fatal(err)
		}
		l, err := peft.Read(dir, w.Config)
		if err != nil {
			t.Fatal(err)
		}
		in := readParityInputs(t, dir)
		want := forwardLogits(t, w, l, in)
		if err := model.MergeLoRA(w, l); err != nil {
			t.Fatal(err)
		}
		got := forwardLogits(t, w, nil, in)
		if d := relL2F32(got, want); d > 1e-5 {
			t.Errorf("%s: merged logits differ from base+adapter: relative L2 %.2g > 1e-5", dir, d)
		} else {
			t.Logf("%s: merged vs base+adapter logits: relative L2 %.2g", dir, d)
		}
		base, err := model.LoadModel("testdata/parity/tiny")
		if err != nil {
			t.Fatal(err)
		}
		if d := relL2F32(forwardLogits(t, base, nil, in), want); d < 1e-3 {
			t.Errorf("%s: the adapter changes the logits by only %.2g: the test would not notice a missing merge", dir, d)
		}
	}
}

func TestMergeLoRARejectsMismatch(t *testing.T) {
	w, err := model.LoadModel("testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	l, err := peft.Read("testdata/parity/lora", w.Config)
	if err != nil {
		t.Fatal(err)
	}
	before := append([]float32(nil), w.Layers[1].Q...)
	l.Layers[1]["down_proj"].B = l.Layers[1]["down_proj"].B[:3]
	if err := model.MergeLoRA(w, l); err == nil {
		t.Fatal("merge accepted a truncated lora_B")
	}
	for i := range before {
		if before[i] != w.Layers[1].Q[i] {
			t.Fatal("a failed merge changed the weights")
		}
	}
	l.Layers = l.Layers[:1]
	if err := model.MergeLoRA(w, l); err == nil {
		t.Fatal("merge accepted an adapter with too few layers")
	}
}
