package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
)

const storiesDir = "../shared/models/stories260K"

func TestTokenizeCommand(t *testing.T) {
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", storiesDir, err)
	}
	in := `"Hello world"` + "\n" + `"a"` + "\n" + `""` + "\n"
	var out, errb bytes.Buffer
	// The ids are transformers' (data/testdata/tokenizer/stories260k.jsonl).
	if err := runTokenizeFrom([]string{"-tokenizer", storiesDir}, strings.NewReader(in), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if want := "[346,306,414,263,304,341]\n[261]\n[]\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	out.Reset()
	if err := runTokenizeFrom([]string{"-tokenizer", storiesDir + "/tokenizer.json", "-bos"}, strings.NewReader(`"a"`), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if want := "[1,261]\n"; out.String() != want {
		t.Errorf("with -bos: output %q, want %q", out.String(), want)
	}
}

func TestTokenizeCommandUsage(t *testing.T) {
	var out, errb bytes.Buffer
	err := runTokenizeFrom(nil, strings.NewReader(""), &out, &errb)
	if !errors.As(err, new(*usageError)) || !strings.Contains(err.Error(), "-tokenizer is required") {
		t.Errorf("no -tokenizer: %v", err)
	}
	if err := runTokenizeFrom([]string{"-h"}, strings.NewReader(""), &out, &errb); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	if !strings.Contains(errb.String(), "train tokenize -tokenizer PATH") {
		t.Errorf("help text: %q", errb.String())
	}
	err = runTokenizeFrom([]string{"-tokenizer", "does/not/exist.json"}, strings.NewReader(""), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "does/not/exist.json") {
		t.Errorf("missing file: %v", err)
	}
}

// TestTokenizeData: train tokenize -data builds the cache a run with
// -data-cache then finds instead of tokenizing (the same folder, not rebuilt).
func TestTokenizeData(t *testing.T) {
	if _, err := os.Stat(storiesDir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", storiesDir, err)
	}
	dir := t.TempDir()
	path := dir + "/train.jsonl"
	os.WriteFile(path, []byte(`{"text": "Once upon a time"}`+"\n"+`{"prompt": "Lily", "completion": " ran."}`+"\n"), 0o644)
	args := []string{"-model", storiesDir, "-data", path, "-out", dir + "/cache"}
	var out, errb bytes.Buffer
	if err := runTokenizeFrom(args, nil, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "built "+dir+"/cache/train.jsonl-") || !strings.Contains(out.String(), "2 examples") {
		t.Fatalf("output %q\n%s", out.String(), errb.String())
	}
	built := strings.Fields(out.String())[1]
	run := dir + "/run"
	errb.Reset()
	if code := mainExit([]string{"-model", storiesDir, "-data", path, "-data-cache", dir + "/cache", "-eval-fraction", "0.5",
		"-steps", "1", "-seq", "16", "-batch", "1", "-run", run}, &out, &errb); code != 0 {
		t.Fatalf("train: exit %d\n%s", code, errb.String())
	}
	if strings.Contains(errb.String(), "tokenizing") {
		t.Errorf("the run tokenized again instead of using %s:\n%s", built, errb.String())
	}
	if err := runTokenizeFrom([]string{"-data", path, "-out", dir}, nil, &out, &errb); !errors.As(err, new(*usageError)) {
		t.Errorf("-data without -model: %v", err)
	}
}
