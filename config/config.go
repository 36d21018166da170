// Package config is the run configuration: the TOML schema, its defaults (Default is
// the one place they are written), strict decoding, and validation.
//
// Decoding is strict because a typo in a key name that silently falls back to a default
// wastes a GPU-day: an unknown key, a value of the wrong type or a value out of range is
// an error that names the key and the file:line it came from. Command-line flags
// override the file; Encode writes the effective configuration back as TOML that
// decodes to the same values.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"train/collective"
	"train/data"
)

// Config is everything a run needs to know. The zero value is not useful; start from
// Default() or Load.
type Config struct {
	// Model is a Hugging Face model directory or random:NAME (random:tiny,
	// random:llama-3.2-1b, random:llama-3.1-8b, random:llama-3.1-70b).
	Model string `toml:"model"`
	// Tokenizer is a tokenizer.json or a directory holding one; empty means
	// the model directory's own.
	Tokenizer string `toml:"tokenizer"`
	// Device is "cpu", "cuda", or "auto" (the GPU when there is one).
	Device string `toml:"device"`
	// Precision is the type of weights and activations: "fp32", "bf16" (mixed
	// precision: float32 master weights, optimizer state and losses), "fp16"
	// (the same with half precision and dynamic loss scaling, for GPUs
	// without bf16), or "auto": bf16 on a GPU that has it, fp16 on older GPUs,
	// fp32 on the CPU (where both are only emulated).
	Precision string `toml:"precision"`
	// RunDir holds logs, the effective config and checkpoints; empty means
	// runs/<model name>-<method>.
	RunDir string `toml:"run_dir"`
	// Seed makes initialisation, dropout and data order reproducible.
	Seed int64 `toml:"seed"`

	Data     Data     `toml:"data"`
	Train    Train    `toml:"train"`
	LoRA     LoRA     `toml:"lora"`
	Parallel Parallel `toml:"parallel"`
	Ckpt     Ckpt     `toml:"ckpt"`
}

// Ckpt is when and how checkpoints are written, and where a run resumes from.
type Ckpt struct {
	// Every N optimizer steps a checkpoint; 0: only at the end and on a signal.
	Every int `toml:"every"`
	// Minutes between checkpoints (whichever of Every and Minutes comes first); 0 is off.
	Minutes float64 `toml:"minutes"`
	// KeepLast complete checkpoints are kept, plus every KeepEvery-th step's (0: none).
	KeepLast  int `toml:"keep_last"`
	KeepEvery int `toml:"keep_every"`
	// Compress with zstd (floats byte-grouped first) at Level (zstd's 1-22).
	Compress bool `toml:"compress"`
	Level    int  `toml:"level"`
	// ContinueOnError trains on when a checkpoint cannot be written (disk full,
	// unwritable run directory) instead of stopping; the warning is logged.
	ContinueOnError bool `toml:"continue_on_error"`
	// Resume is "" (start fresh), "latest" (the newest complete checkpoint in
	// run_dir), or a checkpoint directory.
	Resume string `toml:"resume"`
	// ResumeAnyBase resumes a checkpoint whose base model is not the one this
	// run loads (another directory's weights, another random seed), with a
	// warning, instead of refusing.
	ResumeAnyBase bool `toml:"resume_any_base"`
	// Overwrite starts a fresh run in a run directory that holds another
	// run's checkpoints or metrics, after moving that run aside to
	// RUN.old-<date>-<time> (nothing is deleted), instead of refusing.
	Overwrite bool `toml:"overwrite"`
}

// Data says what to train and evaluate on.
type Data struct {
	// Train is a JSONL file; empty means the embedded generated task.
	Train string `toml:"train"`
	// Eval is a JSONL file for evaluation; empty means a split of Train.
	Eval string `toml:"eval"`
	// EvalFraction of Train held out when Eval is empty.
	EvalFraction float64 `toml:"eval_fraction"`
	// SeqLen is the length of each packed or padded training sequence, in
	// tokens; longer examples are cut to it. It may not exceed the model's
	// max_position_embeddings unless AllowLongSeq is set.
	SeqLen int `toml:"seq_len"`
	// AllowLongSeq allows SeqLen beyond the model's max_position_embeddings:
	// positions the model was never trained on, which only a deliberate
	// context extension wants. The trainer checks it, knowing the model.
	AllowLongSeq bool `toml:"allow_long_seq"`
	// Pack short examples into full sequences (attention stays inside each example).
	Pack bool `toml:"pack"`
	// PromptLoss also trains on prompt / user tokens, not only completions.
	PromptLoss bool `toml:"prompt_loss"`
	// SkipBadLines turns a malformed data line into a counted warning.
	SkipBadLines bool `toml:"skip_bad_lines"`
	// Columns renames a dataset's keys (JSONL) or columns (Parquet) to the
	// ones the formats read: "ours=theirs,...", e.g. "instruction=question,output=answer".
	Columns string `toml:"columns"`
	// Cache is the folder of token caches (each dataset tokenized once, then
	// memory-mapped); empty means RUN_DIR/data-cache.
	Cache string `toml:"cache"`
}

