package tokenizer

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// preTokenizer cuts text into the words the model encodes one by one. atStart
// tells whether words[0] begins at the start of the input text (Metaspace's
// prepend_scheme "first" needs it).
type preTokenizer interface {
	split(words []string, atStart bool) []string
}

// The two pre-token patterns Llama models use. Both need a negative lookahead,
// which Go's regexp (RE2) lacks, so they are matched by hand-written code that
// reproduces a backtracking engine's leftmost-first result (see llama3End).
const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	gpt2Pattern   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
)

// Character classes of the patterns. \s is Oniguruma's Unicode \s (the regex
// engine tokenizers uses): the White_Space property, which is unicode.IsSpace.
const (
	clsOther = iota
	clsLetter
	clsNumber
	clsSpace
)

// asciiClass is the class of each ASCII byte, so the common case needs no
// Unicode table lookups. Never mutated.
var asciiClass = func() (t [utf8.RuneSelf]uint8) {
	for c := 0; c < utf8.RuneSelf; c++ {
		t[c] = classOfSlow(rune(c))
	}
	return t
}()

func classOfSlow(r rune) uint8 {
	switch {
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case unicode.IsSpace(r):
		return clsSpace
	}
	return clsOther
}

// classAt returns the class and width of the character at s[i]. An invalid byte
// is RuneError, class other.
func classAt(s string, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && w == 1 {
		return clsOther, 1
	}
	return classOfSlow(r), w
}

// skipClass returns the end of the run of class cls starting at i.
func skipClass(s string, i int, cls uint8) int {
	for i < len(s) {
		c, w := classAt(s, i)
		if c != cls {
			break
		}
		i += w
	}
	return i
}

// contraction returns the length of a contraction suffix ("s", "t", "re", "ve",
// "m", "ll", "d") at the start of s, or 0. foldCase makes it case-insensitive
// with Unicode simple case folding, under which "ſ" (U+017F) is an "s".
func contraction(s string, foldCase bool) int {
	if s == "" {
		return 0
	}
	lower := func(c byte) byte {
		if foldCase && 'A' <= c && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	switch lower(s[0]) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if len(s) > 1 && lower(s[1]) == 'e' {
			return 2
		}
	case 'l':
		if len(s) > 1 && lower(s[1]) == 'l' {
			return 2
		}
	}
	if foldCase && strings.HasPrefix(s, "ſ") {
		return len("ſ")
	}
	return 0
}

// spaceTail handles the last alternatives both patterns share, at a whitespace
// character at i: `\s+(?!\S)|\s+`. The greedy \s+ takes the whole run; if a
// non-space follows, backtracking gives back one character so the lookahead sees
// whitespace — possible only when the run has two or more characters; else the
// plain \s+ takes the run.
func spaceTail(s string, i int) int {
	e, last := i, i
	for e < len(s) {
		c, w := classAt(s, e)
		if c != clsSpace {
			break
		}
		last = e
		e += w
	}
	if e == len(s) || last == i {
		return e
	}
	return last
}

