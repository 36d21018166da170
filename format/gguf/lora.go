package gguf

import (
	"errors"
	"fmt"
	"math"

	"train/model"
)

// WriteLoRA writes a LoRA adapter as a GGUF adapter file, the way llama.cpp's
// convert_lora_to_gguf.py does, for `llama-cli -m base.gguf --lora FILE`:
// general.type "adapter", adapter.type "lora", adapter.lora.alpha, and per
// adapted projection two F32 tensors named after the base weight,
// blk.N.attn_q.weight.lora_a (peft's lora_A [r, in], ne [in, r]) and
// .lora_b (lora_B [out, r], ne [r, out]). llama.cpp adds
// scale·B·A·x with scale = alpha/r, r read from lora_b; rsLoRA's alpha/sqrt(r)
// is therefore written as alpha' = alpha·sqrt(r). The base q and k weights are
// stored with their rows permuted to llama.cpp's rope layout (see permute), so
// the rows of their lora_b are permuted the same way; lora_a, whose rows are
// the rank, is not.
func WriteLoRA(path string, l *model.LoRA, c *model.Config, name string) error {
	if l == nil || len(l.Layers) != c.NumLayers {
		return errors.New("gguf lora: the adapter does not cover the model's layers")
	}
	lc := l.Config
	alpha := lc.Alpha
	if lc.RSLoRA {
		alpha *= math.Sqrt(float64(lc.Rank))
	}
	if name == "" {
		name = "lora"
	}
	var g Writer
	var err error
	set := func(k string, v any) {
		if err == nil {
			err = g.Set(k, v)
		}
	}
	set("general.architecture", "llama")
	set("general.type", "adapter")
	set("general.name", name)
	set("general.file_type", uint32(0))
	set("general.alignment", uint32(defaultAlignment))
	set("adapter.type", "lora")
	set("adapter.lora.alpha", float32(alpha))
	r := lc.Rank
	n := 0
	for i, layer := range l.Layers {
		for _, p := range layerNames[:7] {
			pair, ok := layer[p.hf]
			if !ok {
				continue
			}
			out, in := c.LinearShape(p.hf)
			if len(pair.A) != r*in || len(pair.B) != out*r {
				return fmt.Errorf("gguf lora %s: layer %d %s: A has %d values, B %d; want %dx%d and %dx%d", path, i, p.hf, len(pair.A), len(pair.B), r, in, out, r)
			}
			b := pair.B
			switch p.hf {
			case "q_proj":
				b = permute(b, c.NumHeads, r)
			case "k_proj":
				b = permute(b, c.NumKVHeads, r)
			}
			base := fmt.Sprintf("blk.%d.%s.weight", i, p.gguf)
			if err == nil {
				err = g.AddTensor(base+".lora_a", F32, []int{r, in}, pair.A)
			}
			if err == nil {
				err = g.AddTensor(base+".lora_b", F32, []int{out, r}, b)
			}
			n++
		}
	}
	if err != nil {
		return fmt.Errorf("gguf lora %s: %w", path, err)
	}
	if n == 0 {
		return fmt.Errorf("gguf lora %s: the adapter adapts no projection", path)
	}
	return g.WriteFile(path)
}
