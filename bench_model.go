package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"train/collective"
	"train/config"
	"train/device"
	"train/host"
	"train/model"
	"train/ops"
	"train/optim"
	"train/trainer"
)

// benchModel is `train bench model`: training-step throughput of one model on
// one device, reported as scripts/bench-peer.py reports PyTorch's, so that
// scripts/gpu-check.sh can print the two side by side from the same run.
func benchModel(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench model", `train bench model [flags]

Time training steps of one model on one device: -warmup steps, then -steps
steps, each Forward + Backward (and with -method lora one AdamW update of the
adapter on the device), the device synchronised before the clock is read.
Weights are random (-model random:NAME, or a Hugging Face directory) and so are
the token ids (fixed seed). Prints tokens/s, step time, TFLOP/s and peak memory:
on a GPU the device memory in use after a step beyond what was in use when the
device was opened (like torch.cuda.max_memory_allocated, it leaves out the
CUDA context); on the CPU the Go heap in use.

TFLOP/s counts, as the peer numbers in DESIGN.md and scripts/bench-peer.py do,
6 x layer parameters x tokens + 6 x layers x T^2 x hidden per sequence, where
layer parameters are the decoder layers' own (the seven projections and two
norms each; not the embedding, final norm, head or LoRA adapters).

-part layers times only the decoder layers, as a middle pipeline stage: fixed
random hidden states in, a fixed random gradient of the output, the gradient
of the input computed. That is the peer case "4 decoder layers of the 70B shape":

  train bench model -model random:llama-3.1-70b -layers 4 -part layers \
      -method full -seq 2048 -device cuda -precision bf16
  train bench model -model random:llama-3.1-8b -method lora -lora-rank 16 \
      -checkpoint -seq 2048 -device cuda -precision bf16

