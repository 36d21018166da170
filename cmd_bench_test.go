package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"strconv"
	"strings"
	"testing"
)

func runBenchModel(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = runBench(append([]string{"model"}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
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
		var r struct{ Loss *float64 }
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
		{[]string{"-method", "adapter"}, `-method "adapter": want full, lora or qlora`},
		{[]string{"-precision", "fp8"}, `-precision "fp8": want fp32, bf16 or fp16`},
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

// TestBenchUsage: a missing or unknown benchmark and bad flags of bench ckpt
// and bench collective are usage errors (exit status 2), said on stderr.
func TestBenchUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, 2, "train bench: which benchmark? (train bench collective | pipeline | ckpt | model)"},
		{[]string{"-x"}, 2, "which benchmark?"},
		{[]string{"nope"}, 2, `train bench: unknown benchmark "nope" (there are: collective, pipeline, ckpt, model)`},
		{[]string{"ckpt", "-h"}, 0, "zstd with byte grouping (the default)"},
		{[]string{"ckpt", "-random", "random:nope"}, 2, "train bench: -random: "},
		{[]string{"ckpt", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"collective", "-h"}, 0, "ratio to the raw stream"},
		{[]string{"collective", "-min", "2"}, 2, "need 4 <= -min <= -max"},
		{[]string{"collective", "-min", "8", "-max", "4"}, 2, "need 4 <= -min <= -max"},
		{[]string{"collective", "-dtype", "int8"}, 2, `-dtype "int8": want float32 or bf16`},
		{[]string{"collective", "-rank", "1"}, 2, "-rank and -world-size go together"},
		{[]string{"pipeline", "-steps", "1"}, 2, "-steps 1: need at least 2"},
	} {
		var out, errb bytes.Buffer
		code := mainExit(append([]string{"bench"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) {
			t.Errorf("bench %v: exit %d, want %d; stderr lacks %q:\n%s", c.args, code, c.code, c.want, &errb)
		}
	}
}

// TestBenchCkptRuns: a run through the command line with its flags reaching
// the benchmark (a random model of one layer, no real weights).
func TestBenchCkptRuns(t *testing.T) {
	var out, errb bytes.Buffer
	code := mainExit([]string{"bench", "ckpt", "-model", "", "-random", "random:tiny", "-layers", "1", "-level", "3",
		"-workers", "1", "-time", "1ms", "-dir", t.TempDir()}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, &errb)
	}
	for _, want := range []string{"zstd level 3, workers 1 ", "random:tiny (1 layers + embedding) bf16: 8 tensors", "zstd+bytegroup"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &out)
		}
	}
}
