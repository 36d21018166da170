package model

import "fmt"

// MergeLoRA folds the adapter l into the base weights w, in place, as peft's
// merge_and_unload does: for every adapted projection
//
//	W [out, in] += scale · B [out, r] · A [r, in]
//
// with scale = alpha/r (or alpha/sqrt(r) for rsLoRA). Each element's sum over r is
// accumulated in float64 and added to the float32 weight once, so the merged
// model computes what base + adapter computes up to one float32 rounding per
// weight. Every adapted layer must be present in w; nothing is changed when an
// error is returned.
func MergeLoRA(w *Weights, l *LoRA) error {
	if w == nil || l == nil {
		return fmt.Errorf("merge: no weights or no adapter")
	}
	cfg := &w.Config
	if len(l.Layers) != cfg.NumLayers || len(w.Layers) != cfg.NumLayers {
		return fmt.Errorf("merge: adapter has %d layers, weights %d, config %d", len(l.Layers), len(w.Layers), cfg.NumLayers)
	}
	if err := l.Config.Validate(); err != nil {
		return fmt.Errorf("merge: %w", err)
	}
	r := l.Config.Rank
	// Check everything first so that a bad adapter leaves w untouched.
	for i, layer := range l.Layers {
		for proj, p := range layer {
			out, in := cfg.LinearShape(proj)
			if out == 0 {
				return fmt.Errorf("merge: layer %d: %q is not a projection", i, proj)
			}
			if w.Layers[i] == nil {
				return fmt.Errorf("merge: layer %d is adapted but not held by these weights", i)
			}
			if p == nil || len(p.A) != r*in || len(p.B) != out*r {
				return fmt.Errorf("merge: %s: lora_A/lora_B sizes do not match [%d, %d] / [%d, %d]",
					LayerTensorName(i, proj), r, in, out, r)
			}
			if got := len(*w.Layers[i].Linear(proj)); got != out*in {
				return fmt.Errorf("merge: %s has %d values, want %d", LayerTensorName(i, proj), got, out*in)
			}
		}
	}
	scale := l.Config.Scale()
	acc := make([]float64, 0)
	for i, layer := range l.Layers {
		for _, proj := range Linears {
			p, ok := layer[proj]
			if !ok {
				continue
			}
			out, in := cfg.LinearShape(proj)
			W := *w.Layers[i].Linear(proj)
			if cap(acc) < in {
				acc = make([]float64, in)
			}
			acc = acc[:in]
			for o := 0; o < out; o++ {
				clear(acc)
				for k := 0; k < r; k++ {
					b := float64(p.B[o*r+k])
					if b == 0 {
						continue
					}
					arow := p.A[k*in : (k+1)*in]
					for j, a := range arow {
						acc[j] += b * float64(a)
					}
				}
				row := W[o*in : (o+1)*in]
				for j := range row {
					row[j] = float32(float64(row[j]) + scale*acc[j])
				}
			}
		}
	}
	return nil
}
