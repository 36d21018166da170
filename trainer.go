package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"train/collective"
	"train/config"
	"train/data"
	"train/device"
	"train/format/peft"
	"train/format/safetensors"
	"train/host"
	"train/kernels"
	"train/model"
	"train/ops"
	"train/optim"
	"train/shard"
	"train/tokenizer"
)

// maxBadSteps is how many steps in a row may have a non-finite loss or gradient
// (each skipped with a warning) before the run stops with an error.
const maxBadSteps = 5

// trainer is one process's training run on one rank: the model on its backend,
// host copies of the trainable tensors for the optimizer, and the data order.
type trainer struct {
	ctx  context.Context // cancelled by SIGINT/SIGTERM: stop after the step
	cfg  config.Config
	tok  *tokenizer.Tokenizer // nil for the generated task
	be   ops.Backend
	m    *model.Model
	dist *dist       // this rank's place in the run
	flat *flatParams // the trainable tensors on the host, for reduction and the optimizer
	// overlap reduces each layer's gradients while backward goes on below it
	// (data parallel without ZeRO-1); pending are those reductions in flight.
	overlap       bool
	pending       []collective.Handle
	bucketTraffic stepTimes // bytes of the buckets in flight, added to the step's when they end
	// startStep is the step a resumed run continues after (0: a fresh start).
	startStep int
	// warnedMemory is set once the rank has warned that it nears the memory limit.
	warnedMemory bool
	// stepSleep is a deliberate delay per step (TRAIN_DEBUG_STEP_SLEEP), for tests.
	stepSleep time.Duration
	// dopt, when not nil, runs the optimizer on the device (see deviceOptimizer).
	dopt *deviceOptimizer
	// nccl, when not nil, sums the replicas' gradients on their GPUs (with dopt).
	nccl *kernels.NCCL
	// util averages the GPU's utilisation over each step; nil without NVML.
	util *utilSampler
	// gpuPeak is the most GPU memory in use seen at a step's end (0 on the CPU).
	gpuPeak int64
	opt     optim.AdamW
	sched   optim.Schedule

	train, eval []data.TokenExample
	order       []int // shuffled indices into train; refilled each epoch
	cursor      int
	epoch       int
	rng         *rand.Rand
	pcg         *rand.PCG // rng's source, saved in checkpoints
	packer      data.Packer

	out     io.Writer // human progress lines
	metrics *os.File  // metrics.jsonl
	log     *rankLog  // RUN/logs/rank-NNNNN.jsonl
}

// trainRun runs a training job as cfg describes and prints a summary. SIGINT,
// SIGTERM or SIGUSR1 (Slurm's --signal=USR1@120 before a time limit or
// preemption) stops it after the current step with a checkpoint and exit status
// 0; a second signal ends the process at once.
func trainRun(cfg config.Config, launch *collective.Flags, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGUSR1)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore the default action: a second signal ends the process
	}()
	return trainWithContext(ctx, cfg, launch, stdout, stderr)
}

func trainWithContext(ctx context.Context, cfg config.Config, launch *collective.Flags, stdout, stderr io.Writer) (err error) {
	// Fail on a missing device before connecting to anyone.
	be, err := device.Open(cfg.Device, 0)
	if err != nil {
		return err
	}
	compute, err := device.ComputeType(cfg.Precision, be)
	if err != nil {
		device.Close(be)
		return err
	}
	var gpuBytes int64 // the memory the plan's stages must fit; 0: no limit (CPU)
	if g, ok := be.(device.GPU); ok {
		if in, err := g.Info(); err == nil {
			gpuBytes = in.Total
		}
	}
	device.Close(be)
	mc, err := model.SourceConfig(cfg.Model)
	if err != nil {
		return err
	}
	d, err := joinWorld(ctx, cfg, launch, &mc, gpuBytes, compute)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.close(err); err == nil && cerr != nil {
			err = fmt.Errorf("closing the collectives: %w", cerr)
		}
	}()
	_, err = trainOnWorld(ctx, cfg, mc, d, stdout, stderr)
	return err
}

