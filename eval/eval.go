// Package eval measures a model, with an optional LoRA adapter, on a data
// file: the mean cross-entropy over every label that is not -100, across the
// whole file. The examples are read and masked exactly as training reads them
// (token ids, text, prompt/completion or chat, through the model's
// tokenizer), and each sits in a row of its own, so the result does not
// depend on how they are batched.
package eval

import (
	"fmt"

	"train/config"
	"train/data"
	"train/device"
	"train/format/peft"
	"train/model"
	"train/trainer"
)

// Options say which model to measure on which data, and where.
type Options struct {
	Model     string // Hugging Face model directory, or random:NAME
	ModelSeed int64  // seed of a random:NAME model's weights
	Adapter   string // LoRA adapter directory in peft format; "" for none
	Tokenizer string // tokenizer.json for text data; "" for the model directory's own

	Data       string // JSONL file of examples
	PromptLoss bool   // also score prompt tokens, as data.prompt_loss does in training
	Batch      int    // sequences per forward pass, at least 1

	Device    string // cpu, cuda or auto
	Precision string // auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16
}

// Result is what Run measured.
type Result struct {
	Loss     float64 // mean cross-entropy per scored label
	Tokens   int     // how many labels were scored
	Examples int     // how many examples the file held
}

// Run loads the model, the adapter and the data and measures the loss.
func Run(o Options) (Result, error) {
	be, err := device.Open(o.Device, 0)
	if err != nil {
		return Result{}, err
	}
	defer device.Close(be)
	w, err := model.LoadSource(o.Model, o.ModelSeed)
	if err != nil {
		return Result{}, err
	}
	cfg := config.Default()
	cfg.Model, cfg.Tokenizer = o.Model, o.Tokenizer
	tok, err := trainer.LoadTokenizer(cfg, w.Config)
	if err != nil {
		return Result{}, err
	}
	f := &data.Formatter{Vocab: w.Config.VocabSize, PromptLoss: o.PromptLoss}
	if tok != nil {
		f.Tok = tok // a nil *Tokenizer would be a non-nil interface
	}
	examples, _, err := data.ReadExamples(o.Data, f, false)
	if err != nil {
		return Result{}, err
	}
	var opt model.Options
	if opt.Compute, err = device.ComputeType(o.Precision, be); err != nil {
		return Result{}, err
	}
	if o.Adapter != "" {
		if opt.LoRA, err = peft.Read(o.Adapter, w.Config); err != nil {
			return Result{}, err
		}
	}
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
