package trainer

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"train/collective"
	"train/config"
	"train/data"
	"train/device"
	"train/format/peft"
	"train/host"
	"train/kernels"
	"train/model"
	"train/ops"
	"train/optim"
	"train/quant"
	"train/shard"
	"train/tokenizer"
)

// trainer is one process's training run on one rank: the model on its backend,
// host copies of the trainable tensors, the optimizer, and the data order.
type trainer struct {
	ctx context.Context // cancelled by SIGINT/SIGTERM: stop after the step
	cfg config.Config
	tok *tokenizer.Tokenizer // nil for the generated task
	be  ops.Backend
	// chunks are this rank's models, one per layer range it runs, in chunk
	// order (ranges): one, or V with interleaved 1F1B.
	chunks []*model.Model
	ranges []shard.Chunk
	dist   *World      // this rank's place in the run
	flat   *flatParams // the trainable tensors on the host: checkpoints, outputs, the host optimizer
	opt    optimizer   // where the update runs: host or device
	adam   optim.AdamW
	// startStep is the step a resumed run continues after (0: a fresh start).
	startStep int
	// tokens counts the tokens trained on since the run began, resumed runs
	// included; resumedTotal is the train.steps of the checkpoint resumed from
	// (0: a fresh start, or a checkpoint that does not say).
	tokens, resumedTotal int
	// base identifies the base weights this rank loaded; checkpoints record
	// it and a resumed run compares it (checkBase).
	base model.Base
	// pending are notes of the set-up for the rank log, which opens once
	// the resumed step is known; rank 0 printed them as they came.
	pending []placeNote
	// warnedMemory is set once the rank has warned that it nears the memory limit.
	warnedMemory bool
	// stepSleep is a deliberate delay per step (TRAIN_DEBUG_STEP_SLEEP), for tests.
	stepSleep time.Duration
	// scaler is fp16's dynamic loss scaling (off in other precisions);
	// overflowAt the step a test makes overflow (TRAIN_DEBUG_GRAD_OVERFLOW).
	scaler     lossScaler
	overflowAt int
	// util averages the GPU's utilisation over each step; nil without NVML.
	util *utilSampler
	// gpuPeak is the most GPU memory in use seen at a step's end (0 on the CPU).
	gpuPeak int64
	sched   optim.Schedule

	train, eval data.Examples // read an example at a time (a token cache)
	order       []int         // shuffled indices into train; refilled each epoch
	cursor      int
	epoch       int
	rng         *rand.Rand
	pcg         *rand.PCG // rng's source, saved in checkpoints
	packer      data.Packer

	out     io.Writer // human progress lines
	metrics *os.File  // metrics.jsonl
	log     *rankLog  // RUN/logs/rank-NNNNN.jsonl

	// long counts the examples of train and eval longer than data.seq_len.
	long longExamples
}

// Run is one rank's whole training job as cfg describes: it opens the device,
// checks every input that can be checked cheaply (preflight), joins the other
// ranks the launcher (or launch's flags) names, plans the run, trains (RunOn)
// and leaves the collective session. Progress and the summary go to stdout and
// stderr on rank 0; every rank writes its rank log in the run directory. A
// cancelled ctx stops the run after the current step with a checkpoint: a nil
// error, Result.Stopped set; cancelled during start-up, before any step, Run
// returns at once with an error saying so. When this rank fails, the job is
// aborted so that every other rank stops naming it.
func Run(ctx context.Context, cfg config.Config, launch *collective.Flags, stdout, stderr io.Writer) (res Result, err error) {
	// Fail on a missing device before connecting to anyone.
	be, err := device.Open(cfg.Device, 0)
	if err != nil {
		return res, err
	}
	compute, err := device.ComputeType(cfg.Precision, be)
	if err != nil {
		device.Close(be)
		return res, err
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
		return res, err
	}
	pre, err := preflight(ctx, cfg, mc)
	if err != nil {
		return res, err
	}
	d, err := Join(ctx, cfg, launch, &mc, gpuBytes, compute)
	if err != nil {
		return res, startErr(ctx, "joining the other ranks", err)
	}
	defer func() {
		if cerr := d.Close(err); err == nil && cerr != nil {
			err = fmt.Errorf("closing the collectives: %w", cerr)
		}
	}()
	return runOn(ctx, cfg, mc, d, pre, stdout, stderr)
}

