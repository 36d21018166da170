package trainer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"train/ckpt"
	"train/config"
	"train/host"
	"train/model"
	"train/quant"
)

// TestRunTwoSteps trains random:tiny for two steps through the library, as a
// program embedding the trainer would: no command line, one process.
func TestRunTwoSteps(t *testing.T) {
	cfg := testConfig(t, func(c *config.Config) { c.Train.Steps = 2 })
	res, stdout, stderr := mustRun(t, cfg)
	if res.Steps != 2 || res.Stopped || !(res.First > 0) || !(res.Last > 0) || res.Tokens == 0 {
		t.Errorf("result %+v: want 2 steps, not stopped, positive losses and tokens", res)
	}
	if !strings.Contains(stdout, "done: 2 steps") || !strings.Contains(stdout, "before training:") {
		t.Errorf("stdout lacks the summary or the samples:\n%s", stdout)
	}
	if !strings.Contains(stderr, "random:tiny") {
		t.Errorf("stderr lacks the start line:\n%s", stderr)
	}
	losses := metricValues(t, cfg.RunDir, "loss")
	if len(losses) != 2 || losses[1] != res.First || losses[2] != res.Last {
		t.Errorf("metrics.jsonl losses %v, the result says %v -> %v", losses, res.First, res.Last)
	}
	if _, ok := metricValues(t, cfg.RunDir, "eval_loss")[2]; !ok {
		t.Error("metrics.jsonl has no eval loss after step 2")
	}
	for _, f := range []string{"config.toml", "plan.txt", "model/model.safetensors", "model/config.json", "logs/rank-00000.jsonl"} {
		if _, err := os.Stat(filepath.Join(cfg.RunDir, f)); err != nil {
			t.Errorf("run directory: %v", err)
		}
	}
	if info, err := ckpt.Latest(cfg.RunDir); err != nil || info.Step != 2 {
		t.Errorf("checkpoint at the end: %+v, %v; want step 2", info, err)
	}
}

// cancelOnStep is stderr that cancels the run's context when the first
// step's progress line arrives, as a signal during training would.
type cancelOnStep struct {
	bytes.Buffer
	cancel context.CancelFunc
}

func (w *cancelOnStep) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("step ")) {
		w.cancel()
	}
	return w.Buffer.Write(p)
}

