package tokenizer

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json's added_tokens: a string that is cut
// out of the text whole and becomes its id, bypassing the model (special tokens
// such as <|eot_id|>, and any token a fine-tune added).
type addedToken struct {
	id         int
	content    string
	special    bool
	singleWord bool // only when not inside a word
	lstrip     bool // also swallows whitespace on its left
	rstrip     bool // ... and on its right
	normalized bool // matched in the normalized text rather than the raw text
}

// addedMatcher finds added tokens in text, leftmost first and, among those that
// start at the same place, the longest (tokenizers uses Aho-Corasick with
// LeftmostLongest). Few added tokens exist and they begin with few distinct
// bytes, so candidates are kept per first byte, longest first.
type addedMatcher struct {
	byFirst [256][]*addedToken
}

func newAddedMatcher(toks []*addedToken) *addedMatcher {
	if len(toks) == 0 {
		return nil
	}
	m := &addedMatcher{}
	for _, t := range toks {
		if t.content == "" {
			continue
		}
		c := t.content[0]
		m.byFirst[c] = append(m.byFirst[c], t)
	}
	for c := range m.byFirst {
		l := m.byFirst[c]
		sort.SliceStable(l, func(i, j int) bool { return len(l[i].content) > len(l[j].content) })
	}
	return m
}

// split calls fn for each piece of s in order: text pieces with id -1, added
// tokens with their id. atStart says the piece begins at offset 0 of s. A nil
// matcher passes s through whole.
func (m *addedMatcher) split(s string, fn func(seg string, id int, atStart bool)) {
	if m == nil {
		if s != "" {
			fn(s, -1, true)
		}
		return
	}
	prev := 0 // end of the last emitted piece
	for i := 0; i < len(s); i++ {
		cands := m.byFirst[s[i]]
		if len(cands) == 0 {
			continue
		}
		var t *addedToken
		for _, c := range cands {
			if strings.HasPrefix(s[i:], c.content) {
				t = c
				break
			}
		}
		if t == nil {
			continue
		}
		start, stop := i, i+len(t.content)
		if t.singleWord && (wordCharBefore(s[:start]) || wordCharAfter(s[stop:])) {
			continue
		}
		if t.lstrip {
			start = max(len(strings.TrimRightFunc(s[:start], unicode.IsSpace)), prev)
		}
		if t.rstrip {
			stop = len(s) - len(strings.TrimLeftFunc(s[stop:], unicode.IsSpace))
		}
		if start > prev {
			fn(s[prev:start], -1, prev == 0)
		}
		fn(s[start:stop], t.id, start == 0)
		prev = stop
		i = stop - 1
	}
	if prev < len(s) {
		fn(s[prev:], -1, prev == 0)
	}
}

func isWordChar(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

func wordCharBefore(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordChar(r)
}

func wordCharAfter(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordChar(r)
}
