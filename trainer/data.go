package trainer

import (
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
func loadTrainingData(cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer, warn io.Writer) (task *data.ArithmeticTask, trainSet, evalSet []data.TokenExample, err error) {
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
	f := &data.Formatter{Vocab: mc.VocabSize, PromptLoss: cfg.Data.PromptLoss}
	if tok != nil {
		f.Tok = tok
	}
	read := func(key, path string) ([]data.TokenExample, error) {
		ex, skipped, err := data.ReadExamples(path, f, cfg.Data.SkipBadLines)
		if err != nil && !cfg.Data.SkipBadLines {
			return nil, fmt.Errorf("%s: %w (-skip-bad-lines counts and skips malformed lines)", key, err)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
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

// LoadTokenizer loads the tokenizer that cfg names, or the model directory's own
// tokenizer.json; nil when neither exists (token-id data and the generated task
// need none). A tokenizer with more ids than the model's embedding is an error.
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
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if tok.VocabSize() > mc.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d ids but the model's vocabulary is %d: they do not belong together", path, tok.VocabSize(), mc.VocabSize)
	}
	return tok, nil
}