// TestRunStopsWhenCancelled: a context cancelled during training (what SIGINT,
// SIGTERM and SIGUSR1 do in the command) ends the run after its current step
// with a checkpoint and the outputs, and no error; the summary says the final
// evaluation was skipped rather than printing NaN.
func TestRunStopsWhenCancelled(t *testing.T) {
	cfg := testConfig(t, func(c *config.Config) { c.Train.Steps = 1000 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	errOut := &cancelOnStep{cancel: cancel}
	res, err := Run(ctx, cfg, nil, &out, errOut)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	// Step 1's line cancels; step 2 sees it and is the last.
	if !res.Stopped || res.Steps != 2 {
		t.Errorf("result %+v: want stopped after step 2", res)
	}
	if !strings.Contains(out.String(), "stopped by signal after step 2") {
		t.Errorf("stdout lacks the stop message:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "final evaluation skipped (stopped by a signal)") || strings.Contains(out.String(), "NaN") {
		t.Errorf("the summary should say the evaluation was skipped, without NaN:\n%s", out.String())
	}
	if info, err := ckpt.Latest(cfg.RunDir); err != nil || info.Step != 2 {
		t.Errorf("checkpoint after the stop: %+v, %v; want step 2", info, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, "model", "model.safetensors")); err != nil {
		t.Errorf("outputs not written after the stop: %v", err)
	}
}

// TestRunInterruptedDuringStartUp: a signal before the first step ends the
// run at once with an error saying so, with nothing trained or checkpointed:
// here Llama 3.1 8B's 31 GB of random weights are never built.
func TestRunInterruptedDuringStartUp(t *testing.T) {
	cfg := testConfig(t, func(c *config.Config) { c.Model, c.Train.Method, c.Train.Steps = "random:llama-3.1-8b", "lora", 2 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := Run(ctx, cfg, nil, io.Discard, io.Discard)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "interrupted while") || !strings.Contains(err.Error(), "nothing was trained") || !errors.Is(err, context.Canceled) {
		t.Fatalf("want an error saying start-up was interrupted, got %v", err)
	}
	if res.Steps != 0 {
		t.Errorf("%d steps ran", res.Steps)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<30 {
		t.Errorf("the interrupted start-up allocated %d MB: it built the model", grew>>20)
	}
	if _, err := ckpt.Latest(cfg.RunDir); err == nil {
		t.Error("an interrupted start-up wrote a checkpoint")
	}
}

// TestRunErrors: what a run refuses, each with an error naming the cause.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	masked := filepath.Join(dir, "masked.jsonl")
	os.WriteFile(masked, []byte(strings.Repeat("{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, -100]}\n", 4)), 0o644)
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": \"x\"}\n"), 0o644)
	for _, tc := range []struct {
		edit func(c *config.Config)
		want string
	}{
		{func(c *config.Config) { c.Data.Train, c.Data.Eval = masked, masked }, "every label of the step is masked"},
		{func(c *config.Config) { c.Data.Train = bad }, "bad.jsonl:2:"},
		{func(c *config.Config) { c.Data.Train = filepath.Join(dir, "missing.jsonl") }, "missing.jsonl"},
		{func(c *config.Config) { c.Model = "random:nope" }, "random:nope"},
		{func(c *config.Config) { c.Device = "cuda" }, "GPU"},
	} {
		cfg := testConfig(t, func(c *config.Config) { c.Train.Steps = 2; tc.edit(c) })
		if _, _, stderr, err := run(t, cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error containing %q, got %v\n%s", tc.want, err, stderr)
		}
	}
}

// TestRunStopsOnNonFiniteLoss: a model whose loss is NaN at every step gets each
// step skipped with a warning, and the run stops with an error after five in a row.
func TestRunStopsOnNonFiniteLoss(t *testing.T) {
	dir := writeRandomModel(t, filepath.Join(t.TempDir(), "nan-model"), tinyConfig(t), "", func(w *model.Weights) {
		w.FinalNorm[0] = float32(math.NaN())
	})
	cfg := testConfig(t, func(c *config.Config) { c.Model, c.Train.Steps = dir, 20 })
	_, _, stderr, err := run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "5 steps in a row had a non-finite loss") {
		t.Fatalf("want the stop after five non-finite steps, got %v", err)
	}
	if n := strings.Count(stderr, "step skipped"); n != 5 {
		t.Errorf("%d skip warnings, want 5:\n%s", n, stderr)
	}
}

// TestRunRefusesPlanThatDoesNotFit: Llama 3.1 8B cannot be fully fine-tuned in
// this machine's memory; the trainer says so before loading anything.
func TestRunRefusesPlanThatDoesNotFit(t *testing.T) {
	if host.AvailableMemory() <= 0 || host.AvailableMemory() > 150<<30 {
		t.Skip("this host's available memory is unknown or large enough for the 8B model")
	}
	cfg := testConfig(t, func(c *config.Config) { c.Model, c.Train.Method, c.Train.Steps = "random:llama-3.1-8b", "full", 1 })
	if _, _, _, err := run(t, cfg); err == nil || !strings.Contains(err.Error(), "of host memory") || !strings.Contains(err.Error(), "-pp") {
		t.Fatalf("want a refusal naming the memory and what would fit, got %v", err)
	}
}

// TestDeviceOptimizer runs the same fine-tune with the optimizer on the host and
// on the device (the CPU backend's AdamW and SumSquares ops, as a GPU runs
// them; the rank log says which ran). Without clipping the update is the same
// arithmetic, so the losses are bitwise equal; the gradient norms, summed in
// another order, agree within 1e-6 (ops' tests check AdamW's clipping scale). A run
// resumed from the device optimizer's checkpoint continues bitwise, so its
// moments were saved and restored.
func TestDeviceOptimizer(t *testing.T) {
	for _, method := range []string{"lora", "full"} {
		t.Run(method, func(t *testing.T) {
			cfg := storiesConfig(t, method, 12, func(c *config.Config) { c.Ckpt.Every, c.Train.MaxGradNorm = 6, 0 })
			host, dev, resumed := cfg, cfg, cfg
			dir := t.TempDir()
			host.RunDir, dev.RunDir, resumed.RunDir = filepath.Join(dir, "host"), filepath.Join(dir, "dev"), filepath.Join(dir, "resumed")
			resumed.Ckpt.Resume = ckpt.StepDir(dev.RunDir, 6)
			t.Setenv(OptimizerEnv, "host")
			mustRun(t, host)
			t.Setenv(OptimizerEnv, "device")
			mustRun(t, dev)
			mustRun(t, resumed)
			lh, ld, lr := metricValues(t, host.RunDir, "loss"), metricValues(t, dev.RunDir, "loss"), metricValues(t, resumed.RunDir, "loss")
			nh, nd := metricValues(t, host.RunDir, "grad_norm"), metricValues(t, dev.RunDir, "grad_norm")
			for s := 1; s <= 12; s++ {
				if ld[s] != lh[s] || ld[s] == 0 {
					t.Errorf("step %d: loss %v with the device optimizer, %v on the host", s, ld[s], lh[s])
				}
				if rel := math.Abs(nd[s]-nh[s]) / nh[s]; !(rel <= 1e-6) {
					t.Errorf("step %d: gradient norm %v with the device optimizer, %v on the host", s, nd[s], nh[s])
				}
				if s > 6 && lr[s] != ld[s] {
					t.Errorf("step %d: loss %v resumed, %v straight", s, lr[s], ld[s])
				}
			}
			for run, want := range map[string]string{host.RunDir: "host", dev.RunDir: "device", resumed.RunDir: "device"} {
				log, err := os.ReadFile(filepath.Join(run, "logs", "rank-00000.jsonl"))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(log), `"optimizer":"`+want+`"`) {
					t.Errorf("%s: the rank log does not say the optimizer ran on the %s", run, want)
				}
			}
		})
	}
}

