package format

import (
	"path/filepath"
	"strings"
	"testing"

	"train/format/gguf"
	"train/internal/testcheck"
)

const tiny = "../model/testdata/parity/tiny"

func TestLoadModel(t *testing.T) {
	w, err := LoadModel(tiny)
	if err != nil {
		t.Fatal(err)
	}
	if w.Config.NumLayers != 2 {
		t.Fatalf("layers %d", w.Config.NumLayers)
	}
	if _, err := LoadModel(tiny + "/config.json"); err == nil || !strings.Contains(err.Error(), "not a GGUF file") {
		t.Errorf("a JSON file: %v", err)
	}

	// A GGUF file is recognised by its magic, not by its name.
	path := filepath.Join(t.TempDir(), "tiny.bin")
	if err := gguf.WriteModel(path, w, gguf.ModelOptions{Type: gguf.F32}); err != nil {
		t.Fatal(err)
	}
	back, err := LoadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	testcheck.EqualTensors(t, "GGUF", back.NamedTensors(), w.NamedTensors(), 0)

	if _, err := LoadModel(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing path loaded")
	}
}
