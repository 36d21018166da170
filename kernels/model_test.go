package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"train/model"
	"train/ops"
)

// TestModelStep runs one full fine-tuning step (forward, loss, backward) of
// random Llama models on the GPU and on the float32 CPU twin: the loss agrees
// within 1e-4 relative and every gradient within 1e-3 relative L2 (cosine
// similarity above 0.999999). It logs the step time of each, after a warm-up.
func TestModelStep(t *testing.T) {
	g := gpu(t)
	for _, c := range []struct {
		name string
		B, T int
	}{{"tiny", 2, 48}, {"small", 2, 128}} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := model.RandomConfig(c.name)
			if err != nil {
				t.Fatal(err)
			}
			w, err := model.RandomWeights(cfg, 1, 0, cfg.NumLayers, true, true, 0)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(9, 9))
			b := &model.Batch{B: c.B, T: c.T, IDs: make([]int32, c.B*c.T), Labels: make([]int32, c.B*c.T)}
			for i := range b.IDs {
				b.IDs[i] = int32(rng.IntN(cfg.VocabSize))
				b.Labels[i] = b.IDs[i]
			}
			for i := 0; i < 7; i++ {
				b.Labels[i] = ops.IgnoreIndex // a masked prompt
			}
			lg, gg, dg := step(t, g, w, b)
			lc, gc, dc := step(t, ops.NewCPU(), w, b)
			t.Logf("%s B=%d T=%d: loss gpu %.7f cpu %.7f (rel %.2g); step gpu %v, cpu %v (%.1fx)", c.name, c.B, c.T,
				lg, lc, math.Abs(lg-lc)/math.Abs(lc), dg, dc, dc.Seconds()/dg.Seconds())
			if rel := math.Abs(lg-lc) / math.Abs(lc); !(rel <= 1e-4) {
				t.Errorf("loss: gpu %v, cpu %v, relative error %.2g > 1e-4", lg, lc, rel)
			}
			worst, wname := 0.0, ""
			for name, ref := range gc {
				got, ok := gg[name]
				if !ok {
					t.Fatalf("no GPU gradient for %s", name)
				}
				var d, n float64
				for i := range ref {
					d += (float64(got[i]) - float64(ref[i])) * (float64(got[i]) - float64(ref[i]))
					n += float64(ref[i]) * float64(ref[i])
				}
				rel := math.Sqrt(d / math.Max(n, 1e-300))
				if !(rel <= 1e-3) {
					t.Errorf("%s: gradient relative L2 error %.2g > 1e-3", name, rel)
				}
				if rel > worst || math.IsNaN(rel) {
					worst, wname = rel, name
				}
			}
			t.Logf("%d gradients, worst relative L2 error %.2g (%s)", len(gc), worst, wname)
		})
	}
}

// step builds the model on be, runs one forward and backward of the mean loss,
// and returns the loss, the gradients, and the time of a second (warm) step.
func step(t *testing.T, be ops.Backend, w *model.Weights, b *model.Batch) (float64, map[string][]float32, time.Duration) {
	t.Helper()
	m, err := model.NewModel(be, w, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	one := func() float64 {
		m.ZeroGrads()
		sum, n, err := m.Forward(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(1 / float32(n)); err != nil {
			t.Fatal(err)
		}
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
		return sum / float64(n)
	}
	loss := one()
	grads, err := m.Grads()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	one()
	return loss, grads, time.Since(start)
}