// TestResumeBitwise: 20 steps straight, and the same run resumed from its
// checkpoint after step 10 into another directory, give bitwise the same losses
// for steps 11-20 and byte for byte the same trained outputs, for LoRA and
// QLoRA with dropout and for full fine-tuning.
func TestResumeBitwise(t *testing.T) {
	for _, tc := range []struct{ method, output string }{
		{"lora", "adapter/adapter_model.safetensors"},
		{"qlora", "adapter/adapter_model.safetensors"},
		{"full", "model/model.safetensors"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			a := storiesConfig(t, tc.method, 20, func(c *config.Config) { c.LoRA.Dropout, c.Ckpt.Every = 0.1, 10 })
			mustRun(t, a)
			from := ckpt.StepDir(a.RunDir, 10)
			if _, err := ckpt.Verify(from); err != nil {
				t.Fatalf("checkpoint after step 10: %v", err)
			}
			b := a
			b.RunDir, b.Ckpt.Resume = filepath.Join(t.TempDir(), "b"), from
			_, _, stderr := mustRun(t, b)
			if !strings.Contains(stderr, "resumed from") {
				t.Errorf("no resume message:\n%s", stderr)
			}
			la, lb := metricValues(t, a.RunDir, "loss"), metricValues(t, b.RunDir, "loss")
			for s := 11; s <= 20; s++ {
				if la[s] != lb[s] || la[s] == 0 {
					t.Errorf("step %d: loss %v resumed, %v straight", s, lb[s], la[s])
				}
			}
			if _, ok := lb[10]; ok {
				t.Errorf("the resumed run repeated step 10")
			}
			oa, err := os.ReadFile(filepath.Join(a.RunDir, tc.output))
			if err != nil {
				t.Fatal(err)
			}
			ob, err := os.ReadFile(filepath.Join(b.RunDir, tc.output))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(oa, ob) {
				t.Errorf("%s differs between the resumed and the straight run", tc.output)
			}
		})
	}
}

