package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
)

// maxLineBytes bounds one input line of EncodeJSONLines, so input without
// newlines cannot exhaust memory.
const maxLineBytes = 64 << 20

// EncodeJSONLines reads lines from r, each a JSON string, and writes for each
// a line to w holding a JSON array of its token ids (Encode with addSpecial).
// name is what errors call r ("stdin:3: not a JSON string"). Output is
// buffered and flushed at the end or on error, so what was written is whole
// lines for the lines before the bad one.
func (t *Tokenizer) EncodeJSONLines(w io.Writer, r io.Reader, name string, addSpecial bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	bw := bufio.NewWriter(w)
	var out []byte
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		var text string
		// Unmarshal accepts null into a string; only a quoted string will do here.
		if len(line) == 0 || line[0] != '"' {
			bw.Flush()
			return fmt.Errorf("%s:%d: not a JSON string: %s", name, n, preview(line))
		}
		if err := json.Unmarshal(line, &text); err != nil {
			bw.Flush()
			return fmt.Errorf("%s:%d: not a JSON string: %w", name, n, err)
		}
		out = append(out[:0], '[')
		for i, id := range t.Encode(text, addSpecial) {
			if i > 0 {
				out = append(out, ',')
			}
			out = strconv.AppendInt(out, int64(id), 10)
		}
		out = append(out, ']', '\n')
		if _, err := bw.Write(out); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
	}
	if err := sc.Err(); err != nil {
		bw.Flush()
		return fmt.Errorf("reading %s: %w", name, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// preview quotes the start of a bad line for an error message.
func preview(b []byte) string {
	if len(b) == 0 {
		return "an empty line"
	}
	if len(b) > 40 {
		return strconv.Quote(string(b[:40])) + "..."
	}
	return strconv.Quote(string(b))
}
