package tokenizer

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// bpe is the byte-pair-encoding model: a vocabulary and a ranked list of merges.
// A word starts as one symbol per character; the adjacent pair with the lowest
// merge rank is replaced by its merged token, again and again, until no adjacent
// pair has a merge. Ties go to the leftmost pair. This is tokenizers'
// Word::merge_all, including its priority queue, so long words cost O(n log n)
// rather than a rescan per merge.
type bpe struct {
	vocab  map[string]int32
	tokens []string // id -> token; "" for ids the vocabulary skips
	has    []bool   // id -> whether tokens[id] is a real entry

	merges map[uint64]uint64 // (left<<32 | right) -> (rank<<32 | merged id)

	unk          int32 // -1: none
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool

	byteFallbackID [256]int32 // <0xNN> ids, -1 where missing
	byteLevelID    [256]int32 // id of the byte-level character of each byte, -1 where missing
	runeID         map[rune]int32

	// joinsMetaspace holds each character c that some merge puts directly
	// before a metaspace (a left side ending in c, a right side starting with
	// "▁"): pieceEnd cuts a word before a metaspace only after other characters.
	joinsMetaspace map[rune]bool
}

// metaspace stands for a space in SentencePiece-style vocabularies (Llama 2,
// stories260K). Their normalizer replaces spaces with it and no pre-tokenizer
// splits the text, so a whole text is one word; see pieceEnd.
const metaspace = "\u2581"

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// token returns the vocabulary string of id.
func (m *bpe) token(id int) (string, bool) {
	if id < 0 || id >= len(m.tokens) || !m.has[id] {
		return "", false
	}
	return m.tokens[id], true
}

// symbol is one node of the doubly linked list a word is merged in.
type symbol struct {
	id         int32
	prev, next int32 // indices; -1 at the ends
	gone       bool  // merged into its left neighbour
}

// mergeCand is a pair that may be merged: the left symbol's index, the rank of the
// merge and the id it would produce (to detect stale entries).
type mergeCand struct {
	rank, pos, id int32
}

func (a mergeCand) less(b mergeCand) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

// mergeHeap is a binary min-heap of merge candidates, hand-rolled to avoid the
// interface boxing of container/heap on the hot path.
type mergeHeap []mergeCand