// TestInitAdapter starts a run from a saved peft adapter: with no steps, its
// evaluation equals the evaluation the adapter's own run reported; with other
// hyper-parameters it is refused, naming them.
func TestInitAdapter(t *testing.T) {
	evalData := filepath.Join(t.TempDir(), "eval.jsonl")
	writeStories(t, evalData, 6, 8)
	a := storiesConfig(t, "lora", 8, func(c *config.Config) { c.Data.Eval = evalData })
	mustRun(t, a)
	wantEval := metricValues(t, a.RunDir, "eval_loss")[8]
	b := a
	b.RunDir, b.Train.Steps, b.LoRA.InitAdapter = filepath.Join(t.TempDir(), "b"), 0, filepath.Join(a.RunDir, "adapter")
	mustRun(t, b)
	if got := metricValues(t, b.RunDir, "eval_loss")[0]; got != wantEval {
		t.Errorf("eval loss from the saved adapter %.9g, its run reported %.9g", got, wantEval)
	}
	c := b
	c.RunDir, c.LoRA.Rank = filepath.Join(t.TempDir(), "c"), 8
	if _, _, _, err := run(t, c); err == nil || !strings.Contains(err.Error(), "r=4") {
		t.Errorf("a rank-8 run from a rank-4 adapter: %v", err)
	}
}

// TestCheckpointFailure: when checkpoints cannot be written (here the checkpoint
// directory is a file), training stops with an error saying the previous
// checkpoint is intact, or with ckpt.continue_on_error trains on with a warning.
func TestCheckpointFailure(t *testing.T) {
	// A run directory whose checkpoints/ is a file.
	blocked := func(dir string) string {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "checkpoints"), []byte("not a directory"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	cfg := testConfig(t, func(c *config.Config) { c.Train.Steps, c.Ckpt.Every = 4, 2 })
	blocked(cfg.RunDir)
	_, _, _, err := run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "checkpoint of step 2") || !strings.Contains(err.Error(), "previous complete checkpoint is intact") {
		t.Fatalf("want the checkpoint failure, got %v", err)
	}
	cfg.Ckpt.ContinueOnError = true
	cfg.RunDir = blocked(filepath.Join(t.TempDir(), "run")) // the first run's metrics hold its directory
	res, _, stderr, err := run(t, cfg)
	if err != nil || res.Steps != 4 || !strings.Contains(stderr, "training goes on without this checkpoint") {
		t.Fatalf("continue_on_error: %v, %d steps, stderr %q", err, res.Steps, stderr)
	}
}

// TestResumeCarriesTokensAndSchedule: the running token count of the metrics
// goes on from the checkpoint instead of restarting, and resuming with
// another train.steps says that the learning-rate schedule changes.
func TestResumeCarriesTokensAndSchedule(t *testing.T) {
	a := testConfig(t, func(c *config.Config) { c.Train.Steps, c.Ckpt.Every = 6, 3 })
	mustRun(t, a)
	b := a
	b.RunDir, b.Ckpt.Resume = filepath.Join(t.TempDir(), "b"), ckpt.StepDir(a.RunDir, 3)
	_, _, stderr := mustRun(t, b)
	ta, tb := metricValues(t, a.RunDir, "tokens"), metricValues(t, b.RunDir, "tokens")
	for s := 4; s <= 6; s++ {
		if tb[s] != ta[s] || ta[s] == 0 {
			t.Errorf("step %d: %v tokens so far resumed, %v straight", s, tb[s], ta[s])
		}
	}
	if strings.Contains(stderr, "schedule") {
		t.Errorf("a resume with the same train.steps warned of the schedule:\n%s", stderr)
	}
	c := b
	c.RunDir, c.Train.Steps = filepath.Join(t.TempDir(), "c"), 12
	_, _, stderr = mustRun(t, c)
	if !strings.Contains(stderr, "had train.steps 6 and this one has 12") {
		t.Errorf("resuming with another train.steps said nothing of the schedule:\n%s", stderr)
	}
}

