package tokenizer

import "unicode/utf8"

// Stream turns tokens into text as they arrive, for printing a generation as
// it goes. Decoding token by token goes wrong two ways: a character may be
// split over several byte tokens (the first alone decodes to U+FFFD), and
// SentencePiece decoders drop the space of the first token of a string. So
// each new token is decoded together with the tokens before it, and only text
// beyond what those gave, ending in a whole character, is emitted (the scheme
// of Hugging Face's text-generation-inference).
type Stream struct {
	tok *Tokenizer
	ids []int
	// ids[prefix:read] is context already emitted; ids[read:] is not yet emitted.
	prefix, read int
}

// streamContext is how many prompt tokens give the first new token its context.
const streamContext = 6

// NewStream starts a stream after prompt, whose text is taken as already
// shown: only the text of tokens pushed later is emitted.
func NewStream(tok *Tokenizer, prompt []int) *Stream {
	n := len(prompt)
	return &Stream{tok: tok, ids: append([]int(nil), prompt...), prefix: max(0, n-streamContext), read: n}
}

// Push adds a token and returns the text it completes, possibly "".
func (s *Stream) Push(id int) string {
	s.ids = append(s.ids, id)
	prev := s.tok.DecodeSkipSpecial(s.ids[s.prefix:s.read])
	text := s.tok.DecodeSkipSpecial(s.ids[s.prefix:])
	if len(text) <= len(prev) {
		return ""
	}
	if r, _ := utf8.DecodeLastRuneInString(text); r == utf8.RuneError {
		return "" // a character still incomplete
	}
	s.prefix, s.read = s.read, len(s.ids)
	return beyond(prev, text)
}

// Flush returns what is pending at the end, incomplete characters and all.
func (s *Stream) Flush() string {
	prev := s.tok.DecodeSkipSpecial(s.ids[s.prefix:s.read])
	text := s.tok.DecodeSkipSpecial(s.ids[s.prefix:])
	s.prefix, s.read = s.read, len(s.ids)
	return beyond(prev, text)
}

// beyond is the part of text after prev. prev is normally a prefix of text;
// where a decoder rewrote the end of prev, the text from where they part is
// returned (at a character boundary), so the stream never stalls.
func beyond(prev, text string) string {
	i := 0
	for i < len(prev) && i < len(text) && prev[i] == text[i] {
		i++
	}
	for i > 0 && i < len(text) && !utf8.RuneStart(text[i]) {
		i--
	}
	return text[i:]
}