func (h *mergeHeap) push(c mergeCand) {
	*h = append(*h, c)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *mergeHeap) pop() mergeCand {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s[r].less(s[l]) {
			m = r
		}
		if !s[m].less(s[i]) {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// tokenize appends the ids of one word. With byteInput the word is raw bytes that
// the ByteLevel pre-tokenizer would have mapped one character per byte; the model
// does the mapping itself (faster: no mapped string is built unless needed).
func (m *bpe) tokenize(word string, byteInput bool, out []int32) []int32 {
	if m.ignoreMerges {
		w := word
		if byteInput {
			w = byteLevelString(word)
		}
		if id, ok := m.vocab[w]; ok {
			return append(out, id)
		}
	}
	syms := make([]symbol, 0, len(word))
	add := func(id int32) {
		n := int32(len(syms))
		if n > 0 {
			syms[n-1].next = n
		}
		syms = append(syms, symbol{id: id, prev: n - 1, next: -1})
	}
	// As tokenizers' merge_word: an unknown character becomes unk (consecutive
	// ones fused into one when fuse_unk), unless byte fallback can spell it; the
	// pending unk is only flushed at the next known character or the end.
	unk := int32(-1)
	for i := 0; i < len(word); {
		var id int32 = -1
		var ch string
		if byteInput {
			id = m.byteLevelID[word[i]]
			if id < 0 { // an incomplete byte-level vocabulary: treat the mapped character as tokenizers would
				ch = string(byteToRune[word[i]])
			}
			i++
		} else {
			r, w := decodeRune(word, i)
			ch = word[i : i+w]
			i += w
			if r != utf8.RuneError || w > 1 {
				if v, ok := m.runeID[r]; ok {
					id = v
				}
			} else if v, ok := m.vocab[ch]; ok {
				id = v
			}
		}
		if id >= 0 {
			if unk >= 0 {
				add(unk)
				unk = -1
			}
			add(id)
			continue
		}
		if m.byteFallback && m.canFallback(ch) {
			for j := 0; j < len(ch); j++ {
				add(m.byteFallbackID[ch[j]])
			}
			continue
		}
		if m.unk >= 0 {
			if unk >= 0 && !m.fuseUnk {
				add(unk)
			}
			unk = m.unk
		}
	}
	if unk >= 0 {
		add(unk)
	}

	if len(syms) > 1 {
		var h mergeHeap
		for i := 0; i+1 < len(syms); i++ {
			if v, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
				h = append(h, mergeCand{rank: int32(v >> 32), pos: int32(i), id: int32(uint32(v))})
			}
		}
		// Candidates were appended in position order; heapify.
		for i := len(h)/2 - 1; i >= 0; i-- {
			siftDown(h, i)
		}
		for len(h) > 0 {
			c := h.pop()
			s := &syms[c.pos]
			if s.gone || s.next < 0 {
				continue
			}
			r := &syms[s.next]
			v, ok := m.merges[pairKey(s.id, r.id)]
			if !ok || int32(uint32(v)) != c.id {
				continue // stale: one side has changed since this pair was queued
			}
			s.id = c.id
			r.gone = true
			s.next = r.next
			if r.next >= 0 {
				syms[r.next].prev = c.pos
			}
			if s.prev >= 0 {
				if v, ok := m.merges[pairKey(syms[s.prev].id, s.id)]; ok {
					h.push(mergeCand{rank: int32(v >> 32), pos: s.prev, id: int32(uint32(v))})
				}
			}
			if s.next >= 0 {
				if v, ok := m.merges[pairKey(s.id, syms[s.next].id)]; ok {
					h.push(mergeCand{rank: int32(v >> 32), pos: c.pos, id: int32(uint32(v))})
				}
			}
		}
	}
	if out == nil {
		out = make([]int32, 0, len(syms))
	}
	for i := range syms {
		if !syms[i].gone {
			out = append(out, syms[i].id)
		}
	}
	return out
}

func siftDown(s mergeHeap, i int) {
	n := len(s)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && s[r].less(s[l]) {
			m = r
		}
		if !s[m].less(s[i]) {
			return
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
}

// canFallback reports whether every byte of ch has a <0xNN> token; tokenizers
// falls back only when all of them do.
func (m *bpe) canFallback(ch string) bool {
	for j := 0; j < len(ch); j++ {
		if m.byteFallbackID[ch[j]] < 0 {
			return false
		}
	}
	return true
}

// newBPE builds the model from the parsed vocabulary and merges; name and the
// JSON key go into errors.
func newBPE(name string, vocab map[string]int, merges [][2]string) (*bpe, error) {
	if len(vocab) == 0 {
		return nil, fmt.Errorf("%s: model.vocab is empty", name)
	}
	m := &bpe{vocab: make(map[string]int32, len(vocab)), unk: -1, runeID: make(map[rune]int32), joinsMetaspace: map[rune]bool{}}
	maxID := -1
	for tok, id := range vocab {
		if id < 0 || id >= maxVocab {
			return nil, fmt.Errorf("%s: model.vocab[%q] = %d is out of range [0, %d)", name, tok, id, maxVocab)
		}
		m.vocab[tok] = int32(id)
		if id > maxID {
			maxID = id
		}
	}
	m.tokens = make([]string, maxID+1)
	m.has = make([]bool, maxID+1)
	for tok, id := range vocab {
		if m.has[id] {
			a, b := m.tokens[id], tok
			if a > b {
				a, b = b, a
			}
			return nil, fmt.Errorf("%s: model.vocab: id %d is given to both %q and %q", name, id, a, b)
		}
		m.tokens[id] = tok
		m.has[id] = true
		if r, w := utf8.DecodeRuneInString(tok); w == len(tok) && r != utf8.RuneError {
			m.runeID[r] = int32(id)
		}
	}
	for b := 0; b < 256; b++ {
		m.byteFallbackID[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteFallbackID[b] = id
		}
		m.byteLevelID[b] = -1
		if id, ok := m.vocab[string(byteToRune[b])]; ok {
			m.byteLevelID[b] = id
		}
	}
	m.merges = make(map[uint64]uint64, len(merges))
	for i, mg := range merges {
		a, ok := m.vocab[mg[0]]
		if !ok {
			return nil, fmt.Errorf("%s: model.merges[%d] (%q %q): %q is not in model.vocab", name, i, mg[0], mg[1], mg[0])
		}
		b, ok := m.vocab[mg[1]]
		if !ok {
			return nil, fmt.Errorf("%s: model.merges[%d] (%q %q): %q is not in model.vocab", name, i, mg[0], mg[1], mg[1])
		}
		ab, ok := m.vocab[mg[0]+mg[1]]
		if !ok {
			return nil, fmt.Errorf("%s: model.merges[%d] (%q %q): the merged token %q is not in model.vocab", name, i, mg[0], mg[1], mg[0]+mg[1])
		}
		// A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
		m.merges[pairKey(a, b)] = uint64(uint32(i))<<32 | uint64(uint32(ab))
		if strings.HasPrefix(mg[1], metaspace) {
			r, _ := utf8.DecodeLastRuneInString(mg[0])
			m.joinsMetaspace[r] = true
		}
	}
	return m, nil
}

// pieceEnd is where the first piece of a word (not byte-level input) ends:
// before the first metaspace, past the start, that follows a character of the
// vocabulary no merge joins to a metaspace; len(word) when there is none.
//
// No token can span such a cut: the symbol left of it always ends with that
// character, the one right of it starts with the metaspace, and no merge
// takes that pair. A merge only looks at its two symbols and ties go to the
// leftmost pair, so each side merges alone exactly as within the whole word:
// tokenizing the pieces gives the word's tokens, in memory and time bounded
// by the piece and through the word cache. (A 20 MB line of a
// SentencePiece-style text was otherwise one 20 MB word: about 1.1 GB of BPE
// symbols and merge queue, and no cache.) With ignore_merges a whole word is
// looked up first, which pieces would change, so such models are not cut.
func (m *bpe) pieceEnd(word string) int {
	meta, ok := m.runeID['\u2581']
	if !ok || meta < 0 || m.ignoreMerges {
		return len(word)
	}
	for from := 1; from < len(word); {
		j := strings.Index(word[from:], metaspace)
		if j < 0 {
			break
		}
		i := from + j
		// A valid character before i decodes the same backwards as tokenize
		// decodes it forwards; an invalid byte is never cut after.
		r, w := utf8.DecodeLastRuneInString(word[:i])
		if _, known := m.runeID[r]; known && (r != utf8.RuneError || w > 1) && !m.joinsMetaspace[r] {
			return i
		}
		from = i + len(metaspace)
	}
	return len(word)
}