// trainOnWorld runs a whole training job on a joined world: set-up, the loop,
// evaluation, samples and outputs. It returns what the loop measured.
func trainOnWorld(ctx context.Context, cfg config.Config, mc model.Config, d *dist, stdout, stderr io.Writer) (res loopResult, err error) {
	start := time.Now()
	be, err := device.Open(cfg.Device, d.localRank)
	if err != nil {
		return res, err
	}
	defer device.Close(be)
	if !d.isRoot() {
		stdout, stderr = io.Discard, io.Discard // rank 0 speaks for the job; every rank has its log
	}
	compute, err := device.ComputeType(cfg.Precision, be)
	if err != nil {
		return res, err
	}
	if err := checkFits(cfg, &mc, d, be, compute, stderr); err != nil {
		return res, err
	}
	// Each rank loads only the tensors of its own stage.
	w, err := model.LoadSourceStage(cfg.Model, mc, cfg.Seed, d.me.Lo, d.me.Hi, d.me.Embed, d.me.Head)
	if err != nil {
		return res, err
	}
	tok, err := loadTokenizer(cfg, w.Config)
	if err != nil {
		return res, err
	}
	task, trainSet, evalSet, err := loadTrainingData(cfg, w.Config, tok, stderr)
	if err != nil {
		return res, err
	}
	opts := model.Options{Checkpoint: cfg.Train.ActivationCheckpointing, Compute: compute}
	if opts.LoRA, err = newAdapter(cfg, &w.Config); err != nil {
		return res, err
	}
	opts.Lo, opts.Hi = d.me.Lo, d.me.Hi
	m, err := model.NewModel(be, w, opts)
	if err != nil {
		return res, err
	}
	defer m.Close()

	t := &trainer{ctx: ctx, cfg: cfg, be: be, m: m, dist: d, train: trainSet, eval: evalSet, out: stderr, tok: tok,
		packer: data.Packer{T: cfg.Data.SeqLen, Pack: cfg.Data.Pack, PadID: 0},
		opt:    optim.AdamW{Beta1: cfg.Train.Beta1, Beta2: cfg.Train.Beta2, Eps: cfg.Train.Eps, WeightDecay: cfg.Train.WeightDecay},
		sched: optim.Schedule{Peak: cfg.Train.LR, MinRatio: cfg.Train.MinLRRatio, Warmup: cfg.Train.WarmupSteps,
			Total: cfg.Train.Steps, Kind: cfg.Train.Schedule},
	}
	shards, shardIndex := 1, 0
	if d.zero1 {
		shards, shardIndex = d.plan.Replicas, d.me.Replica
	}
	tiedDup := mc.TieEmbeddings && d.plan.Stages > 1 && d.last()
	if t.flat, err = newFlatParams(m, be, shards, shardIndex, tiedDup); err != nil {
		return res, err
	}
	t.overlap = d.dp != nil && !d.zero1
	onDevice, nccl, err := optimizerPlacement(be, d, stderr)
	if err != nil {
		return res, err
	}
	if t.nccl = nccl; nccl != nil {
		defer nccl.Close()
	}
	if onDevice {
		if t.dopt, err = newDeviceOptimizer(be, t.flat); err != nil {
			return res, err
		}
		defer t.dopt.close()
		t.overlap = false
	}
	t.stepSleep = debugStepSleep(d.rank())
	t.pcg = rand.NewPCG(uint64(cfg.Seed), 0x64617461) // "data"
	t.rng = rand.New(t.pcg)
	if dir, err := resumeDir(cfg.RunDir, cfg.Ckpt.Resume); err != nil {
		return res, err
	} else if dir != "" {
		if t.startStep, err = t.restore(dir); err != nil {
			return res, err
		}
		if t.dopt != nil {
			if err := t.dopt.syncDevice(t.flat); err != nil {
				return res, fmt.Errorf("resume: %w", err)
			}
		}
		fmt.Fprintf(stderr, "train: resumed from %s after step %d\n", dir, t.startStep)
	}
	if err := t.openRunDir(); err != nil {
		return res, err
	}
	if t.metrics != nil {
		defer t.metrics.Close()
	}
	if t.log, err = openRankLog(cfg.RunDir, d.rank()); err != nil {
		return res, err
	}
	defer func() { t.log.close(err) }()
	t.log.start("world", d.plan.World, "stage", d.me.Stage, "replica", d.me.Replica, "device", be.Name(), "precision", opts.Compute.String(),
		"model", cfg.Model, "method", cfg.Train.Method, "layers", fmt.Sprintf("[%d,%d)", d.me.Lo, d.me.Hi),
		"embed", d.me.Embed, "head", d.me.Head, "zero1", d.zero1, "optimizer", t.optimizerPlace(), "nccl", t.nccl != nil, "trainable_values", t.flat.values(), "heap_bytes", host.HeapBytes())

	// Plan the activations of the training batch shape now, in every slot, so
	// the memory report is the whole of a step's and no step allocates.
	if err := m.SetSlots(activationSlots(cfg, d)); err != nil {
		return res, err
	}
	for i := range m.Slots() {
		if err := m.UseSlot(i); err != nil {
			return res, err
		}
		if err := m.Plan(cfg.Train.MicroBatch, cfg.Data.SeqLen); err != nil {
			return res, err
		}
	}
	t.reportMemory(stderr)
	if g, ok := be.(device.GPU); ok {
		if in, err := g.Info(); err == nil {
			t.log.Info("gpu", "name", in.Name, "ordinal", in.Ordinal, "driver", in.Driver, "cublas", in.CUBLAS,
				"libcuda", in.LibCUDA, "libcublas", in.CUBLASL, "free_bytes", in.FreeMem, "total_bytes", in.Total)
			fmt.Fprintf(stderr, "train: GPU %d %s: %s free of %s after loading the model (rank 0)\n",
				in.Ordinal, in.Name, shard.FormatBytes(in.FreeMem), shard.FormatBytes(in.Total))
			t.gpuPeak = in.Total - in.FreeMem
		}
	}
	if g, ok := be.(*kernels.Backend); ok {
		var uerr error
		if t.util, uerr = startUtilSampler(g, 250*time.Millisecond); uerr != nil {
			t.log.Warn("no GPU utilisation in the logs", "error", uerr.Error())
		} else {
			defer t.util.close()
		}
	}
	fmt.Fprintf(stderr, "train: %s on %s in %v, %s, %s trainable values on rank 0, %d training and %d eval examples, run dir %s\n",
		cfg.Model, be.Name(), opts.Compute, cfg.Train.Method, model.HumanCount(t.flat.values()), len(trainSet), len(evalSet), cfg.RunDir)
	if d.plan.World > 1 {
		fmt.Fprint(stderr, d.plan.String())
	}
	samples := task != nil && d.plan.Stages == 1
	if samples && d.isRoot() {
		if err := t.showSamples(task, "before training", stdout); err != nil {
			return res, err
		}
	}
	res, err = t.loop()
	if err != nil {
		return res, err
	}
	// A stopped run is likely about to lose its machine: skip the evaluation.
	evalLoss, evalTokens := math.NaN(), 0
	if !res.stopped {
		if evalLoss, evalTokens, err = t.evaluate(); err != nil {
			return res, err
		}
		if err := t.writeMetric(map[string]any{"step": res.steps, "eval_loss": evalLoss, "eval_tokens": evalTokens}); err != nil {
			return res, err
		}
	}
	best := min(evalLoss, res.bestEval)
	if samples && d.isRoot() && !res.stopped {
		if err := t.showSamples(task, "after training", stdout); err != nil {
			return res, err
		}
	}
	saved, err := t.saveOutputs(w)
	if err != nil {
		return res, err
	}
	elapsed := time.Since(start)
	if res.stopped {
		fmt.Fprintf(stdout, "stopped by signal after step %d of %d; checkpoint written: continue with -resume\n", res.steps, cfg.Train.Steps)
	}
	fmt.Fprintf(stdout, "done: %d steps, %s tokens in %s; train loss %.4f -> %.4f; eval loss %.4f over %d tokens (best %.4f)\n",
		res.steps, model.HumanCount(int64(res.tokens)), elapsed.Round(time.Second), res.first, res.last, evalLoss, evalTokens, best)
	fmt.Fprintf(stdout, "outputs: %s (metrics.jsonl, config.toml%s)\n", cfg.RunDir, saved)
	return res, nil
}

