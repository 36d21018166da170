package main

import (
	"fmt"
	"io"

	"train/export"
)

// runExport writes a model (and optional LoRA adapter) in a format other tools
// load: the adapter in peft's layout, the merged model in Hugging Face layout, or
// the merged model as one GGUF file for llama.cpp.
func runExport(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("export", `Usage: train export -model DIR|FILE.gguf [-adapter DIR] -format peft|hf|gguf|gguf-lora -out PATH [-dtype f32|f16|bf16 | -quant q8_0|q4_0] [-shard-size 5GB]
       train export -ckpt RUN|CHECKPOINT_DIR -format peft|hf|gguf|gguf-lora -out PATH

With -ckpt the trained tensors come from one of train's checkpoints (a run
directory means its newest complete one); the base model is the one the
checkpoint names, unless -model gives it.

Formats:
  peft  the LoRA adapter (-adapter) in peft's layout: adapter_config.json and
        adapter_model.safetensors (F32), read back and checked after writing.
        -out is a directory.
  hf    the model with the adapter merged into it (W += scale·B·A), in Hugging
        Face layout: config.json, model.safetensors or shards with
        model.safetensors.index.json above -shard-size, and the tokenizer files.
        -out is a directory; -dtype f32, f16 or bf16.
  gguf  the merged model as one GGUF v3 file for llama.cpp (llama architecture,
        tokenizer embedded when tokenizer.json is found). -out is a file;
        -dtype f32, f16 or bf16, or -quant q8_0 | q4_0: the matrices in
        llama.cpp's block quantizations, the same bytes as its reference
        quantizers (norms stay F32; a matrix whose rows are not a multiple of
        32 long falls back to F16; under q4_0 the output matrix is Q8_0).
  gguf-lora  the LoRA adapter alone as a GGUF adapter file (F32), for
        llama.cpp's llama-cli -m BASE.gguf --lora FILE over a gguf export of
        the same base. -out is a file.`, stderr)
	modelPath := flags.String("model", "", "base model: Hugging Face directory or .gguf file")
	adapter := flags.String("adapter", "", "LoRA adapter directory in peft format")
	ckptDir := flags.String("ckpt", "", "take the trained tensors from this checkpoint (or the newest of this run directory)")
	format := flags.String("format", "", "peft, hf, gguf or gguf-lora")
	out := flags.String("out", "", "output directory (peft, hf) or file (gguf, gguf-lora)")
	dtype := flags.String("dtype", "f32", "stored precision: f32, f16 or bf16")
	quantName := flags.String("quant", "", "gguf: quantize the matrices: q8_0 or q4_0 (instead of -dtype)")
	shardSize := flags.String("shard-size", "5GB", "hf: largest weight file before sharding (transformers' max_shard_size: 5GB, 500MB, 2GiB, bytes)")
	tokDir := flags.String("tokenizer", "", "directory with tokenizer.json to ship; default: the model directory")
	name := flags.String("name", "", "gguf: general.name; default: the model directory's name")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if (*modelPath == "" && *ckptDir == "") || *out == "" || *format == "" {
		return usagef("-model (or -ckpt), -format and -out are required (see train export -h)")
	}
	if *ckptDir != "" && *adapter != "" {
		return usagef("-ckpt and -adapter both give the trained tensors: choose one")
	}
	maxShard, err := parseByteSize(*shardSize) // cmd_plan.go
	if err != nil {
		return usagef("-shard-size: %v", err)
	}
	switch *format {
	case "peft", "gguf-lora":
		if *adapter == "" && *ckptDir == "" {
			return usagef("-format %s needs -adapter or -ckpt", *format)
		}
		if *dtype != "f32" {
			return usagef("-format %s writes f32 adapters (peft keeps LoRA weights in float32), not %s", *format, *dtype)
		}
	case "hf":
		if *dtype != "f32" && *dtype != "f16" && *dtype != "bf16" {
			return usagef("-format hf: -dtype %s: f32, f16 or bf16", *dtype)
		}
	case "gguf":
		if *dtype != "f32" && *dtype != "f16" && *dtype != "bf16" {
			return usagef("-format gguf: -dtype %s: f32, f16 or bf16", *dtype)
		}
		if *quantName != "" {
			if flagSet(flags, "dtype") {
				return usagef("-quant %s and -dtype %s both say how to store the matrices: give one", *quantName, *dtype)
			}
			if _, err := export.QuantType(*quantName); err != nil {
				return usagef("%v", err)
			}
		}
	default:
		return usagef("-format %q: peft, hf, gguf or gguf-lora", *format)
	}
	if *quantName != "" && *format != "gguf" {
		return usagef("-quant is for -format gguf")
	}

	return export.Run(export.Options{
		Model: *modelPath, Adapter: *adapter, Checkpoint: *ckptDir,
		Format: *format, Out: *out, DType: *dtype, Quant: *quantName, MaxShard: maxShard,
		Tokenizer: *tokDir, Name: *name,
		Warn: func(msg string) { fmt.Fprintf(stderr, "train export: %s\n", msg) },
	}, stdout)
}