// RunOn runs a whole training job on a joined world: the checks of preflight,
// set-up, the loop, evaluation, samples and outputs. It returns what the loop
// measured. The world outlives it: `train bench pipeline` runs several jobs on
// one.
func RunOn(ctx context.Context, cfg config.Config, mc model.Config, d *World, stdout, stderr io.Writer) (Result, error) {
	pre, err := preflight(ctx, cfg, mc)
	if err != nil {
		return Result{}, err
	}
	return runOn(ctx, cfg, mc, d, pre, stdout, stderr)
}

// checked is what preflight read on the way: the tokenizer (nil when the data
// needs none).
type checked struct {
	tok *tokenizer.Tokenizer
}

// preflight checks, in about a second, every input that can fail without
// building anything, so that a mistake is reported before the run connects,
// plans, reads the data or builds weights (minutes and tens of GB for a large
// model): the method, the sequence length against the model's context, the
// model's tensors against config.json (headers only), the tokenizer, the
// first line of each data file, that the run directory is writable and that
// a checkpoint to resume from exists.
func preflight(ctx context.Context, cfg config.Config, mc model.Config) (*checked, error) {
	if _, err := NF4Options(cfg); err != nil {
		return nil, err
	}
	if mc.MaxPositions > 0 && cfg.Data.SeqLen > mc.MaxPositions && !cfg.Data.AllowLongSeq {
		return nil, fmt.Errorf("data.seq_len %d is longer than the model's context of %d tokens (max_position_embeddings of %s): positions past it were never trained; use -seq %d or less, or -allow-long-seq (data.allow_long_seq) to train past it on purpose",
			cfg.Data.SeqLen, mc.MaxPositions, cfg.Model, mc.MaxPositions)
	}
	if err := model.CheckSourceTensors(cfg.Model, mc); err != nil {
		return nil, err
	}
	tok, err := LoadTokenizer(cfg, mc)
	if err != nil {
		return nil, err
	}
	f, err := formatter(cfg, mc, tok)
	if err != nil {
		return nil, err
	}
	if err := checkDataFiles(cfg, f); err != nil {
		return nil, err
	}
	if err := checkRunDir(cfg); err != nil {
		return nil, err
	}
	if r := cfg.Ckpt.Resume; r != "" && r != "latest" {
		if _, err := os.Stat(r); err != nil {
			return nil, fmt.Errorf("ckpt.resume: %w", err)
		}
	}
	if err := interrupted(ctx, "checking the inputs"); err != nil {
		return nil, err
	}
	return &checked{tok: tok}, nil
}