// reportMemory logs what the model and the device optimizer hold on the device,
// part by part, and prints it on rank 0.
func (t *trainer) reportMemory(stderr io.Writer) {
	parts := t.m.Memory()
	if t.dopt != nil {
		parts = append(parts, model.MemoryPart{Name: "optimizer state (f32)", Bytes: t.dopt.bytes()})
	}
	var total int64
	var fields []any
	var words []string
	for _, p := range parts {
		total += p.Bytes
		fields = append(fields, logKey(p.Name)+"_bytes", p.Bytes)
		words = append(words, p.Name+" "+shard.FormatBytes(p.Bytes))
	}
	t.log.Info("memory", append(fields, "total_bytes", total)...)
	note := ""
	if _, gpu := t.be.(device.GPU); gpu && t.dopt == nil {
		note = " (the optimizer state is on the host)"
	}
	fmt.Fprintf(stderr, "train: memory on %s: %s; total %s%s\n", t.be.Name(), strings.Join(words, ", "), shard.FormatBytes(total), note)
}

// logKey turns a label into a log key: "weights (bf16)" -> "weights_bf16".
func logKey(label string) string {
	f := strings.FieldsFunc(strings.ToLower(label), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	})
	return strings.Join(f, "_")
}

// optimizerPlace says where the optimizer runs, for the logs.
func (t *trainer) optimizerPlace() string {
	if t.dopt != nil {
		return "device"
	}
	return "host"
}

