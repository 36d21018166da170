package model

import (
	"math"
	"reflect"
	"runtime"
	"testing"

	"train/internal/testcheck"
)

func TestRandomConfigNames(t *testing.T) {
	for _, name := range []string{"tiny", "random:tiny", "random:llama-3.1-8b", "random:llama-3.1-70b", "random:llama-3.2-1b", "small"} {
		c, err := RandomConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Supported(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	c, _ := RandomConfig("random:llama-3.2-1b")
	if c.HiddenSize != 2048 || c.NumHeads != 32 || c.NumKVHeads != 8 || c.NumLayers != 16 || c.HeadDim != 64 ||
		c.IntermediateSize != 8192 || c.VocabSize != 128256 || !c.TieEmbeddings || c.Rope.Factor != 32 {
		t.Errorf("llama-3.2-1b: %+v", c)
	}
	c, _ = RandomConfig("random:llama-3.1-70b")
	if c.HiddenSize != 8192 || c.NumHeads != 64 || c.NumKVHeads != 8 || c.NumLayers != 80 || c.IntermediateSize != 28672 ||
		c.TieEmbeddings || c.Rope != (Rope{Theta: 500000, Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}) {
		t.Errorf("llama-3.1-70b: %+v", c)
	}
	// Presets are fresh values: changing one does not change the next.
	c.EOSTokenIDs[0] = -5
	if d, _ := RandomConfig("random:llama-3.1-70b"); d.EOSTokenIDs[0] != 128001 {
		t.Error("RandomConfig returned shared state")
	}
	_, err := RandomConfig("random:gpt2")
	testcheck.ErrorContains(t, err, `unknown random model "random:gpt2"; valid: random:llama-3.1-70b, random:llama-3.1-8b, random:llama-3.2-1b, random:llama-3.2-3b, random:small, random:tiny`)
}

func TestRandomWeightsDeterministic(t *testing.T) {
	cfg := tinyConfig(t)
	a, err := RandomWeights(cfg, 1, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	prev := runtime.GOMAXPROCS(1)
	b, _ := RandomWeights(cfg, 1, 0, cfg.NumLayers, true, true, 0)
	runtime.GOMAXPROCS(prev)
	if !reflect.DeepEqual(a, b) {
		t.Error("same seed, different weights (parallel vs one goroutine)")
	}
	// A pipeline stage's part equals the same layers of the whole.
	part, _ := RandomWeights(cfg, 1, 2, 4, false, true, 0)
	if part.Embed != nil || part.Layers[1] != nil || !reflect.DeepEqual(part.Layers[2:], a.Layers[2:]) ||
		!reflect.DeepEqual(part.LMHead, a.LMHead) {
		t.Error("stage [2,4) differs from the whole model's layers 2..3")
	}
	c, _ := RandomWeights(cfg, 2, 0, cfg.NumLayers, true, true, 0)
	if reflect.DeepEqual(a.Layers[0].Q, c.Layers[0].Q) {
		t.Error("different seeds gave the same weights")
	}
	if reflect.DeepEqual(a.Layers[0].Q, a.Layers[1].Q) || reflect.DeepEqual(a.Layers[0].K[:32], a.Layers[0].V[:32]) {
		t.Error("two tensors share values")
	}
	for _, l := range a.Layers {
		for i := range l.AttnNorm {
			if l.AttnNorm[i] != 1 || l.MLPNorm[i] != 1 {
				t.Fatal("norm weights must start at 1")
			}
		}
	}
}

// TestRandomWeightsDistribution: N(0, 0.02²) to within sampling error.
func TestRandomWeightsDistribution(t *testing.T) {
	cfg := tinyConfig(t)
	w, _ := RandomWeights(cfg, 3, 0, 0, true, false, 0)
	x := w.Embed // 32768 values
	var sum, sq float64
	for _, v := range x {
		sum += float64(v)
		sq += float64(v) * float64(v)
	}
	n := float64(len(x))
	mean, std := sum/n, math.Sqrt(sq/n-(sum/n)*(sum/n))
	if math.Abs(mean) > 4*0.02/math.Sqrt(n) || math.Abs(std-0.02) > 0.0005 {
		t.Errorf("mean %g std %g, want 0 and 0.02", mean, std)
	}
	within := 0
	for _, v := range x {
		if math.Abs(float64(v)) < 0.02 {
			within++
		}
	}
	if f := float64(within) / n; math.Abs(f-0.6827) > 0.01 {
		t.Errorf("%.4f of values within one std, want 0.6827", f)
	}
}

func TestRandomWeightsBudget(t *testing.T) {
	c, _ := RandomConfig("random:llama-3.1-70b")
	if got := c.HostBytes(0, c.NumLayers, true, true); got != 4*70553706496 {
		t.Errorf("HostBytes = %d", got)
	}
	_, err := RandomWeights(c, 0, 0, c.NumLayers, true, true, 64<<30)
	testcheck.ErrorContains(t, err, "random weights: layers [0,80) take 262.8 GiB of float32 host memory, more than the 64.0 GiB allowed")
	_, err = RandomWeights(c, 0, 0, 81, true, true, 64<<30)
	testcheck.ErrorContains(t, err, "layer range [0,81) is outside the model's 80 layers")
	// One 70B layer alone is 3.2 GiB.
	_, err = RandomWeights(c, 0, 40, 41, false, false, 3<<30)
	testcheck.ErrorContains(t, err, "layers [40,41) take 3.2 GiB")
	// A budget of exactly what is needed is enough.
	tiny := tinyConfig(t)
	if _, err := RandomWeights(tiny, 0, 0, 4, true, true, tiny.HostBytes(0, 4, true, true)); err != nil {
		t.Error(err)
	}
}
