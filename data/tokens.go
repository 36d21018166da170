// Package data turns files of examples into token sequences for training and evaluation.
package data

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// IgnoreIndex marks a label that takes no part in the loss, as in transformers.
const IgnoreIndex = -100

// maxLineBytes bounds one JSONL line, so a file without newlines cannot exhaust memory.
const maxLineBytes = 64 << 20

// TokenExample is one pre-tokenized sequence. Labels are aligned with InputIDs as
// transformers expects: the model shifts them, so position t is scored on Labels[t+1].
type TokenExample struct {
	InputIDs []int
	Labels   []int
}

// ReadTokenFile reads a JSONL file of {"input_ids": [...], "labels": [...]} lines
// (labels optional: default input_ids). Every id must be in [0, vocab); a label is
// such an id or -100. Blank lines are skipped. Errors name file:line.
func ReadTokenFile(path string, vocab int) ([]TokenExample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadTokens(f, path, vocab)
}

// ReadTokens is ReadTokenFile over any reader; name is used in errors.
func ReadTokens(r io.Reader, name string, vocab int) ([]TokenExample, error) {
	examples, _, err := readExamples(context.Background(), r, name, &Formatter{Vocab: vocab}, false)
	return examples, err
}

// readLine reads one line without its newline (nor a "\r" before it),
// refusing lines over maxLineBytes. A long line is gathered in pieces and
// copied once: appending 64 KiB at a time made a 20 MB line cost 120 MB of
// copies.
func readLine(br *bufio.Reader) ([]byte, error) {
	var pieces [][]byte
	n := 0
	for {
		chunk, isPrefix, err := br.ReadLine()
		n += len(chunk)
		if n > maxLineBytes {
			return nil, fmt.Errorf("line longer than %d bytes", maxLineBytes)
		}
		if err != nil || !isPrefix {
			if len(pieces) == 0 {
				return append([]byte(nil), chunk...), err // the common case: one piece
			}
			return bytes.Join(append(pieces, chunk), nil), err
		}
		pieces = append(pieces, append([]byte(nil), chunk...)) // ReadLine's slice is reused
	}
}

func parseTokenLine(line []byte, vocab int) (TokenExample, error) {
	var raw struct {
		InputIDs *[]int `json:"input_ids"`
		Labels   *[]int `json:"labels"`
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return TokenExample{}, fmt.Errorf("not a {\"input_ids\": [...], \"labels\": [...]} object: %w", err)
	}
	if dec.More() {
		return TokenExample{}, errors.New("more than one JSON value on the line")
	}
	if raw.InputIDs == nil {
		return TokenExample{}, errors.New(`missing "input_ids"`)
	}
	ex := TokenExample{InputIDs: *raw.InputIDs}
	if len(ex.InputIDs) == 0 {
		return TokenExample{}, errors.New(`"input_ids" is empty`)
	}
	for i, id := range ex.InputIDs {
		if id < 0 || id >= vocab {
			return TokenExample{}, fmt.Errorf("input_ids[%d] = %d is outside the vocabulary [0, %d)", i, id, vocab)
		}
	}
	if raw.Labels == nil {
		ex.Labels = append([]int(nil), ex.InputIDs...)
		return ex, nil
	}
	ex.Labels = *raw.Labels
	if len(ex.Labels) != len(ex.InputIDs) {
		return TokenExample{}, fmt.Errorf(`"labels" has %d entries, "input_ids" %d: they must align`, len(ex.Labels), len(ex.InputIDs))
	}
	for i, l := range ex.Labels {
		if l != IgnoreIndex && (l < 0 || l >= vocab) {
			return TokenExample{}, fmt.Errorf("labels[%d] = %d is neither -100 nor in the vocabulary [0, %d)", i, l, vocab)
		}
	}
	return ex, nil
}