// Train is the optimisation.
type Train struct {
	// Method is "lora", "qlora" (4-bit NF4 base weights) or "full".
	Method string `toml:"method"`
	// Steps is the number of optimizer steps.
	Steps int `toml:"steps"`
	// MicroBatch is sequences per forward/backward pass on one rank.
	MicroBatch int `toml:"micro_batch"`
	// GradAccum is micro-batches per optimizer step on one data-parallel replica.
	GradAccum int `toml:"grad_accum"`
	// LR is the peak learning rate.
	LR float64 `toml:"lr"`
	// MinLRRatio is the final learning rate as a fraction of LR.
	MinLRRatio float64 `toml:"min_lr_ratio"`
	// WarmupSteps ramp the learning rate linearly from 0.
	WarmupSteps int `toml:"warmup_steps"`
	// Schedule after warm-up: "cosine", "linear" or "constant".
	Schedule string `toml:"schedule"`
	// WeightDecay is AdamW's decoupled weight decay.
	WeightDecay float64 `toml:"weight_decay"`
	Beta1       float64 `toml:"beta1"`
	Beta2       float64 `toml:"beta2"`
	Eps         float64 `toml:"eps"`
	// MaxGradNorm clips the global gradient norm; 0 turns clipping off.
	MaxGradNorm float64 `toml:"max_grad_norm"`
	// LossScaleWindow is how many clean steps in a row double the loss scale
	// of fp16 training (dynamic loss scaling; an overflow halves it at once).
	LossScaleWindow int `toml:"loss_scale_window"`
	// ActivationCheckpointing keeps only each layer's input and recomputes in backward.
	ActivationCheckpointing bool `toml:"activation_checkpointing"`
	// OffloadActivations, with ActivationCheckpointing, keeps the saved layer
	// inputs in host memory instead of on the GPU.
	OffloadActivations bool `toml:"offload_activations"`
	// KeepAttention, with ActivationCheckpointing, also keeps each layer's
	// attention output, so the recomputation skips the attention.
	KeepAttention bool `toml:"keep_attention"`
	// LogEvery steps, a progress line.
	LogEvery int `toml:"log_every"`
	// EvalEvery steps, an evaluation; 0 evaluates only at the end.
	EvalEvery int `toml:"eval_every"`
}

// LoRA configures the low-rank adapters (methods lora and qlora).
type LoRA struct {
	Rank    int     `toml:"rank"`
	Alpha   float64 `toml:"alpha"`
	Dropout float64 `toml:"dropout"`
	// RSLoRA scales by alpha/sqrt(rank) instead of alpha/rank.
	RSLoRA bool `toml:"rslora"`
	// Targets are the projections that get adapters.
	Targets []string `toml:"targets"`
	// InitAdapter starts training from a saved adapter in peft's format (its r,
	// alpha and targets must match this section's) instead of a fresh one.
	InitAdapter string `toml:"init_adapter"`
}

