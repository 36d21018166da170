package main

import (
	"errors"
	"io"
)

// runEval evaluates a model's loss on a JSONL file of token ids.
func runEval(args []string, stdout, stderr io.Writer) error {
	return errors.New("eval: not built yet")
}