// gpuUsed is the device memory in use now (every process's, as the driver
// counts it), updating the peak; 0 on the CPU.
func (t *trainer) gpuUsed() int64 {
	g, ok := t.be.(device.GPU)
	if !ok {
		return 0
	}
	in, err := g.Info()
	if err != nil {
		return 0
	}
	used := in.Total - in.FreeMem
	t.gpuPeak = max(t.gpuPeak, used)
	return used
}

// gpuUtil is the GPU's mean utilisation since the last step (kernels
// running, memory busy) as log fields; none on the CPU or without NVML.
func (t *trainer) gpuUtil() []any {
	if t.util == nil {
		return nil
	}
	gpu, mem, ok := t.util.take()
	if !ok {
		return nil
	}
	return []any{"gpu_util_pct", math.Round(gpu), "gpu_mem_util_pct", math.Round(mem)}
}

// newAdapter returns the LoRA adapter a run trains (nil in full fine-tuning): a
// fresh one, or the saved adapter lora.init_adapter names, whose hyper-parameters
// must be this run's.
func newAdapter(cfg config.Config, mc *model.Config) (*model.LoRA, error) {
	switch cfg.Train.Method {
	case "full":
		return nil, nil
	case "qlora":
		return nil, errors.New("train.method qlora keeps 4-bit NF4 base weights on a GPU, which this build's CPU backend cannot; use -method lora on the CPU")
	}
	l, err := model.NewLoRA(mc, model.LoRAConfig{
		Rank: cfg.LoRA.Rank, Alpha: cfg.LoRA.Alpha, Dropout: cfg.LoRA.Dropout,
		RSLoRA: cfg.LoRA.RSLoRA, Targets: cfg.LoRA.Targets,
	}, uint64(cfg.Seed))
	if err != nil || cfg.LoRA.InitAdapter == "" {
		return l, err
	}
	init, err := peft.Read(cfg.LoRA.InitAdapter, *mc)
	if err != nil {
		return nil, err
	}
	ic, lc := init.Config, l.Config
	if ic.Rank != lc.Rank || ic.Alpha != lc.Alpha || ic.RSLoRA != lc.RSLoRA || !slices.Equal(ic.Targets, model.SortedTargets(lc.Targets)) {
		return nil, fmt.Errorf("lora.init_adapter %s has r=%d alpha=%v rslora=%v targets %v; this run has r=%d alpha=%v rslora=%v targets %v: set lora.rank/alpha/rslora/targets to match",
			cfg.LoRA.InitAdapter, ic.Rank, ic.Alpha, ic.RSLoRA, ic.Targets, lc.Rank, lc.Alpha, lc.RSLoRA, model.SortedTargets(lc.Targets))
	}
	if err := l.SetTensors(init.Tensors()); err != nil {
		return nil, fmt.Errorf("lora.init_adapter %s: %w", cfg.LoRA.InitAdapter, err)
	}
	return l, nil
}

// loadTrainingData returns the training and evaluation examples: the embedded
// generated task when data.train is empty (task is then not nil, for samples),
// otherwise the JSONL files, with an evaluation split when data.eval is empty.
func loadTrainingData(cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer, warn io.Writer) (task *data.ArithmeticTask, trainSet, evalSet []data.TokenExample, err error) {
	if cfg.Data.Train == "" {
		if mc.VocabSize < data.ByteVocab {
			return nil, nil, nil, fmt.Errorf("the generated task needs a vocabulary of at least %d ids (bytes and two specials); %s has %d: give -data FILE.jsonl", data.ByteVocab, cfg.Model, mc.VocabSize)
		}
		task = &data.ArithmeticTask{Ops: "+"}
		rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x7461736b)) // "task"
		for i := 0; i < 4000; i++ {
			trainSet = append(trainSet, task.Example(task.Draw(rng)))
		}
		for i := 0; i < 200; i++ {
			evalSet = append(evalSet, task.Example(task.Draw(rng)))
		}
		return task, trainSet, evalSet, nil
	}
	f := &data.Formatter{Vocab: mc.VocabSize, PromptLoss: cfg.Data.PromptLoss}
	if tok != nil {
		f.Tok = tok
	}
	read := func(key, path string) ([]data.TokenExample, error) {
		ex, skipped, err := data.ReadExamples(path, f, cfg.Data.SkipBadLines)
		if err != nil && !cfg.Data.SkipBadLines {
			return nil, fmt.Errorf("%s: %w (-skip-bad-lines counts and skips malformed lines)", key, err)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if skipped > 0 {
			fmt.Fprintf(warn, "warning: %s: skipped %d malformed lines\n", path, skipped)
		}
		return ex, nil
	}
	all, err := read("data.train", cfg.Data.Train)
	if err != nil {
		return nil, nil, nil, err
	}
	if cfg.Data.Eval != "" {
		if evalSet, err = read("data.eval", cfg.Data.Eval); err != nil {
			return nil, nil, nil, err
		}
		return nil, all, evalSet, nil
	}
	// The split is drawn with the seed, so it does not depend on the file's order.
	order := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x73706c74)).Perm(len(all)) // "splt"
	nEval := int(math.Round(float64(len(all)) * cfg.Data.EvalFraction))
	if cfg.Data.EvalFraction > 0 && nEval == 0 {
		nEval = 1
	}
	if nEval >= len(all) {
		return nil, nil, nil, fmt.Errorf("data.train: %d examples are too few to hold out an evaluation split of %v; give data.eval or more data", len(all), cfg.Data.EvalFraction)
	}
	for i, j := range order {
		if i < nEval {
			evalSet = append(evalSet, all[j])
		} else {
			trainSet = append(trainSet, all[j])
		}
	}
	return nil, trainSet, evalSet, nil
}

