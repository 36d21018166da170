package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/format/safetensors"
)

// FuzzModelIndex writes fuzzed model.safetensors.index.json bytes beside two real
// shards and opens the directory: an error naming the index (or a shard), or a
// model whose every file lies inside the directory and whose every tensor reads
// back, never a panic (deep nesting, huge maps, shard names with "..", "/" or
// NUL, tensors mapped to the wrong shard).
func FuzzModelIndex(f *testing.F) {
	base := f.TempDir()
	shards := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
	for i, name := range shards {
		var w safetensors.Writer
		w.AddFloat32(string(rune('a'+i)), safetensors.F32, []int{2}, []float32{1, 2})
		out, err := os.Create(filepath.Join(base, name))
		if err != nil {
			f.Fatal(err)
		}
		if _, err := w.WriteTo(out); err != nil {
			f.Fatal(err)
		}
		out.Close()
	}
	for _, s := range []string{
		`{"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}`,
		`{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}`,
		`{"weight_map": {"a": "/etc/passwd"}}`,
		`{"weight_map": {"a": ".."}}`,
		`{"weight_map": {"a": "model-00002-of-00002.safetensors"}}`,
		`{"weight_map": {"a": "sub\\x.safetensors"}}`,
		`{"weight_map": {"a": "pytorch_model.bin"}}`,
		`{"weight_map": {}}`,
		`{"weight_map": [}`,
		`{"weight_map": {"a": 1}}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, index []byte) {
		dir := t.TempDir()
		for _, name := range shards {
			if err := os.Link(filepath.Join(base, name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, weightsIndexFile), index, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := OpenModelDir(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error does not name the directory: %v", err)
			}
			return
		}
		defer m.Close()
		for _, sf := range m.Files {
			if filepath.Dir(sf.Name) != dir {
				t.Fatalf("opened %s, outside %s", sf.Name, dir)
			}
		}
		for _, ti := range m.Tensors() {
			if _, _, err := m.ReadFloat32(ti.Name); err != nil {
				t.Fatalf("an opened model cannot read its tensor %s: %v", ti.Name, err)
			}
		}
	})
}

// TestPickleRefused: a directory holding only PyTorch pickle checkpoints is
// refused with a message naming them and safetensors; nothing is unpickled.
func TestPickleRefused(t *testing.T) {
	for _, name := range []string{"pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "model.pt", "consolidated.00.pth"} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, name), []byte("\x80\x02c__builtin__\neval\n"), 0o644)
		_, err := OpenModelDir(dir)
		if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "safetensors only") {
			t.Errorf("%s: %v, want a refusal naming it and safetensors", name, err)
		}
	}
}
