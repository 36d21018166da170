package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"train/bench"
	"train/ckpt"
	"train/collective"
	"train/model"
)

// runBench runs a benchmark against a peer measured in the same run:
// `train bench collective | pipeline | ckpt | model`.
func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			_, err := fmt.Fprint(stdout, `train bench times a part of training against a peer measured in the same run.

Usage:
  train bench collective   all-reduce bus bandwidth of the TCP ring against raw TCP streams (mpirun -np N)
  train bench pipeline     pipeline-parallel steps: the measured bubble against (P-1)/(M+P-1), 1F1B and interleaved (mpirun -np P)
  train bench ckpt         checkpoint write and read throughput against writing the raw bytes
  train bench model        training-step throughput of one model on one device (tokens/s, TFLOP/s, memory)

Run "train bench <benchmark> -h" for its flags.
`)
			return err
		case "model":
			return benchModel(args[1:], stdout, stderr)
		case "pipeline":
			return benchPipeline(args[1:], stdout, stderr)
		case "ckpt":
			return benchCkpt(args[1:], stdout, stderr)
		case "collective":
			return benchCollective(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("which benchmark? (train bench collective | pipeline | ckpt | model)")
	}
	return usagef("unknown benchmark %q (there are: collective, pipeline, ckpt, model)", args[0])
}

// benchModel is `train bench model`: training-step throughput of one model on
// one device (bench.Model), with the training run's optimizer on the device.
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
	method := fs.String("method", "full", "full (every weight trained), lora, or qlora (LoRA on 4-bit NF4 base weights)")
	loraRank := fs.Int("lora-rank", 16, "LoRA rank r (-method lora), on all seven projections")
	loraAlpha := fs.Float64("lora-alpha", 32, "LoRA alpha (-method lora)")
	seq := fs.Int("seq", 256, "tokens per sequence T")
	batch := fs.Int("batch", 1, "sequences per step B")
	steps := fs.Int("steps", 5, "timed steps")
	warmup := fs.Int("warmup", 2, "untimed steps first (kernel loading, allocation, caches)")
	deviceName := fs.String("device", "auto", "cpu, cuda, or auto (the GPU when there is one)")
	gpu := fs.Int("gpu", -1, "GPU ordinal; -1 takes the launcher's local rank, as training does (0 without a launcher)")
	precision := fs.String("precision", "fp32", "compute type: fp32, bf16 or fp16 (mixed precision: F32 master weights and gradients of trained tensors; fp16 is timed without loss scaling)")
	checkpoint := fs.Bool("checkpoint", false, "activation checkpointing: keep each layer's input, recompute the layer in backward")
	offload := fs.Bool("offload", false, "with -checkpoint, keep those layer inputs in host memory")
	keepAttn := fs.Bool("keep-attention", false, "with -checkpoint, keep each layer's attention output: no attention recompute")
	seed := fs.Int64("seed", 1, "seed of the random weights, token ids and hidden states")
	asJSON := fs.Bool("json", false, "print one JSON object on one line instead of text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	if *precision != "fp32" && *precision != "bf16" && *precision != "fp16" {
		return usagef("-precision %q: want fp32, bf16 or fp16", *precision)
	}
	if *part != "model" && *part != "layers" {
		return usagef("-part %q: want model or layers", *part)
	}
	if *method != "full" && *method != "lora" && *method != "qlora" {
		return usagef("-method %q: want full, lora or qlora", *method)
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
	case *offload && !*checkpoint:
		return usagef("-offload needs -checkpoint: the layer inputs it keeps are what goes to host memory")
	case *keepAttn && !*checkpoint:
		return usagef("-keep-attention needs -checkpoint")
	case *method != "full" && *loraRank < 1:
		return usagef("-lora-rank %d: must be at least 1", *loraRank)
	}
	cfg, err := model.SourceConfig(*modelName)
	if err != nil {
		return usagef("-model: %v", err)
	}
	opts := bench.ModelOptions{
		Model: *modelName, Layers: cfg.NumLayers, Part: *part, Method: *method,
		LoRARank: *loraRank, LoRAAlpha: *loraAlpha, Seq: *seq, Batch: *batch,
		Steps: *steps, Warmup: *warmup, Device: *deviceName, GPU: *gpu,
		Precision: *precision, Checkpoint: *checkpoint, Offload: *offload, KeepAttn: *keepAttn, Seed: *seed, JSON: *asJSON,
	}
	if *layers > 0 {
		opts.Layers = *layers
	}
	if _, _, total := opts.Stage(); !model.IsRandomModel(*modelName) && total > cfg.NumLayers {
		if *part == "layers" {
			return usagef("-part layers on %s (%d layers) needs -layers at most %d: one layer on each side stays out", *modelName, cfg.NumLayers, cfg.NumLayers-2)
		}
		return usagef("-layers %d: %s has only %d", opts.Layers, *modelName, cfg.NumLayers)
	}
	if opts.Layers < 1 {
		return usagef("-layers: %s has no decoder layer to time", *modelName)
	}
	if opts.GPU < 0 {
		cc, err := collective.FromEnv(os.Getenv)
		if err != nil {
			return usagef("-gpu not given and the launcher's environment is unreadable: %v", err)
		}
		opts.GPU = cc.LocalRank
	}
	return bench.Model(opts, stdout, stderr)
}

