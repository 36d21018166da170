package optim

import (
	"math"
	"testing"
)

// TestAdamWMatchesReference compares a few steps against the update written out in
// float64 from the AdamW paper / torch.optim.AdamW's documentation.
func TestAdamWMatchesReference(t *testing.T) {
	o := &AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	p := &Param{Name: "w", Value: []float32{0.5, -1.25, 2}, Grad: make([]float32, 3)}
	val := []float64{0.5, -1.25, 2}
	m := make([]float64, 3)
	v := make([]float64, 3)
	grads := [][]float64{{0.1, -0.2, 0.3}, {-0.05, 0.4, 0.0}, {1, 1, -1}}
	lr := 1e-2
	for s, g := range grads {
		for i := range g {
			p.Grad[i] = float32(g[i])
		}
		if err := o.Step([]*Param{p}, lr); err != nil {
			t.Fatal(err)
		}
		for i := range val {
			val[i] *= 1 - lr*0.1
			m[i] = 0.9*m[i] + 0.1*g[i]
			v[i] = 0.95*v[i] + 0.05*g[i]*g[i]
			mh := m[i] / (1 - math.Pow(0.9, float64(s+1)))
			vh := v[i] / (1 - math.Pow(0.95, float64(s+1)))
			val[i] -= lr * mh / (math.Sqrt(vh) + 1e-8)
		}
	}
	for i := range val {
		if d := math.Abs(float64(p.Value[i]) - val[i]); d > 1e-6 {
			t.Errorf("value[%d] = %v, want %v", i, p.Value[i], val[i])
		}
	}
}

func TestAdamWRejectsMismatchedGrad(t *testing.T) {
	o := &AdamW{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
	if err := o.Step([]*Param{{Name: "x", Value: make([]float32, 2), Grad: make([]float32, 3)}}, 1); err == nil {
		t.Fatal("no error for a gradient of the wrong length")
	}
}

func TestSchedule(t *testing.T) {
	s := Schedule{Peak: 1, MinRatio: 0.1, Warmup: 4, Total: 14, Kind: "cosine"}
	if got := s.LR(0); got != 0.25 {
		t.Errorf("first warm-up step %v, want 0.25", got)
	}
	if got := s.LR(4); math.Abs(got-1) > 1e-12 {
		t.Errorf("after warm-up %v, want 1", got)
	}
	if got := s.LR(13); math.Abs(got-0.1) > 1e-12 {
		t.Errorf("last step %v, want 0.1", got)
	}
	for i := 5; i < 14; i++ {
		if s.LR(i) > s.LR(i-1) {
			t.Errorf("cosine rises at step %d", i)
		}
	}
	lin := Schedule{Peak: 2, MinRatio: 0, Warmup: 0, Total: 3, Kind: "linear"}
	if lin.LR(0) != 2 || lin.LR(1) != 1 || lin.LR(2) != 0 {
		t.Errorf("linear: %v %v %v", lin.LR(0), lin.LR(1), lin.LR(2))
	}
	if c := (Schedule{Peak: 3, Total: 10, Kind: "constant"}); c.LR(7) != 3 {
		t.Errorf("constant: %v", c.LR(7))
	}
}

func TestClip(t *testing.T) {
	p := &Param{Value: make([]float32, 2), Grad: []float32{3, 4}}
	norm := math.Sqrt(SumSquares([]*Param{p}))
	if norm != 5 {
		t.Fatalf("norm %v", norm)
	}
	ScaleGrads([]*Param{p}, ClipScale(norm, 1))
	if n := math.Sqrt(SumSquares([]*Param{p})); math.Abs(n-1) > 1e-5 {
		t.Fatalf("clipped norm %v", n)
	}
	if ClipScale(0.5, 1) != 1 || ClipScale(10, 0) != 1 {
		t.Fatal("clip applied where it should not")
	}
}
