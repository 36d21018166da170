package tokenizer

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// Paths of the shared test material, relative to this package's directory.
const (
	sharedDir     = "../../shared"
	llama3Path    = sharedDir + "/tokenizers/llama3/tokenizer.json"
	stories260K   = sharedDir + "/models/stories260K/tokenizer.json"
	ggmlInputs    = sharedDir + "/tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp"
	ggmlOutputs   = sharedDir + "/tokenizers/llama3/ggml-vocab-llama-bpe.gguf.out"
	referenceDir  = "../data/testdata/tokenizer"
	skipNoSharedM = "../shared is absent (a fresh clone): skipping the test that needs "
)

// Loaded tokenizers are shared by the tests: Llama 3's takes a moment to load.
var (
	loadOnce sync.Map // path -> func() (*Tokenizer, error)
)

func loadShared(tb testing.TB, path string) *Tokenizer {
	tb.Helper()
	if _, err := os.Stat(path); err != nil {
		tb.Skip(skipNoSharedM + path)
	}
	f, _ := loadOnce.LoadOrStore(path, sync.OnceValues(func() (*Tokenizer, error) { return Load(path) }))
	tok, err := f.(func() (*Tokenizer, error))()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// reference is one line of the transformers-generated JSONL files.
type reference struct {
	Text           string `json:"text"`
	IDs            []int  `json:"ids"`
	IDsWithSpecial []int  `json:"ids_with_special"`
	Decoded        string `json:"decoded"`
}

func readReferences(t *testing.T, name string) []reference {
	t.Helper()
	f, err := os.Open(filepath.Join(referenceDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var refs []reference
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		var r reference
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s:%d: %v", name, n, err)
		}
		refs = append(refs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return refs
}

func checkReferences(t *testing.T, tok *Tokenizer, refs []reference) {
	t.Helper()
	pass := 0
	for _, r := range refs {
		ok := true
		if got := tok.Encode(r.Text, false); !slices.Equal(got, r.IDs) {
			t.Errorf("Encode(%q)\n got %v\nwant %v", r.Text, got, r.IDs)
			ok = false
		}
		if got := tok.Encode(r.Text, true); !slices.Equal(got, r.IDsWithSpecial) {
			t.Errorf("Encode(%q, special)\n got %v\nwant %v", r.Text, got, r.IDsWithSpecial)
			ok = false
		}
		if got := tok.Decode(r.IDs); got != r.Decoded {
			t.Errorf("Decode(%v)\n got %q\nwant %q", r.IDs, got, r.Decoded)
			ok = false
		}
		if ok {
			pass++
		}
	}
	t.Logf("%d/%d transformers references match (encode, encode with special tokens, decode)", pass, len(refs))
}

func TestStories260KMatchesTransformers(t *testing.T) {
	tok := loadShared(t, stories260K)
	checkReferences(t, tok, readReferences(t, "stories260k.jsonl"))
}

func TestLlama3MatchesTransformers(t *testing.T) {
	tok := loadShared(t, llama3Path)
	checkReferences(t, tok, readReferences(t, "llama3.jsonl"))
}

// TestLlama3GGMLVectors runs llama.cpp's test vectors: inputs separated by
// "\n__ggml_vocab_test__\n" (each input is followed by one), and one line of
// space-separated ids per input, without BOS.
func TestLlama3GGMLVectors(t *testing.T) {
	tok := loadShared(t, llama3Path)
	inp, err := os.ReadFile(ggmlInputs)
	if err != nil {
		t.Skip(skipNoSharedM + ggmlInputs)
	}
	out, err := os.ReadFile(ggmlOutputs)
	if err != nil {
		t.Fatal(err)
	}
	const sep = "\n__ggml_vocab_test__\n"
	inputs := strings.Split(string(inp), sep)
	if inputs[len(inputs)-1] != "" {
		t.Fatalf("%s does not end with the separator", ggmlInputs)
	}
	inputs = inputs[:len(inputs)-1]
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(inputs) {
		t.Fatalf("%d inputs but %d output lines", len(inputs), len(lines))
	}
	pass := 0
	for i, in := range inputs {
		var want []int
		for _, f := range strings.Fields(lines[i]) {
			id, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("%s line %d: %v", ggmlOutputs, i+1, err)
			}
			want = append(want, id)
		}
		got := tok.Encode(in, false)
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("vector %d: Encode(%q)\n got %v\nwant %v", i, in, got, want)
			continue
		}
		if dec := tok.Decode(got); dec != in {
			t.Errorf("vector %d: Decode(Encode(%q)) = %q", i, in, dec)
			continue
		}
		pass++
	}
	t.Logf("%d/%d llama.cpp vectors pass", pass, len(inputs))
}

func TestSpecialIDs(t *testing.T) {
	l3 := loadShared(t, llama3Path)
	if l3.BOS() != 128000 || l3.EOS() != 128009 || l3.VocabSize() != 128256 {
		t.Errorf("llama3: BOS %d EOS %d vocab %d, want 128000 128009 128256", l3.BOS(), l3.EOS(), l3.VocabSize())
	}
	if !strings.Contains(l3.ChatTemplate(), "<|start_header_id|>") {
		t.Errorf("llama3: chat template not read: %q", l3.ChatTemplate())
	}
	if id, ok := l3.TokenID("<|eot_id|>"); !ok || id != 128009 || !l3.IsSpecial(id) {
		t.Errorf("TokenID(<|eot_id|>) = %d, %v", id, ok)
	}
	if s, ok := l3.Token(9906); !ok || s != "Hello" {
		t.Errorf("Token(9906) = %q, %v", s, ok)
	}
	ids := l3.Encode("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", true)
	if got := l3.DecodeSkipSpecial(ids); got != "user\n\nhi" {
		t.Errorf("DecodeSkipSpecial = %q", got)
	}

	st := loadShared(t, stories260K)
	if st.BOS() != 1 || st.EOS() != 2 || st.VocabSize() != 512 {
		t.Errorf("stories260K: BOS %d EOS %d vocab %d, want 1 2 512", st.BOS(), st.EOS(), st.VocabSize())
	}
}

// TestStories260KFileOnly checks the pipeline as the file itself describes it
// (what the Rust tokenizers library runs): the Prepend normalizer always adds
// "▁", so a leading space gives "▁▁", unlike transformers' rebuilt pipeline.
func TestStories260KFileOnly(t *testing.T) {
	if _, err := os.Stat(stories260K); err != nil {
		t.Skip(skipNoSharedM + stories260K)
	}
	file, err := LoadWithOptions(stories260K, Options{FileOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	tf := loadShared(t, stories260K)
	for _, s := range []string{"Hello world", "Once upon a time, there was a little girl named Lily.", "中文"} {
		if a, b := file.Encode(s, true), tf.Encode(s, true); !slices.Equal(a, b) {
			t.Errorf("%q: file-only %v, transformers %v", s, a, b)
		}
	}
	a, b := file.Encode(" Hello", false), tf.Encode(" Hello", false)
	if len(a) != len(b)+1 {
		t.Errorf("\" Hello\": file-only %v should have one more ▁ than transformers' %v", a, b)
	}
	if got := file.Decode(a); got != " Hello" {
		t.Errorf("file-only round trip of \" Hello\" = %q", got)
	}
}

// TestLlama3PreTokenizer checks the hand-written matcher on the cases where the
// lookahead and backtracking matter.
func TestLlama3PreTokenizer(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"Hello world", []string{"Hello", " world"}},
		{"a  b", []string{"a", " ", " b"}},
		{"a   \n\n  b", []string{"a", "   \n\n", " ", " b"}},
		{"x \t", []string{"x", " \t"}},
		{"don't I'M", []string{"don", "'t", " I", "'M"}},
		{"12345", []string{"123", "45"}},
		{" ...\n\nx", []string{" ...\n\n", "x"}},
		{"\u00a0non", []string{"\u00a0non"}},
		{"a\r\n\r\n b", []string{"a", "\r\n\r\n", " b"}},
		{"(foo)", []string{"(foo", ")"}},
		{"'ſ", []string{"'ſ"}},
	}
	for _, c := range cases {
		var got []string
		for i := 0; i < len(c.in); {
			j := llama3End(c.in, i)
			got = append(got, c.in[i:j])
			i = j
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("llama3 split %q = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestGPT2PreTokenizer(t *testing.T) {
	in := "Hello  world's 123 !!\n x  "
	want := []string{"Hello", " ", " world", "'s", " 123", " !!", "\n", " x", "  "}
	var got []string
	for i := 0; i < len(in); {
		j := gpt2End(in, i)
		got = append(got, in[i:j])
		i = j
	}
	if !slices.Equal(got, want) {
		t.Errorf("gpt2 split = %q, want %q", got, want)
	}
}

func TestUTF8Lossy(t *testing.T) {
	cases := map[string]string{
		"abc":              "abc",
		"\xe4\xbd":         "\uFFFD",       // truncated 3-byte sequence: one replacement
		"\xe4\xbdx":        "\uFFFDx",      //
		"\xff\xfe":         "\uFFFD\uFFFD", // never-valid bytes: one each
		"\xed\xa0\x80":     "\uFFFD\uFFFD\uFFFD",
		"\xf0\x9f\x98":     "\uFFFD",
		"\xf0\x9f\x98\x81": "😁",
	}
	for in, want := range cases {
		if got := utf8Lossy([]byte(in)); got != want {
			t.Errorf("utf8Lossy(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestConcurrentEncode exercises the shared cache from several goroutines (run
// with -race to check the locking).
func TestConcurrentEncode(t *testing.T) {
	tok := loadShared(t, llama3Path)
	text := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20)
	want := tok.Encode(text, true)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				if got := tok.Encode(text, true); !slices.Equal(got, want) {
					t.Error("concurrent Encode differs")
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A tiny SentencePiece-style file exercising byte fallback, unk and fuse_unk.
const tinySP = `{
  "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}],
  "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
  "pre_tokenizer": null,
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
     "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
  "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": %s, "byte_fallback": %s,
    "vocab": {"<unk>": 0, "<s>": 1, "<0xC3>": 2, "<0xA9>": 3, "▁": 4, "a": 5, "b": 6, "▁a": 7, "ab": 8, "▁ab": 9},
    "merges": [["▁", "a"], ["a", "b"], ["▁a", "b"]]}
}`

func TestTinySentencePiece(t *testing.T) {
	tok, err := Parse("tiny.json", []byte(fmt.Sprintf(tinySP, "true", "true")), nil)
	if err != nil {
		t.Fatal(err)
	}
	// "é" is not in the vocabulary: its bytes C3 A9 are. "x" has no byte token
	// (byte fallback needs every byte), so it is unk; "xx" fuses into one unk.
	cases := []struct {
		in   string
		want []int
	}{
		{"ab", []int{1, 9}},
		{"a b", []int{1, 7, 4, 6}},
		{"é", []int{1, 4, 2, 3}},
		{"xxab", []int{1, 4, 0, 8}},
	}
	for _, c := range cases {
		if got := tok.Encode(c.in, true); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := tok.Decode([]int{1, 4, 2, 3, 9}); got != "<s> é ab" {
		t.Errorf("Decode = %q", got)
	}
	if got := tok.Decode([]int{4, 2, 9}); got != "\uFFFD ab" {
		t.Errorf("Decode of a lone byte = %q", got)
	}
	noFuse, err := Parse("tiny.json", []byte(fmt.Sprintf(tinySP, "false", "true")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := noFuse.Encode("xx", false); !slices.Equal(got, []int{4, 0, 0}) {
		t.Errorf("no fuse_unk: Encode(xx) = %v", got)
	}
}

func TestParseErrors(t *testing.T) {
	good := fmt.Sprintf(tinySP, "true", "true")
	cases := []struct {
		name, data, want string
	}{
		{"not json", `{"model": `, "not a tokenizer.json"},
		{"no model", `{}`, `no "model" key`},
		{"unigram", `{"model": {"type": "Unigram", "vocab": []}}`, `model.type "Unigram" is not supported`},
		{"unknown merge", strings.Replace(good, `["a", "b"]`, `["a", "zz"]`, 1), `model.merges[1]`},
		{"merged missing", strings.Replace(good, `"ab": 8, `, ``, 1), `the merged token "ab"`},
		{"bad merge string", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}`, `model.merges[0] "a"`},
		{"dup id", `{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}}`, `id 0 is given to both`},
		{"bad unk", strings.Replace(good, `"unk_token": "<unk>"`, `"unk_token": "<nope>"`, 1), `model.unk_token "<nope>"`},
		{"bad normalizer", strings.Replace(good, `"type": "Prepend"`, `"type": "NFKC"`, 1), `normalizer.normalizers[0].type "NFKC" is not supported`},
		{"bad decoder", strings.Replace(good, `"type": "Fuse"`, `"type": "CTC"`, 1), `decoder.decoders[2].type "CTC"`},
		{"bad template", strings.Replace(good, `"ids": [1]`, `"ids": [99]`, 1), `id 99 is not a token`},
		{"lookahead", strings.Replace(good, `"pre_tokenizer": null`, `"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a(?!b)"}, "behavior": "Isolated"}`, 1), `not supported by Go's regexp`},
	}
	for _, c := range cases {
		_, err := Parse("bad.json", []byte(c.data), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "bad.json") {
			t.Errorf("%s: error %v, want it to name bad.json and contain %q", c.name, err, c.want)
		}
	}
	_, err := Parse("dir/tokenizer.json", []byte(good), []byte(`{"bos_token": "<nope>"}`))
	if err == nil || !strings.Contains(err.Error(), "tokenizer_config.json: bos_token") {
		t.Errorf("bad config bos_token: %v", err)
	}
	if _, err := Load("does/not/exist.json"); err == nil || !strings.Contains(err.Error(), "does/not/exist.json") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzEncodeDecode(f *testing.F) {
	for _, s := range []string{"", "Hello world", " \n\n  x", "don't", "中文😁", "<|eot_id|>x", "\xff\xfe", "   ", "a\u00a0b"} {
		f.Add(s)
	}
	var l3, st *Tokenizer
	if _, err := os.Stat(llama3Path); err == nil {
		l3 = loadShared(f, llama3Path)
	}
	if _, err := os.Stat(stories260K); err == nil {
		st = loadShared(f, stories260K)
	}
	tiny, err := Parse("tiny.json", []byte(fmt.Sprintf(tinySP, "true", "true")), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tiny.Decode(tiny.Encode(s, true))
		if st != nil {
			st.Decode(st.Encode(s, true))
		}
		if l3 != nil {
			ids := l3.Encode(s, false)
			if got := l3.Decode(ids); utf8.ValidString(s) && got != s {
				t.Errorf("llama3 Decode(Encode(%q)) = %q", s, got)
			}
		}
	})
}

// FuzzParse feeds mutated tokenizer.json files to the loader: it must return an
// error or a tokenizer that encodes without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(tinySP, "true", "true")))
	f.Add([]byte(fmt.Sprintf(tinySP, "false", "false")))
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
	  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithNext"}, {"type": "ByteLevel"}]},
	  "decoder": {"type": "ByteLevel"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := Parse("fuzz.json", data, nil)
		if err != nil {
			return
		}
		ids := tok.Encode("ab a b é <s>  x", true)
		tok.Decode(ids)
		tok.Decode([]int{-1, 0, 1, 1 << 30})
	})
}

// BenchmarkEncodeLlama3 measures single-goroutine encode throughput on a mixed
// corpus: the transformers references (multilingual, code, whitespace) and the
// llama.cpp vectors, repeated to about 1 MiB. "docs" encodes it one document at
// a time, as a dataset is tokenized; "one-string" as a single text. The word
// cache warms on the first pass, as it does on a real dataset.
// testdata/bench_hf.py measures Hugging Face on the same corpus.
func BenchmarkEncodeLlama3(b *testing.B) {
	tok := loadShared(b, llama3Path)
	var parts []string
	if data, err := os.ReadFile(filepath.Join(referenceDir, "llama3.jsonl")); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var r reference
			if json.Unmarshal([]byte(line), &r) == nil {
				parts = append(parts, r.Text)
			}
		}
	}
	if data, err := os.ReadFile(ggmlInputs); err == nil {
		parts = append(parts, strings.Split(string(data), "\n__ggml_vocab_test__\n")...)
	}
	unit := strings.Join(parts, "\n")
	reps := 1 + (1<<20)/len(unit)
	corpus := strings.Repeat(unit, reps)
	b.Run("docs", func(b *testing.B) {
		b.SetBytes(int64(len(corpus)))
		for b.Loop() {
			for range reps {
				for _, p := range parts {
					tok.Encode(p, false)
				}
			}
		}
	})
	b.Run("one-string", func(b *testing.B) {
		b.SetBytes(int64(len(corpus)))
		for b.Loop() {
			tok.Encode(corpus, false)
		}
	})
}

// TestLoadDirectory: a directory holding tokenizer.json loads as the file
// does, as every command's -tokenizer accepts either.
func TestLoadDirectory(t *testing.T) {
	file := loadShared(t, stories260K)
	dir, err := Load(filepath.Dir(stories260K))
	if err != nil {
		t.Fatal(err)
	}
	if s := "Once upon a time"; !slices.Equal(dir.Encode(s, true), file.Encode(s, true)) {
		t.Error("the directory's tokenizer encodes differently from its tokenizer.json")
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "tokenizer.json") {
		t.Errorf("a directory without tokenizer.json: %v", err)
	}
}