Full fine-tuning times forward and backward only (no optimizer), as the
PyTorch case does; LoRA adds the AdamW step over the adapter.`, stderr)
	modelName := fs.String("model", "random:tiny", "model: random:NAME ("+strings.Join(model.RandomModelNames(), ", ")+") or a Hugging Face directory")
	layers := fs.Int("layers", 0, "decoder layers (0 = the model's own); random models take any count")
	part := fs.String("part", "model", "what runs: model (embedding, layers, norm, head and loss) or layers (the decoder layers only)")
	method := fs.String("method", "full", "full (every weight trained) or lora")
	loraRank := fs.Int("lora-rank", 16, "LoRA rank r (-method lora), on all seven projections")
	loraAlpha := fs.Float64("lora-alpha", 32, "LoRA alpha (-method lora)")
	seq := fs.Int("seq", 256, "tokens per sequence T")
	batch := fs.Int("batch", 1, "sequences per step B")
	steps := fs.Int("steps", 5, "timed steps")
	warmup := fs.Int("warmup", 2, "untimed steps first (kernel loading, allocation, caches)")
	deviceName := fs.String("device", "auto", "cpu, cuda, or auto (the GPU when there is one)")
	gpu := fs.Int("gpu", -1, "GPU ordinal; -1 takes the launcher's local rank, as training does (0 without a launcher)")
	precision := fs.String("precision", "fp32", "compute type: fp32, or bf16 (mixed precision: F32 master weights and gradients of trained tensors)")
	checkpoint := fs.Bool("checkpoint", false, "activation checkpointing: keep each layer's input, recompute the layer in backward")
	seed := fs.Int64("seed", 1, "seed of the random weights, token ids and hidden states")
	asJSON := fs.Bool("json", false, "print one JSON object on one line instead of text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	var compute ops.DType
	switch *precision {
	case "fp32":
		compute = ops.F32
	case "bf16":
		compute = ops.BF16
	default:
		return usagef("-precision %q: want fp32 or bf16", *precision)
	}
	if *part != "model" && *part != "layers" {
		return usagef("-part %q: want model or layers", *part)
	}
	if *method != "full" && *method != "lora" {
		return usagef("-method %q: want full or lora", *method)
	}
	if *deviceName != "cpu" && *deviceName != "cuda" && *deviceName != "auto" {
		return usagef("-device %q: want cpu, cuda or auto", *deviceName)
	}
	switch {
	case *layers < 0:
		return usagef("-layers %d: want 0 (the model's own) or more", *layers)
	case *seq < 1 || *batch < 1:
		return usagef("-seq %d -batch %d: both must be at least 1", *seq, *batch)
	case *part == "model" && *seq < 2:
		return usagef("-seq %d: the loss needs at least 2 tokens per sequence (a next token to predict)", *seq)
	case *steps < 1 || *warmup < 0:
		return usagef("-steps %d -warmup %d: need at least one timed step and no negative warm-up", *steps, *warmup)
	case *method == "lora" && *loraRank < 1:
		return usagef("-lora-rank %d: must be at least 1", *loraRank)
	}

	cfg, err := model.SourceConfig(*modelName)
	if err != nil {
		return usagef("-model: %v", err)
	}
	// The model runs layers [lo, hi) of a config of total layers: the whole
	// model, or for -part layers a middle stage between one layer before and
	// one after, which makes it run neither the embedding nor the head.
	n := cfg.NumLayers // decoder layers timed
	if *layers > 0 {
		n = *layers
	}
	lo, hi, total := 0, n, n
	if *part == "layers" {
		lo, hi, total = 1, n+1, n+2
	}
	if !model.IsRandomModel(*modelName) && total > cfg.NumLayers {
		if *part == "layers" {
			return usagef("-part layers on %s (%d layers) needs -layers at most %d: one layer on each side stays out", *modelName, cfg.NumLayers, cfg.NumLayers-2)
		}
		return usagef("-layers %d: %s has only %d", n, *modelName, cfg.NumLayers)
	}
	if n < 1 {
		return usagef("-layers: %s has no decoder layer to time", *modelName)
	}
	cfg.NumLayers = total

	if *gpu < 0 {
		cc, err := collective.FromEnv(os.Getenv)
		if err != nil {
			return usagef("-gpu not given and the launcher's environment is unreadable: %v", err)
		}
		*gpu = cc.LocalRank
	}
	be, err := device.Open(*deviceName, *gpu)
	if err != nil {
		return err
	}
	defer device.Close(be)
	mem := newMemProbe(be)

	fmt.Fprintf(stderr, "bench model: building %s layers [%d,%d) of %d on %s\n", *modelName, lo, hi, cfg.NumLayers, be.Name())
	w, err := model.LoadSourceStage(*modelName, cfg, *seed, lo, hi, lo == 0, hi == cfg.NumLayers)
	if err != nil {
		return err
	}
	opts := model.Options{Lo: lo, Hi: hi, Checkpoint: *checkpoint, Compute: compute}
	if *method == "lora" {
		opts.LoRA, err = model.NewLoRA(&w.Config, model.LoRAConfig{Rank: *loraRank, Alpha: *loraAlpha}, uint64(*seed))
		if err != nil {
			return err
		}
	}
	m, err := model.NewModel(be, w, opts)
	if err != nil {
		return fmt.Errorf("bench model: %w", err)
	}
	defer m.Close()

	run := &benchRun{be: be, m: m, B: *batch, T: *seq, layersOnly: *part == "layers", mem: mem}
	defer run.free()
	if *method == "lora" {
		// The trainer's optimizer on the device, as a GPU run uses it: F32
		// moments allocated once, the bf16 compute copies rewritten by the
		// update. No clipping (the PyTorch case has none).
		tc := config.Default().Train
		adam := optim.AdamW{Beta1: tc.Beta1, Beta2: tc.Beta2, Eps: tc.Eps, WeightDecay: tc.WeightDecay}
		if run.opt, err = trainer.NewDeviceAdamW(be, m, adam); err != nil {
			return err
		}
	}
	if err := run.prepare(uint64(*seed)); err != nil {
		return err
	}
	// A model that ignored Options.Compute would time the wrong precision
	// under the right label.
	if dt := m.StageOutput().DType(); dt != compute {
		return fmt.Errorf("bench model: -precision %s: the model's activations are %v, not %v", *precision, dt, compute)
	}
	for i := 0; i < *warmup; i++ {
		if _, err := run.step(); err != nil {
			return fmt.Errorf("bench model: warm-up step %d: %w", i+1, err)
		}
	}
	var elapsed time.Duration
	var loss float64
	for i := 0; i < *steps; i++ {
		d, err := run.step()
		if err != nil {
			return fmt.Errorf("bench model: step %d: %w", i+1, err)
		}
		elapsed += d
		loss = run.loss
	}

	mc := m.Config()
	tokens := float64(*batch) * float64(*seq) * float64(*steps)
	sec := elapsed.Seconds()
	res := benchModelResult{
		Impl: "train", Model: *modelName, Part: *part, Method: *method, Precision: *precision,
		Checkpoint: *checkpoint, Device: be.Name(), GPU: mem.name, Layers: n,
		LayerParams: mc.LayerParams(), Batch: *batch, Seq: *seq, Warmup: *warmup, Steps: *steps,
		StepMS:       1000 * sec / float64(*steps),
		TokensPerS:   tokens / sec,
		TFLOPs:       stepFLOPs(mc, n, *batch, *seq) * float64(*steps) / sec / 1e12,
		FLOPsPerStep: stepFLOPs(mc, n, *batch, *seq),
		PeakGiB:      float64(mem.peak) / (1 << 30),
		Memory:       mem.what(),
	}
	if *method == "lora" {
		res.LoRARank = *loraRank
	}
	if !run.layersOnly {
		res.Loss = &loss
	}
	if *asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	res.print(stdout, mc)
	return nil
}

// benchModelResult is what bench model prints; its JSON keys tokens_per_s,
// tflops, peak_gib and step_ms are those of scripts/bench-peer.py.
type benchModelResult struct {
	Impl         string   `json:"impl"`
	Model        string   `json:"model"`
	Part         string   `json:"part"`
	Method       string   `json:"method"`
	LoRARank     int      `json:"lora_rank,omitempty"`
	Precision    string   `json:"precision"`
	Checkpoint   bool     `json:"checkpoint"`
	Device       string   `json:"device"`
	GPU          string   `json:"gpu,omitempty"`
	Layers       int      `json:"layers"`
	LayerParams  int64    `json:"layer_params"`
	Batch        int      `json:"batch"`
	Seq          int      `json:"seq"`
	Warmup       int      `json:"warmup"`
	Steps        int      `json:"steps"`
	StepMS       float64  `json:"step_ms"`
	TokensPerS   float64  `json:"tokens_per_s"`
	TFLOPs       float64  `json:"tflops"`
	FLOPsPerStep float64  `json:"flops_per_step"`
	PeakGiB      float64  `json:"peak_gib"`
	Memory       string   `json:"memory"` // what peak_gib measures
	Loss         *float64 `json:"loss,omitempty"`
}

func (r benchModelResult) print(w io.Writer, c model.Config) {
	what := "embedding, " + fmt.Sprint(r.Layers) + " decoder layers, norm, head and loss"
	if r.Part == "layers" {
		what = fmt.Sprint(r.Layers) + " decoder layers only (hidden states in, output gradient given)"
	}
	method := "full fine-tuning (forward + backward)"
	if r.Method == "lora" {
		method = fmt.Sprintf("LoRA r=%d (forward + backward + AdamW)", r.LoRARank)
	}
	ckpt := ""
	if r.Checkpoint {
		ckpt = ", activation checkpointing"
	}
	on := r.Device
	if r.GPU != "" {
		on += " (" + r.GPU + ")"
	}
	fmt.Fprintf(w, "bench model: %s: %s, %s, %s%s, batch %d x %d tokens, on %s\n",
		r.Model, what, method, r.Precision, ckpt, r.Batch, r.Seq, on)
	fmt.Fprintf(w, "%d timed steps after %d warm-up: %.1f ms/step, %.0f tokens/s, %.4g TFLOP/s, peak %.2f GiB (%s)",
		r.Steps, r.Warmup, r.StepMS, r.TokensPerS, r.TFLOPs, r.PeakGiB, r.Memory)
	if r.Loss != nil {
		fmt.Fprintf(w, ", last loss %.4f", *r.Loss)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "TFLOP/s counts 6 x %d layer parameters (%s per decoder layer x %d) x tokens + 6 x %d layers x T^2 x %d hidden per sequence = %.4g FLOP/step\n",
		int64(r.Layers)*r.LayerParams, model.HumanCount(r.LayerParams), r.Layers, r.Layers, c.HiddenSize, r.FLOPsPerStep)
}

// stepFLOPs is the work of one training step over B sequences of T tokens
// through n decoder layers, by the peer numbers' convention: 6 FLOPs per layer
// parameter per token (2 forward, 4 backward), plus 6 x T^2 x hidden per layer
// and sequence for causal attention (the two T x T products, forward and
// backward, halved by the mask). Recomputation is not counted, so the figure
// compares runs with and without checkpointing by time alone.
func stepFLOPs(c model.Config, n, B, T int) float64 {
	tokens := float64(B) * float64(T)
	return 6*float64(n)*float64(c.LayerParams())*tokens +
		6*float64(n)*float64(B)*float64(T)*float64(T)*float64(c.HiddenSize)
}

// benchRun is the state of the timed loop: the model, the fixed inputs, the
// optimizer's moments.
type benchRun struct {
	be         ops.Backend
	m          *model.Model
	B, T       int
	layersOnly bool
	mem        *memProbe

	batch    model.Batch
	scale    float32              // d(objective)/d(loss sum): 1/labels that count
	in, dout ops.Buf              // -part layers: the stage's input and its output's gradient, kept on the device
	opt      *trainer.DeviceAdamW // -method lora: AdamW over the adapter
	loss     float64              // mean loss of the last step (not with -part layers)
}

// prepare plans the activations and draws the inputs once: token ids for the
// whole model, or hidden states and an output gradient for the layers alone,
// uploaded where the loop copies them from on the device (a copy per step, not
// a host transfer).
func (r *benchRun) prepare(seed uint64) error {
	r.m.SetTraining(true)
	if err := r.m.Plan(r.B, r.T); err != nil {
		return fmt.Errorf("bench model: %w", err)
	}
	N := r.B * r.T
	rng := rand.New(rand.NewPCG(seed, 0x62656e63)) // "benc"
	r.batch = model.Batch{B: r.B, T: r.T, Seed: seed}
	if !r.layersOnly {
		V := r.m.Config().VocabSize
		r.batch.IDs = make([]int32, N)
		for i := range r.batch.IDs {
			r.batch.IDs[i] = int32(rng.IntN(V))
		}
		r.scale = 1 / float32(max(model.LabelCount(&r.batch), 1))
		return nil
	}
	C := r.m.Config().HiddenSize
	var err error
	if r.in, err = r.upload(r.m.StageInput(), N*C, rng, 1); err != nil {
		return err
	}
	r.dout, err = r.upload(r.m.StageGrad(), N*C, rng, 1e-3)
	return err
}

// upload allocates a buffer of like's type holding n values drawn from
// N(0, std²).
func (r *benchRun) upload(like ops.Buf, n int, rng *rand.Rand, std float64) (ops.Buf, error) {
	if like == nil {
		return nil, fmt.Errorf("bench model: the model has no stage buffers after Plan")
	}
	host := make([]float32, n)
	for i := range host {
		host[i] = float32(std * rng.NormFloat64())
	}
	b, err := r.be.Alloc(like.DType(), n)
	if err != nil {
		return nil, fmt.Errorf("bench model: %w", err)
	}
	if err := r.be.Upload(b, host); err != nil {
		r.be.Free(b)
		return nil, fmt.Errorf("bench model: %w", err)
	}
	return b, nil
}

// step runs one training step and returns its duration, from a synchronised
// device to a synchronised device.
func (r *benchRun) step() (time.Duration, error) {
	if err := r.be.Sync(); err != nil {
		return 0, err
	}
	start := time.Now()
	m := r.m
	m.ZeroGrads()
	N := r.B * r.T
	C := m.Config().HiddenSize
	scale := r.scale
	if r.layersOnly {
		r.be.Copy(m.StageInput(), r.in, N*C)
		scale = 1 // the output gradient is given, already scaled
	}
	sum, count, err := m.Forward(&r.batch)
	if err != nil {
		return 0, err
	}
	if r.layersOnly {
		r.be.Copy(m.StageGrad(), r.dout, N*C)
	}
	if err := m.Backward(scale); err != nil {
		return 0, err
	}
	m.FinishGrads()
	if r.opt != nil {
		r.opt.Step(benchLR, 1)
	}
	if err := r.be.Sync(); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if count > 0 {
		r.loss = sum / float64(count)
	}
	r.mem.sample()
	return d, nil
}

// benchLR is the learning rate of the benchmark's AdamW steps; the value does
// not change the work, only keeps the weights from drifting far.
const benchLR = 1e-4

func (r *benchRun) free() {
	for _, b := range []ops.Buf{r.in, r.dout} {
		if b != nil {
			r.be.Free(b)
		}
	}
	if r.opt != nil {
		r.opt.Close()
	}
}

// memProbe tracks the peak memory of a benchmark: on a GPU, the device memory
// in use beyond what was in use when the backend opened; on the CPU, the Go
// heap in use.
type memProbe struct {
	gpu  device.GPU // nil on the CPU
	name string     // the GPU's name
	base int64
	peak int64
}

func newMemProbe(be ops.Backend) *memProbe {
	p := &memProbe{}
	if g, ok := be.(device.GPU); ok {
		if in, err := g.Info(); err == nil {
			p.gpu, p.name, p.base = g, in.Name, in.Total-in.FreeMem
		}
	}
	return p
}

// sample records the memory in use now if it is the most so far.
func (p *memProbe) sample() {
	var used int64
	if p.gpu != nil {
		in, err := p.gpu.Info()
		if err != nil {
			return
		}
		used = in.Total - in.FreeMem - p.base
	} else {
		used = int64(host.HeapBytes())
	}
	p.peak = max(p.peak, used)
}

func (p *memProbe) what() string {
	if p.gpu != nil {
		return "device memory in use after a step, beyond the context's"
	}
	return "Go heap in use after a step"
}
