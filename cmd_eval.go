package main

import (
	"encoding/json"
	"fmt"
	"io"

	"train/device"
	"train/eval"
)

// runEval prints the mean loss of a model (with an optional PEFT LoRA adapter) over
// a JSONL file of token ids, as one JSON object.
func runEval(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("eval", `Usage: train eval -model DIR|FILE.gguf [-adapter DIR] -data FILE.jsonl|FILE.parquet|DIR|GLOB

Prints one JSON object: "loss", the mean cross-entropy over every label that is not
-100 across the whole file, and "tokens", how many labels counted. A line is
{"input_ids": [...], "labels": [...]} (labels default to input_ids and are aligned
with them as transformers expects: position t predicts labels[t+1]), or any format
train reads ({"text"}, {"prompt", "completion"}, {"messages"}, ShareGPT, Alpaca), tokenized and
masked exactly as in training.`, stderr)
	modelDir := fs.String("model", "", "Hugging Face model directory, GGUF file (its embedded tokenizer too), or random:NAME")
	adapter := fs.String("adapter", "", "LoRA adapter directory in peft format (adapter_config.json + adapter_model.safetensors)")
	quantize := fs.String("quantize", "", "nf4: hold the base weights in 4-bit NF4 as a QLoRA run does (evaluate a QLoRA adapter as it was trained); default: as stored")
	dataPath := fs.String("data", "", "JSONL file of examples")
	tokPath := fs.String("tokenizer", "", "tokenizer.json (or a directory holding one, or a GGUF file) for text data; default: the model's own")
	promptLoss := fs.Bool("prompt-loss", false, "also score prompt tokens, as data.prompt_loss does in training")
	columns := fs.String("data-columns", "", `rename the dataset's keys or Parquet columns to the formats' ("instruction=question,output=answer")`)
	allowLong := fs.Bool("allow-long-seq", false, "score examples longer than the model's max_position_embeddings (positions it was never trained on)")
	batch := fs.Int("batch", 8, "sequences per forward pass (does not change the result)")
	seed := fs.Int64("seed", 1, "seed of a random:NAME model's weights")
	deviceName := fs.String("device", "cpu", "cpu, cuda or auto")
	precision := fs.String("precision", "auto", "auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelDir == "" || *dataPath == "" {
		return usagef("-model and -data are required (see train eval -h)")
	}
	if *batch < 1 {
		return usagef("-batch %d must be at least 1", *batch)
	}
	// The name alone decides whether it is valid (the device only settles "auto"),
	// so it is checked here with the other flags, before anything is loaded.
	if _, err := device.ComputeType(*precision, nil); err != nil {
		return usagef("%v", err)
	}
	res, err := eval.Run(eval.Options{
		Model: *modelDir, ModelSeed: *seed, Adapter: *adapter, Quantize: *quantize, Tokenizer: *tokPath,
		Data: *dataPath, PromptLoss: *promptLoss, Columns: *columns, AllowLong: *allowLong, Batch: *batch,
		Device: *deviceName, Precision: *precision,
	})
	if err != nil {
		return err
	}
	out, err := json.Marshal(map[string]any{"loss": res.Loss, "tokens": res.Tokens, "examples": res.Examples})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}
