package tokenizer

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// wholeWord is the reference for a SentencePiece-style tokenizer without a
// splitting pre-tokenizer: the text normalized and pre-tokenized (spaces to
// "▁"; the loader turns such a normalizer into a Metaspace pre-tokenizer) and
// each word merged whole, as transformers does (text holds no added tokens).
func wholeWord(tok *Tokenizer, text string) []int {
	if text == "" {
		return nil
	}
	var ids []int
	for _, w := range words(tok, text) {
		for _, id := range tok.model.tokenize(w, false, nil) {
			ids = append(ids, int(id))
		}
	}
	return ids
}

// words are the pre-tokens of text.
func words(tok *Tokenizer, text string) []string {
	for _, n := range tok.normalizers {
		text = n.normalize(text)
	}
	ws := []string{text}
	for _, p := range tok.preTok {
		ws = p.split(ws, true)
	}
	return ws
}

// randomSP builds a SentencePiece-style tokenizer over a few characters with
// random merges, metaspace on either side of them included, so that some
// characters join a following "▁" and some do not.
func randomSP(t *testing.T, rng *rand.Rand) *Tokenizer {
	t.Helper()
	vocab := map[string]int{"<unk>": 0, "<s>": 1, "<0xC3>": 2, "<0xA9>": 3}
	var order []string
	for _, c := range []string{"▁", "a", "b", "c", "d"} {
		vocab[c] = len(vocab)
		order = append(order, c)
	}
	var merges [][2]string
	seen := map[[2]string]bool{}
	for len(merges) < 40 {
		a, b := order[rng.IntN(len(order))], order[rng.IntN(len(order))]
		if seen[[2]string{a, b}] || len([]rune(a+b)) > 6 {
			continue
		}
		seen[[2]string{a, b}] = true
		if _, ok := vocab[a+b]; !ok {
			vocab[a+b] = len(vocab)
			order = append(order, a+b)
		}
		merges = append(merges, [2]string{a, b})
	}
	v, _ := json.Marshal(vocab)
	m, _ := json.Marshal(merges)
	src := strings.Replace(strings.Replace(fmt.Sprintf(tinySP, "true", "true"),
		`{"<unk>": 0, "<s>": 1, "<0xC3>": 2, "<0xA9>": 3, "▁": 4, "a": 5, "b": 6, "▁a": 7, "ab": 8, "▁ab": 9}`, string(v), 1),
		`[["▁", "a"], ["a", "b"], ["▁a", "b"]]`, string(m), 1)
	tok, err := Parse("random-sp.json", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestPiecesMatchWholeWord: cutting a SentencePiece-style word before a
// metaspace (bpe.pieceEnd) gives exactly the tokens of merging the whole
// word, on random vocabularies and texts with runs of spaces, unknown
// characters (unk, fused), byte fallback and invalid UTF-8, and on
// stories260K's real vocabulary.
func TestPiecesMatchWholeWord(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	alphabet := []string{"a", "b", "c", "d", " ", " ", "  ", "x", "é", "\xff", "b "}
	text := func() string {
		var sb strings.Builder
		for n := rng.IntN(40); n > 0; n-- {
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return sb.String()
	}
	cuts := 0
	for trial := 0; trial < 200; trial++ {
		tok := randomSP(t, rng)
		for i := 0; i < 50; i++ {
			s := text()
			if got, want := tok.Encode(s, false), wholeWord(tok, s); !slices.Equal(got, want) {
				t.Fatalf("Encode(%q) = %v; the whole word merges to %v", s, got, want)
			}
			for _, w := range words(tok, s) {
				if tok.model.pieceEnd(w) < len(w) {
					cuts++
				}
			}
		}
	}
	if cuts == 0 {
		t.Fatal("no text was cut: the test proves nothing")
	}
	tok := loadShared(t, stories260K)
	for i := 0; i < 200; i++ {
		s := strings.Repeat("Once upon a time,  there was a little girl named Lily. ", rng.IntN(4)) + text()
		if got, want := tok.Encode(s, false), wholeWord(tok, s); !slices.Equal(got, want) {
			t.Fatalf("stories260K: Encode(%q) = %v; the whole word merges to %v", s, got, want)
		}
	}
}

// TestLongLineMemory: a 4 MB text through stories260K's tokenizer (no
// pre-tokenizer: the text is one word) allocates a small multiple of its
// size. Merged whole, its BPE symbols and merge queue took about 60 bytes per
// byte of text.
func TestLongLineMemory(t *testing.T) {
	tok := loadShared(t, stories260K)
	text := strings.Repeat("Once upon a time there was a little girl named Lily. ", 4<<20/54)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ids := tok.Encode(text, false)
	runtime.ReadMemStats(&after)
	perByte := float64(after.TotalAlloc-before.TotalAlloc) / float64(len(text))
	if perByte > 12 {
		t.Errorf("encoding %d bytes into %d tokens allocated %.1f bytes per byte of text; want at most 12", len(text), len(ids), perByte)
	}
	t.Logf("%d bytes, %d tokens: %.1f bytes allocated per byte", len(text), len(ids), perByte)
}
