package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"train/model"
	"train/ops"
)

// TestModelFLOPs70B checks the FLOP count against the 70B layer shape worked
// out by hand (hidden 8192, 64 heads and 8 KV heads of 128, intermediate
// 28672): the numbers scripts/bench-peer.py must agree with.
func TestModelFLOPs70B(t *testing.T) {
	cfg, err := model.RandomConfig("random:llama-3.1-70b")
	if err != nil {
		t.Fatal(err)
	}
	const (
		q      = 8192 * 8192  // q_proj [64*128, 8192]
		kv     = 1024 * 8192  // k_proj and v_proj [8*128, 8192] each
		o      = 8192 * 8192  // o_proj
		mlp    = 28672 * 8192 // gate_proj, up_proj, down_proj each
		norms  = 2 * 8192
		params = q + 2*kv + o + 3*mlp + norms
	)
	if params != 855_654_400 {
		t.Fatalf("hand count %d", params)
	}
	if got := cfg.LayerParams(); got != params {
		t.Errorf("LayerParams(70B) = %d, want %d", got, params)
	}
	for _, c := range []struct {
		layers, B, T int
		want         float64
	}{
		// 6 x 4 x 855654400 x 2048 + 6 x 4 x 2048^2 x 8192
		{4, 1, 2048, 42_057_125_068_800 + 824_633_720_832},
		{4, 1, 8192, 168_228_500_275_200 + 13_194_139_533_312},
		{4, 2, 2048, 2 * (42_057_125_068_800 + 824_633_720_832)},
	} {
		if got := stepFLOPs(cfg, c.layers, c.B, c.T); got != c.want {
			t.Errorf("stepFLOPs(70B, %d layers, B=%d, T=%d) = %.0f, want %.0f", c.layers, c.B, c.T, got, c.want)
		}
	}
	cfg8, err := model.RandomConfig("random:llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg8.LayerParams(); got != 218_112_000 {
		t.Errorf("LayerParams(8B) = %d, want 218112000", got)
	}
}

// countingOptimizer stands in for the training run's optimizer: it counts
// the steps Model asks for and leaves the weights alone.
type countingOptimizer struct {
	steps  int
	lr     float64
	closed bool
}

func (o *countingOptimizer) Step(lr, _ float64) { o.steps, o.lr = o.steps+1, lr }
func (o *countingOptimizer) Close()             { o.closed = true }

// cpuOptions are the options of a short run of random:tiny on the CPU.
func cpuOptions() ModelOptions {
	return ModelOptions{
		Model: "random:tiny", Layers: 4, Part: "model", Method: "full", LoRARank: 16, LoRAAlpha: 32,
		Seq: 8, Batch: 1, Steps: 2, Warmup: 1, Device: "cpu", Precision: "fp32", Seed: 1,
	}
}

// runModel runs Model with a countingOptimizer and returns what it printed.
func runModel(t *testing.T, opts ModelOptions) (string, *countingOptimizer) {
	t.Helper()
	var out, errOut bytes.Buffer
	opt := &countingOptimizer{}
	opts.newOptimizer = func(*model.Model, ops.Backend) (optimizer, error) { return opt, nil }
	if err := Model(opts, &out, &errOut); err != nil {
		t.Fatalf("%+v: %v\n%s", opts, err, &errOut)
	}
	if !strings.HasPrefix(errOut.String(), "bench model: building "+opts.Model+" layers") {
		t.Errorf("stderr does not say what is built:\n%s", &errOut)
	}
	return out.String(), opt
}