// loadTokenizer loads the tokenizer that cfg names, or the model directory's own
// tokenizer.json; nil when neither exists (token-id data and the generated task
// need none). A tokenizer with more ids than the model's embedding is an error.
func loadTokenizer(cfg config.Config, mc model.Config) (*tokenizer.Tokenizer, error) {
	path := cfg.Tokenizer
	if path == "" && !model.IsRandomModel(cfg.Model) {
		cand := filepath.Join(cfg.Model, "tokenizer.json")
		if _, err := os.Stat(cand); err == nil {
			path = cand
		}
	}
	if path == "" {
		return nil, nil
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if tok.VocabSize() > mc.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d ids but the model's vocabulary is %d: they do not belong together", path, tok.VocabSize(), mc.VocabSize)
	}
	return tok, nil
}

// openRunDir creates the run directory; rank 0 writes the effective config, the
// plan and metrics.jsonl there.
func (t *trainer) openRunDir() error {
	if err := os.MkdirAll(t.cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if !t.dist.isRoot() {
		return nil
	}
	if err := os.WriteFile(filepath.Join(t.cfg.RunDir, "plan.txt"), []byte(t.dist.plan.String()), 0o644); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	cfgText, err := t.cfg.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(t.cfg.RunDir, "config.toml"), cfgText, 0o644); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	// A resumed run goes on with the same metrics file.
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if t.startStep > 0 {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(filepath.Join(t.cfg.RunDir, "metrics.jsonl"), flags, 0o644)
	if err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	t.metrics = f
	return nil
}

func (t *trainer) writeMetric(v map[string]any) error {
	if t.metrics == nil {
		return nil // not rank 0
	}
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := t.metrics.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("metrics.jsonl: %w", err)
	}
	return nil
}

// nextRows lays out the next micro-batch from the shuffled training order.
func (t *trainer) nextRows() (*data.Rows, error) {
	if t.cursor >= len(t.order) {
		t.order = t.rng.Perm(len(t.train))
		t.cursor = 0
		t.epoch++
	}
	batch := make([]data.TokenExample, 0, 64)
	for i := t.cursor; i < len(t.order) && len(batch) < cap(batch); i++ {
		batch = append(batch, t.train[t.order[i]])
	}
	rows, used, err := t.packer.Fill(batch, t.cfg.Train.MicroBatch)
	if err != nil {
		return nil, err
	}
	t.cursor += used
	return rows, nil
}

func batchOf(r *data.Rows, seed uint64) *model.Batch {
	return &model.Batch{B: r.B, T: r.T, IDs: r.IDs, Labels: r.Labels, Positions: r.Positions, Segments: r.Segments, Seed: seed}
}

// loopResult is what the training loop reports.
type loopResult struct {
	steps       int     // optimizer steps run (fewer than asked when stopped by a signal)
	first, last float64 // training loss of the first and last step
	tokens      int     // tokens processed, padding included
	bestEval    float64 // lowest eval loss seen during the loop (+Inf if none)
	stopped     bool    // a signal ended the loop early
	// after is the time split of every step after the first (which pays for
	// warm-up), and wall their total: what `train bench pipeline` reports.
	after stepTimes
	wall  time.Duration
}

