package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestStreamWholeCharacters: characters the vocabulary lacks become several
// byte tokens; streamed one token at a time they come out whole, and the pieces
// add up to the decoding of the whole sequence.
func TestStreamWholeCharacters(t *testing.T) {
	tok := loadShared(t, stories260K)
	prompt := tok.Encode("Once upon", true)
	gen := tok.Encode(" a time 日本語 and émoji 🙂 end", false)
	full := tok.DecodeSkipSpecial(append(append([]int(nil), prompt...), gen...))
	s := NewStream(tok, prompt)
	var got strings.Builder
	for _, id := range gen {
		piece := s.Push(id)
		if strings.ContainsRune(piece, utf8.RuneError) {
			t.Fatalf("piece %q holds a split character", piece)
		}
		got.WriteString(piece)
	}
	got.WriteString(s.Flush())
	if want := strings.TrimPrefix(full, tok.DecodeSkipSpecial(prompt)); got.String() != want {
		t.Errorf("streamed %q, want %q", got.String(), want)
	}
}

// TestBeyond: the text past what was shown, also where the decoder rewrote
// the end of it, cut at a character boundary.
func TestBeyond(t *testing.T) {
	for _, c := range []struct{ prev, text, want string }{
		{"Once", "Once upon", " upon"},
		{"", "a", "a"},
		{"ab", "ab", ""},
		{"abX", "abYc", "Yc"},
		{"a日", "a日本", "本"},
		{"a\xe6", "a日", "日"}, // a split character completed: from its first byte
	} {
		if got := beyond(c.prev, c.text); got != c.want {
			t.Errorf("beyond(%q, %q) = %q, want %q", c.prev, c.text, got, c.want)
		}
	}
}
