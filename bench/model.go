package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"train/config"
	"train/device"
	"train/host"
	"train/model"
	"train/ops"
	"train/optim"
	"train/trainer"
)

// ModelOptions says what Model times. The command line has checked them: Part,
// Method, Device and Precision are values listed here, Layers, Seq, Batch and
// Steps are at least 1 (Seq at least 2 for Part "model"), and the model has
// the layers Stage asks for.
type ModelOptions struct {
	Model      string  // random:NAME or a Hugging Face directory
	Layers     int     // decoder layers timed
	Part       string  // "model" (embedding, layers, norm, head and loss) or "layers" (the decoder layers alone)
	Method     string  // "full" (every weight trained), "lora" or "qlora" (LoRA on 4-bit NF4 base weights)
	LoRARank   int     // r, on all seven projections (methods lora and qlora)
	LoRAAlpha  float64 // methods lora and qlora
	Seq        int     // tokens per sequence T
	Batch      int     // sequences per step B
	Steps      int     // timed steps
	Warmup     int     // untimed steps first
	Device     string  // "cpu", "cuda" or "auto"
	GPU        int     // the GPU's ordinal
	Precision  string  // compute type: "fp32" or "bf16"
	Checkpoint bool    // activation checkpointing
	Offload    bool    // with Checkpoint, the layer inputs in host memory
	KeepAttn   bool    // with Checkpoint, every layer's attention output kept (no attention recompute)
	Seed       int64   // of the random weights, token ids and hidden states
	JSON       bool    // print one JSON object on one line instead of text

	// newOptimizer, when not nil, replaces the trainer's device AdamW: tests
	// count the updates with it.
	newOptimizer func(m *model.Model, be ops.Backend) (optimizer, error)
}

// optimizer is the AdamW update that ends each step of a LoRA run:
// trainer.DeviceAdamW, the code a GPU run trains with, not a copy of it.
type optimizer interface {
	Step(lr, clip float64) // one update of every trainable tensor, on the device
	Close()                // frees its device memory
}

// Stage is the part of the model a run builds: layers [lo, hi) of a config of
// total layers. Part "model" is the whole model of Layers layers; Part
// "layers" is a middle pipeline stage, one layer before it and one after, so
// that it runs neither the embedding nor the head.
func (o ModelOptions) Stage() (lo, hi, total int) {
	if o.Part == "layers" {
		return 1, o.Layers + 1, o.Layers + 2
	}
	return 0, o.Layers, o.Layers
}

// newDeviceAdamW is the trainer's AdamW on the device with the training
// defaults.
func newDeviceAdamW(m *model.Model, be ops.Backend) (optimizer, error) {
	tc := config.Default().Train
	return trainer.NewDeviceAdamW(be, m, optim.AdamW{Beta1: tc.Beta1, Beta2: tc.Beta2, Eps: tc.Eps, WeightDecay: tc.WeightDecay})
}