// TestRunChecksInputsFirst: every input that can be checked cheaply is
// checked before anything expensive starts: each mistake below fails with
// its own message before Llama 3.1 8B's 31 GB of random weights are built
// (the allocations say so).
func TestRunChecksInputsFirst(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"input_ids\": \"x\"}\n"), 0o644)
	text := filepath.Join(dir, "text.jsonl")
	os.WriteFile(text, []byte("{\"text\": \"Once upon a time\"}\n"), 0o644)
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, []byte("{\"input_ids\": [1, 2, 3]}\n"), 0o644)
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o644)
	for _, tc := range []struct {
		edit func(c *config.Config)
		want string
	}{
		{func(c *config.Config) { c.Tokenizer = dir }, "tokenizer.json"},
		{func(c *config.Config) { c.Data.Train = filepath.Join(dir, "missing.jsonl") }, "missing.jsonl"},
		{func(c *config.Config) { c.Data.Train = bad }, "bad.jsonl:1:"},
		{func(c *config.Config) { c.Data.Train, c.Data.Eval = good, bad }, "data.eval: " + bad + ":1:"},
		{func(c *config.Config) { c.Data.Train = text }, "needs a tokenizer"},
		{func(c *config.Config) { c.RunDir = filepath.Join(notDir, "run") }, "run dir"},
		{func(c *config.Config) { c.Ckpt.Resume = filepath.Join(dir, "no-checkpoint") }, "ckpt.resume"},
	} {
		cfg := testConfig(t, func(c *config.Config) {
			c.Model, c.Train.Method, c.Train.Steps = "random:llama-3.1-8b", "lora", 2
			tc.edit(c)
		})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, _, stderr, err := run(t, cfg)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error containing %q, got %v\n%s", tc.want, err, stderr)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<30 {
			t.Errorf("%q: %d MB allocated before the error: the model was built first", tc.want, grew>>20)
		}
	}
}

// TestRunTokenizerDirectory: -tokenizer takes a directory holding
// tokenizer.json, as train export does.
func TestRunTokenizerDirectory(t *testing.T) {
	cfg := storiesConfig(t, "lora", 2, func(c *config.Config) { c.Tokenizer = storiesDir })
	if res, _, _ := mustRun(t, cfg); res.Steps != 2 {
		t.Errorf("%d steps, want 2", res.Steps)
	}
}

// TestRunRefusesSeqPastContext: a sequence length beyond the model's
// max_position_embeddings (stories260K: 512) is refused, naming the limit and
// the override; with data.allow_long_seq it trains, with a warning.
func TestRunRefusesSeqPastContext(t *testing.T) {
	cfg := storiesConfig(t, "lora", 1, func(c *config.Config) { c.Data.SeqLen, c.Train.MicroBatch = 1024, 1 })
	_, _, _, err := run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "max_position_embeddings") || !strings.Contains(err.Error(), "-allow-long-seq") || !strings.Contains(err.Error(), "512") {
		t.Fatalf("want a refusal naming max_position_embeddings 512 and -allow-long-seq, got %v", err)
	}
	cfg.Data.AllowLongSeq = true
	_, _, stderr := mustRun(t, cfg)
	if !strings.Contains(stderr, "past the model's max_position_embeddings 512") {
		t.Errorf("no warning with data.allow_long_seq:\n%s", stderr)
	}
}

