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
