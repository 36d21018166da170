package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"train/config"
	"train/data"
	"train/model"
	"train/tokenizer"
	"train/trainer"
)

// runTokenize encodes lines of stdin, each a JSON string, into JSON arrays of
// token ids, one line out per line in; with -data it builds a dataset's token
// cache instead.
func runTokenize(args []string, stdout, stderr io.Writer) error {
	return runTokenizeFrom(args, os.Stdin, stdout, stderr)
}

// runTokenizeFrom is runTokenize reading from stdin (a parameter, for tests).
func runTokenizeFrom(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("tokenize", `train tokenize -tokenizer PATH [-bos]
train tokenize -model DIR -data PATH -out CACHE [-tokenizer PATH] [-data-columns ...] [-prompt-loss] [-skip-bad-lines]

Read lines on stdin, each a JSON string, and write for each a JSON array of
token ids, as the Hugging Face tokenizer at PATH encodes it (tokenizer.json, or
the directory holding it; tokenizer_config.json beside it is read too). Special
tokens written in the text (such as <|eot_id|>) become their ids.

With -data, tokenize a dataset ahead of a run into its token cache in the folder
CACHE, the one a run given -data-cache CACHE and the same model, tokenizer,
data and data options finds instead of tokenizing; the cache's folder is printed.
Examples:
  echo '"Hello world"' | train tokenize -tokenizer ../shared/models/stories260K
  train tokenize -model ../shared/models/stories260K -data train.jsonl -out caches`, stderr)
	path := fs.String("tokenizer", "", "tokenizer.json, or a directory holding one")
	bos := fs.Bool("bos", false, "apply the tokenizer's template for special tokens (for Llama: BOS in front)")
	cfg := config.Default()
	fs.StringVar(&cfg.Model, "model", "", "with -data: the model the cache is for (its vocabulary, and its tokenizer unless -tokenizer)")
	fs.StringVar(&cfg.Data.Train, "data", "", "a dataset to tokenize into a cache: JSONL or Parquet, a directory or a glob")
	out := fs.String("out", "", "with -data: the folder of token caches (what a run's -data-cache names)")
	fs.StringVar(&cfg.Data.Columns, "data-columns", "", `with -data: rename the dataset's keys or Parquet columns ("instruction=question,output=answer")`)
	fs.BoolVar(&cfg.Data.PromptLoss, "prompt-loss", false, "with -data: also score prompt tokens, as the run will")
	fs.BoolVar(&cfg.Data.SkipBadLines, "skip-bad-lines", false, "with -data: count and skip malformed records, as the run will")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cfg.Data.Train != "" {
		cfg.Tokenizer = *path
		return tokenizeData(cfg, *out, stdout, stderr)
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

// tokenizeData builds cfg.Data.Train's token cache in dir, as a run of cfg
// with -data-cache dir would, and prints its folder.
func tokenizeData(cfg config.Config, dir string, stdout, stderr io.Writer) error {
	switch {
	case cfg.Model == "":
		return usagef("-data needs -model (the cache holds ids for its vocabulary)")
	case dir == "":
		return usagef("-data needs -out CACHE (the folder a run's -data-cache names)")
	}
	if _, err := data.ParseColumns(cfg.Data.Columns); err != nil {
		return usagef("-data-columns: %v", err)
	}
	mc, err := model.SourceConfig(cfg.Model)
	if err != nil {
		return err
	}
	tok, err := trainer.LoadTokenizer(cfg, mc)
	if err != nil {
		return err
	}
	spec, err := trainer.CacheSpec(cfg, mc, tok, cfg.Data.Train, dir, stderr)
	if err != nil {
		return err
	}
	c, built, err := data.LoadCache(context.Background(), spec)
	if err != nil {
		return err
	}
	defer c.Close()
	what := "found"
	if built {
		what = "built"
	}
	fmt.Fprintf(stdout, "%s %s: %d examples, %d tokens, %d malformed records skipped\n", what, c.Dir, c.Len(), c.Tokens(), c.Skipped)
	return nil
}