// Model is `train bench model`: it times training steps of one model on one
// device and prints the result to stdout as scripts/bench-peer.py prints
// PyTorch's, so that scripts/gpu-check.sh can set the two side by side. The
// model being built is reported on stderr. With LoRA and QLoRA each step ends
// with the training run's own AdamW on the device (trainer.DeviceAdamW: F32
// moments allocated once, the bf16 compute copies rewritten by the update),
// without clipping, as the PyTorch case has none.
func Model(opts ModelOptions, stdout, stderr io.Writer) error {
	cfg, err := model.SourceConfig(opts.Model)
	if err != nil {
		return fmt.Errorf("bench model: %w", err)
	}
	lo, hi, total := opts.Stage()
	cfg.NumLayers = total

	be, err := device.Open(opts.Device, opts.GPU)
	if err != nil {
		return err
	}
	defer device.Close(be)
	compute, err := device.ComputeType(opts.Precision, be)
	if err != nil {
		return fmt.Errorf("bench model: %w", err)
	}
	mem := newMemProbe(be)

	fmt.Fprintf(stderr, "bench model: building %s layers [%d,%d) of %d on %s\n", opts.Model, lo, hi, cfg.NumLayers, be.Name())
	w, err := model.LoadSourceStage(context.Background(), opts.Model, cfg, opts.Seed, lo, hi, lo == 0, hi == cfg.NumLayers)
	if err != nil {
		return err
	}
	defer w.Close()
	mopts := model.Options{Lo: lo, Hi: hi, Checkpoint: opts.Checkpoint, Offload: opts.Offload, KeepAttention: opts.KeepAttn, Compute: compute}
	adapted := opts.Method != "full"
	if adapted {
		mopts.LoRA, err = model.NewLoRA(&w.Config, model.LoRAConfig{Rank: opts.LoRARank, Alpha: opts.LoRAAlpha}, uint64(opts.Seed))
		if err != nil {
			return err
		}
	}
	if opts.Method == "qlora" {
		if mopts.NF4, _, err = model.NF4Layout(opts.Model); err != nil {
			return fmt.Errorf("bench model: %w", err)
		}
	}
	m, err := model.NewModel(be, w, mopts)
	if err != nil {
		return fmt.Errorf("bench model: %w", err)
	}
	defer m.Close()

	run := &modelRun{be: be, m: m, B: opts.Batch, T: opts.Seq, layersOnly: opts.Part == "layers", mem: mem}
	defer run.free()
	if adapted {
		newOpt := opts.newOptimizer
		if newOpt == nil {
			newOpt = newDeviceAdamW
		}
		if run.opt, err = newOpt(m, be); err != nil {
			return fmt.Errorf("bench model: %w", err)
		}
	}
	if err := run.prepare(uint64(opts.Seed)); err != nil {
		return err
	}
	// A model that ignored Options.Compute would time the wrong precision
	// under the right label.
	if dt := m.StageOutput().DType(); dt != compute {
		return fmt.Errorf("bench model: -precision %s: the model's activations are %v, not %v", opts.Precision, dt, compute)
	}
	for i := 0; i < opts.Warmup; i++ {
		if _, err := run.step(); err != nil {
			return fmt.Errorf("bench model: warm-up step %d: %w", i+1, err)
		}
	}
	var elapsed time.Duration
	var loss float64
	for i := 0; i < opts.Steps; i++ {
		d, err := run.step()
		if err != nil {
			return fmt.Errorf("bench model: step %d: %w", i+1, err)
		}
		elapsed += d
		loss = run.loss
	}

	mc := m.Config()
	n := opts.Layers
	tokens := float64(opts.Batch) * float64(opts.Seq) * float64(opts.Steps)
	sec := elapsed.Seconds()
	res := modelResult{
		Impl: "train", Model: opts.Model, Part: opts.Part, Method: opts.Method, Precision: opts.Precision,
		Checkpoint: opts.Checkpoint, Offload: opts.Offload, KeepAttn: opts.KeepAttn, Device: be.Name(), GPU: mem.name, Layers: n,
		LayerParams: mc.LayerParams(), Batch: opts.Batch, Seq: opts.Seq, Warmup: opts.Warmup, Steps: opts.Steps,
		StepMS:       1000 * sec / float64(opts.Steps),
		TokensPerS:   tokens / sec,
		TFLOPs:       stepFLOPs(mc, n, opts.Batch, opts.Seq) * float64(opts.Steps) / sec / 1e12,
		FLOPsPerStep: stepFLOPs(mc, n, opts.Batch, opts.Seq),
		PeakGiB:      float64(mem.peak) / (1 << 30),
		Memory:       mem.what(),
		HostPeakGiB:  float64(host.PeakRSS()) / (1 << 30),
	}
	if adapted {
		res.LoRARank = opts.LoRARank
	}
	if !run.layersOnly {
		res.Loss = &loss
	}
	if opts.JSON {
		b, err := json.Marshal(res)
		if err != nil {
			return fmt.Errorf("bench model: %w", err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	res.print(stdout, mc)
	return nil
}

// modelResult is what Model prints; its JSON keys tokens_per_s, tflops,
// peak_gib and step_ms are those of scripts/bench-peer.py.
type modelResult struct {
	Impl         string   `json:"impl"`
	Model        string   `json:"model"`
	Part         string   `json:"part"`
	Method       string   `json:"method"`
	LoRARank     int      `json:"lora_rank,omitempty"`
	Precision    string   `json:"precision"`
	Checkpoint   bool     `json:"checkpoint"`
	Offload      bool     `json:"offload,omitempty"`
	KeepAttn     bool     `json:"keep_attention,omitempty"`
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
	Memory       string   `json:"memory"`        // what peak_gib measures
	HostPeakGiB  float64  `json:"host_peak_gib"` // the process's peak resident host memory
	Loss         *float64 `json:"loss,omitempty"`
}

func (r modelResult) print(w io.Writer, c model.Config) {
	what := "embedding, " + fmt.Sprint(r.Layers) + " decoder layers, norm, head and loss"
	if r.Part == "layers" {
		what = fmt.Sprint(r.Layers) + " decoder layers only (hidden states in, output gradient given)"
	}
	method := "full fine-tuning (forward + backward)"
	switch r.Method {
	case "lora":
		method = fmt.Sprintf("LoRA r=%d (forward + backward + AdamW)", r.LoRARank)
	case "qlora":
		method = fmt.Sprintf("QLoRA r=%d on 4-bit NF4 base weights (forward + backward + AdamW)", r.LoRARank)
	}
	ckpt := ""
	if r.Checkpoint {
		ckpt = ", activation checkpointing"
	}
	if r.KeepAttn {
		ckpt += " keeping the attention outputs"
	}
	if r.Offload {
		ckpt += " (layer inputs offloaded to host memory)"
	}
	on := r.Device
	if r.GPU != "" {
		on += " (" + r.GPU + ")"
	}
	fmt.Fprintf(w, "bench model: %s: %s, %s, %s%s, batch %d x %d tokens, on %s\n",
		r.Model, what, method, r.Precision, ckpt, r.Batch, r.Seq, on)
	fmt.Fprintf(w, "%d timed steps after %d warm-up: %.1f ms/step, %.0f tokens/s, %.4g TFLOP/s, peak %.2f GiB (%s), host peak RSS %.2f GiB",
		r.Steps, r.Warmup, r.StepMS, r.TokensPerS, r.TFLOPs, r.PeakGiB, r.Memory, r.HostPeakGiB)
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

// modelRun is the state of the timed loop: the model, the fixed inputs, the
// optimizer.
type modelRun struct {
	be         ops.Backend
	m          *model.Model
	B, T       int
	layersOnly bool
	mem        *memProbe

	batch    model.Batch
	scale    float32   // d(objective)/d(loss sum): 1/labels that count
	in, dout ops.Buf   // -part layers: the stage's input and its output's gradient, kept on the device
	opt      optimizer // -method lora: AdamW over the adapter
	loss     float64   // mean loss of the last step (not with -part layers)
}

// prepare plans the activations and draws the inputs once: token ids for the
// whole model, or hidden states and an output gradient for the layers alone,
// uploaded where the loop copies them from on the device (a copy per step, not
// a host transfer).
func (r *modelRun) prepare(seed uint64) error {
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
func (r *modelRun) upload(like ops.Buf, n int, rng *rand.Rand, std float64) (ops.Buf, error) {
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
func (r *modelRun) step() (time.Duration, error) {
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
		r.opt.Step(modelLR, 1)
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

// modelLR is the learning rate of the benchmark's AdamW steps; the value does
// not change the work, only keeps the weights from drifting far.
const modelLR = 1e-4

func (r *modelRun) free() {
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
