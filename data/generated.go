package data

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// The embedded default's task is generated, so that it needs no files, and
// tokenized one byte per token, so that it needs no tokenizer file either.
const (
	// ByteBOS and ByteEOS are the begin and end ids of the byte-level encoding
	// (bytes take ids 0..255).
	ByteBOS = 256
	ByteEOS = 257
	// ByteVocab is the smallest vocabulary the byte-level encoding fits in.
	ByteVocab = 258
)

// ArithmeticTask poses single-digit sums (or products, or differences), "7+8=" -> "15",
// byte-tokenized, with the loss on the answer and EOS only. The hundred sums are few
// enough for a tiny model to learn in a minute on a laptop CPU, and a person can
// check every answer.
type ArithmeticTask struct {
	// Ops are the operators drawn from, e.g. "+*".
	Ops string
}

// Problem is one question: A Op B with Op '+' or '*'.
type Problem struct {
	A, B int
	Op   byte
}

// Prompt is the text the model is given.
func (ArithmeticTask) Prompt(p Problem) string { return fmt.Sprintf("%d%c%d=", p.A, p.Op, p.B) }

// Answer is the correct completion.
func (ArithmeticTask) Answer(p Problem) string {
	switch p.Op {
	case '*':
		return strconv.Itoa(p.A * p.B)
	case '-':
		return strconv.Itoa(p.A - p.B)
	}
	return strconv.Itoa(p.A + p.B)
}

// Draw picks a random problem.
func (t ArithmeticTask) Draw(rng *rand.Rand) Problem {
	return Problem{A: rng.IntN(10), B: rng.IntN(10), Op: t.Ops[rng.IntN(len(t.Ops))]}
}

// Example tokenizes one problem: BOS prompt answer EOS, labels -100 on BOS and the
// prompt (aligned with the ids; the model shifts).
func (t ArithmeticTask) Example(p Problem) TokenExample {
	ids := []int{ByteBOS}
	ids = append(ids, ByteIDs(t.Prompt(p))...)
	nPrompt := len(ids)
	ids = append(ids, ByteIDs(t.Answer(p))...)
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