// llama3End returns the end of the pre-token that starts at i (i < len(s)) under
// llama3Pattern. Every character belongs to some alternative, so tokens tile the
// text. The alternatives, tried in order as a backtracking engine would:
//
//  1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
//  2. [^\r\n\p{L}\p{N}]?\p{L}+      one optional non-letter/digit/newline, then letters
//  3. \p{N}{1,3}
//  4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`    punctuation run, optional leading space, trailing newlines
//  5. \s*[\r\n]+                    whitespace up to and including its last newline
//  6. \s+(?!\S)  7. \s+             (spaceTail)
func llama3End(s string, i int) int {
	if s[i] == '\'' {
		if n := contraction(s[i+1:], true); n > 0 {
			return i + 1 + n
		}
	}
	c0, w0 := classAt(s, i)
	switch c0 {
	case clsLetter:
		return skipClass(s, i+w0, clsLetter)
	case clsNumber:
		j := i + w0
		for k := 1; k < 3 && j < len(s); k++ {
			c, w := classAt(s, j)
			if c != clsNumber {
				break
			}
			j += w
		}
		return j
	}
	if s[i] != '\r' && s[i] != '\n' && i+w0 < len(s) {
		if c1, w1 := classAt(s, i+w0); c1 == clsLetter {
			return skipClass(s, i+w0+w1, clsLetter)
		}
	}
	j := i
	if s[i] == ' ' {
		j++
	}
	if j < len(s) {
		if c, w := classAt(s, j); c == clsOther {
			j = skipClass(s, j+w, clsOther)
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
	}
	// c0 is whitespace from here on.
	lastNL := -1
	for e := i; e < len(s); {
		c, w := classAt(s, e)
		if c != clsSpace {
			break
		}
		if s[e] == '\r' || s[e] == '\n' {
			lastNL = e
		}
		e += w
	}
	if lastNL >= 0 {
		return lastNL + 1
	}
	return spaceTail(s, i)
}

// gpt2End is llama3End for gpt2Pattern (ByteLevel's use_regex): case-sensitive
// contractions, and an optional leading space before a letter, digit or
// punctuation run of any length.
func gpt2End(s string, i int) int {
	if s[i] == '\'' {
		if n := contraction(s[i+1:], false); n > 0 {
			return i + 1 + n
		}
	}
	j := i
	if s[i] == ' ' {
		j++
	}
	if j < len(s) {
		if c, w := classAt(s, j); c != clsSpace {
			return skipClass(s, j+w, c)
		}
	}
	return spaceTail(s, i)
}

// splitPre is the Split pre-tokenizer: find matches of a pattern, then keep,
// drop or glue them to their neighbours as the behaviour says.
type splitPre struct {
	// find returns the leftmost match in s at or after start, or -1, -1.
	find     func(s string, start int) (int, int)
	behavior string // Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous
	invert   bool
}

func tilingFinder(end func(string, int) int) func(string, int) (int, int) {
	return func(s string, start int) (int, int) {
		if start >= len(s) {
			return -1, -1
		}
		return start, end(s, start)
	}
}

func regexpFinder(re *regexp.Regexp) func(string, int) (int, int) {
	return func(s string, start int) (int, int) {
		if start > len(s) {
			return -1, -1
		}
		loc := re.FindStringIndex(s[start:])
		if loc == nil {
			return -1, -1
		}
		return start + loc[0], start + loc[1]
	}
}

func literalFinder(lit string) func(string, int) (int, int) {
	return func(s string, start int) (int, int) {
		k := strings.Index(s[start:], lit)
		if k < 0 {
			return -1, -1
		}
		return start + k, start + k + len(lit)
	}
}

type piece struct {
	a, b    int
	isMatch bool
}

func (p *splitPre) split(words []string, atStart bool) []string {
	var out []string
	if p.behavior == "Isolated" && !p.invert {
		// The common case (Llama 3): every match and every gap is a word.
		out = make([]string, 0, len(words)*4)
		for _, w := range words {
			prev := 0
			for pos := 0; pos <= len(w); {
				a, b := p.find(w, pos)
				if a < 0 {
					break
				}
				if a > prev {
					out = append(out, w[prev:a])
				}
				if b > a {
					out = append(out, w[a:b])
					pos = b
				} else {
					pos = b + 1 // an empty match: step over one byte, as find_iter does
				}
				prev = b
			}
			if prev < len(w) {
				out = append(out, w[prev:])
			}
		}
		return out
	}
	var ps []piece
	for _, w := range words {
		ps = ps[:0]
		prev := 0
		for pos := 0; pos <= len(w); {
			a, b := p.find(w, pos)
			if a < 0 {
				break
			}
			if a > prev {
				ps = append(ps, piece{prev, a, false})
			}
			ps = append(ps, piece{a, b, true})
			if b > a {
				pos = b
			} else {
				pos = b + 1
			}
			prev = b
		}
		if prev < len(w) {
			ps = append(ps, piece{prev, len(w), false})
		}
		if p.invert {
			for i := range ps {
				ps[i].isMatch = !ps[i].isMatch
			}
		}
		ps = applyBehavior(ps, p.behavior)
		for _, q := range ps {
			if q.b > q.a {
				out = append(out, w[q.a:q.b])
			}
		}
	}
	return out
}

// applyBehavior is tokenizers' SplitDelimiterBehavior over a list of pieces.
func applyBehavior(ps []piece, behavior string) []piece {
	var acc []piece
	prevMatch := false
	switch behavior {
	case "Removed":
		for _, q := range ps {
			if !q.isMatch {
				acc = append(acc, q)
			}
		}
	case "MergedWithPrevious":
		for _, q := range ps {
			if q.isMatch && !prevMatch && len(acc) > 0 {
				acc[len(acc)-1].b = q.b
			} else {
				acc = append(acc, q)
			}
			prevMatch = q.isMatch
		}
	case "MergedWithNext":
		for i := len(ps) - 1; i >= 0; i-- {
			q := ps[i]
			if q.isMatch && !prevMatch && len(acc) > 0 {
				acc[len(acc)-1].a = q.a
			} else {
				acc = append(acc, q)
			}
			prevMatch = q.isMatch
		}
		for i, j := 0, len(acc)-1; i < j; i, j = i+1, j-1 {
			acc[i], acc[j] = acc[j], acc[i]
		}
	case "Contiguous":
		for _, q := range ps {
			if q.isMatch == prevMatch && len(acc) > 0 {
				acc[len(acc)-1].b = q.b
			} else {
				acc = append(acc, q)
			}
			prevMatch = q.isMatch
		}
	default: // Isolated
		acc = ps
	}
	return acc
}

// byteLevelPre is the ByteLevel pre-tokenizer: an optional leading space, the
// GPT-2 split when useRegex, then every byte mapped to its printable character.
// When it is the last pre-tokenizer, mapping is left to the model (deferMap).
type byteLevelPre struct {
	addPrefixSpace, useRegex, deferMap bool
}

func (p *byteLevelPre) split(words []string, atStart bool) []string {
	out := make([]string, 0, len(words))
	for _, w := range words {
		if p.addPrefixSpace && !strings.HasPrefix(w, " ") {
			w = " " + w
		}
		if p.useRegex {
			for i := 0; i < len(w); {
				j := gpt2End(w, i)
				out = append(out, w[i:j])
				i = j
			}
		} else {
			out = append(out, w)
		}
	}
	if !p.deferMap {
		for i, w := range out {
			out[i] = byteLevelString(w)
		}
	}
	return out
}

// metaspacePre replaces spaces by "▁", prepends one as the scheme says (never
// doubling one already there), and with split cuts before every "▁".
type metaspacePre struct {
	repl    string
	prepend string // always, first, never
	splitAt bool
}

func (p *metaspacePre) split(words []string, atStart bool) []string {
	var out []string
	for i, w := range words {
		w = strings.ReplaceAll(w, " ", p.repl)
		if (p.prepend == "always" || (p.prepend == "first" && atStart && i == 0)) && !strings.HasPrefix(w, p.repl) {
			w = p.repl + w
		}
		if !p.splitAt {
			out = append(out, w)
			continue
		}
		prev := 0
		for k := 1; k < len(w); k++ {
			if strings.HasPrefix(w[k:], p.repl) {
				out = append(out, w[prev:k])
				prev = k
			}
		}
		if prev < len(w) {
			out = append(out, w[prev:])
		}
	}
	return out
}

// digitsPre isolates runs of digits (or single digits with individual).
type digitsPre struct{ individual bool }

func (p *digitsPre) split(words []string, atStart bool) []string {
	var out []string
	for _, w := range words {
		prev := 0
		for i := 0; i < len(w); {
			r, n := decodeRune(w, i)
			if !unicode.IsNumber(r) {
				i += n
				continue
			}
			j := i + n
			if !p.individual {
				for j < len(w) {
					r2, n2 := decodeRune(w, j)
					if !unicode.IsNumber(r2) {
						break
					}
					j += n2
				}
			}
			if i > prev {
				out = append(out, w[prev:i])
			}
			out = append(out, w[i:j])
			prev, i = j, j
		}
		if prev < len(w) {
			out = append(out, w[prev:])
		}
	}
	return out
}

// byteToRune is GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for
// themselves, the other 68 bytes for U+0100 onwards in byte order. runeToByte is
// its inverse (-1 for characters outside the table). Never mutated.
var byteToRune, runeToByte = func() (b2r [256]rune, r2b [324]int16) {
	for i := range r2b {
		r2b[i] = -1
	}
	n := 0
	for b := 0; b < 256; b++ {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			b2r[b] = rune(b)
		} else {
			b2r[b] = rune(256 + n)
			n++
		}
		r2b[b2r[b]] = int16(b)
	}
	return b2r, r2b
}()

// byteLevelString maps every byte of s to its byte-level character.
func byteLevelString(s string) string {
	var sb strings.Builder
	sb.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		sb.WriteRune(byteToRune[s[i]])
	}
	return sb.String()
}