// loop runs every optimizer step: forward and backward over the step's
// micro-batches with the loss normalised by the step's total scored labels, the
// global gradient norm, clipping, AdamW, and a metrics line per step.
func (t *trainer) loop() (loopResult, error) {
	cfg := t.cfg.Train
	res := loopResult{bestEval: math.Inf(1)}
	prog := newProgress(t.out, cfg.Steps, cfg.LogEvery)
	defer prog.finish()
	t.m.SetTraining(true)
	bad := 0
	lastSave, lastSaveTime := t.startStep, time.Now()
	res.steps = t.startStep
	// checkpoint saves after step (1-based) and notes the time.
	checkpoint := func(step int) error {
		if err := t.saveCheckpoint(step); err != nil {
			if !t.cfg.Ckpt.ContinueOnError {
				return fmt.Errorf("%w (the previous complete checkpoint is intact; ckpt.continue_on_error trains on without saving)", err)
			}
			prog.note("warning: %v: training goes on without this checkpoint (ckpt.continue_on_error)", err)
			t.log.Warn("checkpoint failed; continuing", "step", step, "error", err.Error())
		}
		lastSave, lastSaveTime = step, time.Now()
		return nil
	}
	for step := t.startStep; step < cfg.Steps; step++ {
		stepStart := time.Now()
		time.Sleep(t.stepSleep)
		// Every rank draws the whole step's micro-batches in the same order, so the
		// token count that normalises the loss is known everywhere without talking;
		// replica d runs micro-batches [d*M, (d+1)*M).
		M, D := cfg.GradAccum, t.dist.plan.Replicas
		total, stepTokens := 0, 0
		var mine []microBatch
		for i := 0; i < M*D; i++ {
			r, err := t.nextRows()
			if err != nil {
				return res, err
			}
			total += r.ScoredLabels()
			stepTokens += r.B * r.T
			if i/M == t.dist.me.Replica {
				mine = append(mine, microBatch{rows: r, seed: uint64(t.cfg.Seed)<<32 ^ uint64(step*M*D+i)})
			}
		}
		if total == 0 {
			return res, fmt.Errorf("step %d: every label of the step is masked (-100): nothing to learn from; check the data's labels", step+1)
		}
		var times stepTimes
		t.m.ZeroGrads()
		lossSum, err := t.runPipeline(mine, float32(1/float64(total)), &times)
		if err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		res.tokens += stepTokens
		f := t.flat
		var sumSq float64
		if t.dopt != nil {
			t.m.FinishGrads()
			if err := t.reduceGradsNCCL(&times); err != nil {
				return res, fmt.Errorf("step %d: %w", step+1, err)
			}
			if sumSq, err = t.dopt.sumSquares(); err != nil {
				return res, fmt.Errorf("step %d: %w", step+1, err)
			}
		} else {
			if err := f.downloadGrads(t.m, t.be, t.overlap); err != nil {
				return res, fmt.Errorf("step %d: %w", step+1, err)
			}
			if err := t.reduceGrads(&times); err != nil {
				return res, fmt.Errorf("step %d: %w", step+1, err)
			}
			sumSq = f.sumSquares()
		}
		// The loss lives on the last stages and each rank holds part of the norm:
		// one all-reduce gives every rank both, so every rank decides alike below.
		// With the loss and the norm go two decisions every rank must take alike:
		// stop (any rank got a signal) and checkpoint (rank 0's clock says so).
		var stopVote, saveVote float64
		if t.ctx.Err() != nil {
			stopVote = 1
		}
		ck := t.cfg.Ckpt
		if t.dist.isRoot() && ((ck.Every > 0 && (step+1-lastSave) >= ck.Every) ||
			(ck.Minutes > 0 && time.Since(lastSaveTime).Minutes() >= ck.Minutes)) {
			saveVote = 1
		}
		sums := []float64{lossSum, sumSq, stopVote, saveVote}
		if err := timed(&times.comm, func() error { return t.dist.allReduceF64(sums) }); err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		stopNow, saveNow := sums[2] > 0, sums[3] > 0
		if !t.dist.zero1 {
			sums[1] /= float64(D) // every replica counted the same reduced gradient
		}
		loss, norm := sums[0]/float64(total), math.Sqrt(sums[1])
		if !finiteAll(loss, norm) {
			bad++
			prog.note("warning: step %d: loss %v, gradient norm %v: step skipped (%d in a row)", step+1, loss, norm, bad)
			t.log.Warn("step skipped: non-finite loss or gradient", "step", step+1, "loss", fmt.Sprint(loss), "grad_norm", fmt.Sprint(norm))
			if bad >= maxBadSteps {
				return res, fmt.Errorf("step %d: %d steps in a row had a non-finite loss or gradient; lower train.lr or check the data", step+1, bad)
			}
			if stopNow {
				res.stopped = true
				prog.note("signal received: checkpointing and stopping after step %d", step+1)
				return res, checkpoint(step + 1)
			}
			continue
		}
		bad = 0
		lr := t.sched.LR(step)
		if t.dopt != nil {
			t.dopt.step(&t.opt, lr, optim.ClipScale(norm, cfg.MaxGradNorm))
		} else {
			err = timed(&times.compute, func() error {
				optim.ScaleGrads(f.opt, optim.ClipScale(norm, cfg.MaxGradNorm))
				return t.opt.Step(f.opt, lr)
			})
			if err != nil {
				return res, err
			}
			if err := t.gatherParams(&times); err != nil {
				return res, fmt.Errorf("step %d: %w", step+1, err)
			}
			if err := f.uploadValues(t.m, t.be); err != nil {
				return res, err
			}
		}
		if step == t.startStep {
			res.first = loss
		}
		res.last, res.steps = loss, step+1
		tps := float64(stepTokens) / time.Since(stepStart).Seconds()
		prog.step(step+1, loss, lr, tps)
		if err := t.writeMetric(map[string]any{"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm,
			"tokens": res.tokens, "scored_tokens": total, "tokens_per_s": tps, "epoch": t.epoch}); err != nil {
			return res, err
		}
		if step > 0 {
			res.after.compute += times.compute
			res.after.bubble += times.bubble
			res.after.comm += times.comm
			res.wall += time.Since(stepStart)
		}
		rss, cpu := host.Usage()
		gpuUsed := t.gpuUsed()
		fields := []any{"gpu_used_bytes", gpuUsed, "gpu_peak_bytes", t.gpuPeak, "step", step + 1, "loss", loss, "lr", lr, "grad_norm", norm, "tokens", stepTokens,
			"step_s", time.Since(stepStart).Seconds(), "compute_s", times.compute.Seconds(),
			"bubble_s", times.bubble.Seconds(), "comm_s", times.comm.Seconds(),
			"bytes_sent", times.sent, "bytes_received", times.received, "recomputed_forwards", times.recomputed, "heap_bytes", host.HeapBytes(),
			"rss_bytes", rss, "cpu_s", cpu}
		t.log.Info("step", append(fields, t.gpuUtil()...)...)
		if budget := host.AvailableMemory() + rss; !t.warnedMemory && budget > 0 && rss > budget*9/10 {
			t.warnedMemory = true
			t.log.Warn("near the host's memory limit", "rss_bytes", rss, "available_bytes", host.AvailableMemory(),
				"relieve", "more pipeline stages (-pp), -activation-checkpointing, a smaller -batch or -seq, or -lora")
			prog.note("warning: rank %d uses %s of host memory, near the limit: consider -pp, -activation-checkpointing, a smaller -batch/-seq, or -lora",
				t.dist.rank(), shard.FormatBytes(rss))
		}
		if cfg.EvalEvery > 0 && (step+1)%cfg.EvalEvery == 0 && step+1 < cfg.Steps {
			el, n, err := t.evaluate()
			if err != nil {
				return res, err
			}
			t.m.SetTraining(true)
			res.bestEval = min(res.bestEval, el)
			prog.note("step %5d/%d  eval_loss %.4f over %d tokens", step+1, cfg.Steps, el, n)
			if err := t.writeMetric(map[string]any{"step": step + 1, "eval_loss": el, "eval_tokens": n}); err != nil {
				return res, err
			}
		}
		if stopNow {
			res.stopped = true
			prog.note("signal received: checkpointing and stopping after step %d", step+1)
			return res, checkpoint(step + 1)
		}
		if saveNow {
			if err := checkpoint(step + 1); err != nil {
				return res, err
			}
		}
	}
	if res.steps > lastSave {
		return res, checkpoint(res.steps)
	}
	return res, nil
}