// Parallel is the split of the world into pipeline stages and data-parallel replicas.
type Parallel struct {
	// PP is the number of pipeline stages; data-parallel replicas = world size / PP.
	PP int `toml:"pp"`
	// Zero1 partitions optimizer state across data-parallel replicas.
	Zero1 bool `toml:"zero1"`
	// KeepActivations keeps the activations of every micro-batch a pipeline
	// stage has in flight, instead of recomputing them before each backward:
	// one forward less per micro-batch on every stage but the last, for up
	// to P-stage times the activation memory.
	KeepActivations bool `toml:"keep_activations"`
	// PPChunks is V of interleaved 1F1B: each stage holds V non-adjacent
	// layer ranges (virtual stages), which cuts the pipeline's idle time
	// V-fold for V times the point-to-point transfers. 1 is plain 1F1B; more
	// needs pp >= 2 and train.grad_accum a multiple of pp.
	PPChunks int `toml:"pp_chunks"`
	// TimeoutSeconds is how long a rank waits on another before the job
	// fails: to connect, and for a heartbeat before a silent rank is declared
	// lost (collective.Config.Timeout). -comm-timeout and TRAIN_COMM_TIMEOUT
	// override it; its default is collective.DefaultTimeout, which says why.
	TimeoutSeconds int `toml:"timeout_seconds"`
}

// Default is the embedded default run: a tiny random Llama learning single-digit
// addition on the CPU in about a minute. Every default value is written here and
// only here, but for the communication timeout, which is collective's (every
// command that joins a job applies it, with or without a configuration). The optimisation values suit that toy; a real fine-tune sets its own
// (README.md shows a LoRA configuration for Llama 3.1 8B).
func Default() Config {
	return Config{
		Model:     "random:tiny",
		Device:    "cpu",
		Precision: "auto",
		Seed:      1,
		Data: Data{
			EvalFraction: 0.05,
			SeqLen:       64,
			Pack:         true,
		},
		Train: Train{
			Method:          "full",
			Steps:           300,
			MicroBatch:      8,
			GradAccum:       1,
			LR:              1e-2,
			MinLRRatio:      0.1,
			WarmupSteps:     10,
			Schedule:        "cosine",
			WeightDecay:     0.0,
			Beta1:           0.9,
			Beta2:           0.999,
			Eps:             1e-8,
			MaxGradNorm:     1.0,
			LogEvery:        25,
			LossScaleWindow: 2000,
		},
		LoRA: LoRA{
			Rank:    16,
			Alpha:   32,
			Targets: []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
		},
		Parallel: Parallel{PP: 1, PPChunks: 1, TimeoutSeconds: int(collective.DefaultTimeout / time.Second)},
		Ckpt:     Ckpt{KeepLast: 2, Compress: true, Level: 1},
	}
}

// Load reads a TOML file over the defaults, strictly, and validates the result.
func Load(path string) (Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	cfg, err := Decode(path, src)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		var ve *ValueError
		if errors.As(err, &ve) {
			ve.File, ve.Line = path, keyLine(src, strings.Split(ve.Key, "."))
		}
		return Config{}, err
	}
	return cfg, nil
}

// Decode parses TOML source (named name in errors) over the defaults. It rejects
// unknown keys and values of the wrong type; it does not validate ranges.
func Decode(name string, src []byte) (Config, error) {
	cfg := Default()
	// Lists replace the default rather than merge with it.
	md, err := toml.NewDecoder(bytes.NewReader(src)).Decode(&cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			key := ""
			if pe.LastKey != "" {
				key = pe.LastKey + ": "
			}
			return Config{}, fmt.Errorf("%s:%d: %s%s", name, pe.Position.Line, key, pe.Message)
		}
		// Type mismatches come as "toml: line N (last key "k"): msg".
		if m := decodeErrRE.FindStringSubmatch(err.Error()); m != nil {
			return Config{}, fmt.Errorf("%s:%s: %s: %s", name, m[1], m[2], m[3])
		}
		return Config{}, fmt.Errorf("%s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var lines []string
		for _, k := range und {
			lines = append(lines, fmt.Sprintf("%s:%d: unknown key %q%s", name, keyLine(src, k), k.String(), suggest(k)))
		}
		return Config{}, errors.New(strings.Join(lines, "\n"))
	}
	return cfg, nil
}

var decodeErrRE = regexp.MustCompile(`line (\d+) \(last key "([^"]*)"\): (.*)`)

// Encode writes c as TOML that Decode reads back to the same values.
func (c Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# train configuration; every key is documented in README.md (Config reference).\n")
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return nil, fmt.Errorf("config: encode: %w", err)
	}
	return buf.Bytes(), nil
}

// ValueError is a value out of its allowed range, naming the key.
type ValueError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *ValueError) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Key, e.Msg)
}

