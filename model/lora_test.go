package model

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"train/ops"
)

// ltLoRA returns a fresh adapter; with randomB its B matrices are non-zero (a
// fresh adapter's zero B would make the A gradients vanish).
func ltLoRA(t *testing.T, cfg Config, lc LoRAConfig, randomB bool) *LoRA {
	t.Helper()
	l, err := NewLoRA(&cfg, lc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if randomB {
		rng := rand.New(rand.NewPCG(5, 6))
		for _, layer := range l.Layers {
			for _, s := range Linears { // not map order: the values must be reproducible
				p := layer[s]
				if p == nil {
					continue
				}
				for i := range p.B {
					p.B[i] = ltQuant(0.3 * (2*rng.Float64() - 1))
				}
				for i := range p.A {
					p.A[i] = ltQuant(float64(p.A[i]))
				}
			}
		}
	}
	return l
}

func TestLoRANames(t *testing.T) {
	for _, tc := range []struct {
		layer     int
		short, ab string
		want      string
	}{
		{0, "q_proj", "A", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"},
		{3, "o_proj", "B", "base_model.model.model.layers.3.self_attn.o_proj.lora_B.weight"},
		{12, "down_proj", "A", "base_model.model.model.layers.12.mlp.down_proj.lora_A.weight"},
	} {
		if got := LoRATensorName(tc.layer, tc.short, tc.ab); got != tc.want {
			t.Errorf("LoRATensorName(%d, %s, %s) = %s, want %s", tc.layer, tc.short, tc.ab, got, tc.want)
		}
	}
}

func TestLoRAInit(t *testing.T) {
	cfg := ltConfig(false)
	lc := LoRAConfig{Rank: 4, Alpha: 16, Targets: []string{"v_proj", "q_proj", "down_proj"}}
	l, err := NewLoRA(&cfg, lc, 7)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(l.Tensors()); got != 2*3*cfg.NumLayers {
		t.Fatalf("%d tensors", got)
	}
	for i, layer := range l.Layers {
		for s, p := range layer {
			out, in := cfg.LinearShape(s)
			if len(p.A) != 4*in || len(p.B) != out*4 {
				t.Fatalf("layer %d %s: A %d B %d", i, s, len(p.A), len(p.B))
			}
			bound := 1 / math.Sqrt(float64(in))
			var lo, hi float64
			for _, v := range p.A {
				lo, hi = min(lo, float64(v)), max(hi, float64(v))
			}
			if lo < -bound || hi > bound || hi-lo < bound { // spread over U(-bound, bound)
				t.Errorf("layer %d %s: A in [%v, %v], want U(-%v, %v)", i, s, lo, hi, bound, bound)
			}
			for _, v := range p.B {
				if v != 0 {
					t.Fatalf("layer %d %s: B not zero", i, s)
				}
			}
		}
	}
	again, _ := NewLoRA(&cfg, lc, 7)
	other, _ := NewLoRA(&cfg, lc, 8)
	if again.Layers[1]["q_proj"].A[5] != l.Layers[1]["q_proj"].A[5] {
		t.Error("same seed, different A")
	}
	if other.Layers[1]["q_proj"].A[5] == l.Layers[1]["q_proj"].A[5] {
		t.Error("different seeds, same A")
	}
	if s := (LoRAConfig{Rank: 16, Alpha: 32}).Scale(); s != 2 {
		t.Errorf("scale %v, want alpha/r = 2", s)
	}
	if s := (LoRAConfig{Rank: 16, Alpha: 32, RSLoRA: true}).Scale(); s != 8 {
		t.Errorf("rsLoRA scale %v, want alpha/sqrt(r) = 8", s)
	}
	for _, bad := range []LoRAConfig{{Rank: 0, Alpha: 1}, {Rank: 2, Alpha: 0}, {Rank: 2, Alpha: 1, Dropout: 1}, {Rank: 2, Alpha: 1, Targets: []string{"lm_head"}}} {
		if _, err := NewLoRA(&cfg, bad, 1); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestLoRASetTensors(t *testing.T) {
	cfg := ltConfig(false)
	lc := LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"k_proj"}}
	src, _ := NewLoRA(&cfg, lc, 1)
	dst, _ := NewLoRA(&cfg, lc, 2)
	if err := dst.SetTensors(src.Tensors()); err != nil {
		t.Fatal(err)
	}
	if dst.Layers[1]["k_proj"].A[3] != src.Layers[1]["k_proj"].A[3] {
		t.Fatal("values not copied")
	}
	ts := src.Tensors()
	ts["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = make([]float32, 2*32)
	if err := dst.SetTensors(ts); err == nil || !strings.Contains(err.Error(), "q_proj") {
		t.Errorf("unexpected tensor: %v", err)
	}
	ts = src.Tensors()
	delete(ts, LoRATensorName(1, "k_proj", "B"))
	if err := dst.SetTensors(ts); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing tensor: %v", err)
	}
	ts = src.Tensors()
	ts[LoRATensorName(0, "k_proj", "A")] = make([]float32, 5)
	if err := dst.SetTensors(ts); err == nil || !strings.Contains(err.Error(), "has 5 values") {
		t.Errorf("wrong size: %v", err)
	}
}

// TestLoRAGradFiniteDifferences checks the A and B gradients of every target
// (B non-zero), in evaluation and in training with dropout (a fixed seed makes
// the mask part of the function), and that only LoRA tensors have gradients.
func TestLoRAGradFiniteDifferences(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lc      LoRAConfig
		train   bool
		targets []string
	}{
		{"all", LoRAConfig{Rank: 3, Alpha: 6}, false, nil},
		{"rslora-dropout", LoRAConfig{Rank: 4, Alpha: 2, RSLoRA: true, Dropout: 0.3, Targets: []string{"q_proj", "o_proj", "up_proj", "down_proj"}}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ltConfig(true)
			lora := ltLoRA(t, cfg, tc.lc, true)
			m := ltModel(t, ops.NewCPU64(), ltWeights(cfg, 9), Options{LoRA: lora})
			m.SetTraining(tc.train)
			b := ltBatch(cfg, 2, 36, 10)
			b.Seed = 77
			names := ltParamNames(m)
			for _, n := range names {
				if !strings.HasPrefix(n, "base_model.model.") {
					t.Fatalf("base tensor %s has a gradient in LoRA mode", n)
				}
			}
			if want := len(lora.Tensors()); len(names) != want {
				t.Fatalf("%d LoRA gradients, want %d", len(names), want)
			}
			if _, err := m.Grad("model.layers.0.self_attn.q_proj.weight"); err == nil || !strings.Contains(err.Error(), "frozen") {
				t.Errorf("base gradient: %v", err)
			}
			ltGradCheck(t, m, b, names, 3)
		})
	}
}

