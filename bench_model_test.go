package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"train/model"
)

// TestBenchModelFLOPs70B checks the FLOP count against the 70B layer shape
// worked out by hand (hidden 8192, 64 heads and 8 KV heads of 128, intermediate
// 28672): the numbers scripts/bench-peer.py must agree with.
func TestBenchModelFLOPs70B(t *testing.T) {
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

func runBenchModel(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = runBench(append([]string{"model"}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
}

// TestBenchModelCPU runs a couple of steps of each kind on random:tiny and
// checks that the JSON line parses and is self-consistent (never the times).
func TestBenchModelCPU(t *testing.T) {
	tiny, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		args   []string
		layers int
		B, T   int
		loss   bool
	}{
		{"full", []string{"-method", "full"}, 4, 2, 24, true},
		{"lora-checkpoint", []string{"-method", "lora", "-lora-rank", "4", "-checkpoint"}, 4, 1, 32, true},
		{"layers", []string{"-part", "layers", "-layers", "2", "-method", "full"}, 2, 1, 16, false},
		{"layers-lora", []string{"-part", "layers", "-layers", "3", "-method", "lora", "-checkpoint"}, 3, 2, 8, false},
		{"more-layers", []string{"-layers", "6"}, 6, 1, 8, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"-device", "cpu", "-steps", "2", "-warmup", "1", "-json",
				"-batch", strconv.Itoa(c.B), "-seq", strconv.Itoa(c.T)}, c.args...)
			out, errOut, err := runBenchModel(t, args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, errOut)
			}
			var r benchModelResult
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, out)
			}
			if strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Errorf("want one line, got:\n%s", out)
			}
			if r.Impl != "train" || r.Device != "cpu-f32" || r.Layers != c.layers || r.Batch != c.B || r.Seq != c.T || r.Steps != 2 {
				t.Errorf("result %+v does not echo the flags", r)
			}
			if r.LayerParams != tiny.LayerParams() {
				t.Errorf("layer_params %d, want %d", r.LayerParams, tiny.LayerParams())
			}
			if want := stepFLOPs(tiny, c.layers, c.B, c.T); r.FLOPsPerStep != want {
				t.Errorf("flops_per_step %v, want %v", r.FLOPsPerStep, want)
			}
			for name, v := range map[string]float64{"tokens_per_s": r.TokensPerS, "tflops": r.TFLOPs, "step_ms": r.StepMS} {
				if !(v > 0) || math.IsInf(v, 0) {
					t.Errorf("%s = %v, want a positive number", name, v)
				}
			}
			// tokens/s and step time describe the same steps.
			if got := r.TokensPerS * r.StepMS / 1000; math.Abs(got-float64(c.B*c.T)) > 1e-6*float64(c.B*c.T) {
				t.Errorf("tokens_per_s x step_ms = %v tokens per step, want %d", got, c.B*c.T)
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
		})
	}
}

// TestBenchModelLoRAUpdates checks that -method lora steps the optimizer: the
// same batch again after two updates has a lower loss, while full fine-tuning
// (forward and backward only) leaves the weights alone.
func TestBenchModelLoRAUpdates(t *testing.T) {
	loss := func(method string, steps int) float64 {
		out, errOut, err := runBenchModel(t, "-device", "cpu", "-method", method, "-seq", "32",
			"-warmup", "0", "-steps", strconv.Itoa(steps), "-json")
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		var r benchModelResult
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Loss == nil {
			t.Fatalf("%v: %s", err, out)
		}
		return *r.Loss
	}
	if first, third := loss("lora", 1), loss("lora", 3); !(third < first) {
		t.Errorf("lora: loss %v after two AdamW steps, %v before: the adapter did not learn", third, first)
	}
	if first, third := loss("full", 1), loss("full", 3); first != third {
		t.Errorf("full: loss %v on the third step, %v on the first: the weights changed", third, first)
	}
}

func TestBenchModelText(t *testing.T) {
	out, _, err := runBenchModel(t, "-device", "cpu", "-steps", "1", "-warmup", "0", "-seq", "8", "-method", "lora")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"random:tiny", "LoRA r=16", "tokens/s", "TFLOP/s counts 6 x", "peak"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchModelHelp(t *testing.T) {
	_, errOut, err := runBenchModel(t, "-h")
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: err %v", err)
	}
	for _, want := range []string{"train bench model", "-part", "-precision", "TFLOP/s counts", "random:llama-3.1-70b -layers 4 -part layers"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("-h lacks %q:\n%s", want, errOut)
		}
	}
}

func TestBenchModelErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-method", "qlora"}, `-method "qlora": want full or lora`},
		{[]string{"-precision", "fp16"}, `-precision "fp16": want fp32 or bf16`},
		{[]string{"-part", "head"}, `-part "head"`},
		{[]string{"-device", "tpu"}, `-device "tpu"`},
		{[]string{"-seq", "0"}, "must be at least 1"},
		{[]string{"-seq", "1"}, "at least 2 tokens"},
		{[]string{"-steps", "0"}, "at least one timed step"},
		{[]string{"-layers", "-1"}, "-layers -1"},
		{[]string{"-method", "lora", "-lora-rank", "0"}, "-lora-rank 0"},
		{[]string{"-model", "random:nope"}, "unknown random model"},
		{[]string{"-model", storiesDir, "-layers", "99"}, "has only"},
		{[]string{"-model", storiesDir, "-part", "layers"}, "needs -layers at most"},
		{[]string{"-seq", "many"}, "invalid value"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		if len(c.args) > 1 && c.args[1] == storiesDir {
			if _, err := os.Stat(storiesDir); err != nil {
				t.Logf("skipping %v: ../shared is absent", c.args)
				continue
			}
		}
		_, _, err := runBenchModel(t, append([]string{"-device", "cpu"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want one containing %q", c.args, err, c.want)
			continue
		}
		if !errors.As(err, new(*usageError)) {
			t.Errorf("%v: %v is not a usage error (exit status 2)", c.args, err)
		}
	}
}