// benchPipeline is `train bench pipeline`: the pipeline bubble of real
// training steps against the 1F1B theory (bench.Pipeline).
func benchPipeline(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench pipeline", `Usage: mpirun -np P train bench pipeline [flags]

Trains -steps steps for each number of micro-batches in -micro with every rank
one pipeline stage, and prints per M the bubble theory predicts for 1F1B,
(P-1)/(M+P-1), and the bubble measured: time a stage waited on its neighbours
over its step time, averaged over stages and steps (the first step, warm-up,
left out). Where M is a multiple of P it also trains interleaved 1F1B with
-chunks layer ranges per stage and prints its theory, (P-1)/(V*M+P-1), its
measured bubble and step time, and its bubble simulated with every virtual
stage alike. Stages other than the last recompute a micro-batch's forward before
its backward (activations are kept per stage for one micro-batch), which makes
them slower than the last stage and shifts the measured bubble from the theory.`, stderr)
	cf := collective.AddFlags(fs)
	modelName := fs.String("model", "random:tiny", "model (its layers must be at least the number of ranks)")
	micro := fs.String("micro", "1,2,4,8,16", "comma-separated micro-batch counts M")
	steps := fs.Int("steps", 4, "steps per M (the first is not measured)")
	seq := fs.Int("seq", 64, "tokens per sequence")
	batch := fs.Int("batch", 4, "sequences per micro-batch")
	chunks := fs.Int("chunks", 2, "also run interleaved 1F1B with this many layer ranges per stage, at each M that is a multiple of P (1: 1F1B only)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *chunks < 1 {
		return usagef("-chunks %d: need at least 1", *chunks)
	}
	var ms []int
	for _, f := range strings.Split(*micro, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || m < 1 {
			return usagef("-micro: %q is not a positive count", f)
		}
		ms = append(ms, m)
	}
	if *steps < 2 {
		return usagef("-steps %d: need at least 2 (the first is warm-up)", *steps)
	}
	if _, err := cf.Config(os.Getenv); err != nil {
		return usagef("%v", err)
	}
	return bench.Pipeline(cf, bench.PipelineOptions{Model: *modelName, Micro: ms, Steps: *steps, Seq: *seq, Batch: *batch, Chunks: *chunks}, stdout)
}

// benchCkpt is `train bench ckpt`: checkpoint save and load throughput and
// compressed size (bench.Ckpt).
func benchCkpt(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench ckpt", `train bench ckpt [flags]

Save and load one rank's checkpoint (ckpt.NewShardWriter ... Commit, then
ckpt.Open and reading every tensor back) and report throughput in GB/s of
tensor bytes and the stored size, for: raw (no compression), plain zstd, and
zstd with byte grouping (the default), on real weights (-model safetensors, as
fp32 and converted to bf16) and on a random-init model (-random). Saves include
every fsync; loads read what was just written (page cache) and verify every
checksum.`, stderr)
	st := fs.String("model", "../shared/models/stories260K/model.safetensors", "safetensors file of real (trained) weights; empty to skip")
	random := fs.String("random", "random:small", "random-init architecture (random:NAME); empty to skip")
	layers := fs.Int("layers", 0, "decoder layers of -random to include, with the embedding (0 = all)")
	dir := fs.String("dir", "", "directory for the checkpoints (default: a new temporary one, removed after)")
	level := fs.Int("level", ckpt.DefaultLevel, "zstd level")
	workers := fs.Int("workers", 0, "compression workers (0 = GOMAXPROCS)")
	budget := fs.Duration("time", time.Second, "measuring time per case (at least 2 runs; the best counts)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *random != "" {
		if _, err := model.RandomConfig(*random); err != nil {
			return usagef("-random: %v", err)
		}
	}
	return bench.Ckpt(bench.CkptOptions{
		Safetensors: *st, Random: *random, Layers: *layers, Dir: *dir,
		Level: *level, Workers: *workers, Time: *budget,
	}, stdout)
}

// benchCollective is `train bench collective`: the ring all-reduce across the
// job against a raw TCP stream (bench.Collective).
func benchCollective(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench collective", `train bench collective [flags]

Measure all-reduce (ring: reduce-scatter + all-gather over TCP) across the job
for buffers from -min to -max bytes, doubling, and a raw TCP stream over
loopback on rank 0 in the same run (the peer: one socket, one writer, one
reader, no reduction). Rank 0 prints, per size, the time per all-reduce, the
algorithm bandwidth (bytes / time), the bus bandwidth (algorithm bandwidth x
2(n-1)/n, the bytes each link carries; comparable across rank counts), and its
ratio to the raw stream.`, stderr)
	cf := collective.AddFlags(fs)
	minBytes := fs.Int("min", 1<<20, "smallest buffer in bytes")
	maxBytes := fs.Int("max", 256<<20, "largest buffer in bytes")
	dtype := fs.String("dtype", "float32", "element type: float32 or bf16")
	budget := fs.Duration("time", 2*time.Second, "measuring time per size (at least 3 all-reduces)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *minBytes < 4 || *maxBytes < *minBytes {
		return usagef("need 4 <= -min <= -max")
	}
	if *dtype != "float32" && *dtype != "bf16" {
		return usagef("-dtype %q: want float32 or bf16", *dtype)
	}
	cfg, err := cf.Config(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	return bench.Collective(cfg, bench.CollectiveOptions{MinBytes: *minBytes, MaxBytes: *maxBytes, DType: *dtype, Time: *budget}, stdout)
}
