package data

import (
	"math/rand/v2"
	"strings"
)

// The embedded default's task: reverse a short lowercase word. A person can see it
// being learned (answers go from noise to right), it needs attention to positions,
// and it needs no files: the text is generated and tokenized one byte per token.
const (
	// ByteBOS and ByteEOS are the begin and end ids of the byte-level encoding
	// (bytes take ids 0..255).
	ByteBOS = 256
	ByteEOS = 257
	// ByteVocab is the smallest vocabulary the byte-level encoding fits in.
	ByteVocab = 258
)

// ReverseTask makes examples "reverse: word\n" -> "drow", byte-tokenized, with the
// loss on the answer and EOS only.
type ReverseTask struct {
	MinLen, MaxLen int // word length range, inclusive
}

// Prompt is the text the model is given for word.
func (ReverseTask) Prompt(word string) string { return "reverse: " + word + "\n" }

// Answer is the correct completion for word.
func (ReverseTask) Answer(word string) string {
	b := []byte(word)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// Word draws a random lowercase word.
func (t ReverseTask) Word(rng *rand.Rand) string {
	n := t.MinLen + rng.IntN(t.MaxLen-t.MinLen+1)
	var sb strings.Builder
	for i := 0; i < n; i++ {
		sb.WriteByte(byte('a' + rng.IntN(26)))
	}
	return sb.String()
}

// Example tokenizes one word's prompt and answer: BOS prompt answer EOS, labels -100
// on BOS and the prompt (aligned with the ids; the model shifts).
func (t ReverseTask) Example(word string) TokenExample {
	ids := []int{ByteBOS}
	ids = append(ids, ByteIDs(t.Prompt(word))...)
	nPrompt := len(ids)
	ids = append(ids, ByteIDs(t.Answer(word))...)
	ids = append(ids, ByteEOS)
	labels := append([]int(nil), ids...)
	for i := 0; i < nPrompt; i++ {
		labels[i] = IgnoreIndex
	}
	return TokenExample{InputIDs: ids, Labels: labels}
}

// ByteIDs is the byte-level encoding of s.
func ByteIDs(s string) []int {
	ids := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		ids[i] = int(s[i])
	}
	return ids
}

// ByteText decodes byte-level ids up to the first EOS, skipping other specials.
func ByteText(ids []int) string {
	var sb strings.Builder
	for _, id := range ids {
		if id == ByteEOS {
			break
		}
		if id >= 0 && id < 256 {
			sb.WriteByte(byte(id))
		}
	}
	return sb.String()
}
