package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"train/model"
)

// runCheck describes a model and lists every reason train cannot fine-tune it.
// It fails (exit status 1) when there is any incompatibility, so scripts can gate
// a long job on `train check -model DIR`.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", `train check -model DIR|random:NAME [-json]

Describe a Hugging Face Llama model directory (config.json, model.safetensors or
sharded safetensors with model.safetensors.index.json, tokenizer.json if present):
architecture, sizes, rope, parameter count, bf16 and NF4 weight sizes, and every
incompatibility, one per line. Exits non-zero if there is any.
Random architectures: random:`+strings.Join(model.RandomModelNames(), ", random:"), stderr)
	modelFlag := fs.String("model", "", "model directory, or random:NAME")
	jsonOut := fs.Bool("json", false, "print the report as one JSON object")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelFlag == "" {
		return usagef("-model is required (a Hugging Face model directory or random:NAME)")
	}
	r, err := model.Check(*modelFlag)
	if err != nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else if err := r.WriteText(stdout); err != nil {
		return err
	}
	if n := len(r.Incompatibilities); n > 0 {
		return fmt.Errorf("%s: %d incompatibilit%s", *modelFlag, n, map[bool]string{true: "y", false: "ies"}[n == 1])
	}
	return nil
}
