package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	fileformat "train/format"
	"train/format/gguf"
	"train/format/peft"
	"train/format/safetensors"
	"train/model"
	"train/trainer"
)

// runExport writes a model (and optional LoRA adapter) in a format other tools
// load: the adapter in peft's layout, the merged model in Hugging Face layout, or
// the merged model as one GGUF file for llama.cpp.
func runExport(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("export", `Usage: train export -model DIR|FILE.gguf [-adapter DIR] -format peft|hf|gguf -out PATH [-dtype f32|f16|bf16] [-shard-size 5GB]
       train export -ckpt RUN|CHECKPOINT_DIR -format peft|hf|gguf -out PATH

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
        -out is a directory; -dtype f32 or bf16.
  gguf  the merged model as one GGUF v3 file for llama.cpp (llama architecture,
        tokenizer embedded when tokenizer.json is found). -out is a file;
        -dtype f32, f16 or bf16.`, stderr)
	modelPath := flags.String("model", "", "base model: Hugging Face directory or .gguf file")
	adapter := flags.String("adapter", "", "LoRA adapter directory in peft format")
	ckptDir := flags.String("ckpt", "", "take the trained tensors from this checkpoint (or the newest of this run directory)")
	format := flags.String("format", "", "peft, hf or gguf")
	out := flags.String("out", "", "output directory (peft, hf) or file (gguf)")
	dtype := flags.String("dtype", "f32", "stored precision: f32, f16 (gguf) or bf16 (hf, gguf)")
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
	case "peft":
		if *adapter == "" && *ckptDir == "" {
			return usagef("-format peft needs -adapter or -ckpt")
		}
		if *dtype != "f32" {
			return usagef("-format peft writes f32 adapters (peft keeps LoRA weights in float32), not %s", *dtype)
		}
	case "hf":
		if *dtype != "f32" && *dtype != "bf16" {
			return usagef("-format hf: -dtype %s: f32 or bf16", *dtype)
		}
	case "gguf":
		if *dtype != "f32" && *dtype != "f16" && *dtype != "bf16" {
			return usagef("-format gguf: -dtype %s: f32, f16 or bf16", *dtype)
		}
	default:
		return usagef("-format %q: peft, hf or gguf", *format)
	}

	var w *model.Weights
	var lora *model.LoRA
	if *ckptDir != "" {
		if w, lora, *modelPath, err = trainer.LoadCheckpointModel(*ckptDir, *modelPath); err != nil {
			return err
		}
		if *format == "peft" && lora == nil {
			return fmt.Errorf("%s holds a full fine-tune, not an adapter: export it with -format hf or gguf", *ckptDir)
		}
	} else {
		if w, err = fileformat.LoadModel(*modelPath); err != nil {
			return fmt.Errorf("model %s: %w", *modelPath, err)
		}
		if *adapter != "" {
			if lora, err = peft.Read(*adapter, w.Config); err != nil {
				return err
			}
		}
	}
	if *format == "peft" {
		if err := peft.Write(*out, lora, &w.Config, *modelPath); err != nil {
			return err
		}
		back, err := peft.Read(*out, w.Config)
		if err != nil {
			return fmt.Errorf("checking the written adapter: %w", err)
		}
		if err := sameAdapter(back, lora); err != nil {
			return fmt.Errorf("checking the written adapter %s: %w", *out, err)
		}
		fmt.Fprintf(stdout, "wrote peft adapter (r=%d, alpha=%g, %d tensors) to %s\n", lora.Config.Rank, lora.Config.Alpha, len(lora.Tensors()), *out)
		return nil
	}
	if lora != nil {
		if err := model.MergeLoRA(w, lora); err != nil {
			return err
		}
	}
	tok := *tokDir
	if tok == "" {
		if model.IsRandomModel(*modelPath) {
			fmt.Fprintf(stderr, "train export: %s has no tokenizer: writing none (give -tokenizer DIR)\n", *modelPath)
		} else if st, err := os.Stat(filepath.Join(*modelPath, "tokenizer.json")); err == nil && !st.IsDir() {
			tok = *modelPath
		} else if !errors.Is(err, fs.ErrNotExist) && err != nil {
			return fmt.Errorf("tokenizer: %w", err)
		} else {
			fmt.Fprintf(stderr, "train export: no tokenizer.json beside %s: writing none (give -tokenizer DIR)\n", *modelPath)
		}
	}
	merged := ""
	if lora != nil {
		merged = " with the adapter merged"
	}
	switch *format {
	case "hf":
		dt := safetensors.F32
		if *dtype == "bf16" {
			dt = safetensors.BF16
		}
		if err := model.WriteHFModelAs(*out, w, tok, maxShard, dt); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote Hugging Face model (%s%s) to %s\n", *dtype, merged, *out)
	case "gguf":
		typ := map[string]gguf.GGMLType{"f32": gguf.F32, "f16": gguf.F16, "bf16": gguf.BF16}[*dtype]
		n := *name
		if n == "" {
			n = filepath.Base(strings.TrimSuffix(filepath.Clean(*modelPath), ".gguf"))
		}
		if dir := filepath.Dir(*out); dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		if err := gguf.WriteModel(*out, w, gguf.ModelOptions{Type: typ, Name: n, TokenizerDir: tok}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote GGUF (%s%s) to %s\n", *dtype, merged, *out)
	}
	return nil
}

// sameAdapter reports the first difference between two adapters' tensors.
func sameAdapter(a, b *model.LoRA) error {
	if a.Config.Rank != b.Config.Rank || a.Config.Alpha != b.Config.Alpha || a.Config.RSLoRA != b.Config.RSLoRA {
		return fmt.Errorf("config %+v, want %+v", a.Config, b.Config)
	}
	at, bt := a.Tensors(), b.Tensors()
	if len(at) != len(bt) {
		return fmt.Errorf("%d tensors, want %d", len(at), len(bt))
	}
	for name, v := range bt {
		u := at[name]
		if len(u) != len(v) {
			return fmt.Errorf("%s: %d values, want %d", name, len(u), len(v))
		}
		for i := range v {
			if u[i] != v[i] {
				return fmt.Errorf("%s[%d] = %v, want %v", name, i, u[i], v[i])
			}
		}
	}
	return nil
}
