package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"train/device"
	"train/generate"
	"train/model"
)

// maxPromptBytes bounds a prompt read from stdin.
const maxPromptBytes = 16 << 20

// runGenerate continues a prompt with a model (and optional LoRA adapter),
// streaming the text to stdout: the way to try a model before and after
// fine-tuning.
func runGenerate(args []string, stdout, stderr io.Writer) error {
	return runGenerateFrom(args, os.Stdin, stdout, stderr)
}

// runGenerateFrom is runGenerate reading a "-" prompt from stdin (a parameter,
// for tests).
func runGenerateFrom(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("generate", `Usage: train generate -model DIR|FILE.gguf [-adapter DIR] [-tokenizer PATH] -prompt "..." [-chat]

Continue a prompt with the model, printing the new text as it comes (the prompt
itself is not repeated), and the speed on stderr at the end. Generation stops at
an end-of-sequence token (the model's eos_token_id, the tokenizer's EOS, or
<|eot_id|>), after -max-tokens tokens, or when the model's context is full.
With -chat the prompt is the user's message in the Llama 3 chat template and the
model answers as the assistant. Temperature 0 (the default) is greedy decoding:
the same output every time.
Examples:
  train generate -model ../shared/models/stories260K -prompt "Once upon a time"
  train generate -model DIR -adapter runs/NAME/adapter -chat -prompt "What is 7*8?"
  echo "Tell me a story" | train generate -model DIR -chat -prompt - -temperature 0.8 -top-p 0.9`, stderr)
	var o generate.Options
	var so model.SamplerOptions
	fs.StringVar(&o.Model, "model", "", "Hugging Face model directory, GGUF file (its embedded tokenizer too), or random:NAME")
	fs.StringVar(&o.Adapter, "adapter", "", "LoRA adapter directory in peft format (adapter_config.json + adapter_model.safetensors)")
	fs.StringVar(&o.Quantize, "quantize", "", "nf4: hold the base weights in 4-bit NF4 as a QLoRA run does (generate with a QLoRA adapter as it was trained); default: as stored")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer.json, a directory holding one, or a GGUF file (default: the model's own)")
	fs.StringVar(&o.Prompt, "prompt", "", `the text to continue, or "-" to read it from stdin; empty starts from BOS alone`)
	fs.BoolVar(&o.Chat, "chat", false, "apply the Llama 3 chat template: the prompt is a user message")
	fs.StringVar(&o.System, "system", "", "with -chat, a system message before the user's")
	fs.BoolVar(&o.BOS, "bos", true, "put the BOS token in front of a plain prompt (-chat always does)")
	fs.BoolVar(&o.IDs, "ids", false, "print the new token ids, space-separated on one line, instead of the text (to compare with another implementation)")
	fs.IntVar(&o.MaxTokens, "max-tokens", 256, "most new tokens to generate")
	fs.Float64Var(&so.Temperature, "temperature", 0, "softmax temperature; 0 is greedy")
	fs.Float64Var(&so.TopP, "top-p", 1, "nucleus sampling: keep the most likely tokens holding this much probability (1: all)")
	fs.IntVar(&so.TopK, "top-k", 0, "keep only the k most likely tokens (0: all)")
	fs.Uint64Var(&so.Seed, "seed", 1, "seed of the sampling (the same seed gives the same text)")
	fs.Int64Var(&o.ModelSeed, "model-seed", 1, "seed of a random:NAME model's weights")
	fs.StringVar(&o.Device, "device", "cpu", "cpu, cuda or auto")
	fs.StringVar(&o.Precision, "precision", "auto", "auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 or fp16")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if o.Model == "" {
		return usagef("-model is required (see train generate -h)")
	}
	if o.MaxTokens < 1 {
		return usagef("-max-tokens %d must be at least 1", o.MaxTokens)
	}
	if o.System != "" && !o.Chat {
		return usagef("-system needs -chat")
	}
	var err error
	if o.Sampler, err = model.NewSampler(so); err != nil {
		return usagef("%v", err)
	}
	if o.Tokenizer == "" && model.IsRandomModel(o.Model) {
		return usagef("-tokenizer is required with a random model")
	}
	// The name alone decides whether it is valid (the device only settles "auto"),
	// so it is checked here with the other flags, before anything is loaded.
	if _, err := device.ComputeType(o.Precision, nil); err != nil {
		return usagef("%v", err)
	}
	if o.Prompt == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, maxPromptBytes+1))
		if err != nil {
			return fmt.Errorf("reading the prompt from stdin: %w", err)
		}
		if len(b) > maxPromptBytes {
			return fmt.Errorf("the prompt on stdin is larger than %d MiB", maxPromptBytes>>20)
		}
		o.Prompt = strings.TrimSuffix(string(b), "\n")
	}
	return generate.Run(o, stdout, stderr)
}
