package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/tokenizer"
)

// TestGGUFAsInput: a GGUF export of stories260K is a model for generate, eval
// and export on its own, its embedded tokenizer standing in for -tokenizer:
// the f32 file generates the ids the Hugging Face directory does and gives the
// same loss; its hf export ships a tokenizer that encodes like the original.
func TestGGUFAsInput(t *testing.T) {
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("%s is not here: %v", storiesDir, err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "s.gguf")
	run := func(f func([]string, *bytes.Buffer) error, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := f(args, &out); err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	export := func(args []string, out *bytes.Buffer) error { return runExport(args, out, new(bytes.Buffer)) }
	gen := func(args []string, out *bytes.Buffer) error {
		return runGenerateFrom(args, strings.NewReader(""), out, new(bytes.Buffer))
	}
	eval := func(args []string, out *bytes.Buffer) error { return runEval(args, out, new(bytes.Buffer)) }
	run(export, "-model", storiesDir, "-format", "gguf", "-out", file)

	genArgs := []string{"-prompt", "Once upon a time", "-max-tokens", "20", "-ids"}
	want := run(gen, append([]string{"-model", storiesDir}, genArgs...)...)
	if got := run(gen, append([]string{"-model", file}, genArgs...)...); got != want || len(strings.Fields(got)) != 20 {
		t.Errorf("generate from the GGUF: %q, from the directory %q", got, want)
	}

	data := filepath.Join(dir, "d.jsonl")
	os.WriteFile(data, []byte(`{"text": "Once upon a time, there was a little girl named Lily."}`+"\n"), 0o644)
	if got, want := run(eval, "-model", file, "-data", data), run(eval, "-model", storiesDir, "-data", data); got != want {
		t.Errorf("eval of the GGUF: %s, of the directory %s", got, want)
	}

	hf := filepath.Join(dir, "hf")
	run(export, "-model", file, "-format", "hf", "-out", hf)
	back, err := tokenizer.Load(hf)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := tokenizer.Load(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	s := "Once upon a time, Lily saw a big dog. \"Hi!\" she said."
	if a, b := back.Encode(s, true), orig.Encode(s, true); !slices.Equal(a, b) {
		t.Errorf("the hf export's tokenizer gives %v, the original %v", a, b)
	}
}
