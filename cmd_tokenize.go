package main

import (
	"io"
	"os"

	"train/tokenizer"
)

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
	tok, err := tokenizer.Load(*path) // a directory means its tokenizer.json
	if err != nil {
		return err
	}
	return tok.EncodeJSONLines(stdout, stdin, "stdin", *bos)
}
