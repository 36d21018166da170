package gguf

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"train/model"
	"train/tokenizer"
)

const llama3Dir = "../../../shared/tokenizers/llama3"

// tokenizerGGUF writes a GGUF holding only the tokenizer metadata setTokenizer
// derives from dir's tokenizer.json, and opens it.
func tokenizerGGUF(t *testing.T, dir string) (*File, *tokenizer.Tokenizer) {
	t.Helper()
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s is not here (%v): run from a checkout beside ../shared", dir, err)
	}
	orig, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var w Writer
	if err := setTokenizer(&w, dir, model.Config{VocabSize: orig.VocabSize(), BOSTokenID: -1}); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := w.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	g, err := Parse(filepath.Base(dir)+".gguf", bytes.NewReader(b.Bytes()), int64(b.Len()))
	if err != nil {
		t.Fatal(err)
	}
	return g, orig
}

// testTexts are the strings of the transformers-generated references in
// data/testdata/tokenizer.
func testTexts(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("../../data/testdata/tokenizer", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r struct{ Text string }
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r.Text)
	}
	return out
}

// sameTokenization fails unless a and b give the same ids (with and without
// BOS) and the same decoded text on every text, and the same special tokens.
func sameTokenization(t *testing.T, what string, a, b *tokenizer.Tokenizer, texts []string) {
	t.Helper()
	if a.BOS() != b.BOS() || a.EOS() != b.EOS() || a.VocabSize() != b.VocabSize() || a.ChatTemplate() != b.ChatTemplate() {
		t.Fatalf("%s: bos %d/%d, eos %d/%d, vocab %d/%d, chat template equal %v", what, a.BOS(), b.BOS(), a.EOS(), b.EOS(),
			a.VocabSize(), b.VocabSize(), a.ChatTemplate() == b.ChatTemplate())
	}
	for _, s := range texts {
		for _, special := range []bool{false, true} {
			x, y := a.Encode(s, special), b.Encode(s, special)
			if !slices.Equal(x, y) {
				t.Fatalf("%s: %q (special %v): %v, the original gives %v", what, s, special, x, y)
			}
			if da, db := a.Decode(x), b.Decode(y); da != db {
				t.Fatalf("%s: %q decodes to %q, the original to %q", what, s, da, db)
			}
		}
	}
}

// TestGGUFTokenizerStories260K: the tokenizer rebuilt from the metadata we
// write for stories260K, and from the GGUF llama.cpp's tools wrote, tokenizes
// as the original tokenizer.json does; the merges rebuilt from the scores are
// exactly those of the tokenizer.json transformers' converter made.
func TestGGUFTokenizerStories260K(t *testing.T) {
	g, orig := tokenizerGGUF(t, stories260K)
	texts := testTexts(t, "stories260k.jsonl")
	rebuilt, err := Tokenizer(g)
	if err != nil {
		t.Fatal(err)
	}
	sameTokenization(t, "stories260K from our GGUF", rebuilt, orig, texts)

	theirs, err := Open(filepath.Join(stories260K, "stories260Ktok512.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	fromLlamaCpp, err := Tokenizer(theirs)
	if err != nil {
		t.Fatal(err)
	}
	sameTokenization(t, "stories260K from llama.cpp's GGUF", fromLlamaCpp, orig, texts)

	tj, _, err := TokenizerFiles(g)
	if err != nil {
		t.Fatal(err)
	}
	var got, want struct {
		Model struct{ Merges [][2]string }
	}
	raw, err := os.ReadFile(filepath.Join(stories260K, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(tj, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if len(want.Model.Merges) == 0 || !slices.Equal(got.Model.Merges, want.Model.Merges) {
		t.Fatalf("rebuilt merges (%d) differ from tokenizer.json's (%d): first %v vs %v", len(got.Model.Merges), len(want.Model.Merges),
			got.Model.Merges[:min(5, len(got.Model.Merges))], want.Model.Merges[:min(5, len(want.Model.Merges))])
	}
}

// TestGGUFTokenizerLlama3: the Llama 3 tokenizer rebuilt from our GGUF
// metadata tokenizes as Meta's tokenizer.json, and gives llama.cpp's expected
// ids on its test vectors (ggml-vocab-llama-bpe.gguf.inp/.out).
func TestGGUFTokenizerLlama3(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the Llama 3 tokenizer twice")
	}
	g, orig := tokenizerGGUF(t, llama3Dir)
	rebuilt, err := Tokenizer(g)
	if err != nil {
		t.Fatal(err)
	}
	texts := testTexts(t, "llama3.jsonl")
	inp, err := os.ReadFile(filepath.Join(llama3Dir, "ggml-vocab-llama-bpe.gguf.inp"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(filepath.Join(llama3Dir, "ggml-vocab-llama-bpe.gguf.out"))
	if err != nil {
		t.Fatal(err)
	}
	const sep = "\n__ggml_vocab_test__\n"
	ins := strings.Split(strings.TrimSuffix(string(inp), sep), sep)
	outs := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(ins) != len(outs) || len(ins) < 10 {
		t.Fatalf("%d test inputs, %d outputs", len(ins), len(outs))
	}
	for i, s := range ins {
		var want []int
		for _, f := range strings.Fields(outs[i]) {
			id, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, id)
		}
		if got := rebuilt.Encode(s, false); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("test vector %d %q: %v, llama.cpp expects %v", i, s, got, want)
		}
	}
	sameTokenization(t, "Llama 3 from our GGUF", rebuilt, orig, append(texts, ins...))
	if _, ok := rebuilt.TokenID("<|eot_id|>"); !ok || !rebuilt.IsSpecial(128009) {
		t.Error("<|eot_id|> is missing or not special")
	}
}

// TestGGUFTokenizerErrors: a file without a tokenizer, or with one of a kind
// we cannot rebuild, is a clear error naming the file and the key.
func TestGGUFTokenizerErrors(t *testing.T) {
	for _, c := range []struct {
		kv   map[string]any
		want string
	}{
		{map[string]any{"general.architecture": "llama"}, "x.gguf: tokenizer: no tokenizer.ggml.model"},
		{map[string]any{"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": []string{"a"}}, `tokenizer.ggml.model "bert" is not supported`},
		{map[string]any{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": []string{"a"}, "tokenizer.ggml.merges": []string{},
			"tokenizer.ggml.pre": "qwen2"}, `tokenizer.ggml.pre "qwen2" is not supported`},
		{map[string]any{"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": []string{"a", "b"}, "tokenizer.ggml.scores": []float32{0}},
			"tokenizer.ggml.scores has 1 entries for 2 tokens"},
	} {
		var w Writer
		for k, v := range c.kv {
			w.Set(k, v)
		}
		var b bytes.Buffer
		w.WriteTo(&b)
		g, err := Parse("x.gguf", bytes.NewReader(b.Bytes()), int64(b.Len()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Tokenizer(g); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error containing %q", c.kv, err, c.want)
		}
	}
}
