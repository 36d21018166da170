package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"train/format/safetensors"
	"train/internal/testcheck"
	"train/model"
)

// TestMain lets a test start copies of this binary as training ranks: with
// TRAIN_TEST_CHILD=1 it runs the program on TRAIN_TEST_ARGS instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("TRAIN_TEST_CHILD") == "1" {
		os.Exit(mainExit(strings.Fields(os.Getenv("TRAIN_TEST_ARGS")), os.Stdout, os.Stderr))
	}
	os.Exit(runTests(m))
}

// runTests runs the tests with TRAIN_SECRET_FILE in a temporary folder, which
// the rank processes inherit: jobs without a token make their per-user secret
// there, not in the home of whoever runs the tests.
func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "train-test-secret-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Setenv("TRAIN_SECRET_FILE", filepath.Join(dir, "job-secret"))
	return m.Run()
}

// rankBinary is the program the multi-process tests start as ranks: train built
// without the race detector when the tests run under it (ranks are separate
// processes, so -race would only slow their arithmetic several times over; the
// collectives' own tests cover races), else this test binary itself.
var rankBinary = sync.OnceValues(func() (string, error) {
	if !raceEnabled {
		return os.Args[0], nil
	}
	dir, err := os.MkdirTemp("", "train-ranks-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "train")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// launchRanks runs np ranks of `train args...`: under a real mpirun when there is
// one (CI installs Open MPI), otherwise as np processes bootstrapped through
// RANK/WORLD_SIZE/MASTER_ADDR, and fails the test if any rank fails.
func launchRanks(t *testing.T, np int, args []string) {
	t.Helper()
	bin, err := rankBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// This test binary takes the program's arguments through the environment
	// (see TestMain); a built train takes them on its command line.
	env := append(os.Environ(), "TRAIN_TEST_CHILD=1", "TRAIN_TEST_ARGS="+strings.Join(args, " "))
	var binArgs []string
	if bin != os.Args[0] {
		binArgs = args
	}
	if mpirun, err := exec.LookPath("mpirun"); err == nil && np > 1 {
		cmd := exec.CommandContext(ctx, mpirun, append([]string{"--oversubscribe", "-np", fmt.Sprint(np),
			"-x", "TRAIN_TEST_CHILD", "-x", "TRAIN_TEST_ARGS", bin}, binArgs...)...)
		cmd.Env = append(env, "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mpirun -np %d train %s: %v\n%s", np, strings.Join(args, " "), err, out)
		}
		return
	}
	port := freePort(t)
	var wg sync.WaitGroup
	errs := make([]error, np)
	outs := make([][]byte, np)
	for r := 0; r < np; r++ {
		cmd := exec.CommandContext(ctx, bin, binArgs...)
		// A fresh slice per rank: appending to env itself would let the ranks share
		// (and overwrite) its spare capacity, giving every rank the last RANK.
		cmd.Env = append(slices.Clip(env), fmt.Sprintf("RANK=%d", r), fmt.Sprintf("WORLD_SIZE=%d", np),
			"MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port), "TRAIN_JOB_ID=test-"+t.Name())
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			outs[r], errs[r] = cmd.CombinedOutput()
		}(r)
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d of train %s: %v\n%s", r, strings.Join(args, " "), err, outs[r])
		}
	}
}

func freePort(t *testing.T) int { return testcheck.FreePort(t) }

// runLosses reads the per-step training losses and the final eval loss of a run.
func runLosses(t *testing.T, run string) (losses []float64, eval float64) {
	t.Helper()
	for _, m := range readMetrics(t, run) {
		if l, ok := m["loss"]; ok {
			losses = append(losses, l)
		}
		if l, ok := m["eval_loss"]; ok {
			eval = l
		}
	}
	return losses, eval
}

// trainedTensors reads what a run saved: the adapter (LoRA) or the model (full).
func trainedTensors(t *testing.T, run, method string) map[string][]float32 {
	t.Helper()
	path := filepath.Join(run, "model", "model.safetensors")
	if method != "full" {
		path = filepath.Join(run, "adapter", "adapter_model.safetensors")
	}
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]float32{}
	for _, ti := range f.Tensors() {
		v, _, err := f.ReadFloat32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[ti.Name] = v
	}
	return out
}