// TestRunRefusesMismatchedTensors: a config.json whose tensors are not those
// of the weights beside it (here stories260K's weights under a valid but huge
// config: hidden 131072, 1024 layers) fails before planning, naming the
// tensor, where it used to spend ten minutes planning first.
func TestRunRefusesMismatchedTensors(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	weights, err := os.ReadFile(filepath.Join(storiesDir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "model.safetensors"), weights, 0o644)
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
		"hidden_size": 131072, "intermediate_size": 458752, "num_hidden_layers": 1024, "num_attention_heads": 1024,
		"num_key_value_heads": 128, "vocab_size": 512, "max_position_embeddings": 8192, "tie_word_embeddings": true}`), 0o644)
	cfg := testConfig(t, func(c *config.Config) { c.Model, c.Train.Method, c.Train.Steps = dir, "lora", 1 })
	_, _, _, err = run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "model.embed_tokens.weight has shape [512 64], but config.json implies [512 131072]") ||
		!strings.Contains(err.Error(), "train check") {
		t.Fatalf("want an error naming the mis-shaped tensor, got %v", err)
	}
}

// TestRunCountsTruncation: examples longer than data.seq_len are counted in
// the start-up line, the rank log (at start and in every step) and the
// summary.
func TestRunCountsTruncation(t *testing.T) {
	cfg := storiesConfig(t, "lora", 3, func(c *config.Config) { c.Data.SeqLen = 16 })
	res, stdout, stderr := mustRun(t, cfg)
	if !strings.Contains(stderr, "longer than data.seq_len 16, cut to it; the longest has") {
		t.Errorf("the start-up line does not count the long examples:\n%s", stderr)
	}
	if res.Truncated == 0 || !strings.Contains(stdout, fmt.Sprintf("; %d examples drawn were cut to data.seq_len 16", res.Truncated)) {
		t.Errorf("the summary does not count the %d cut examples:\n%s", res.Truncated, stdout)
	}
	log, err := os.ReadFile(filepath.Join(cfg.RunDir, "logs", "rank-00000.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `"long_examples":`) || strings.Contains(string(log), `"long_examples":0`) ||
		!strings.Contains(string(log), fmt.Sprintf(`"truncated_examples":%d`, res.Truncated)) {
		t.Errorf("the rank log does not count the long and cut examples:\n%s", log)
	}
}

// TestRunNamesTruncationWhenAllCut: prompt/completion data whose prompts are
// longer than data.seq_len leaves a step (or the evaluation) nothing to
// score; the error says that truncation cut the completions off, not that
// the labels are masked.
func TestRunNamesTruncationWhenAllCut(t *testing.T) {
	requireStories(t)
	path := filepath.Join(t.TempDir(), "pc.jsonl")
	var lines []string
	for i := 0; i < 8; i++ {
		lines = append(lines, fmt.Sprintf(`{"prompt": "%s", "completion": " The end %d."}`, strings.Repeat("Once upon a time there was a girl. ", 8), i))
	}
	os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	cfg := storiesConfig(t, "lora", 2, func(c *config.Config) { c.Data.Train = path })
	_, _, _, err := run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "was cut off") || !strings.Contains(err.Error(), "data.seq_len 64") || !strings.Contains(err.Error(), "raise -seq") {
		t.Fatalf("want an error naming truncation, got %v", err)
	}
	// The same data as the evaluation set: training runs, the evaluation says why it has nothing to score.
	cfg = storiesConfig(t, "lora", 2, func(c *config.Config) { c.Data.Eval = path })
	_, _, _, err = run(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "every scored label lies past data.seq_len 64 and was cut off") {
		t.Fatalf("want the evaluation to name truncation, got %v", err)
	}
}

// TestRunSummaryMeans: the summary compares the mean loss of the first and
// the last steps (up to ten, at most half the run), not two single steps.
func TestRunSummaryMeans(t *testing.T) {
	cfg := testConfig(t, func(c *config.Config) { c.Train.Steps = 8 })
	res, stdout, _ := mustRun(t, cfg)
	losses := metricValues(t, cfg.RunDir, "loss")
	first := (losses[1] + losses[2] + losses[3] + losses[4]) / 4
	last := (losses[5] + losses[6] + losses[7] + losses[8]) / 4
	if res.MeanSteps != 4 || math.Abs(res.FirstMean-first) > 1e-12 || math.Abs(res.LastMean-last) > 1e-12 {
		t.Errorf("means %v -> %v over %d steps; the metrics give %v -> %v over 4", res.FirstMean, res.LastMean, res.MeanSteps, first, last)
	}
	if want := fmt.Sprintf("train loss %.4f -> %.4f (means of the first and last 4 steps)", first, last); !strings.Contains(stdout, want) {
		t.Errorf("summary lacks %q:\n%s", want, stdout)
	}
}

// TestQLoRALearnsLikeLoRA: a QLoRA fine-tune of stories260K (its projections
// in 4-bit NF4, quantized at load) learns like the LoRA one: its final loss
// (the mean of the last 5 steps) is within 5% of LoRA's and below its first
// step's. The rank log names the 4-bit weights.
func TestQLoRALearnsLikeLoRA(t *testing.T) {
	const steps = 30
	lora := storiesConfig(t, "lora", steps, nil)
	qlora := storiesConfig(t, "qlora", steps, func(c *config.Config) { c.Ckpt.Every = steps })
	mustRun(t, lora)
	_, _, stderr := mustRun(t, qlora)
	final := func(l map[int]float64) float64 {
		var s float64
		for i := steps - 4; i <= steps; i++ {
			s += l[i]
		}
		return s / 5
	}
	ll, lq := metricValues(t, lora.RunDir, "loss"), metricValues(t, qlora.RunDir, "loss")
	fl, fq := final(ll), final(lq)
	if !(math.Abs(fq-fl) <= 0.05*fl) || !(fq < lq[1]) {
		t.Errorf("final loss %.4f with QLoRA (first step %.4f), %.4f with LoRA: want within 5%% of it and learning", fq, lq[1], fl)
	}
	if !strings.Contains(stderr, "4-bit NF4") {
		t.Errorf("the run does not say its base weights are 4-bit:\n%s", stderr)
	}
	// What export merges the adapter into: the base as the run computed with
	// it, the NF4 round trip of each projection.
	w, l, _, err := LoadCheckpointModel(qlora.RunDir, "")
	if err != nil || l == nil {
		t.Fatalf("checkpoint model: %v (adapter %v)", err, l != nil)
	}
	base, err := model.LoadSource(storiesDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	q, err := quant.Quantize("q", base.Layers[3].Down, nil, quant.Options{DoubleQuant: true})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, q.Len())
	if err := q.Dequantize(want); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.Layers[3].Down, want) || slices.Equal(want, base.Layers[3].Down) {
		t.Errorf("the checkpoint's base is not the NF4 round trip of the model's")
	}
}

// TestOffloadActivationsRun: a run with its layer inputs offloaded to host
// memory gives bitwise the losses of the same run with them on the device;
// the config refuses offload without checkpointing.
func TestOffloadActivationsRun(t *testing.T) {
	a := storiesConfig(t, "qlora", 4, func(c *config.Config) { c.Train.ActivationCheckpointing = true })
	b := storiesConfig(t, "qlora", 4, func(c *config.Config) {
		c.Train.ActivationCheckpointing, c.Train.OffloadActivations = true, true
	})
	mustRun(t, a)
	_, _, stderr := mustRun(t, b)
	la, lb := metricValues(t, a.RunDir, "loss"), metricValues(t, b.RunDir, "loss")
	for s := 1; s <= 4; s++ {
		if la[s] != lb[s] || la[s] == 0 {
			t.Errorf("step %d: loss %v offloaded, %v not", s, lb[s], la[s])
		}
	}
	if !strings.Contains(stderr, "offloaded layer inputs") {
		t.Errorf("the memory report does not show the offloaded inputs:\n%s", stderr)
	}
	c := config.Default()
	c.Train.OffloadActivations = true
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "train.offload_activations") {
		t.Errorf("offload without checkpointing: %v", err)
	}
}

// TestRunWithoutEvalData: with no held-out split and no eval data the run
// trains, evaluates nowhere (not even with eval_every), says so, and still
// writes its outputs.
func TestRunWithoutEvalData(t *testing.T) {
	cfg := storiesConfig(t, "lora", 4, func(c *config.Config) { c.Data.EvalFraction, c.Train.EvalEvery = 0, 2 })
	res, stdout, _ := mustRun(t, cfg)
	if res.Steps != 4 {
		t.Errorf("%d steps, want 4", res.Steps)
	}
	if !strings.Contains(stdout, "no evaluation (no eval examples") {
		t.Errorf("stdout does not say there was no evaluation:\n%s", stdout)
	}
	if got := metricValues(t, cfg.RunDir, "eval_loss"); len(got) != 0 {
		t.Errorf("eval_loss metrics %v without eval data", got)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, "adapter", "adapter_model.safetensors")); err != nil {
		t.Errorf("no adapter written: %v", err)
	}
}