// TestModelCPU runs a couple of steps of each kind on random:tiny and checks
// that the JSON line parses and is self-consistent (never the times).
func TestModelCPU(t *testing.T) {
	tiny, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opts func(*ModelOptions)
		loss bool
	}{
		{"full", func(o *ModelOptions) { o.Batch, o.Seq = 2, 24 }, true},
		{"lora-checkpoint", func(o *ModelOptions) { o.Method, o.LoRARank, o.Checkpoint, o.Seq = "lora", 4, true, 32 }, true},
		{"layers", func(o *ModelOptions) { o.Part, o.Layers, o.Seq = "layers", 2, 16 }, false},
		{"layers-lora", func(o *ModelOptions) {
			o.Part, o.Layers, o.Method, o.Checkpoint, o.Batch = "layers", 3, "lora", true, 2
		}, false},
		{"more-layers", func(o *ModelOptions) { o.Layers = 6 }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := cpuOptions()
			opts.JSON = true
			c.opts(&opts)
			out, opt := runModel(t, opts)
			var r modelResult
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, out)
			}
			if strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Errorf("want one line, got:\n%s", out)
			}
			if r.Impl != "train" || r.Device != "cpu-f32" || r.Layers != opts.Layers || r.Batch != opts.Batch ||
				r.Seq != opts.Seq || r.Steps != 2 || r.Part != opts.Part || r.Method != opts.Method {
				t.Errorf("result %+v does not echo the options %+v", r, opts)
			}
			if r.LayerParams != tiny.LayerParams() {
				t.Errorf("layer_params %d, want %d", r.LayerParams, tiny.LayerParams())
			}
			if want := stepFLOPs(tiny, opts.Layers, opts.Batch, opts.Seq); r.FLOPsPerStep != want {
				t.Errorf("flops_per_step %v, want %v", r.FLOPsPerStep, want)
			}
			for name, v := range map[string]float64{"tokens_per_s": r.TokensPerS, "tflops": r.TFLOPs, "step_ms": r.StepMS} {
				if !(v > 0) || math.IsInf(v, 0) {
					t.Errorf("%s = %v, want a positive number", name, v)
				}
			}
			// tokens/s and step time describe the same steps.
			tokens := float64(opts.Batch * opts.Seq)
			if got := r.TokensPerS * r.StepMS / 1000; math.Abs(got-tokens) > 1e-6*tokens {
				t.Errorf("tokens_per_s x step_ms = %v tokens per step, want %v", got, tokens)
			}
			if got := r.TFLOPs * 1e12 * r.StepMS / 1000; math.Abs(got-r.FLOPsPerStep) > 1e-6*r.FLOPsPerStep {
				t.Errorf("tflops x step_ms = %v FLOP per step, want %v", got, r.FLOPsPerStep)
			}
			if r.PeakGiB < 0 || r.Memory == "" {
				t.Errorf("peak_gib %v, memory %q", r.PeakGiB, r.Memory)
			}
			if c.loss {
				// Random weights of std 0.02 predict nearly uniformly: ln V.
				if r.Loss == nil || math.Abs(*r.Loss-math.Log(float64(tiny.VocabSize))) > 0.5 {
					t.Errorf("loss %v, want about ln %d = %.2f", r.Loss, tiny.VocabSize, math.Log(float64(tiny.VocabSize)))
				}
			} else if r.Loss != nil {
				t.Errorf("-part layers has no loss, got %v", *r.Loss)
			}
			if opts.Method == "lora" && r.LoRARank != opts.LoRARank {
				t.Errorf("lora_rank %d, want %d", r.LoRARank, opts.LoRARank)
			}
			if opts.Method == "full" && (opt.steps != 0 || r.LoRARank != 0) {
				t.Errorf("full fine-tuning made %d optimizer steps, lora_rank %d", opt.steps, r.LoRARank)
			}
		})
	}
}

// TestModelOptimizer: with Method "lora" every step, warm-up included, ends
// with one update at the benchmark's learning rate, and the optimizer is
// closed after.
func TestModelOptimizer(t *testing.T) {
	opts := cpuOptions()
	opts.Method, opts.Warmup, opts.Steps = "lora", 2, 3
	_, opt := runModel(t, opts)
	if opt.steps != 5 || opt.lr != modelLR || !opt.closed {
		t.Errorf("optimizer: %d steps at lr %v, closed %v; want 5 at %v, closed", opt.steps, opt.lr, opt.closed, modelLR)
	}
}

func TestModelText(t *testing.T) {
	opts := cpuOptions()
	opts.Method, opts.Steps, opts.Warmup = "lora", 1, 0
	out, _ := runModel(t, opts)
	for _, want := range []string{"random:tiny", "LoRA r=16", "tokens/s", "TFLOP/s counts 6 x", "peak", "last loss"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 3 {
		t.Errorf("%d lines, want 3:\n%s", n, out)
	}
}

func TestModelStage(t *testing.T) {
	for _, c := range []struct {
		part          string
		layers        int
		lo, hi, total int
	}{
		{"model", 4, 0, 4, 4},
		{"layers", 4, 1, 5, 6},
	} {
		lo, hi, total := ModelOptions{Part: c.part, Layers: c.layers}.Stage()
		if lo != c.lo || hi != c.hi || total != c.total {
			t.Errorf("Stage(%s, %d layers) = [%d,%d) of %d, want [%d,%d) of %d", c.part, c.layers, lo, hi, total, c.lo, c.hi, c.total)
		}
	}
}
