// Package optim holds the optimizer (AdamW, as torch.optim.AdamW computes it), the
// learning-rate schedule and global-norm gradient clipping, on host float32 slices.
// A parameter's optimizer state lives beside it in a Param, so that a ZeRO-1 shard is
// simply the subset of Params (or the slice range of each) a rank owns.
package optim

import (
	"fmt"
	"math"
)

// Param is one trainable tensor, its gradient and its AdamW moments.
type Param struct {
	Name  string
	Value []float32 // updated in place
	Grad  []float32 // read; same length as Value
	M, V  []float32 // first and second moments, allocated on first use
	// NoDecay exempts the tensor from weight decay (norm weights, by convention).
	NoDecay bool
}

// AdamW is torch.optim.AdamW's update: decoupled weight decay, bias-corrected moments.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	step                           int // completed updates, for bias correction
}

// Steps is how many updates have been applied (a checkpoint stores it).
func (o *AdamW) Steps() int { return o.step }

// SetSteps restores the update count from a checkpoint.
func (o *AdamW) SetSteps(n int) { o.step = n }

// Begin counts one more update and returns its bias-corrected constants:
// stepSize = lr/(1-beta1^t) and sqrtBC2 = sqrt(1-beta2^t). Step calls it; a
// device applying the update itself (ops.Backend.AdamW) calls it once per step.
func (o *AdamW) Begin(lr float64) (stepSize, sqrtBC2 float64) {
	o.step++
	bc1 := 1 - math.Pow(o.Beta1, float64(o.step))
	bc2 := 1 - math.Pow(o.Beta2, float64(o.step))
	return lr / bc1, math.Sqrt(bc2)
}

// Step applies one update with learning rate lr to every parameter.
func (o *AdamW) Step(params []*Param, lr float64) error {
	stepSize, sqrtBC2 := o.Begin(lr)
	b1, b2 := float32(o.Beta1), float32(o.Beta2)
	for _, p := range params {
		if len(p.Grad) != len(p.Value) {
			return fmt.Errorf("optim: %s: gradient has %d elements, value %d", p.Name, len(p.Grad), len(p.Value))
		}
		if p.M == nil {
			p.M = make([]float32, len(p.Value))
			p.V = make([]float32, len(p.Value))
		}
		decay := float32(1)
		if !p.NoDecay {
			decay = float32(1 - lr*o.WeightDecay)
		}
		for i, g := range p.Grad {
			m := b1*p.M[i] + (1-b1)*g
			v := b2*p.V[i] + (1-b2)*g*g
			p.M[i], p.V[i] = m, v
			denom := math.Sqrt(float64(v))/sqrtBC2 + o.Eps
			p.Value[i] = p.Value[i]*decay - float32(stepSize*float64(m)/denom)
		}
	}
	return nil
}

// Schedule is the learning rate at each step: linear warm-up from 0, then cosine or
// linear decay to MinRatio*Peak at Total, or constant.
type Schedule struct {
	Peak     float64
	MinRatio float64
	Warmup   int
	Total    int
	Kind     string // "cosine", "linear" or "constant"
}

// LR is the learning rate for the update that ends step (0-based).
func (s Schedule) LR(step int) float64 {
	if s.Warmup > 0 && step < s.Warmup {
		return s.Peak * float64(step+1) / float64(s.Warmup)
	}
	decaySteps := s.Total - s.Warmup
	if s.Kind == "constant" || decaySteps <= 1 {
		return s.Peak
	}
	frac := math.Min(1, float64(step-s.Warmup)/float64(decaySteps-1))
	lo := s.Peak * s.MinRatio
	if s.Kind == "linear" {
		return s.Peak - (s.Peak-lo)*frac
	}
	return lo + (s.Peak-lo)*0.5*(1+math.Cos(math.Pi*frac))
}

// SumSquares is the sum of squared gradient elements, in float64; ranks add theirs
// (all-reduce) before taking the root, so the norm is global across stages and replicas.
func SumSquares(params []*Param) float64 {
	var s float64
	for _, p := range params {
		for _, g := range p.Grad {
			s += float64(g) * float64(g)
		}
	}
	return s
}

// ClipScale is the factor that brings a global norm down to maxNorm (1 when it is
// within it, or when clipping is off), as torch.nn.utils.clip_grad_norm_ computes it.
func ClipScale(norm, maxNorm float64) float64 {
	if maxNorm <= 0 || norm <= maxNorm {
		return 1
	}
	return maxNorm / (norm + 1e-6)
}

// ScaleGrads multiplies every gradient by s.
func ScaleGrads(params []*Param, s float64) {
	if s == 1 {
		return
	}
	f := float32(s)
	for _, p := range params {
		for i := range p.Grad {
			p.Grad[i] *= f
		}
	}
}
