package tokenizer

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// normalizer rewrites one text segment (the text between added tokens) before
// pre-tokenization.
type normalizer interface {
	normalize(s string) string
}

// prependNorm puts a string in front of every non-empty segment (SentencePiece's
// dummy prefix "▁").
type prependNorm struct{ s string }

func (n prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.s + s
}

// replaceNorm replaces every occurrence of a literal or a regexp.
type replaceNorm struct {
	old, new string
	re       *regexp.Regexp
}

func (n replaceNorm) normalize(s string) string {
	if n.re != nil {
		return n.re.ReplaceAllLiteralString(s, n.new)
	}
	return strings.ReplaceAll(s, n.old, n.new)
}

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

type stripNorm struct{ left, right bool }

func (n stripNorm) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, isUnicodeSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, isUnicodeSpace)
	}
	return s
}

func isUnicodeSpace(r rune) bool { return r != utf8.RuneError && classOfSlow(r) == clsSpace }

// decoder turns token strings back into text pieces; a chain of them ends with
// the pieces concatenated.
type decoder interface {
	decode(toks []string) []string
}

// byteLevelDec maps byte-level characters back to bytes and reads the bytes as
// UTF-8, invalid sequences becoming U+FFFD as Rust's from_utf8_lossy does. A
// token with a character outside the byte table (an added token written in plain
// text) contributes its own bytes.
type byteLevelDec struct{}

func (byteLevelDec) decode(toks []string) []string {
	var b []byte
	for _, t := range toks {
		mark := len(b)
		ok := true
		for _, r := range t {
			if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
				ok = false
				break
			}
			b = append(b, byte(runeToByte[r]))
		}
		if !ok {
			b = append(b[:mark], t...)
		}
	}
	return []string{utf8Lossy(b)}
}

// replaceDec replaces a literal in every token ("▁" -> " ").
type replaceDec struct{ old, new string }

func (d replaceDec) decode(toks []string) []string {
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(t, d.old, d.new)
	}
	return toks
}

// byteFallbackDec turns runs of <0xNN> tokens into the text their bytes spell;
// a run that is not valid UTF-8 becomes one U+FFFD per byte, as tokenizers does.
type byteFallbackDec struct{}

func (byteFallbackDec) decode(toks []string) []string {
	out := make([]string, 0, len(toks))
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, t := range toks {
		if b, ok := parseByteToken(t); ok {
			run = append(run, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

// parseByteToken reads "<0xNN>" (either case of hex digit, as u8::from_str_radix).
func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(t[3:5]) {
		switch {
		case '0' <= c && c <= '9':
			v = v*16 + c - '0'
		case 'a' <= c && c <= 'f':
			v = v*16 + c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = v*16 + c - 'A' + 10
		default:
			return 0, false
		}
	}
	return v, true
}

type fuseDec struct{}

func (fuseDec) decode(toks []string) []string { return []string{strings.Join(toks, "")} }

// stripDec removes up to start leading and stop trailing copies of a character
// from every token (after Fuse there is one token: the text).
type stripDec struct {
	content     rune
	start, stop int
}

func (d stripDec) decode(toks []string) []string {
	c := string(d.content)
	for i, t := range toks {
		for k := 0; k < d.start && strings.HasPrefix(t, c); k++ {
			t = t[len(c):]
		}
		for k := 0; k < d.stop && strings.HasSuffix(t, c); k++ {
			t = t[:len(t)-len(c)]
		}
		toks[i] = t
	}
	return toks
}

// metaspaceDec turns "▁" back into spaces, dropping the ones of the first token
// when a prefix was prepended at encoding.
type metaspaceDec struct {
	repl        string
	dropInFirst bool
}

func (d metaspaceDec) decode(toks []string) []string {
	for i, t := range toks {
		if i == 0 && d.dropInFirst {
			toks[i] = strings.ReplaceAll(t, d.repl, "")
		} else {
			toks[i] = strings.ReplaceAll(t, d.repl, " ")
		}
	}
	return toks
}

// utf8Lossy converts b to a string, replacing each maximal ill-formed subsequence
// by one U+FFFD — the rule of Rust's String::from_utf8_lossy (and the WHATWG
// decoder), which differs from Go's one-per-byte DecodeRune.
func utf8Lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for i := 0; i < len(b); {
		c := b[i]
		if c < 0x80 {
			sb.WriteByte(c)
			i++
			continue
		}
		if r, n := utf8.DecodeRune(b[i:]); r != utf8.RuneError || n > 1 {
			sb.Write(b[i : i+n])
			i += n
			continue
		}
		// Invalid at i: count how far the bytes form a valid prefix of some
		// sequence, and replace that prefix (at least one byte).
		need, lo, hi := 0, byte(0x80), byte(0xBF)
		switch {
		case 0xC2 <= c && c <= 0xDF:
			need = 1
		case c == 0xE0:
			need, lo = 2, 0xA0
		case 0xE1 <= c && c <= 0xEC, c == 0xEE, c == 0xEF:
			need = 2
		case c == 0xED:
			need, hi = 2, 0x9F
		case c == 0xF0:
			need, lo = 3, 0x90
		case 0xF1 <= c && c <= 0xF3:
			need = 3
		case c == 0xF4:
			need, hi = 3, 0x8F
		}
		j := i + 1
		for k := 0; k < need && j < len(b); k++ {
			if b[j] < lo || b[j] > hi {
				break
			}
			lo, hi = 0x80, 0xBF
			j++
		}
		sb.WriteString("\uFFFD")
		i = j
	}
	return sb.String()
}
