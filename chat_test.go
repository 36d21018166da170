package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"train/format/safetensors"
	"train/internal/fixture"
	"train/model"
)

const llama3Tokenizer = "../shared/tokenizers/llama3/tokenizer.json"

// TestChatFineTune trains two steps through the chat path on a small model with the
// Llama 3 vocabulary, written to disk as a Hugging Face directory.
func TestChatFineTune(t *testing.T) {
	if _, err := os.Stat(llama3Tokenizer); err != nil {
		t.Skipf("Llama 3 tokenizer not available: %v", err)
	}
	dir := t.TempDir()
	lines, _, err := fixture.SelfInstructChats("../shared/data/self-instruct/seed_tasks.jsonl", 40)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("self-instruct data is not in ../shared (%v)", err)
	} else if err != nil {
		t.Fatal(err)
	}
	chat := filepath.Join(dir, "chat.jsonl")
	if err := os.WriteFile(chat, append(bytes.Join(lines, []byte("\n")), '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.VocabSize, cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.HeadDim = 128256, 32, 64, 1, 8
	cfg.TieEmbeddings = true
	modelDir := writeRandomModel(t, filepath.Join(dir, "model"), cfg, nil)
	run := filepath.Join(dir, "run")
	runMain(t, "-model", modelDir, "-tokenizer", llama3Tokenizer, "-data", chat, "-method", "lora",
		"-steps", "2", "-batch", "1", "-seq", "128", "-lr", "1e-3", "-run", run)
	if n := len(readMetrics(t, run)); n != 3 {
		t.Fatalf("metrics.jsonl has %d lines, want 2 steps and an eval", n)
	}
}

// writeRandomModel writes a Hugging Face model directory with random weights for
// cfg, after letting edit change them.
func writeRandomModel(t *testing.T, dir string, cfg model.Config, edit func(*model.Weights)) string {
	t.Helper()
	w, err := model.RandomWeights(cfg, 7, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(w)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cj, err := model.MarshalConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	shapes := map[string][]int{}
	for _, spec := range cfg.ExpectedTensors() {
		shapes[spec.Name] = spec.Shape
	}
	var st safetensors.Writer
	for name, v := range w.NamedTensors() {
		if err := st.AddFloat32(name, safetensors.F32, shapes[name], v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.WriteFile(filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	return dir
}
