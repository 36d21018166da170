package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"train/tokenizer"
)

// maxTokenizeLine bounds one input line, so input without newlines cannot
// exhaust memory.
const maxTokenizeLine = 64 << 20

// runTokenize encodes lines of stdin, each a JSON string, into JSON arrays of
// token ids, one line out per line in.
func runTokenize(args []string, stdout, stderr io.Writer) error {
	return runTokenizeFrom(args, os.Stdin, stdout, stderr)
}

// runTokenizeFrom is runTokenize reading from stdin (a parameter, for tests).
func runTokenizeFrom(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("tokenize", `train tokenize -tokenizer PATH [-bos]

Read lines on stdin, each a JSON string, and write for each a JSON array of
token ids, as the Hugging Face tokenizer at PATH encodes it (tokenizer.json, or
the directory holding it; tokenizer_config.json beside it is read too). Special
tokens written in the text (such as <|eot_id|>) become their ids.
Example:
  echo '"Hello world"' | train tokenize -tokenizer ../shared/models/stories260K`, stderr)
	path := fs.String("tokenizer", "", "tokenizer.json, or a directory holding one")
	bos := fs.Bool("bos", false, "apply the tokenizer's template for special tokens (for Llama: BOS in front)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return usagef("-tokenizer is required (a tokenizer.json or a directory holding one)")
	}
	p := *path
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		p = filepath.Join(p, "tokenizer.json")
	}
	tok, err := tokenizer.Load(p)
	if err != nil {
		return err
	}
	return tokenizeStream(tok, *bos, stdin, stdout)
}

// tokenizeStream does the work of runTokenize for one loaded tokenizer. Output
// is buffered and flushed at the end or on error, so what was written is whole
// lines for the lines before the bad one.
func tokenizeStream(tok *tokenizer.Tokenizer, bos bool, r io.Reader, w io.Writer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxTokenizeLine)
	bw := bufio.NewWriter(w)
	var out []byte
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		var text string
		// Unmarshal accepts null into a string; only a quoted string will do here.
		if len(line) == 0 || line[0] != '"' {
			bw.Flush()
			return fmt.Errorf("stdin:%d: not a JSON string: %s", n, preview(line))
		}
		if err := json.Unmarshal(line, &text); err != nil {
			bw.Flush()
			return fmt.Errorf("stdin:%d: not a JSON string: %w", n, err)
		}
		out = append(out[:0], '[')
		for i, id := range tok.Encode(text, bos) {
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
		return fmt.Errorf("reading stdin: %w", err)
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
