package model

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Sampler picks the next token from a row of logits, as transformers'
// generate does with its logits warpers, in the same order: temperature, then
// top-k, then top-p (nucleus), then a draw from what is left. Temperature 0
// is greedy: the most likely token, no randomness. Its random stream comes from
// the seed alone, so a seed reproduces a generation exactly (on a backend that
// reproduces the logits).
//
// A Sampler keeps scratch space between calls and is not safe for concurrent
// use.
type Sampler struct {
	temperature float64
	topP        float64
	topK        int
	rng         *rand.Rand

	cand []candidate // scratch: the tokens still in the running
}

type candidate struct {
	id int
	p  float64 // scaled logit, then probability
}

// SamplerOptions choose how a Sampler picks tokens. The zero value is greedy.
type SamplerOptions struct {
	// Temperature divides the logits before the softmax: below 1 sharpens, above
	// 1 flattens. 0 means greedy.
	Temperature float64
	// TopP keeps the smallest set of most likely tokens whose probabilities sum to
	// at least TopP (nucleus sampling). 0 or 1 keeps every token.
	TopP float64
	// TopK keeps only the K most likely tokens; 0 keeps every token.
	TopK int
	// Seed seeds the random stream.
	Seed uint64
}

// NewSampler validates opt and returns its sampler.
func NewSampler(opt SamplerOptions) (*Sampler, error) {
	if !(opt.Temperature >= 0) || math.IsInf(opt.Temperature, 0) {
		return nil, fmt.Errorf("sampler: temperature %v must be a finite number >= 0", opt.Temperature)
	}
	if !(opt.TopP >= 0 && opt.TopP <= 1) {
		return nil, fmt.Errorf("sampler: top-p %v must be in [0, 1]", opt.TopP)
	}
	if opt.TopK < 0 {
		return nil, fmt.Errorf("sampler: top-k %d must be >= 0", opt.TopK)
	}
	topP := opt.TopP
	if topP == 0 {
		topP = 1
	}
	return &Sampler{
		temperature: opt.Temperature, topP: topP, topK: opt.TopK,
		rng: rand.New(rand.NewPCG(opt.Seed, 0x73616d706c65)), // "sample"
	}, nil
}

// Greedy reports whether the sampler always takes the most likely token.
func (s *Sampler) Greedy() bool { return s.temperature == 0 || s.topK == 1 }

// Sample returns the id of the next token given its logits. Logits holding NaN
// (a diverged model) are an error rather than a silent choice.
func (s *Sampler) Sample(logits []float32) (int, error) {
	if len(logits) == 0 {
		return 0, errors.New("sampler: no logits")
	}
	best, err := Argmax(logits)
	if err != nil || s.Greedy() {
		return best, err
	}
	// Temperature: scaled logits, shifted by the maximum so exp cannot overflow.
	// -Inf logits (masked) have probability 0; +Inf ones share all the mass.
	top := float64(logits[best])
	c := s.cand[:0]
	for id, l := range logits {
		switch {
		case math.IsInf(top, 1):
			if math.IsInf(float64(l), 1) {
				c = append(c, candidate{id, 0})
			}
		case !math.IsInf(float64(l), -1):
			c = append(c, candidate{id, (float64(l) - top) / s.temperature})
		}
	}
	if len(c) == 0 {
		return best, nil // every logit is -Inf: nothing to draw from
	}
	if s.topK > 0 || s.topP < 1 {
		// Most likely first; ties by id so the order, and the draw, are fixed.
		slices.SortFunc(c, func(a, b candidate) int {
			if a.p != b.p {
				return cmp.Compare(b.p, a.p)
			}
			return cmp.Compare(a.id, b.id)
		})
		if s.topK > 0 && s.topK < len(c) {
			c = c[:s.topK]
		}
	}
	var sum float64
	for i := range c {
		c[i].p = math.Exp(c[i].p)
		sum += c[i].p
	}
	if s.topP < 1 {
		// The nucleus: the shortest prefix holding topP of the mass (at least one
		// token), as transformers' TopPLogitsWarper keeps it.
		var acc float64
		for i := range c {
			acc += c[i].p
			if acc >= s.topP*sum {
				c, sum = c[:i+1], acc
				break
			}
		}
	}
	s.cand = c
	u := s.rng.Float64() * sum
	for _, x := range c {
		u -= x.p
		if u < 0 {
			return x.id, nil
		}
	}
	return c[len(c)-1].id, nil // rounding left u at the very end
}

// Argmax returns the index of the largest logit, the first on ties (as torch's
// argmax), or an error when a logit is NaN.
func Argmax(logits []float32) (int, error) {
	if len(logits) == 0 {
		return 0, errors.New("argmax of no logits")
	}
	best := 0
	for i, l := range logits {
		if l != l {
			return 0, fmt.Errorf("logit %d is NaN", i)
		}
		if l > logits[best] {
			best = i
		}
	}
	return best, nil
}
