package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
)

// LoRA adds to a frozen projection y = x·Wᵀ a trainable low-rank branch, as peft
// does:
//
//	y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ,   A [r, in], B [out, r]
//
// with scale = alpha/r (or alpha/sqrt(r) for rsLoRA). A starts Kaiming-uniform
// and B at zero, so a fresh adapter leaves the model unchanged. Tensors are
// named as peft saves them in adapter_model.safetensors, so adapters go to and
// from PEFT format by name.

// LoRAConfig is the adapter's hyper-parameters, as in peft's LoraConfig.
type LoRAConfig struct {
	Rank    int      // r
	Alpha   float64  // lora_alpha
	Dropout float64  // lora_dropout, applied to the branch's input in training
	RSLoRA  bool     // use_rslora: scale alpha/sqrt(r) instead of alpha/r
	Targets []string // target_modules as short names ("q_proj", ...); empty means all seven
}

// Scale is the factor on the low-rank branch: alpha/r, or alpha/sqrt(r) with rsLoRA.
func (c LoRAConfig) Scale() float64 {
	if c.RSLoRA {
		return c.Alpha / math.Sqrt(float64(c.Rank))
	}
	return c.Alpha / float64(c.Rank)
}

// SortedTargets returns targets in Linears order (all seven when empty), the
// order peft adapters list them in once read.
func SortedTargets(targets []string) []string { return LoRAConfig{Targets: targets}.targets() }

// targets returns the target projections in Linears order.
func (c LoRAConfig) targets() []string {
	if len(c.Targets) == 0 {
		return Linears
	}
	var out []string
	for _, s := range Linears {
		if slices.Contains(c.Targets, s) {
			out = append(out, s)
		}
	}
	return out
}

// Validate reports the first invalid setting, naming it.
func (c LoRAConfig) Validate() error {
	if c.Rank <= 0 {
		return fmt.Errorf("lora: rank %d must be positive", c.Rank)
	}
	if !(c.Alpha > 0) || math.IsInf(c.Alpha, 0) {
		return fmt.Errorf("lora: alpha %v must be positive", c.Alpha)
	}
	if !(c.Dropout >= 0 && c.Dropout < 1) {
		return fmt.Errorf("lora: dropout %v must be in [0, 1)", c.Dropout)
	}
	for _, t := range c.Targets {
		if !slices.Contains(Linears, t) {
			return fmt.Errorf("lora: target %q is not one of %s", t, strings.Join(Linears, ", "))
		}
	}
	return nil
}

// LoRAPair is one adapted projection's two matrices, row-major.
type LoRAPair struct {
	A []float32 // lora_A.weight [r, in]
	B []float32 // lora_B.weight [out, r]
}

// LoRA is an adapter for every layer of a model: Layers[i][short] is the pair
// adapting projection short of layer i.
type LoRA struct {
	Config LoRAConfig
	Layers []map[string]*LoRAPair
}

// LoRATensorName is the peft name of a LoRA matrix: ab is "A" or "B", short a
// projection ("q_proj"), e.g.
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.
func LoRATensorName(layer int, short, ab string) string {
	base := strings.TrimSuffix(LayerTensorName(layer, short), ".weight")
	return "base_model.model." + base + ".lora_" + ab + ".weight"
}

// NewLoRA returns a fresh adapter for c: A Kaiming-uniform as peft initialises
// it (kaiming_uniform_ with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) from a
// generator seeded with seed, drawing layer by layer in Linears order, row-major;
// B zero.
func NewLoRA(c *Config, lc LoRAConfig, seed uint64) (*LoRA, error) {
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x4c6f5241)) // "LoRA"
	l := &LoRA{Config: lc, Layers: make([]map[string]*LoRAPair, c.NumLayers)}
	r := lc.Rank
	for i := range l.Layers {
		l.Layers[i] = map[string]*LoRAPair{}
		for _, s := range lc.targets() {
			out, in := c.LinearShape(s)
			if out <= 0 || in <= 0 {
				return nil, fmt.Errorf("lora: %s has shape [%d, %d]", LayerTensorName(i, s), out, in)
			}
			p := &LoRAPair{A: make([]float32, r*in), B: make([]float32, out*r)}
			bound := 1 / math.Sqrt(float64(in))
			for j := range p.A {
				p.A[j] = float32(bound * (2*rng.Float64() - 1))
			}
			l.Layers[i][s] = p
		}
	}
	return l, nil
}

// Tensors returns every matrix by its peft name (sharing memory with l).
func (l *LoRA) Tensors() map[string][]float32 {
	m := map[string][]float32{}
	for i, layer := range l.Layers {
		for s, p := range layer {
			m[LoRATensorName(i, s, "A")] = p.A
			m[LoRATensorName(i, s, "B")] = p.B
		}
	}
	return m
}

// SetTensors copies an adapter given by peft names into l. Every name must be
// one of l's matrices with l's size, and every matrix of l must be given: a
// partial adapter is an error, listing what is missing.
func (l *LoRA) SetTensors(ts map[string][]float32) error {
	have := l.Tensors()
	var unknown, missing []string
	for name, v := range ts {
		dst, ok := have[name]
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if len(v) != len(dst) {
			return fmt.Errorf("lora: %s has %d values, want %d (rank %d)", name, len(v), len(dst), l.Config.Rank)
		}
	}
	for name := range have {
		if _, ok := ts[name]; !ok {
			missing = append(missing, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("lora: %d unexpected tensors (targets %s, %d layers), first %s", len(unknown), strings.Join(l.Config.targets(), ","), len(l.Layers), unknown[0])
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("lora: %d tensors missing, first %s", len(missing), missing[0])
	}
	for name, v := range ts {
		copy(have[name], v)
	}
	return nil
}
