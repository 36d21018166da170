package trainer

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"train/config"
	"train/data"
	"train/model"
	"train/tokenizer"
)

// loadTrainingData returns the training and evaluation examples: the embedded
// generated task when data.train is empty (task is then not nil, for samples),
// otherwise the JSONL files, with an evaluation split when data.eval is empty.
// A cancelled ctx stops the reading between lines.
func loadTrainingData(ctx context.Context, cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer, warn io.Writer) (task *data.ArithmeticTask, trainSet, evalSet []data.TokenExample, err error) {
	if cfg.Data.Train == "" {
		if mc.VocabSize < data.ByteVocab {
			return nil, nil, nil, fmt.Errorf("the generated task needs a vocabulary of at least %d ids (bytes and two specials); %s has %d: give -data FILE.jsonl", data.ByteVocab, cfg.Model, mc.VocabSize)
		}
		task = &data.ArithmeticTask{Ops: "+"}
		rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x7461736b)) // "task"
		for i := 0; i < 4000; i++ {
			trainSet = append(trainSet, task.Example(task.Draw(rng)))
		}
		for i := 0; i < 200; i++ {
			evalSet = append(evalSet, task.Example(task.Draw(rng)))
		}
		return task, trainSet, evalSet, nil
	}
	f, err := formatter(cfg, mc, tok)
	if err != nil {
		return nil, nil, nil, err
	}
	read := func(key, path string) ([]data.TokenExample, error) {
		ex, skipped, err := data.ReadExamples(ctx, path, f, cfg.Data.SkipBadLines)
		if err != nil {
			return nil, dataError(cfg, key, err)
		}
		if skipped > 0 {
			fmt.Fprintf(warn, "warning: %s: skipped %d malformed lines\n", path, skipped)
		}
		return ex, nil
	}
	all, err := read("data.train", cfg.Data.Train)
	if err != nil {
		return nil, nil, nil, err
	}
	if cfg.Data.Eval != "" {
		if evalSet, err = read("data.eval", cfg.Data.Eval); err != nil {
			return nil, nil, nil, err
		}
		return nil, all, evalSet, nil
	}
	// The split is drawn with the seed, so it does not depend on the file's order.
	order := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x73706c74)).Perm(len(all)) // "splt"
	nEval := int(math.Round(float64(len(all)) * cfg.Data.EvalFraction))
	if cfg.Data.EvalFraction > 0 && nEval == 0 {
		nEval = 1
	}
	if nEval >= len(all) {
		return nil, nil, nil, fmt.Errorf("data.train: %d examples are too few to hold out an evaluation split of %v; give data.eval or more data", len(all), cfg.Data.EvalFraction)
	}
	for i, j := range order {
		if i < nEval {
			evalSet = append(evalSet, all[j])
		} else {
			trainSet = append(trainSet, all[j])
		}
	}
	return nil, trainSet, evalSet, nil
}

// formatter turns cfg's data lines into token examples for a model of mc's
// vocabulary, with tok for text (nil: token-id data only) and its chat
// template for chats. A chat template that does not compile is an error
// naming its file.
func formatter(cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer) (*data.Formatter, error) {
	f := &data.Formatter{Vocab: mc.VocabSize, PromptLoss: cfg.Data.PromptLoss}
	f.Columns, _ = data.ParseColumns(cfg.Data.Columns) // validated with the config
	if tok != nil {
		f.Tok = tok
		var err error
		if f.Chat, err = data.ChatTemplateFor(tok, tok.ConfigPath()); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// dataError names the data key a reading error is about and, when lines are
// not being skipped, the flag that would skip malformed ones.
func dataError(cfg config.Config, key string, err error) error {
	if !cfg.Data.SkipBadLines {
		return fmt.Errorf("%s: %w (-skip-bad-lines counts and skips malformed lines)", key, err)
	}
	return fmt.Errorf("%s: %w", key, err)
}

// checkDataFiles opens each data file and formats its first line (with
// data.skip_bad_lines, only opens it): the cheap part of reading the data,
// done before anything expensive starts.
func checkDataFiles(cfg config.Config, f *data.Formatter) error {
	if cfg.Data.SkipBadLines {
		f = nil
	}
	for _, d := range []struct{ key, path string }{{"data.train", cfg.Data.Train}, {"data.eval", cfg.Data.Eval}} {
		if d.path == "" {
			continue
		}
		if err := data.CheckFirstLine(d.path, f); err != nil {
			return dataError(cfg, d.key, err)
		}
	}
	return nil
}

// longExamples counts the examples longer than seqLen, which the packer cuts
// to it, and finds the longest: the start-up line says so, and a step left
// with nothing to score names truncation as the cause.
type longExamples struct {
	count, longest int
}

// countLong finds the examples of sets longer than seqLen.
func countLong(seqLen int, sets ...[]data.TokenExample) longExamples {
	var l longExamples
	for _, set := range sets {
		for _, ex := range set {
			if n := len(ex.InputIDs); n > seqLen {
				l.count++
				l.longest = max(l.longest, n)
			}
		}
	}
	return l
}

// LoadTokenizer loads the tokenizer that cfg names (a tokenizer.json or a
// directory holding one), or the model directory's own tokenizer.json; nil
// when neither exists (token-id data and the generated task need none). A
// tokenizer with more ids than the model's embedding is an error.
func LoadTokenizer(cfg config.Config, mc model.Config) (*tokenizer.Tokenizer, error) {
	path := cfg.Tokenizer
	if path == "" && !model.IsRandomModel(cfg.Model) {
		cand := filepath.Join(cfg.Model, "tokenizer.json")
		if _, err := os.Stat(cand); err == nil {
			path = cand
		}
	}
	if path == "" {
		return nil, nil
	}
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, err // it names "tokenizer:" or the file
	}
	if tok.VocabSize() > mc.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d ids but the model's vocabulary is %d: they do not belong together", path, tok.VocabSize(), mc.VocabSize)
	}
	return tok, nil
}
