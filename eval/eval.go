// Package eval measures a model, with an optional LoRA adapter, on a data
// file: the mean cross-entropy over every label that is not -100, across the
// whole file. The examples are read and masked exactly as training reads them
// (token ids, text, prompt/completion or chat, through the model's
// tokenizer), and each sits in a row of its own, so the result does not
// depend on how they are batched.
package eval

import (
	"context"
	"fmt"

	"train/config"
	"train/data"
	"train/device"
	"train/format"
	"train/format/peft"
	"train/model"
	"train/tokenizer"
	"train/trainer"
)

// Options say which model to measure on which data, and where.
type Options struct {
	Model     string // Hugging Face model directory, a GGUF file, or random:NAME
	ModelSeed int64  // seed of a random:NAME model's weights
	Adapter   string // LoRA adapter directory in peft format; "" for none
	Quantize  string // "nf4": the base weights in 4 bits, as a QLoRA run holds them; "" as stored
	Tokenizer string // tokenizer.json (or a GGUF file) for text data; "" for the model's own

	Data       string // JSONL file of examples
	PromptLoss bool   // also score prompt tokens, as data.prompt_loss does in training
	Columns    string // data.columns: "ours=theirs,..." renames the dataset's keys
	AllowLong  bool   // score examples longer than the model's max_position_embeddings
	Batch      int    // sequences per forward pass, at least 1

	Device    string // cpu, cuda or auto
	Precision string // auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16
}

// Result is what Run measured.
type Result struct {
	Loss     float64 // mean cross-entropy per scored label
	Tokens   int     // how many labels were scored
	Examples int     // how many examples the file held
}

// Run reads the data, then loads the model and the adapter and measures the
// loss. Everything cheap comes first (the config, the tokenizer, the data and
// its lengths): the weights are the expensive part.
func Run(o Options) (Result, error) {
	mc, err := format.SourceConfig(o.Model)
	if err != nil {
		return Result{}, err
	}
	tok, err := loadTokenizer(o, mc)
	if err != nil {
		return Result{}, err
	}
	f := &data.Formatter{Vocab: mc.VocabSize, PromptLoss: o.PromptLoss}
	if f.Columns, err = data.ParseColumns(o.Columns); err != nil {
		return Result{}, fmt.Errorf("-data-columns: %w", err)
	}
	if tok != nil {
		f.Tok = tok // a nil *Tokenizer would be a non-nil interface
		if f.Chat, err = data.ChatTemplateFor(tok, tok.ConfigPath()); err != nil {
			return Result{}, err
		}
	}
	examples, _, err := data.ReadExamples(context.Background(), o.Data, f, false)
	if err != nil {
		return Result{}, err
	}
	if err := checkLengths(o.Data, examples, mc.MaxPositions, o.AllowLong); err != nil {
		return Result{}, err
	}
	var opt model.Options
	if o.Adapter != "" {
		if opt.LoRA, err = peft.Read(o.Adapter, mc); err != nil {
			return Result{}, err
		}
	}
	if err := model.SetQuantize(&opt, o.Quantize, o.Model, &mc); err != nil {
		return Result{}, err
	}
	be, err := device.Open(o.Device, 0)
	if err != nil {
		return Result{}, err
	}
	defer device.Close(be)
	if opt.Compute, err = device.ComputeType(o.Precision, be); err != nil {
		return Result{}, err
	}
	w, err := format.LoadSource(context.Background(), o.Model, mc, o.ModelSeed)
	if err != nil {
		return Result{}, err
	}
	defer w.Close()
	m, err := model.NewModel(be, w, opt)
	if err != nil {
		return Result{}, err
	}
	defer m.Close()
	m.SetTraining(false)
	loss, tokens, err := trainer.EvalExamples(m, examples, 0, o.Batch)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", o.Data, err)
	}
	return Result{Loss: loss, Tokens: tokens, Examples: len(examples)}, nil
}

// loadTokenizer is the tokenizer text data is read with: -tokenizer, else the
// model's own (a directory's tokenizer.json, a GGUF file's embedded one); nil
// when there is none (token-id data needs none).
func loadTokenizer(o Options, mc model.Config) (*tokenizer.Tokenizer, error) {
	path := o.Tokenizer
	if path == "" && format.IsGGUF(o.Model) {
		path = o.Model
	}
	if !format.IsGGUF(path) {
		cfg := config.Default()
		cfg.Model, cfg.Tokenizer = o.Model, o.Tokenizer
		return trainer.LoadTokenizer(cfg, mc)
	}
	tok, err := format.LoadTokenizer(path)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > mc.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d ids but the model's vocabulary is %d: they do not belong together", path, tok.VocabSize(), mc.VocabSize)
	}
	return tok, nil
}

// checkLengths refuses examples longer than the model's context (unless
// allowed): the loss at positions it was never trained on says little about
// the model, and a user comparing losses should know.
func checkLengths(path string, examples []data.TokenExample, maxPositions int, allow bool) error {
	if allow || maxPositions <= 0 {
		return nil
	}
	first, n := -1, 0
	for i, ex := range examples {
		if len(ex.InputIDs) > maxPositions {
			n++
			if first < 0 {
				first = i
			}
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%s: %d of %d examples are longer than the model's context of %d tokens (max_position_embeddings; example %d has %d): positions past it were never trained; shorten them, or give -allow-long-seq to score them anyway",
		path, n, len(examples), maxPositions, first+1, len(examples[first].InputIDs))
}
