package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"train/internal/fixture"
)

func requireStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(storiesDir, "model.safetensors")); err != nil {
		t.Skipf("stories260K is not at %s (%v): these tests run in a checkout beside ../shared", storiesDir, err)
	}
}

// fixedEnding is the sentence every training story ends with.
const fixedEnding = fixture.StoryEnding

// writeStories writes n short stories that all end with fixedEnding, as {"text"} lines.
func writeStories(t *testing.T, path string, n int, seed uint64) {
	t.Helper()
	if err := fixture.WriteStories(path, n, seed); err != nil {
		t.Fatal(err)
	}
}

// readMetrics returns metrics.jsonl's lines.
func readMetrics(t *testing.T, runDir string) []map[string]float64 {
	t.Helper()
	f, err := os.Open(filepath.Join(runDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]float64
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("metrics.jsonl line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func runMain(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, code := runProgram(t, args...)
	if code != 0 {
		t.Fatalf("train %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout, stderr
}

// runProgram runs `train args...` and returns its output and exit status. Under
// -race it runs a non-race build as a child process: these tests check numbers,
// which the race detector only slows several times over, while the in-process
// runs (TestTrainDefaultShortRun, TestTrainStopsOnNonFiniteLoss, TestTrainErrors)
// keep the trainer's own code under the race detector.
func runProgram(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	if !raceEnabled {
		code = mainExit(args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	bin, err := rankBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running train: %v", err)
	}
	return out.String(), errOut.String(), code
}

// TestFineTuneStories fine-tunes the real stories260K model with LoRA and with
// full fine-tuning on stories that share an ending: the loss falls well below its
// start, every step is in metrics.jsonl, and `train eval` of the saved adapter or
// model gives exactly the eval loss the trainer reported.
func TestFineTuneStories(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	trainPath, evalPath := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "eval.jsonl")
	writeStories(t, trainPath, 64, 1)
	writeStories(t, evalPath, 8, 2)
	steps := 30
	for _, method := range []string{"lora", "full"} {
		t.Run(method, func(t *testing.T) {
			run := filepath.Join(dir, "run-"+method)
			lr := "1e-2"
			if method == "full" {
				lr = "3e-3"
			}
			stdout, _ := runMain(t, "-model", storiesDir, "-data", trainPath, "-eval-data", evalPath, "-method", method,
				"-steps", fmt.Sprint(steps), "-lr", lr, "-warmup", "2", "-batch", "2", "-seq", "64", "-lora-rank", "8",
				"-lora-alpha", "16", "-run", run, "-log-every", "5")
			metrics := readMetrics(t, run)
			var losses []float64
			evalLoss := math.NaN()
			for _, m := range metrics {
				if l, ok := m["loss"]; ok {
					losses = append(losses, l)
				}
				if l, ok := m["eval_loss"]; ok {
					evalLoss = l
				}
			}
			if len(losses) != steps {
				t.Fatalf("metrics.jsonl has %d step lines, want %d", len(losses), steps)
			}
			if losses[len(losses)-1] > 0.6*losses[0] {
				t.Errorf("loss %.4f -> %.4f: did not fall well below its start", losses[0], losses[len(losses)-1])
			}
			var evalArgs []string
			if method == "lora" {
				evalArgs = []string{"eval", "-model", storiesDir, "-adapter", filepath.Join(run, "adapter"), "-data", evalPath}
			} else {
				evalArgs = []string{"eval", "-model", filepath.Join(run, "model"), "-data", evalPath}
			}
			out, _ := runMain(t, evalArgs...)
			var res struct{ Loss float64 }
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("eval output %q: %v", out, err)
			}
			if math.Abs(res.Loss-evalLoss) > 1e-6*evalLoss {
				t.Errorf("train eval of the saved %s gives %.9g, the trainer reported %.9g", method, res.Loss, evalLoss)
			}
			// The fine-tuned model ends a new story with the sentence it was taught.
			genArgs := []string{"generate", "-model", storiesDir, "-adapter", filepath.Join(run, "adapter")}
			if method == "full" {
				genArgs = []string{"generate", "-model", filepath.Join(run, "model")}
			}
			gen, _ := runMain(t, append(genArgs, "-prompt", "Ben had a toy car. Ben went to the beach and played all day.", "-max-tokens", "24")...)
			if !strings.Contains(gen, fixedEnding) {
				t.Errorf("after %s fine-tuning the story goes on %q, without %q", method, gen, fixedEnding)
			}
			if !strings.Contains(stdout, "done: ") {
				t.Errorf("no summary in stdout:\n%s", stdout)
			}
			t.Logf("%s: loss %.4f -> %.4f, eval %.4f", method, losses[0], losses[len(losses)-1], evalLoss)
		})
	}
}

// TestTrainDefaultShortRun runs the embedded default for a few steps: it starts
// with no files at all, shows samples, and writes its run directory.
func TestTrainDefaultShortRun(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	stdout, stderr := runMain(t, "-steps", "4", "-run", run)
	for _, want := range []string{"before training:", "after training:", "done: 4 steps"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "random:tiny") {
		t.Errorf("stderr lacks the start line:\n%s", stderr)
	}
	for _, f := range []string{"config.toml", "metrics.jsonl", "model/model.safetensors", "model/config.json"} {
		if _, err := os.Stat(filepath.Join(run, f)); err != nil {
			t.Errorf("run directory: %v", err)
		}
	}
	if n := len(readMetrics(t, run)); n != 5 { // 4 steps and the final eval
		t.Errorf("metrics.jsonl has %d lines, want 5", n)
	}
}

// TestTrainErrors: the command refuses a configuration it cannot run with an
// error naming the setting and a non-zero exit (the trainer's own refusals are
// tested in trainer/).
func TestTrainErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-lr", "-1"}, "train.lr"},
		{[]string{"-model", "random:nope"}, "random:nope"},
	} {
		var out, errOut bytes.Buffer
		args := append(tc.args, "-steps", "2", "-run", filepath.Join(dir, "run"))
		if code := mainExit(args, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("train %v: exit %d, stderr %q; want an error containing %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}

// signalAfterFirstStep runs `train args...` as a child process (a non-race build
// under -race), sends it sig once it has logged a step, and returns its stdout
// after it exits; a non-zero exit fails the test.
func signalAfterFirstStep(t *testing.T, sig os.Signal, args ...string) string {
	t.Helper()
	bin, err := rankBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	if bin == os.Args[0] {
		cmd = exec.Command(bin)
		cmd.Env = append(os.Environ(), "TRAIN_TEST_CHILD=1", "TRAIN_TEST_ARGS="+strings.Join(args, " "))
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	signalled := false
	for sc.Scan() {
		if !signalled && strings.HasPrefix(sc.Text(), "step ") {
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			signalled = true
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after %v the trainer exited with %v; stdout:\n%s", sig, err, stdout.String())
	}
	if !signalled {
		t.Fatal("the trainer never logged a step")
	}
	return stdout.String()
}

// TestTrainStopsOnSignal interrupts a training process once it has logged a step
// and expects a clean stop: exit 0, outputs written, and the summary saying where
// it stopped.
func TestTrainStopsOnSignal(t *testing.T) {
	run := filepath.Join(t.TempDir(), "run")
	stdout := signalAfterFirstStep(t, os.Interrupt, "-steps", "100000", "-log-every", "1", "-run", run)
	if !strings.Contains(stdout, "stopped by signal after step") {
		t.Errorf("no stop message in stdout:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(run, "model", "model.safetensors")); err != nil {
		t.Errorf("outputs not written after the stop: %v", err)
	}
}
