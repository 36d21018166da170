package gguf

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"train/format/peft"
	"train/model"
)

// TestGGUFLoRA writes the parity fixture's adapter as a GGUF adapter file:
// llama.cpp's metadata, a lora_a/lora_b pair per adapted projection with the
// dims llama.cpp's loader checks (a: [in, r], b: [r, out] innermost first),
// lora_a as peft stores it, lora_b as stored for v and permuted like the base
// weight for q and k (its unpermutation is peft's B, and it differs from B,
// so the permutation is exercised); rsLoRA's scale goes into alpha.
func TestGGUFLoRA(t *testing.T) {
	w, err := model.LoadModel("../../model/testdata/parity/tiny")
	if err != nil {
		t.Fatal(err)
	}
	c := w.Config
	l, err := peft.Read("../../model/testdata/parity/lora", c)
	if err != nil {
		t.Fatal(err)
	}
	for _, rs := range []bool{false, true} {
		l.Config.RSLoRA = rs
		path := filepath.Join(t.TempDir(), "a.gguf")
		if err := WriteLoRA(path, l, &c, "x"); err != nil {
			t.Fatal(err)
		}
		g, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		for k, want := range map[string]string{"general.type": "adapter", "adapter.type": "lora", "general.architecture": "llama"} {
			if v, _ := g.String(k); v != want {
				t.Errorf("%s = %q, want %q", k, v, want)
			}
		}
		r := l.Config.Rank
		alpha, _ := g.Float("adapter.lora.alpha")
		if want := l.Config.Scale() * float64(r); math.Abs(alpha-want) > 1e-5*want {
			t.Errorf("rslora %v: alpha %v, want %v (llama.cpp scales by alpha/r)", rs, alpha, want)
		}
		pairs := 0
		for i, layer := range l.Layers {
			for _, p := range layerNames[:7] {
				pair, ok := layer[p.hf]
				if !ok {
					continue
				}
				pairs++
				out, in := c.LinearShape(p.hf)
				base := fmt.Sprintf("blk.%d.%s.weight", i, p.gguf)
				ta, _ := g.Tensor(base + ".lora_a")
				tb, _ := g.Tensor(base + ".lora_b")
				if !slices.Equal(ta.Dims, []int64{int64(in), int64(r)}) || !slices.Equal(tb.Dims, []int64{int64(r), int64(out)}) {
					t.Fatalf("%s: dims a %v b %v", base, ta.Dims, tb.Dims)
				}
				a, _ := g.ReadFloat32(base + ".lora_a")
				b, _ := g.ReadFloat32(base + ".lora_b")
				if !slices.Equal(a, pair.A) {
					t.Errorf("%s.lora_a differs from peft's lora_A", base)
				}
				switch p.hf {
				case "q_proj", "k_proj":
					heads := c.NumHeads
					if p.hf == "k_proj" {
						heads = c.NumKVHeads
					}
					if !slices.Equal(unpermute(b, heads, r), pair.B) || slices.Equal(b, pair.B) {
						t.Errorf("%s.lora_b is not peft's lora_B permuted to llama.cpp's rope layout", base)
					}
				default:
					if !slices.Equal(b, pair.B) {
						t.Errorf("%s.lora_b differs from peft's lora_B", base)
					}
				}
			}
		}
		if pairs == 0 || len(g.Tensors) != 2*pairs {
			t.Fatalf("%d tensors for %d pairs", len(g.Tensors), pairs)
		}
	}
}