// evaluate is the mean loss over every scored label of the evaluation set.
func (t *trainer) evaluate() (float64, int, error) {
	t.m.SetTraining(false)
	if err := t.m.UseSlot(0); err != nil {
		return 0, 0, err
	}
	return t.evalPipeline(t.eval)
}

// evalExamples is the mean loss over every scored label of examples, each in a row
// of its own (no packing, so nothing depends on batch composition), and the count.
func evalExamples(m *model.Model, examples []data.TokenExample, maxT, B int) (float64, int, error) {
	var lossSum float64
	var count int
	err := evalRows(examples, maxT, B, func(r *data.Rows) error {
		ls, n, err := m.Forward(batchOf(r, 0))
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		lossSum, count = lossSum+ls, count+n
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return meanLoss(lossSum, count)
}

// evalRows lays examples out for evaluation, each in a row of its own (so nothing
// depends on how they are batched), B rows at a time, as long as the batch's
// longest example (at most maxT when maxT > 0), and calls each on every batch.
func evalRows(examples []data.TokenExample, maxT, B int, each func(*data.Rows) error) error {
	for i := 0; i < len(examples); {
		end := min(i+B, len(examples))
		T := 2
		for _, ex := range examples[i:end] {
			T = max(T, len(ex.InputIDs))
		}
		if maxT > 0 {
			T = min(T, maxT)
		}
		p := data.Packer{T: T}
		r, used, err := p.Fill(examples[i:end], end-i)
		if err != nil {
			return err
		}
		i += used
		if err := each(r); err != nil {
			return err
		}
	}
	return nil
}

// meanLoss is the mean of a loss summed over count scored labels.
func meanLoss(sum float64, count int) (float64, int, error) {
	if count == 0 {
		return 0, 0, errors.New("eval: every label is masked (-100): there is nothing to score")
	}
	return sum / float64(count), count, nil
}

// showSamples prints the model's greedy answers to a few fixed prompts.
func (t *trainer) showSamples(task *data.ArithmeticTask, when string, w io.Writer) error {
	t.m.SetTraining(false)
	problems := []data.Problem{{A: 7, B: 8, Op: '+'}, {A: 3, B: 4, Op: '+'}, {A: 9, B: 9, Op: '+'},
		{A: 6, B: 0, Op: '+'}, {A: 2, B: 9, Op: '+'}, {A: 5, B: 5, Op: '+'}}
	var line []string
	right := 0
	for _, p := range problems {
		prompt := append([]int{data.ByteBOS}, data.ByteIDs(task.Prompt(p))...)
		ids, err := greedy(t.m, prompt, 3, data.ByteEOS)
		got := data.ByteText(ids)
		if err != nil {
			got = "(" + err.Error() + ")" // a sample is a view, not a reason to stop
		}
		mark := "✗"
		if got == task.Answer(p) {
			mark, right = "✓", right+1
		}
		line = append(line, fmt.Sprintf("%s%q %s", task.Prompt(p), got, mark))
	}
	fmt.Fprintf(w, "%-15s %s   (%d of %d right)\n", when+":", strings.Join(line, "  "), right, len(problems))
	return nil
}

// greedy extends prompt by up to n tokens, each the most likely next one, stopping
// at eos, with the model's KV-cache decoder.
func greedy(m *model.Model, prompt []int, n, eos int) ([]int, error) {
	d, err := model.NewDecoder(m, len(prompt)+n)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	logits, err := d.Append(prompt)
	if err != nil {
		return nil, err
	}
	var out []int
	for i := 0; i < n; i++ {
		best, err := model.Argmax(logits)
		if err != nil {
			return nil, err
		}
		out = append(out, best)
		if best == eos || i == n-1 {
			break
		}
		if logits, err = d.Append([]int{best}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// saveOutputs writes what was trained: the adapter in peft's format (LoRA), or the
// whole model as a Hugging Face directory (full fine-tuning), with the tokenizer.
func (t *trainer) saveOutputs(w *model.Weights) (string, error) {
	if err := t.syncHost(); err != nil {
		return "", err
	}
	ts, err := t.gatherTensors()
	if err != nil || !t.dist.isRoot() {
		return "", err
	}
	if t.cfg.Train.Method != "lora" {
		return t.saveModel(w, ts)
	}
	l, err := model.NewLoRA(&w.Config, model.LoRAConfig{Rank: t.cfg.LoRA.Rank, Alpha: t.cfg.LoRA.Alpha,
		Dropout: t.cfg.LoRA.Dropout, RSLoRA: t.cfg.LoRA.RSLoRA, Targets: t.cfg.LoRA.Targets}, 0)
	if err != nil {
		return "", err
	}
	if err := l.SetTensors(ts); err != nil {
		return "", err
	}
	dir := filepath.Join(t.cfg.RunDir, "adapter")
	if err := peft.Write(dir, l, &w.Config, t.cfg.Model); err != nil {
		return "", err
	}
	return ", adapter/ in peft format", nil
}

// saveModel writes RUN/model: config.json, model.safetensors (F32) with the trained
// weights, and the tokenizer files when the model had them.
func (t *trainer) saveModel(w *model.Weights, ts map[string][]float32) (string, error) {
	dir := filepath.Join(t.cfg.RunDir, "model")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	cfgJSON, err := model.MarshalConfig(w.Config)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o644); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	var st safetensors.Writer
	st.SetMetadata("format", "pt")
	for _, spec := range w.Config.ExpectedTensors() {
		v, ok := ts[spec.Name]
		if !ok {
			return "", fmt.Errorf("save model: no rank sent %s", spec.Name)
		}
		if err := st.AddFloat32(spec.Name, safetensors.F32, spec.Shape, v); err != nil {
			return "", fmt.Errorf("save model: %w", err)
		}
	}
	if err := st.WriteFile(filepath.Join(dir, "model.safetensors")); err != nil {
		return "", fmt.Errorf("save model: %w", err)
	}
	if !model.IsRandomModel(t.cfg.Model) {
		for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
			if src, err := os.ReadFile(filepath.Join(t.cfg.Model, name)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
					return "", fmt.Errorf("save model: %w", err)
				}
			}
		}
	}
	return ", model/ in Hugging Face format", nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
