package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	exportBase    = "model/testdata/parity/tiny"
	exportAdapter = "model/testdata/parity/lora"
)

func TestExportUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-model", exportBase, "-format", "peft", "-out", t.TempDir()},                                              // no adapter
		{"-model", exportBase, "-format", "onnx", "-out", t.TempDir()},                                              // unknown format
		{"-model", exportBase, "-format", "hf", "-out", t.TempDir(), "-dtype", "f8"},                                // unknown dtype
		{"-model", exportBase, "-format", "hf", "-out", t.TempDir(), "-shard-size", "big"},                          // bad size
		{"-format", "hf", "-out", t.TempDir()},                                                                      // no model
		{"-model", exportBase, "-adapter", exportAdapter, "-format", "peft", "-out", t.TempDir(), "-dtype", "bf16"}, // peft is f32
		{"-model", exportBase, "-format", "gguf", "-out", "x.gguf", "-quant", "q4_k_m"},                             // not bit-exact: refused
		{"-model", exportBase, "-format", "gguf", "-out", "x.gguf", "-quant", "q3"},                                 // unknown
		{"-model", exportBase, "-format", "gguf", "-out", "x.gguf", "-quant", "q8_0", "-dtype", "f16"},              // both
		{"-model", exportBase, "-format", "hf", "-out", t.TempDir(), "-quant", "q8_0"},                              // not gguf
	} {
		var stdout, stderr bytes.Buffer
		err := runExport(args, &stdout, &stderr)
		if !errors.As(err, new(*usageError)) {
			t.Errorf("train export %s: %v, want a usage error", strings.Join(args, " "), err)
		}
	}
	// A wrong-shaped adapter is an error naming the file.
	var stdout, stderr bytes.Buffer
	err := runExport([]string{"-model", "../shared/models/stories260K", "-adapter", exportAdapter, "-format", "hf", "-out", t.TempDir()}, &stdout, &stderr)
	if _, serr := os.Stat("../shared/models/stories260K"); serr == nil && (err == nil || !strings.Contains(err.Error(), "adapter_model.safetensors")) {
		t.Errorf("adapter for another model: %v", err)
	}
}

// TestExportCommand: the flags reach the export, its report goes to stdout
// and its warnings to stderr, named as the program's.
func TestExportCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "tiny.gguf")
	var stdout, stderr bytes.Buffer
	args := []string{"export", "-model", exportBase, "-adapter", exportAdapter, "-format", "gguf", "-dtype", "f16", "-out", out}
	if code := mainExit(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if want := "wrote GGUF (f16 with the adapter merged) to " + out + "\n"; stdout.String() != want {
		t.Errorf("stdout %q, want %q", stdout.String(), want)
	}
	if want := "train export: no tokenizer.json beside " + exportBase + ": writing none (give -tokenizer DIR)\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

// TestExportQuantized: -quant writes a quantized GGUF and says so; q4_k_m is
// refused saying why and what to do instead.
func TestExportQuantized(t *testing.T) {
	for _, q := range []string{"q8_0", "q4_0"} {
		out := filepath.Join(t.TempDir(), "tiny-"+q+".gguf")
		var stdout, stderr bytes.Buffer
		if err := runExport([]string{"-model", exportBase, "-format", "gguf", "-quant", q, "-out", out}, &stdout, &stderr); err != nil {
			t.Fatal(err)
		}
		if want := "wrote GGUF (" + q + ") to " + out + "\n"; stdout.String() != want {
			t.Errorf("stdout %q, want %q", stdout.String(), want)
		}
	}
	var stdout, stderr bytes.Buffer
	err := runExport([]string{"-model", exportBase, "-format", "gguf", "-quant", "q4_k_m", "-out", "x.gguf"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "q4_k_m is not supported") || !strings.Contains(err.Error(), "llama-quantize") {
		t.Errorf("q4_k_m: %v", err)
	}
}

// TestExportGGUFLoRA: -format gguf-lora writes the adapter file and says so;
// without an adapter it is a usage error.
func TestExportGGUFLoRA(t *testing.T) {
	out := filepath.Join(t.TempDir(), "a.gguf")
	var stdout, stderr bytes.Buffer
	if err := runExport([]string{"-model", exportBase, "-adapter", exportAdapter, "-format", "gguf-lora", "-out", out}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "wrote GGUF LoRA adapter (r=") {
		t.Errorf("stdout %q", stdout.String())
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Errorf("%s: %v", out, err)
	}
	err := runExport([]string{"-model", exportBase, "-format", "gguf-lora", "-out", out}, &stdout, &stderr)
	if !errors.As(err, new(*usageError)) {
		t.Errorf("gguf-lora without an adapter: %v", err)
	}
}