// checkRunDir writes a file where the run will write (its directory when it
// exists, else the folder it will be made in, runs/ by default), so that an
// unwritable place fails before the model is loaded, not after. It makes no
// run directory: choosePlace decides which one the run takes.
func checkRunDir(cfg config.Config) error {
	dir := cfg.RunDir
	if dir == "" {
		dir = cfg.RunDirOrDefault()
	}
	probe := dir
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		probe = filepath.Dir(dir)
		if err := os.MkdirAll(probe, 0o755); err != nil {
			return fmt.Errorf("run dir: %w", err)
		}
	}
	f, err := os.CreateTemp(probe, ".write-check-")
	if err != nil {
		return fmt.Errorf("run dir %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// interrupted is the error of a start-up that a signal (ctx) stopped during
// phase, or nil while ctx is live. Nothing has been trained then, so there is
// nothing to checkpoint: the run ends at once, as the user asked.
func interrupted(ctx context.Context, phase string) error {
	if ctx.Err() == nil {
		return nil
	}
	return fmt.Errorf("interrupted while %s, before training began: nothing was trained or saved (%w)", phase, ctx.Err())
}

// startErr is err from a phase of start-up, or the interruption when ctx was
// cancelled meanwhile (the phase then failed because of it).
func startErr(ctx context.Context, phase string, err error) error {
	if ierr := interrupted(ctx, phase); ierr != nil {
		return ierr
	}
	return err
}

// runOn is RunOn once preflight has passed.
func runOn(ctx context.Context, cfg config.Config, mc model.Config, d *World, pre *checked, stdout, stderr io.Writer) (res Result, err error) {
	start := time.Now()
	be, err := device.Open(cfg.Device, d.localRank)
	if err != nil {
		return res, err
	}
	defer device.Close(be)
	if !d.IsRoot() {
		stdout, stderr = io.Discard, io.Discard // rank 0 speaks for the job; every rank has its log
	}
	// Where the run writes, decided before anything is loaded or written.
	place, err := d.choosePlace(cfg)
	if err != nil {
		return res, err
	}
	cfg.RunDir = place.Dir
	// -overwrite acted on the directory; the run's effective configuration
	// (config.toml, the checkpoints') must still be one that -resume accepts.
	cfg.Ckpt.Overwrite = false
	notes := place.notes()
	for _, n := range notes {
		n.print(stderr)
	}
	compute, err := device.ComputeType(cfg.Precision, be)
	if err != nil {
		return res, err
	}
	if err := checkFits(cfg, &mc, d, be, compute, stderr); err != nil {
		return res, err
	}
	noteKernels(be, compute, &mc, cfg.Train.LossScaleWindow, stderr)
	if mc.MaxPositions > 0 && cfg.Data.SeqLen > mc.MaxPositions {
		fmt.Fprintf(stderr, "train: warning: data.seq_len %d is past the model's max_position_embeddings %d (data.allow_long_seq)\n", cfg.Data.SeqLen, mc.MaxPositions)
	}
	// The data before the weights: it is the cheaper of the two to find wrong.
	task, trainSet, evalSet, closeData, err := loadTrainingData(ctx, cfg, mc, pre.tok, stderr)
	if err != nil {
		return res, startErr(ctx, "reading the data", err)
	}
	defer closeData()
	long := countLong(cfg.Data.SeqLen, trainSet, evalSet)
	// Each rank loads only the tensors of its own stage: one model per
	// layer range (chunk) it runs.
	opts := model.Options{Checkpoint: cfg.Train.ActivationCheckpointing, Offload: cfg.Train.OffloadActivations,
		KeepAttention: cfg.Train.KeepAttention, Compute: compute}
	if opts.LoRA, err = newAdapter(cfg, &mc); err != nil {
		return res, err
	}
	if opts.NF4, err = NF4Options(cfg); err != nil {
		return res, err
	}
	var chunks []*model.Model
	var base model.Base
	var w *model.Weights // the first chunk's: the configuration the outputs are written with
	for _, ch := range d.me.Ranges() {
		cw, err := model.LoadSourceStage(ctx, cfg.Model, mc, cfg.Seed, ch.Lo, ch.Hi, ch.Embed, ch.Head)
		if err != nil {
			return res, startErr(ctx, "loading the weights", err)
		}
		defer cw.Close()
		if w == nil {
			w = cw
		}
		o := opts
		o.Lo, o.Hi = ch.Lo, ch.Hi
		m, err := model.NewModel(be, cw, o)
		if err != nil {
			return res, startErr(ctx, "loading the weights", err)
		}
		defer m.Close()
		chunks = append(chunks, m)
		b := cw.Base()
		base.Random, base.Seed = b.Random, b.Seed
		base.Tensors = append(base.Tensors, b.Tensors...)
	}

	if err := interrupted(ctx, "building the model"); err != nil {
		return res, err
	}
	t := &trainer{ctx: ctx, cfg: cfg, be: be, chunks: chunks, ranges: d.me.Ranges(), dist: d, train: trainSet, eval: evalSet, out: stderr, tok: pre.tok, long: long, base: base, pending: notes,
		packer: data.Packer{T: cfg.Data.SeqLen, Pack: cfg.Data.Pack, PadID: 0},
		adam:   optim.AdamW{Beta1: cfg.Train.Beta1, Beta2: cfg.Train.Beta2, Eps: cfg.Train.Eps, WeightDecay: cfg.Train.WeightDecay},
		sched: optim.Schedule{Peak: cfg.Train.LR, MinRatio: cfg.Train.MinLRRatio, Warmup: cfg.Train.WarmupSteps,
			Total: cfg.Train.Steps, Kind: cfg.Train.Schedule},
	}
	shards, shardIndex := 1, 0
	if d.zero1 {
		shards, shardIndex = d.plan.Replicas, d.me.Replica
	}
	tiedDup := mc.TieEmbeddings && d.plan.Stages > 1 && d.last()
	if t.flat, err = newFlatParams(chunks, be, shards, shardIndex, tiedDup); err != nil {
		return res, err
	}
	if t.opt, err = newOptimizer(be, chunks, d, t.flat, &t.adam, stderr); err != nil {
		return res, err
	}
	defer t.opt.close()
	t.stepSleep = debugStepSleep(d.rank())
	t.scaler = newLossScaler(compute, cfg.Train.LossScaleWindow)
	if t.overflowAt, err = debugGradOverflow(d.rank()); err != nil {
		return res, err
	}
	t.pcg = rand.NewPCG(uint64(cfg.Seed), 0x64617461) // "data"
	t.rng = rand.New(t.pcg)
	if dir := place.Resume; dir != "" {
		if t.startStep, err = t.restore(dir); err != nil {
			return res, startErr(ctx, "restoring the checkpoint", err)
		}
		if err := t.opt.restored(); err != nil {
			return res, fmt.Errorf("resume: %w", err)
		}
		fmt.Fprintf(stderr, "train: resumed from %s after step %d\n", dir, t.startStep)
		if t.resumedTotal > 0 && t.resumedTotal != cfg.Train.Steps {
			fmt.Fprintf(stderr, "train: warning: the checkpoint's run had train.steps %d and this one has %d: the learning-rate schedule is stretched to the new length, so the rate after step %d changes from %.3g to %.3g\n",
				t.resumedTotal, cfg.Train.Steps, t.startStep, t.scheduleAt(t.resumedTotal, t.startStep), t.sched.LR(t.startStep))
		}
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
	d.recordCommEvents(t.log.Logger)
	defer func() {
		d.recordCommEvents(nil)
		t.log.close(err)
	}()
	optPlace, nccl := t.opt.where()
	startAttrs := []any{"world", d.plan.World, "stage", d.me.Stage, "replica", d.me.Replica, "device", be.Name(), "precision", opts.Compute.String(),
		"model", cfg.Model, "method", cfg.Train.Method, "layers", d.me.RangeString(),
		"embed", d.me.Embed, "head", d.me.Head, "zero1", d.zero1, "optimizer", optPlace, "nccl", nccl, "trainable_values", t.flat.values(), "heap_bytes", host.HeapBytes(),
		"long_examples", long.count, "longest_example", long.longest, "seq_len", cfg.Data.SeqLen}
	if d.plan.World > 1 {
		startAttrs = append(startAttrs, "job_token", d.launch.TokenSource, "comm_timeout_s", d.launch.Timeout.Seconds(), "comm_timeout_from", d.launch.TimeoutSource)
	}
	t.log.start(startAttrs...)
	for _, n := range t.pending {
		n.record(t.log)
	}

	// Plan the activations of the training batch shape now, in every slot, so
	// the memory report is the whole of a step's and no step allocates.
	slots, err := activationSlots(cfg, d)
	if err != nil {
		return res, err
	}
	for c, m := range chunks {
		if err := m.SetSlots(slots[c]); err != nil {
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
	if err := interrupted(ctx, "setting up"); err != nil {
		return res, err
	}
	cut := ""
	if long.count > 0 {
		cut = fmt.Sprintf(" (%d longer than data.seq_len %d, cut to it; the longest has %d tokens)", long.count, cfg.Data.SeqLen, long.longest)
	}
	fmt.Fprintf(stderr, "train: %s on %s in %v, %s, %s trainable values on rank 0, %d training and %d eval examples%s, run dir %s\n",
		cfg.Model, be.Name(), opts.Compute, cfg.Train.Method, model.HumanCount(t.flat.values()), trainSet.Len(), evalSet.Len(), cut, cfg.RunDir)
	if d.plan.World > 1 {
		fmt.Fprint(stderr, d.plan.String())
	}
	samples := task != nil && d.plan.Stages == 1
	if samples && d.IsRoot() {
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
	if !res.Stopped && t.hasEval() {
		if evalLoss, evalTokens, err = t.evaluate(); err != nil {
			return res, err
		}
		if err := t.writeMetric(map[string]any{"step": res.Steps, "eval_loss": evalLoss, "eval_tokens": evalTokens}); err != nil {
			return res, err
		}
	}
	if samples && d.IsRoot() && !res.Stopped {
		if err := t.showSamples(task, "after training", stdout); err != nil {
			return res, err
		}
	}
	saved, err := t.saveOutputs(w)
	if err != nil {
		return res, err
	}
	elapsed := time.Since(start)
	if res.Stopped {
		fmt.Fprintf(stdout, "stopped by signal after step %d of %d; checkpoint written: continue with -resume\n", res.Steps, cfg.Train.Steps)
	}
	fmt.Fprintf(stdout, "done: %d steps, %s tokens in %s; %s; %s%s\n", res.Steps, model.HumanCount(int64(res.Tokens)), elapsed.Round(time.Second),
		trainLossSummary(res), evalSummary(res, evalLoss, evalTokens), truncationSummary(res, cfg.Data.SeqLen))
	fmt.Fprintf(stdout, "outputs: %s (metrics.jsonl, config.toml%s)\n", cfg.RunDir, saved)
	return res, nil
}

// trainLossSummary compares the training loss at the start and the end of
// the steps this process ran, each the mean of up to ten steps, as one
// step's loss is noisy.
func trainLossSummary(res Result) string {
	switch res.MeanSteps {
	case 0:
		return fmt.Sprintf("train loss %.4f -> %.4f", res.First, res.Last)
	case 1:
		return fmt.Sprintf("train loss %.4f -> %.4f (first and last step)", res.FirstMean, res.LastMean)
	}
	return fmt.Sprintf("train loss %.4f -> %.4f (means of the first and last %d steps)", res.FirstMean, res.LastMean, res.MeanSteps)
}

// evalSummary is the final evaluation, or why there was none: a stopped run
// skips it.
func evalSummary(res Result, loss float64, tokens int) string {
	if !res.Stopped && tokens == 0 && math.IsNaN(loss) {
		return "no evaluation (no eval examples: -eval-fraction 0 and no -eval-data)"
	}
	if !res.Stopped {
		return fmt.Sprintf("eval loss %.4f over %d tokens (best %.4f)", loss, tokens, min(loss, res.BestEval))
	}
	if math.IsInf(res.BestEval, 1) {
		return "final evaluation skipped (stopped by a signal)"
	}
	return fmt.Sprintf("final evaluation skipped (stopped by a signal); best eval loss during the run %.4f", res.BestEval)
}

// truncationSummary counts the examples the steps cut to the sequence length.
func truncationSummary(res Result, seqLen int) string {
	if res.Truncated == 0 {
		return ""
	}
	return fmt.Sprintf("; %d examples drawn were cut to data.seq_len %d", res.Truncated, seqLen)
}

// reportMemory logs what the model and the device optimizer hold on the device,
// part by part, and prints it on rank 0.
func (t *trainer) reportMemory(stderr io.Writer) {
	parts := chunkMemory(t.chunks)
	if b := t.opt.deviceBytes(); b > 0 {
		parts = append(parts, model.MemoryPart{Name: "optimizer state (f32)", Bytes: b})
	}
	var total int64
	var fields []any
	var words []string
	note := ""
	for _, p := range parts {
		fields = append(fields, logKey(p.Name)+"_bytes", p.Bytes)
		if p.Host {
			note += fmt.Sprintf("; %s %s in host memory", p.Name, shard.FormatBytes(p.Bytes))
			continue
		}
		total += p.Bytes
		words = append(words, p.Name+" "+shard.FormatBytes(p.Bytes))
	}
	t.log.Info("memory", append(fields, "total_bytes", total)...)
	if place, _ := t.opt.where(); device.IsGPU(t.be) && place == "host" {
		note = " (the optimizer state is on the host)"
	}
	fmt.Fprintf(stderr, "train: memory on %s: %s; total %s%s\n", t.be.Name(), strings.Join(words, ", "), shard.FormatBytes(total), note)
}

// chunkMemory is the device memory of a rank's models, part by part: with
// several chunks, each part summed over them.
func chunkMemory(chunks []*model.Model) []model.MemoryPart {
	var parts []model.MemoryPart
	at := map[string]int{}
	for _, m := range chunks {
		for _, p := range m.Memory() {
			if i, ok := at[p.Name]; ok {
				parts[i].Bytes += p.Bytes
				continue
			}
			at[p.Name] = len(parts)
			parts = append(parts, p)
		}
	}
	return parts
}

// scheduleAt is the learning rate at step of this run's schedule had it been
// total steps long.
func (t *trainer) scheduleAt(total, step int) float64 {
	s := t.sched
	s.Total = total
	return s.LR(step)
}

// logKey turns a label into a log key: "weights (bf16)" -> "weights_bf16".
func logKey(label string) string {
	f := strings.FieldsFunc(strings.ToLower(label), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	})
	return strings.Join(f, "_")
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

// NF4Options is how a run holds its base weights in 4 bits: nil unless
// train.method is qlora, then model.NF4Layout's. A bitsandbytes 4-bit
// checkpoint cannot be fully fine-tuned: its weights are frozen codes.
func NF4Options(cfg config.Config) (*quant.Options, error) {
	layout, stored, err := model.NF4Layout(cfg.Model)
	switch {
	case err != nil:
		return nil, err
	case stored && cfg.Train.Method == "full":
		return nil, fmt.Errorf("model %s is a bitsandbytes 4-bit checkpoint: its base weights are frozen 4-bit codes, so it cannot be fully fine-tuned; use -method qlora (trains adapters on the 4-bit weights as stored) or -method lora", cfg.Model)
	case cfg.Train.Method != "qlora":
		return nil, nil
	}
	return layout, nil
}

// newAdapter returns the LoRA adapter a run trains (nil in full fine-tuning): a
// fresh one, or the saved adapter lora.init_adapter names, whose hyper-parameters
// must be this run's.
func newAdapter(cfg config.Config, mc *model.Config) (*model.LoRA, error) {
	if cfg.Train.Method == "full" {
		return nil, nil // preflight refused the methods this build cannot train
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