// TestParallelEquivalence trains stories260K (5 layers, tied embeddings) for 20
// steps on one process and on every parallel layout, under mpirun: data-parallel
// (D=2, D=4), pipeline (P=2, P=5), both (P=2 x D=2), ZeRO-1 and interleaved 1F1B
// (P=2 V=2, with replicas and ZeRO-1, and P=4 V=2 on an 8-layer model), and the
// device optimizer on CPU ranks (D=2, P=2 x D=2 with ZeRO-1, P=2 V=2 x D=2), for LoRA and full
// fine-tuning, and QLoRA on P=2 x D=2 with ZeRO-1. The global batch is the same in each (grad_accum x D = 4), so every
// per-step loss, the final eval loss and every trained tensor must match the
// single process within 1e-5 relative.
func TestParallelEquivalence(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	evalData := filepath.Join(dir, "eval.jsonl")
	writeStories(t, data, 64, 3)
	writeStories(t, evalData, 6, 4)
	layouts := []struct {
		name  string
		np    int
		flags string
		full  bool // also run for full fine-tuning
	}{
		{"D2", 2, "-grad-accum 2", true},
		{"D4", 4, "-grad-accum 1", false},
		{"P2", 2, "-pp 2 -grad-accum 4", false},
		{"P5", 5, "-pp 5 -grad-accum 4", true},
		{"P2xD2", 4, "-pp 2 -grad-accum 2", false},
		{"D2-zero1", 2, "-grad-accum 2 -zero1", false},
		{"P2xD2-zero1", 4, "-pp 2 -grad-accum 2 -zero1", true},
		{"P2-keep", 2, "-pp 2 -grad-accum 4 -keep-activations", false},
		{"P5-keep", 5, "-pp 5 -grad-accum 4 -keep-activations", true},
		// Interleaved 1F1B: two layer ranges per stage, the micro-batches
		// travelling the ring twice. P=4 needs 8 layers: the layouts marked
		// "-L8" run a random 8-layer model of stories260K's shape.
		{"P2V2", 2, "-pp 2 -pp-chunks 2 -grad-accum 4", true},
		{"P2V2xD2-zero1", 4, "-pp 2 -pp-chunks 2 -grad-accum 2 -zero1", false},
		{"P2V2-keep", 2, "-pp 2 -pp-chunks 2 -grad-accum 4 -keep-activations", false},
		{"P4V2-L8", 4, "-pp 4 -pp-chunks 2 -grad-accum 4", false},
		// The device optimizer (the GPU's default) on CPU ranks, its
		// tensors moved by hostComm: replicas, ZeRO-1, stages with a tied
		// embedding, chunks.
		{"D2-dev", 2, "-grad-accum 2", true},
		{"P2xD2-zero1-dev", 4, "-pp 2 -grad-accum 2 -zero1", true},
		{"P2V2xD2-dev", 4, "-pp 2 -pp-chunks 2 -grad-accum 2", false},
	}
	cfg8, err := model.SourceConfig(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg8.NumLayers = 8
	model8 := writeRandomModel(t, filepath.Join(dir, "model8"), cfg8, nil)
	for _, method := range []string{"lora", "full", "qlora"} {
		t.Run(method, func(t *testing.T) {
			commonFor := func(modelDir string) string {
				return fmt.Sprintf("-model %s -tokenizer %s -data %s -eval-data %s -method %s -steps 20 -lr 5e-3 -warmup 2 -batch 1 -seq 64 -lora-rank 4 -log-every 100 -timeout 120",
					modelDir, storiesDir, data, evalData, method)
			}
			type baseline struct {
				loss    []float64
				eval    float64
				tensors map[string][]float32
			}
			baselines := map[string]*baseline{}
			baselineOf := func(t *testing.T, modelDir string) *baseline {
				if b := baselines[modelDir]; b != nil {
					return b
				}
				base := filepath.Join(dir, fmt.Sprintf("%s-base-%d", method, len(baselines)))
				launchRanks(t, 1, strings.Fields(commonFor(modelDir)+" -grad-accum 4 -run "+base))
				b := &baseline{tensors: trainedTensors(t, base, method)}
				b.loss, b.eval = runLosses(t, base)
				if len(b.loss) != 20 {
					t.Fatalf("the single process logged %d steps, want 20", len(b.loss))
				}
				baselines[modelDir] = b
				return b
			}
			for _, l := range layouts {
				if method == "full" && !l.full {
					continue
				}
				if method == "qlora" && l.name != "P2xD2-zero1" {
					continue // each stage quantizes its own layers: one layout with stages and replicas shows it
				}
				t.Run(l.name, func(t *testing.T) {
					modelDir := storiesDir
					if strings.HasSuffix(l.name, "-L8") {
						modelDir = model8
					}
					want := baselineOf(t, modelDir)
					wantLoss, wantEval, wantTensors := want.loss, want.eval, want.tensors
					common := commonFor(modelDir)
					run := filepath.Join(dir, method+"-"+l.name)
					onDevice := strings.HasSuffix(l.name, "-dev")
					if onDevice {
						t.Setenv("TRAIN_OPTIMIZER", "device")
					}
					launchRanks(t, l.np, strings.Fields(common+" "+l.flags+" -run "+run))
					for r := range l.np {
						if place := rankStart(t, run, r)["optimizer"]; (place == "device") != onDevice {
							t.Errorf("rank %d: the optimizer ran on the %v", r, place)
						}
					}
					gotLoss, gotEval := runLosses(t, run)
					if strings.Contains(l.name, "P") { // stage 0 recomputes unless it keeps activations
						recomputed := 0.0
						for _, m := range readRankSteps(t, run, 0) {
							recomputed += m["recomputed_forwards"]
						}
						if keep := strings.HasSuffix(l.name, "-keep"); keep != (recomputed == 0) {
							t.Errorf("stage 0 recomputed %v forwards (keeping activations: %v)", recomputed, keep)
						}
					}
					if len(gotLoss) != len(wantLoss) {
						t.Fatalf("%d steps logged, want %d", len(gotLoss), len(wantLoss))
					}
					for i := range wantLoss {
						if rel := math.Abs(gotLoss[i]-wantLoss[i]) / wantLoss[i]; rel > 1e-5 {
							t.Errorf("step %d: loss %.9g, single process %.9g (relative %.2g)", i+1, gotLoss[i], wantLoss[i], rel)
						}
					}
					if rel := math.Abs(gotEval-wantEval) / wantEval; rel > 1e-5 {
						t.Errorf("eval loss %.9g, single process %.9g", gotEval, wantEval)
					}
					got := trainedTensors(t, run, method)
					if len(got) != len(wantTensors) {
						t.Fatalf("%d tensors saved, single process %d", len(got), len(wantTensors))
					}
					for name, want := range wantTensors {
						want64 := make([]float64, len(want))
						for i, v := range want {
							want64[i] = float64(v)
						}
						// QLoRA's adapters sit on the NF4 round trip of the base; the same
						// summation-order noise (step 1 is bitwise equal: each stage
						// quantizes its layers as one process does) grows a little
						// more in some of them over 20 Adam steps.
						tol := 1e-5
						if method == "qlora" {
							tol = 1e-4
						}
						if rel := relL2(got[name], want64); rel > tol {
							t.Errorf("%s: relative L2 difference %.2g from the single process", name, rel)
						}
					}
				})
			}
		})
	}
}

// relL2 is ‖got − want‖ / ‖want‖ (‖got − want‖ when want is zero).
func relL2(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// TestPipelineBF16 trains stories260K in bf16 (the CPU's emulation) as one
// process and as two pipeline stages: activations and their gradients cross the
// stage boundary as 2-byte bfloat16 patterns, which loses nothing (they come
// from bf16 buffers), so the losses and the eval loss agree as in float32,
// while the stages send fewer bytes than the same run in float32.
func TestPipelineBF16(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	writeStories(t, data, 32, 3)
	common := fmt.Sprintf("-model %s -data %s -method lora -steps 6 -lr 5e-3 -batch 1 -seq 64 -lora-rank 4 -log-every 100 -timeout 120 -grad-accum 4",
		storiesDir, data)
	one := filepath.Join(dir, "one")
	launchRanks(t, 1, strings.Fields(common+" -precision bf16 -run "+one))
	bytesSent := map[string]float64{}
	for _, prec := range []string{"bf16", "fp32"} {
		run := filepath.Join(dir, "pp2-"+prec)
		launchRanks(t, 2, strings.Fields(common+" -pp 2 -precision "+prec+" -run "+run))
		for _, m := range readRankSteps(t, run, 0) {
			bytesSent[prec] += m["bytes_sent"]
		}
		if prec != "bf16" {
			continue
		}
		want, wantEval := runLosses(t, one)
		got, gotEval := runLosses(t, run)
		if len(got) != len(want) || len(got) != 6 {
			t.Fatalf("%d steps in the pipeline, %d in one process, want 6", len(got), len(want))
		}
		for i := range want {
			if rel := math.Abs(got[i]-want[i]) / want[i]; !(rel <= 1e-5) {
				t.Errorf("step %d: loss %.9g with 2 stages, %.9g in one process", i+1, got[i], want[i])
			}
		}
		if rel := math.Abs(gotEval-wantEval) / wantEval; !(rel <= 1e-5) {
			t.Errorf("eval loss %.9g with 2 stages, %.9g in one process", gotEval, wantEval)
		}
	}
	t.Logf("stage 0 sent %.0f bytes in bf16, %.0f in fp32", bytesSent["bf16"], bytesSent["fp32"])
	if !(bytesSent["bf16"] > 0 && bytesSent["bf16"] < 0.75*bytesSent["fp32"]) {
		t.Errorf("stage 0 sent %.0f bytes in bf16 and %.0f in fp32; want bf16 well under fp32", bytesSent["bf16"], bytesSent["fp32"])
	}
}

// readRankSteps returns the step records of one rank's log.
func readRankSteps(t *testing.T, run string, rank int) []map[string]float64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(run, "logs", fmt.Sprintf("rank-%05d.jsonl", rank)))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]float64
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%s: %v", run, err)
		}
		if rec["msg"] != "step" {
			continue
		}
		m := map[string]float64{}
		for k, v := range rec {
			if f, ok := v.(float64); ok {
				m[k] = f
			}
		}
		out = append(out, m)
	}
	return out
}

// rankStart is the start record of rank's log in run.
func rankStart(t *testing.T, run string, rank int) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(run, "logs", fmt.Sprintf("rank-%05d.jsonl", rank)))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%s: %v", run, err)
		}
		if rec["msg"] == "start" {
			return rec
		}
	}
	t.Fatalf("%s: rank %d logged no start", run, rank)
	return nil
}