// TestLoRAZeroBIsBase: a fresh adapter (B = 0) leaves the model's loss
// bitwise unchanged; dropout only acts in training.
func TestLoRAZeroBIsBase(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 10)
	b := ltBatch(cfg, 2, 16, 3)
	base, _, err := ltModel(t, ops.NewCPU(), w, Options{}).Forward(b)
	if err != nil {
		t.Fatal(err)
	}
	m := ltModel(t, ops.NewCPU(), w, Options{LoRA: ltLoRA(t, cfg, LoRAConfig{Rank: 2, Alpha: 4, Dropout: 0.5}, false)})
	fresh, _, _ := m.Forward(b)
	if fresh != base {
		t.Fatalf("fresh adapter: loss %v, base %v", fresh, base)
	}
	m2 := ltModel(t, ops.NewCPU(), w, Options{LoRA: ltLoRA(t, cfg, LoRAConfig{Rank: 2, Alpha: 4, Dropout: 0.5}, true)})
	eval, _, _ := m2.Forward(b)
	m2.SetTraining(true)
	b.Seed = 1
	train1, _, _ := m2.Forward(b)
	b.Seed = 2
	train2, _, _ := m2.Forward(b)
	m2.SetTraining(false)
	eval2, _, _ := m2.Forward(b)
	if eval != eval2 || train1 == eval || train1 == train2 {
		t.Fatalf("eval %v %v, train seeds 1, 2: %v %v", eval, eval2, train1, train2)
	}
	got, err := m2.LoRATensors()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2*7*cfg.NumLayers {
		t.Fatalf("LoRATensors: %d", len(got))
	}
}
