package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"train/config"
	"train/data"
	"train/device"
	"train/format/peft"
	"train/model"
	"train/trainer"
)

// runEval prints the mean loss of a model (with an optional PEFT LoRA adapter) over
// a JSONL file of token ids, as one JSON object.
func runEval(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", `Usage: train eval -model DIR [-adapter DIR] -data FILE.jsonl

Prints one JSON object: "loss", the mean cross-entropy over every label that is not
-100 across the whole file, and "tokens", how many labels counted. A line is
{"input_ids": [...], "labels": [...]} (labels default to input_ids and are aligned
with them as transformers expects: position t predicts labels[t+1]), or any format
train reads ({"text"}, {"prompt", "completion"}, {"messages"}), tokenized and
masked exactly as in training.`, stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory, or random:NAME")
	adapter := fs.String("adapter", "", "LoRA adapter directory in peft format (adapter_config.json + adapter_model.safetensors)")
	dataPath := fs.String("data", "", "JSONL file of examples")
	tokPath := fs.String("tokenizer", "", "tokenizer.json (or a directory holding one) for text data; default: the model directory's own")
	promptLoss := fs.Bool("prompt-loss", false, "also score prompt tokens, as data.prompt_loss does in training")
	allowLong := fs.Bool("allow-long-seq", false, "score examples longer than the model's max_position_embeddings (positions it was never trained on)")
	batch := fs.Int("batch", 8, "sequences per forward pass (does not change the result)")
	seed := fs.Int64("seed", 1, "seed of a random:NAME model's weights")
	deviceName := fs.String("device", "cpu", "cpu, cuda or auto")
	precision := fs.String("precision", "auto", "auto (bf16 on a GPU, fp32 on the CPU), fp32 or bf16")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelDir == "" || *dataPath == "" {
		return usagef("-model and -data are required (see train eval -h)")
	}
	if *batch < 1 {
		return usagef("-batch %d must be at least 1", *batch)
	}
	// Everything cheap first: the weights are the expensive part.
	mc, err := model.SourceConfig(*modelDir)
	if err != nil {
		return err
	}
	cfg := config.Default()
	cfg.Model, cfg.Tokenizer = *modelDir, *tokPath
	tok, err := trainer.LoadTokenizer(cfg, mc)
	if err != nil {
		return err
	}
	f := &data.Formatter{Vocab: mc.VocabSize, PromptLoss: *promptLoss}
	if tok != nil {
		f.Tok = tok
	}
	examples, _, err := data.ReadExamples(context.Background(), *dataPath, f, false)
	if err != nil {
		return err
	}
	if err := checkEvalLengths(*dataPath, examples, mc.MaxPositions, *allowLong); err != nil {
		return err
	}
	var opt model.Options
	if *adapter != "" {
		if opt.LoRA, err = peft.Read(*adapter, mc); err != nil {
			return err
		}
	}
	be, err := device.Open(*deviceName, 0)
	if err != nil {
		return err
	}
	defer device.Close(be)
	if opt.Compute, err = device.ComputeType(*precision, be); err != nil {
		return usagef("%v", err)
	}
	w, err := model.LoadSource(*modelDir, *seed)
	if err != nil {
		return err
	}
	m, err := model.NewModel(be, w, opt)
	if err != nil {
		return err
	}
	defer m.Close()
	m.SetTraining(false)
	loss, tokens, err := trainer.EvalExamples(m, examples, 0, *batch)
	if err != nil {
		return fmt.Errorf("%s: %w", *dataPath, err)
	}
	out, err := json.Marshal(map[string]any{"loss": loss, "tokens": tokens, "examples": len(examples)})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

// checkEvalLengths refuses examples longer than the model's context (unless
// allowed): the loss at positions it was never trained on says little about
// the model, and a user comparing losses should know.
func checkEvalLengths(path string, examples []data.TokenExample, maxPositions int, allow bool) error {
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
