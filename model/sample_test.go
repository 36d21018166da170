package model

import (
	"math"
	"testing"
)

// sampleCounts draws n tokens and counts each id.
func sampleCounts(t *testing.T, opt SamplerOptions, logits []float32, n int) []int {
	t.Helper()
	s, err := NewSampler(opt)
	if err != nil {
		t.Fatal(err)
	}
	counts := make([]int, len(logits))
	for range n {
		id, err := s.Sample(logits)
		if err != nil {
			t.Fatal(err)
		}
		counts[id]++
	}
	return counts
}

// The probabilities of these logits at temperature 1 are 0.5, 0.25, 0.125,
// 0.0625, 0.0625 (id 1 first).
var sampleLogits = []float32{
	float32(math.Log(0.125)), float32(math.Log(0.5)), float32(math.Log(0.0625)),
	float32(math.Log(0.25)), float32(math.Log(0.0625)),
}

func TestSampleGreedy(t *testing.T) {
	for _, opt := range []SamplerOptions{{}, {Temperature: 0, TopP: 0.5, Seed: 9}, {Temperature: 2, TopK: 1}} {
		c := sampleCounts(t, opt, sampleLogits, 50)
		if c[1] != 50 {
			t.Errorf("%+v: counts %v, want always id 1", opt, c)
		}
	}
	if id, err := Argmax([]float32{3, 7, 7, 1}); err != nil || id != 1 {
		t.Errorf("Argmax ties: %d, %v; want the first, 1", id, err)
	}
}

// TestSampleDistribution: at temperature 1 the draws follow the softmax; top-k
// and top-p cut the tail and renormalise what is left.
func TestSampleDistribution(t *testing.T) {
	const n = 40000
	for _, c := range []struct {
		opt  SamplerOptions
		want []float64
	}{
		{SamplerOptions{Temperature: 1, Seed: 1}, []float64{0.125, 0.5, 0.0625, 0.25, 0.0625}},
		// Top-2: ids 1 and 3, 2:1.
		{SamplerOptions{Temperature: 1, TopK: 2, Seed: 2}, []float64{0, 2.0 / 3, 0, 1.0 / 3, 0}},
		// Top-p 0.8: 0.5 + 0.25 = 0.75 is not enough, so id 0 (0.125) joins.
		{SamplerOptions{Temperature: 1, TopP: 0.8, Seed: 3}, []float64{0.125 / 0.875, 0.5 / 0.875, 0, 0.25 / 0.875, 0}},
		// Top-p 0.7 is reached by ids 1 and 3.
		{SamplerOptions{Temperature: 1, TopP: 0.7, Seed: 4}, []float64{0, 2.0 / 3, 0, 1.0 / 3, 0}},
		// Temperature 0.5 squares the probabilities: 1/64, 1/4, 1/256, 1/16, 1/256.
		{SamplerOptions{Temperature: 0.5, Seed: 5}, func() []float64 {
			p := []float64{1.0 / 64, 1.0 / 4, 1.0 / 256, 1.0 / 16, 1.0 / 256}
			var s float64
			for _, x := range p {
				s += x
			}
			for i := range p {
				p[i] /= s
			}
			return p
		}()},
	} {
		counts := sampleCounts(t, c.opt, sampleLogits, n)
		for id, w := range c.want {
			got := float64(counts[id]) / n
			if w == 0 && counts[id] != 0 {
				t.Errorf("%+v: id %d drawn %d times, want never", c.opt, id, counts[id])
			}
			// Five standard deviations of a binomial proportion.
			if tol := 5 * math.Sqrt(w*(1-w)/n); math.Abs(got-w) > tol {
				t.Errorf("%+v: id %d frequency %.4f, want %.4f ± %.4f", c.opt, id, got, w, tol)
			}
		}
	}
}

// TestSampleSeeded: the same seed gives the same draws, another seed others.
func TestSampleSeeded(t *testing.T) {
	logits := make([]float32, 100)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(i)))
	}
	draw := func(seed uint64) []int {
		s, err := NewSampler(SamplerOptions{Temperature: 1.3, TopP: 0.9, TopK: 50, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		out := make([]int, 64)
		for i := range out {
			if out[i], err = s.Sample(logits); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	a, b, c := draw(7), draw(7), draw(8)
	same := true
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 7 drew %v then %v", a, b)
		}
		same = same && a[i] == c[i]
	}
	if same {
		t.Error("seeds 7 and 8 drew the same 64 tokens")
	}
}

func TestSampleEdgeCases(t *testing.T) {
	inf := float32(math.Inf(1))
	// Masked tokens are never drawn; +Inf takes all the mass.
	c := sampleCounts(t, SamplerOptions{Temperature: 1, Seed: 1}, []float32{-inf, 0, -inf, 0}, 2000)
	if c[0] != 0 || c[2] != 0 || c[1] == 0 || c[3] == 0 {
		t.Errorf("masked logits: counts %v", c)
	}
	c = sampleCounts(t, SamplerOptions{Temperature: 1, Seed: 1}, []float32{5, inf, 3}, 100)
	if c[1] != 100 {
		t.Errorf("+Inf logit: counts %v", c)
	}
	c = sampleCounts(t, SamplerOptions{Temperature: 1, Seed: 1}, []float32{-inf, -inf}, 10)
	if c[0] != 10 {
		t.Errorf("all masked: counts %v, want the first id", c)
	}
	s, _ := NewSampler(SamplerOptions{Temperature: 1})
	if _, err := s.Sample([]float32{1, float32(math.NaN())}); err == nil {
		t.Error("NaN logits: no error")
	}
	if _, err := s.Sample(nil); err == nil {
		t.Error("no logits: no error")
	}
	for _, bad := range []SamplerOptions{{Temperature: -1}, {Temperature: math.Inf(1)}, {Temperature: math.NaN()}, {TopP: 1.5}, {TopP: -0.1}, {TopK: -1}} {
		if _, err := NewSampler(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
