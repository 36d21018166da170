package config

import (
	"flag"
	"fmt"
	"strings"
)

// BindFlags registers a flag for every commonly changed key, bound to c's fields,
// so that flags parsed after c was loaded override the file. Each flag's help names
// the TOML key it sets.
func BindFlags(fs *flag.FlagSet, c *Config) {
	s := func(p *string, name, key, usage string) { fs.StringVar(p, name, *p, usage+" ("+key+")") }
	i := func(p *int, name, key, usage string) { fs.IntVar(p, name, *p, usage+" ("+key+")") }
	f := func(p *float64, name, key, usage string) { fs.Float64Var(p, name, *p, usage+" ("+key+")") }
	b := func(p *bool, name, key, usage string) { fs.BoolVar(p, name, *p, usage+" ("+key+")") }

	s(&c.Model, "model", "model", "Hugging Face model directory, or random:NAME (random:tiny, random:llama-3.2-1b, random:llama-3.1-8b, random:llama-3.1-70b)")
	s(&c.Tokenizer, "tokenizer", "tokenizer", "tokenizer.json or a directory holding one; empty: the model directory's own")
	s(&c.Device, "device", "device", "cpu, cuda or auto")
	s(&c.Precision, "precision", "precision", "auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16")
	s(&c.RunDir, "run", "run_dir", "directory for logs, the effective config and checkpoints; default runs/<model>-<method>, or its next free name runs/<model>-<method>-N when another run used it")
	fs.Int64Var(&c.Seed, "seed", c.Seed, "seed for initialisation, dropout and data order (seed)")

	s(&c.Data.Train, "data", "data.train", "training data, JSONL; empty: the embedded generated task")
	s(&c.Data.Eval, "eval-data", "data.eval", "evaluation data, JSONL; empty: a split of the training data")
	f(&c.Data.EvalFraction, "eval-fraction", "data.eval_fraction", "fraction of the training data held out for evaluation")
	i(&c.Data.SeqLen, "seq", "data.seq_len", "tokens per training sequence; at most the model's max_position_embeddings")
	b(&c.Data.AllowLongSeq, "allow-long-seq", "data.allow_long_seq", "allow -seq beyond the model's max_position_embeddings (positions it was never trained on)")
	b(&c.Data.Pack, "pack", "data.pack", "pack short examples into full sequences")
	b(&c.Data.PromptLoss, "prompt-loss", "data.prompt_loss", "also train on prompt tokens")
	b(&c.Data.SkipBadLines, "skip-bad-lines", "data.skip_bad_lines", "count and skip malformed data lines instead of stopping")
	s(&c.Data.Columns, "data-columns", "data.columns", `rename the dataset's keys or Parquet columns to the formats' ("instruction=question,output=answer")`)
	s(&c.Data.Cache, "data-cache", "data.cache", "folder of token caches (the data tokenized once); empty: RUN_DIR/data-cache")

	s(&c.Train.Method, "method", "train.method", "lora, qlora or full")
	fs.BoolFunc("lora", "LoRA on the configured targets with lora.rank and lora.alpha (same as -method lora)", func(v string) error {
		switch v {
		case "true":
			c.Train.Method = "lora"
		case "false":
			c.Train.Method = "full"
		default:
			return fmt.Errorf("-lora takes no value or true/false, not %q", v)
		}
		return nil
	})
	i(&c.Train.Steps, "steps", "train.steps", "optimizer steps")
	i(&c.Train.MicroBatch, "batch", "train.micro_batch", "sequences per forward/backward pass")
	i(&c.Train.GradAccum, "grad-accum", "train.grad_accum", "micro-batches per optimizer step")
	f(&c.Train.LR, "lr", "train.lr", "peak learning rate")
	i(&c.Train.WarmupSteps, "warmup", "train.warmup_steps", "linear warm-up steps")
	s(&c.Train.Schedule, "schedule", "train.schedule", "cosine, linear or constant after warm-up")
	f(&c.Train.WeightDecay, "weight-decay", "train.weight_decay", "AdamW weight decay")
	f(&c.Train.MaxGradNorm, "max-grad-norm", "train.max_grad_norm", "clip the global gradient norm; 0 is off")
	i(&c.Train.LossScaleWindow, "loss-scale-window", "train.loss_scale_window", "fp16: clean steps in a row that double the loss scale (an overflow halves it)")
	b(&c.Train.ActivationCheckpointing, "activation-checkpointing", "train.activation_checkpointing", "recompute each layer in backward to save memory")
	b(&c.Train.OffloadActivations, "offload-activations", "train.offload_activations", "with -activation-checkpointing, keep the saved layer inputs in (pinned) host memory instead of on the GPU: long contexts on big models")
	b(&c.Train.KeepAttention, "keep-attention", "train.keep_attention", "with -activation-checkpointing, keep each layer's attention output (T x heads x head dim) so the backward does not recompute the attention: faster at long T for that memory")
	i(&c.Train.LogEvery, "log-every", "train.log_every", "steps between progress lines")
	i(&c.Train.EvalEvery, "eval-every", "train.eval_every", "steps between evaluations; 0: only at the end")

	i(&c.LoRA.Rank, "lora-rank", "lora.rank", "LoRA rank r")
	f(&c.LoRA.Alpha, "lora-alpha", "lora.alpha", "LoRA alpha (scale alpha/r)")
	f(&c.LoRA.Dropout, "lora-dropout", "lora.dropout", "dropout on the LoRA branch's input")
	b(&c.LoRA.RSLoRA, "rslora", "lora.rslora", "scale by alpha/sqrt(r)")
	s(&c.LoRA.InitAdapter, "init-adapter", "lora.init_adapter", "start from this peft adapter instead of a fresh one")
	fs.Func("lora-targets", "comma-separated projections that get adapters (lora.targets; default "+strings.Join(c.LoRA.Targets, ",")+")", func(v string) error {
		c.LoRA.Targets = nil
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				c.LoRA.Targets = append(c.LoRA.Targets, t)
			}
		}
		return nil
	})

	i(&c.Ckpt.Every, "ckpt-every", "ckpt.every", "steps between checkpoints; 0: only at the end and on a signal")
	f(&c.Ckpt.Minutes, "ckpt-minutes", "ckpt.minutes", "minutes between checkpoints; 0 is off")
	i(&c.Ckpt.KeepLast, "ckpt-keep", "ckpt.keep_last", "complete checkpoints to keep")
	b(&c.Ckpt.Compress, "ckpt-compress", "ckpt.compress", "zstd-compress checkpoints")
	fs.Var(resumeFlag{&c.Ckpt.Resume}, "resume", "resume from the newest complete checkpoint of the run directory, or -resume=DIR (ckpt.resume)")
	b(&c.Ckpt.ResumeAnyBase, "resume-any-base", "ckpt.resume_any_base", "resume even when the checkpoint was trained on another base model (other weights or seed), with a warning")
	b(&c.Ckpt.Overwrite, "overwrite", "ckpt.overwrite", "start over in a run directory that holds another run, moving its contents aside to RUN.old-<date>-<time>")

	i(&c.Parallel.PP, "pp", "parallel.pp", "pipeline stages; data-parallel replicas = ranks / pp")
	b(&c.Parallel.Zero1, "zero1", "parallel.zero1", "partition optimizer state across data-parallel replicas")
	i(&c.Parallel.PPChunks, "pp-chunks", "parallel.pp_chunks", "interleaved 1F1B: layer ranges per pipeline stage (virtual stages); 1 is plain 1F1B")
	b(&c.Parallel.KeepActivations, "keep-activations", "parallel.keep_activations", "pipeline stages keep every in-flight micro-batch's activations instead of recomputing them (faster, more memory)")
	i(&c.Parallel.TimeoutSeconds, "timeout", "parallel.timeout_seconds", "seconds a rank waits on another (to connect, or for a heartbeat) before the job fails; TRAIN_COMM_TIMEOUT and -comm-timeout override it")
}

// ConfigPath finds -config FILE (or -config=FILE) among args before the flags are
// parsed, because the file must be loaded first for flags to override it.
func ConfigPath(args []string) string {
	for i, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if a == "config" && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "config="); ok {
			return v
		}
		if a == "" { // "--" ends the flags
			break
		}
	}
	return ""
}

// resumeFlag is -resume alone ("latest") or -resume=DIR. ResumeArgs lets
// "-resume DIR" (a space) work too.
type resumeFlag struct{ p *string }

func (r resumeFlag) String() string {
	if r.p == nil {
		return ""
	}
	return *r.p
}

func (r resumeFlag) Set(v string) error {
	if v == "true" {
		v = "latest"
	} else if v == "false" {
		v = ""
	}
	*r.p = v
	return nil
}

func (r resumeFlag) IsBoolFlag() bool { return true }

// ResumeArgs rewrites "-resume DIR" as "-resume=DIR", since a flag that may stand
// alone cannot take a separate value in the flag package.
func ResumeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if (a == "-resume" || a == "--resume") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out = append(out, "-resume="+args[i+1])
			i++
			continue
		}
		out = append(out, a)
	}
	return out
}
