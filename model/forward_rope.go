package model

import (
	"fmt"
	"math"
)

// RopeInvFreq returns the rotary inverse frequencies [HeadDim/2] exactly as
// transformers computes them, in float32 at every step:
//
//	inv_freq = 1.0 / (theta ** (arange(0, dim, 2).float() / dim))
//
// then, for rope type "llama3", _compute_llama3_parameters: wavelengths above
// original_max_position_embeddings/low_freq_factor are divided by factor, those
// below .../high_freq_factor are kept, and those between are interpolated.
// transformers evaluates these float32 tensor expressions with Python floats
// promoted to float32; each step here rounds to float32 the same way (pow is
// taken in float64 then rounded, within an ulp of torch's float32 pow). Even
// when transformers runs the model in float64 it computes inv_freq and the
// cos/sin tables in float32 (the rotary module casts to float), so these
// float32 values are the reference in both cases.
func RopeInvFreq(c *Config) ([]float32, error) {
	d := c.HeadDim
	if d <= 0 || d%2 != 0 {
		return nil, fmt.Errorf("rope: head_dim %d must be even and positive", d)
	}
	if !(c.Rope.Theta > 0) {
		return nil, fmt.Errorf("rope: rope_theta %v must be positive", c.Rope.Theta)
	}
	inv := make([]float32, d/2)
	for i := range inv {
		exp := float32(2*i) / float32(d)
		inv[i] = float32(1) / float32(math.Pow(c.Rope.Theta, float64(exp)))
	}
	switch c.Rope.Type {
	case "", "default":
		return inv, nil
	case "llama3":
	default:
		return nil, fmt.Errorf("rope: rope type %q is not supported (default, llama3)", c.Rope.Type)
	}
	r := c.Rope
	if !(r.Factor > 0) || !(r.HighFreqFactor > r.LowFreqFactor) || !(r.LowFreqFactor > 0) || r.OriginalMaxPositionEmbeddings <= 0 {
		return nil, fmt.Errorf("rope: llama3 scaling needs factor > 0, high_freq_factor > low_freq_factor > 0 and original_max_position_embeddings > 0 (have %v, %v, %v, %d)",
			r.Factor, r.HighFreqFactor, r.LowFreqFactor, r.OriginalMaxPositionEmbeddings)
	}
	old := float64(r.OriginalMaxPositionEmbeddings)
	lowWavelen := float32(old / r.LowFreqFactor)   // Python float, compared as float32
	highWavelen := float32(old / r.HighFreqFactor) // idem
	factor, low := float32(r.Factor), float32(r.LowFreqFactor)
	span := float32(r.HighFreqFactor - r.LowFreqFactor)
	twoPi, oldF := float32(2*math.Pi), float32(old)
	for i, f := range inv {
		wavelen := float32(float32(1)/f) * twoPi // torch: scalar / tensor = reciprocal(tensor) * scalar
		llama := f
		if wavelen > lowWavelen {
			llama = f / factor
		}
		if !(wavelen < highWavelen) && !(wavelen > lowWavelen) {
			smooth := (float32(float32(1)/wavelen)*oldF - low) / span
			llama = float32(float32((1-smooth)*llama)/factor) + float32(smooth*llama)
		}
		inv[i] = llama
	}
	return inv, nil
}

// ropeTables returns cos and sin [P, HeadDim/2] for positions 0..P-1, as
// transformers' LlamaRotaryEmbedding: freqs = float32(inv_freq * position),
// cos = float32(cos(freqs)). (Its tables repeat the half twice, cat(freqs,
// freqs); the ops read one half for both.) attention_scaling is 1 for the
// default and llama3 types.
func ropeTables(inv []float32, P int) (cos, sin []float32) {
	half := len(inv)
	cos, sin = make([]float32, P*half), make([]float32, P*half)
	for p := 0; p < P; p++ {
		for i, f := range inv {
			a := float64(float32(f * float32(p)))
			cos[p*half+i] = float32(math.Cos(a))
			sin[p*half+i] = float32(math.Sin(a))
		}
	}
	return cos, sin
}
