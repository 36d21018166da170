package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"train/ckpt"
	"train/format/safetensors"
)

// stepLosses maps step -> training loss from a run's metrics.jsonl.
func stepLosses(t *testing.T, run string) map[int]float64 {
	t.Helper()
	out := map[int]float64{}
	for _, m := range readMetrics(t, run) {
		if l, ok := m["loss"]; ok {
			out[int(m["step"])] = l
		}
	}
	return out
}

// TestResumeOnOtherLayouts resumes a single-process checkpoint under mpirun as
// D=2, P=2 (tied embeddings split across stages), P=2 x D=2 with ZeRO-1, and a
// ZeRO-1 checkpoint back on one process: the tensors are resharded by name and
// the losses of the continuation stay within 1e-6 of the uninterrupted run
// (data parallelism sums gradients in another order, so not bitwise).
func TestResumeOnOtherLayouts(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	writeStories(t, data, 48, 6)
	common := fmt.Sprintf("-model %s -data %s -method lora -steps 16 -lr 5e-3 -batch 1 -seq 64 -lora-rank 4 -ckpt-every 8 -log-every 100 -timeout 120",
		storiesDir, data)
	base := filepath.Join(dir, "base")
	launchRanks(t, 1, strings.Fields(common+" -grad-accum 4 -run "+base))
	check := func(t *testing.T, run, straight string) {
		want := stepLosses(t, straight)
		got := stepLosses(t, run)
		for s := 9; s <= 16; s++ {
			if rel := math.Abs(got[s]-want[s]) / want[s]; !(rel <= 1e-6) {
				t.Errorf("step %d: loss %.9g resumed, %.9g straight (relative %.2g)", s, got[s], want[s], rel)
			}
		}
	}
	from := ckpt.StepDir(base, 8)
	for _, l := range []struct {
		name  string
		np    int
		flags string
	}{
		{"D2", 2, "-grad-accum 2"},
		{"P2", 2, "-pp 2 -grad-accum 4"},
		{"P2xD2-zero1", 4, "-pp 2 -grad-accum 2 -zero1"},
	} {
		t.Run(l.name, func(t *testing.T) {
			run := filepath.Join(dir, l.name)
			launchRanks(t, l.np, strings.Fields(common+" "+l.flags+" -run "+run+" -resume "+from))
			check(t, run, base)
		})
	}
	t.Run("zero1-back-to-one", func(t *testing.T) {
		z := filepath.Join(dir, "z")
		launchRanks(t, 2, strings.Fields(common+" -grad-accum 2 -zero1 -run "+z))
		run := filepath.Join(dir, "z-one")
		launchRanks(t, 1, strings.Fields(common+" -grad-accum 4 -run "+run+" -resume "+ckpt.StepDir(z, 8)))
		check(t, run, z) // against the ZeRO-1 run it continues
	})
}

// TestPreemptionSignal: SIGUSR1 (Slurm's warning before a time limit) makes the
// trainer finish its step, write a checkpoint and exit 0; -resume continues from
// it to the run's end.
func TestPreemptionSignal(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	signalAfterFirstStep(t, syscall.SIGUSR1, "-steps", "100000", "-log-every", "1", "-run", run)
	info, err := ckpt.Latest(run)
	if err != nil {
		t.Fatalf("no complete checkpoint after SIGUSR1: %v", err)
	}
	if _, err := ckpt.Verify(info.Dir); err != nil {
		t.Fatal(err)
	}
	stopped := int(info.Step)
	out, _ := runMain(t, "-steps", fmt.Sprint(stopped+3), "-run", run, "-resume")
	if !strings.Contains(out, fmt.Sprintf("done: %d steps", stopped+3)) {
		t.Errorf("resume did not run to step %d:\n%s", stopped+3, out)
	}
}

// TestExportFromCheckpoint: `train export -ckpt` gives the same adapter (LoRA) or
// model (full) as the run saved at its end.
func TestExportFromCheckpoint(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	writeStories(t, data, 24, 9)
	for _, tc := range []struct{ method, format, file string }{
		{"lora", "peft", "adapter_model.safetensors"},
		{"full", "hf", "model.safetensors"},
	} {
		run := filepath.Join(dir, tc.method)
		runMain(t, "-model", storiesDir, "-data", data, "-method", tc.method, "-steps", "3", "-batch", "2", "-seq", "64",
			"-lora-rank", "4", "-run", run)
		out := filepath.Join(dir, tc.method+"-export")
		runMain(t, "export", "-ckpt", run, "-format", tc.format, "-out", out)
		want := trainedTensors(t, run, tc.method)
		f, err := safetensors.Open(filepath.Join(out, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		for name, w := range want {
			got, _, err := f.ReadFloat32(name)
			if err != nil {
				t.Fatalf("%s export: %v", tc.method, err)
			}
			if !slices.Equal(got, w) {
				t.Errorf("%s export: %s differs from the run's own output", tc.method, name)
			}
		}
		f.Close()
	}
}