// Validate checks every value's range and the combinations that cannot work. It
// returns the first problem as a *ValueError naming the key.
func (c *Config) Validate() error {
	bad := func(key, format string, a ...any) error {
		return &ValueError{Key: key, Msg: fmt.Sprintf(format, a...)}
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch {
	case strings.TrimSpace(c.Model) == "":
		return bad("model", "must name a Hugging Face model directory or random:NAME")
	case !oneOf(c.Device, "cpu", "cuda", "auto"):
		return bad("device", "%q is not one of cpu, cuda, auto", c.Device)
	case !oneOf(c.Precision, "auto", "fp32", "bf16", "fp16"):
		return bad("precision", "%q is not one of auto, fp32, bf16, fp16", c.Precision)
	case !finite(c.Data.EvalFraction) || c.Data.EvalFraction < 0 || c.Data.EvalFraction >= 1:
		return bad("data.eval_fraction", "%v is outside [0, 1)", c.Data.EvalFraction)
	case c.Data.SeqLen < 2 || c.Data.SeqLen > 1<<20:
		return bad("data.seq_len", "%d is outside [2, 1048576]", c.Data.SeqLen)
	case !oneOf(c.Train.Method, "lora", "qlora", "full"):
		return bad("train.method", "%q is not one of lora, qlora, full", c.Train.Method)
	case c.Train.Steps < 0:
		return bad("train.steps", "%d is negative", c.Train.Steps)
	case c.Train.MicroBatch < 1:
		return bad("train.micro_batch", "%d must be at least 1", c.Train.MicroBatch)
	case c.Train.GradAccum < 1:
		return bad("train.grad_accum", "%d must be at least 1", c.Train.GradAccum)
	case badColumns(c.Data.Columns) != nil:
		return bad("data.columns", "%v", badColumns(c.Data.Columns))
	case c.Train.KeepAttention && !c.Train.ActivationCheckpointing:
		return bad("train.keep_attention", "needs train.activation_checkpointing (-activation-checkpointing): without it every activation is kept anyway")
	case c.Train.OffloadActivations && !c.Train.ActivationCheckpointing:
		return bad("train.offload_activations", "needs train.activation_checkpointing (-activation-checkpointing): the layer inputs it keeps are what offload moves to the host")
	case !finite(c.Train.LR) || c.Train.LR < 0 || c.Train.LR > 10:
		return bad("train.lr", "%v is outside [0, 10]", c.Train.LR)
	case !finite(c.Train.MinLRRatio) || c.Train.MinLRRatio < 0 || c.Train.MinLRRatio > 1:
		return bad("train.min_lr_ratio", "%v is outside [0, 1]", c.Train.MinLRRatio)
	case c.Train.WarmupSteps < 0:
		return bad("train.warmup_steps", "%d is negative", c.Train.WarmupSteps)
	case !oneOf(c.Train.Schedule, "cosine", "linear", "constant"):
		return bad("train.schedule", "%q is not one of cosine, linear, constant", c.Train.Schedule)
	case !finite(c.Train.WeightDecay) || c.Train.WeightDecay < 0 || c.Train.WeightDecay > 1:
		return bad("train.weight_decay", "%v is outside [0, 1]", c.Train.WeightDecay)
	case !finite(c.Train.Beta1) || c.Train.Beta1 < 0 || c.Train.Beta1 >= 1:
		return bad("train.beta1", "%v is outside [0, 1)", c.Train.Beta1)
	case !finite(c.Train.Beta2) || c.Train.Beta2 < 0 || c.Train.Beta2 >= 1:
		return bad("train.beta2", "%v is outside [0, 1)", c.Train.Beta2)
	case !finite(c.Train.Eps) || c.Train.Eps <= 0 || c.Train.Eps > 1:
		return bad("train.eps", "%v is outside (0, 1]", c.Train.Eps)
	case !finite(c.Train.MaxGradNorm) || c.Train.MaxGradNorm < 0:
		return bad("train.max_grad_norm", "%v must be 0 (off) or positive", c.Train.MaxGradNorm)
	case c.Train.LossScaleWindow < 1:
		return bad("train.loss_scale_window", "%d must be at least 1", c.Train.LossScaleWindow)
	case c.Train.LogEvery < 1:
		return bad("train.log_every", "%d must be at least 1", c.Train.LogEvery)
	case c.Train.EvalEvery < 0:
		return bad("train.eval_every", "%d is negative", c.Train.EvalEvery)
	case c.LoRA.Rank < 1 || c.LoRA.Rank > 65536:
		return bad("lora.rank", "%d is outside [1, 65536]", c.LoRA.Rank)
	case !finite(c.LoRA.Alpha) || c.LoRA.Alpha <= 0:
		return bad("lora.alpha", "%v must be positive", c.LoRA.Alpha)
	case !finite(c.LoRA.Dropout) || c.LoRA.Dropout < 0 || c.LoRA.Dropout >= 1:
		return bad("lora.dropout", "%v is outside [0, 1)", c.LoRA.Dropout)
	case c.Parallel.PP < 1:
		return bad("parallel.pp", "%d must be at least 1", c.Parallel.PP)
	case c.Parallel.PPChunks < 1:
		return bad("parallel.pp_chunks", "%d must be at least 1", c.Parallel.PPChunks)
	case c.Parallel.PPChunks > 1 && c.Parallel.PP < 2:
		return bad("parallel.pp_chunks", "%d chunks interleave pipeline stages: set parallel.pp (-pp) to 2 or more", c.Parallel.PPChunks)
	case c.Parallel.PPChunks > 1 && c.Train.GradAccum%c.Parallel.PP != 0:
		return bad("parallel.pp_chunks", "interleaved 1F1B runs the micro-batches %d at a time: train.grad_accum %d must be a multiple of parallel.pp %d", c.Parallel.PP, c.Train.GradAccum, c.Parallel.PP)
	case c.Parallel.TimeoutSeconds < 1 || c.Parallel.TimeoutSeconds > 86400:
		return bad("parallel.timeout_seconds", "%d is outside [1, 86400]", c.Parallel.TimeoutSeconds)
	case c.Ckpt.Every < 0:
		return bad("ckpt.every", "%d is negative", c.Ckpt.Every)
	case !finite(c.Ckpt.Minutes) || c.Ckpt.Minutes < 0:
		return bad("ckpt.minutes", "%v must be 0 (off) or positive", c.Ckpt.Minutes)
	case c.Ckpt.KeepLast < 1:
		return bad("ckpt.keep_last", "%d must be at least 1", c.Ckpt.KeepLast)
	case c.Ckpt.KeepEvery < 0:
		return bad("ckpt.keep_every", "%d is negative", c.Ckpt.KeepEvery)
	case c.Ckpt.Level < 1 || c.Ckpt.Level > 22:
		return bad("ckpt.level", "%d is outside zstd's [1, 22]", c.Ckpt.Level)
	case c.Ckpt.Overwrite && c.Ckpt.Resume != "":
		return bad("ckpt.overwrite", "cannot go with ckpt.resume %q: -resume continues the run in the run directory, -overwrite moves it aside to start another; choose one", c.Ckpt.Resume)
	}
	if len(c.LoRA.Targets) == 0 && c.Train.Method != "full" {
		return bad("lora.targets", "is empty: name at least one of %s", strings.Join(LoRATargets(), ", "))
	}
	seen := map[string]bool{}
	for _, t := range c.LoRA.Targets {
		if !oneOf(t, LoRATargets()...) {
			return bad("lora.targets", "%q is not a projection; choose from %s", t, strings.Join(LoRATargets(), ", "))
		}
		if seen[t] {
			return bad("lora.targets", "%q is listed twice", t)
		}
		seen[t] = true
	}
	return nil
}

// RunDirOrDefault is RunDir, or runs/<model name>-<method> when it is empty.
// The trainer reads an empty RunDir as that name's family: a fresh run takes
// the first of runs/NAME, runs/NAME-2, ... that no other run used, and
// -resume continues the newest of them.
func (c *Config) RunDirOrDefault() string {
	if c.RunDir != "" {
		return c.RunDir
	}
	name := filepath.Base(filepath.Clean(c.Model))
	name = strings.NewReplacer(":", "-", " ", "_").Replace(name)
	return filepath.Join("runs", name+"-"+c.Train.Method)
}

// LoRATargets are the projections a LoRA adapter can attach to.
func LoRATargets() []string {
	return []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
}

func oneOf(s string, options ...string) bool {
	for _, o := range options {
		if s == o {
			return true
		}
	}
	return false
}

// badColumns checks a data.columns value (data.ParseColumns says why not).
func badColumns(s string) error {
	_, err := data.ParseColumns(s)
	return err
}
