package model

import (
	"math"
	"testing"

	"train/ops"
)

// ltCosine is the cosine similarity of two gradients.
func ltCosine(a, b []float32) float64 {
	var ab, aa, bb float64
	for i := range a {
		ab += float64(a[i]) * float64(b[i])
		aa += float64(a[i]) * float64(a[i])
		bb += float64(b[i]) * float64(b[i])
	}
	return ab / math.Sqrt(aa*bb)
}

// ltGiveB fills every LoRA B with small fixed values: B starts at zero, which
// would leave A's gradient zero and a LoRA test checking little.
func ltGiveB(l *LoRA) {
	for _, layer := range l.Layers {
		for _, pair := range layer {
			for i := range pair.B {
				pair.B[i] = ltQuant(0.05 * math.Sin(float64(i)))
			}
		}
	}
}

// TestLlamaBF16MatchesFloat32 runs a step in mixed precision on the CPU's
// bfloat16 emulation, full fine-tuning and LoRA: the loss within 1e-2 of
// float32 and every gradient's cosine similarity at least 0.999 (the bars a GPU
// is held to), and not bitwise float32's: bfloat16 must actually be in use.
func TestLlamaBF16MatchesFloat32(t *testing.T) {
	cfg := ltConfig(true)
	w := ltWeights(cfg, 3)
	b := ltBatch(cfg, 2, 40, 8)
	lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 4, Alpha: 8, Targets: Linears}, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		lora *LoRA
	}{{"full", nil}, {"lora", lora}} {
		t.Run(c.name, func(t *testing.T) {
			if c.lora != nil {
				ltGiveB(c.lora)
			}
			l32, _, g32 := ltStep(t, ltModel(t, ops.NewCPU(), w, Options{LoRA: c.lora}), b)
			m16 := ltModel(t, ops.NewCPU(), w, Options{LoRA: c.lora, Compute: ops.BF16})
			l16, _, g16 := ltStep(t, m16, b)
			if rel := math.Abs(l16-l32) / math.Abs(l32); !(rel <= 1e-2) || l16 == l32 {
				t.Errorf("loss bf16 %v, f32 %v: relative difference %.2g, want (0, 1e-2]", l16, l32, rel)
			}
			if len(g16) != len(g32) {
				t.Fatalf("%d gradients in bf16, %d in f32", len(g16), len(g32))
			}
			worst := 1.0
			for name, g := range g32 {
				cos := ltCosine(g16[name], g)
				if !(cos >= 0.999) {
					t.Errorf("%s: cosine similarity %.5f < 0.999", name, cos)
				}
				worst = min(worst, cos)
			}
			t.Logf("loss bf16 %.6f f32 %.6f; worst gradient cosine %.6f", l16, l32, worst)
			// Trainable values stay float32 masters: a tiny update survives.
			p := m16.Params()[0]
			if p.Grad != nil {
				v, err := m16.Value(p.Name)
				if err != nil {
					t.Fatal(err)
				}
				v[0] += 1e-6
				if err := m16.SetValue(p.Name, v); err != nil {
					t.Fatal(err)
				}
				got, _ := m16.Value(p.Name)
				if got[0] != v[0] {
					t.Errorf("%s: master value %v after setting %v", p.Name, got[0], v[0])
				}
			}
		})
	}
}

// TestMemoryParts checks the memory report against the sizes it must have.
func TestMemoryParts(t *testing.T) {
	cfg := ltConfig(true)
	w := ltWeights(cfg, 3)
	lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 4, Alpha: 8, Targets: Linears}, 5)
	if err != nil {
		t.Fatal(err)
	}
	m := ltModel(t, ops.NewCPU(), w, Options{LoRA: lora, Compute: ops.BF16})
	if err := m.Plan(2, 16); err != nil {
		t.Fatal(err)
	}
	var base, adapter int64
	for _, p := range m.Params() {
		if p.Grad == nil {
			base += int64(p.size())
		} else {
			adapter += int64(p.size())
		}
	}
	got := map[string]int64{}
	for _, p := range m.Memory() {
		got[p.Name] = p.Bytes
	}
	want := map[string]int64{"weights (bf16)": 2 * (base + adapter), "trainable f32 masters": 4 * adapter, "gradients (f32)": 4 * adapter}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %d bytes, want %d", k, got[k], v)
		}
	}
	if got["activations"] <= 0 {
		t.Errorf("no activations reported: %v", got)
	}
}

// TestSlots: with two activation slots, forwarding micro-batches A and B and
// then running their backwards (B first) gives bitwise the gradients of
// forwarding and backwarding each in turn, with LoRA dropout on (its masks
// follow each micro-batch's seed, kept with its slot).
func TestSlots(t *testing.T) {
	cfg := ltConfig(true)
	w := ltWeights(cfg, 4)
	lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.1, Targets: Linears}, 5)
	if err != nil {
		t.Fatal(err)
	}
	a, b := ltBatch(cfg, 2, 24, 1), ltBatch(cfg, 2, 24, 2)
	a.Seed, b.Seed = 11, 22
	run := func(slots bool) map[string][]float32 {
		m := ltModel(t, ops.NewCPU(), w, Options{LoRA: lora})
		m.SetTraining(true)
		m.ZeroGrads()
		step := func(slot int, fwd bool, batch *Batch) {
			if err := m.UseSlot(slot); err != nil {
				t.Fatal(err)
			}
			if fwd {
				if _, _, err := m.Forward(batch); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err := m.Backward(1); err != nil {
				t.Fatal(err)
			}
		}
		if slots {
			if err := m.SetSlots(2); err != nil {
				t.Fatal(err)
			}
			step(0, true, a)
			step(1, true, b)
			step(1, false, nil)
			step(0, false, nil)
		} else {
			step(0, true, a)
			step(0, false, nil)
			step(0, true, b)
			step(0, false, nil)
		}
		if err := m.UseSlot(0); err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(1); err == nil {
			t.Error("a second Backward of the same slot ran")
		}
		g, err := m.Grads()
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	want, got := run(false), run(true)
	for name, g := range want {
		for i := range g {
			if got[name][i] != g[i] {
				t.Fatalf("%s[%d]: %v with two slots, %v one after the other", name, i, got[name][i], g[i])
			}
		}
	}
	if err := ltModel(t, ops.NewCPU(), w, Options{}).UseSlot(1); err == nil {
		t.Error("UseSlot(1) of a model with one slot did not fail")
	}
}
