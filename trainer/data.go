package trainer

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"

	"train/config"
	"train/data"
	"train/model"
	"train/tokenizer"
)

// loadTrainingData returns the training and evaluation examples: the embedded
// generated task when data.train is empty (task is then not nil, for samples),
// otherwise the datasets' token caches (tokenized once into data.cache, then
// read an example at a time), with an evaluation split when data.eval is
// empty. done closes the caches. A cancelled ctx stops the tokenizing.
func loadTrainingData(ctx context.Context, cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer, warn io.Writer) (task *data.ArithmeticTask, trainSet, evalSet data.Examples, done func(), err error) {
	done = func() {}
	if cfg.Data.Train == "" {
		if mc.VocabSize < data.ByteVocab {
			return nil, nil, nil, done, fmt.Errorf("the generated task needs a vocabulary of at least %d ids (bytes and two specials); %s has %d: give -data FILE.jsonl", data.ByteVocab, cfg.Model, mc.VocabSize)
		}
		task = &data.ArithmeticTask{Ops: "+"}
		rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x7461736b)) // "task"
		var tr, ev data.Slice
		for i := 0; i < 4000; i++ {
			tr = append(tr, task.Example(task.Draw(rng)))
		}
		for i := 0; i < 200; i++ {
			ev = append(ev, task.Example(task.Draw(rng)))
		}
		return task, tr, ev, done, nil
	}
	f, err := formatter(cfg, mc, tok)
	if err != nil {
		return nil, nil, nil, done, err
	}
	var caches []*data.Cache
	done = func() {
		for _, c := range caches {
			c.Close()
		}
	}
	read := func(key, path string) (*data.Cache, error) {
		c, _, err := data.LoadCache(ctx, cacheSpec(cfg, path, f, tok, warn))
		if err != nil {
			return nil, dataError(cfg, key, err)
		}
		caches = append(caches, c)
		if c.Skipped > 0 {
			fmt.Fprintf(warn, "warning: %s: skipped %d malformed lines\n", path, c.Skipped)
		}
		return c, nil
	}
	all, err := read("data.train", cfg.Data.Train)
	if err != nil {
		done()
		return nil, nil, nil, func() {}, err
	}
	if cfg.Data.Eval != "" {
		ev, err := read("data.eval", cfg.Data.Eval)
		if err != nil {
			done()
			return nil, nil, nil, func() {}, err
		}
		return nil, all, ev, done, nil
	}
	// The split is drawn with the seed, so it does not depend on the file's order.
	order := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x73706c74)).Perm(all.Len()) // "splt"
	nEval := int(math.Round(float64(all.Len()) * cfg.Data.EvalFraction))
	if cfg.Data.EvalFraction > 0 && nEval == 0 {
		nEval = 1
	}
	if nEval >= all.Len() {
		done()
		return nil, nil, nil, func() {}, fmt.Errorf("data.train: %d examples are too few to hold out an evaluation split of %v; give data.eval or more data", all.Len(), cfg.Data.EvalFraction)
	}
	return nil, data.Subset{Of: all, Idx: order[nEval:]}, data.Subset{Of: all, Idx: order[:nEval]}, done, nil
}

// cacheSpec is where the token cache of the dataset at path lives
// (data.cache, else RUN_DIR/data-cache) and how it is built; progress goes
// to out.
func cacheSpec(cfg config.Config, path string, f *data.Formatter, tok *tokenizer.Tokenizer, out io.Writer) data.CacheSpec {
	dir := cfg.Data.Cache
	if dir == "" {
		dir = filepath.Join(cfg.RunDir, "data-cache")
	}
	s := data.CacheSpec{Data: path, Format: f, SkipBad: cfg.Data.SkipBadLines, Dir: dir,
		LockTimeout: time.Duration(cfg.Parallel.TimeoutSeconds) * time.Second, Log: out, Progress: tokenizeProgress(out)}
	if tok != nil {
		s.Tokenizer = tok.Hash()
	}
	return s
}

// CacheSpec is cacheSpec for train tokenize: the cache a run of cfg would
// use for the dataset at path, built into dir.
func CacheSpec(cfg config.Config, mc model.Config, tok *tokenizer.Tokenizer, path, dir string, out io.Writer) (data.CacheSpec, error) {
	f, err := formatter(cfg, mc, tok)
	if err != nil {
		return data.CacheSpec{}, err
	}
	cfg.Data.Cache = dir
	return cacheSpec(cfg, path, f, tok, out), nil
}

// tokenizeProgress shows a cache being built: a bar on a terminal, else a
// plain line every 10% (and at the end), which reads well in a log.
func tokenizeProgress(out io.Writer) func(done, total int64, examples int) {
	if isTerminal(out) {
		var bar *progressbar.ProgressBar
		return func(done, total int64, examples int) {
			if bar == nil {
				bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(out), progressbar.OptionSetDescription("tokenizing"),
					progressbar.OptionShowBytes(true), progressbar.OptionSetPredictTime(true), progressbar.OptionSetWidth(24),
					progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
			}
			bar.Describe(fmt.Sprintf("tokenizing (%d examples)", examples))
			_ = bar.Set64(done)
			if done == total {
				_ = bar.Finish()
			}
		}
	}
	next := int64(-1)
	return func(done, total int64, examples int) {
		if done < next && done < total {
			return
		}
		fmt.Fprintf(out, "data cache: tokenized %d%% (%d of %d MB, %d examples)\n", 100*done/max(total, 1), done>>20, total>>20, examples)
		next = done + max(total/10, 1)
	}
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

// countLong finds the examples of sets longer than seqLen, from their
// lengths alone.
func countLong(seqLen int, sets ...data.Examples) longExamples {
	var l longExamples
	for _, set := range sets {
		for i := range set.Len() {
			if n, _ := set.Stats(i); n > seqLen {
				l.count++
				l.longest = max(l.longest, n)
			}
		}
	}
	return l
}

// nextRows lays out the next micro-batch from the shuffled training order;
// only with read are its tokens read (this replica's micro-batches), else
// the rows only count the scored labels, from the data's index.
func (t *trainer) nextRows(read bool) (*data.Rows, error) {
	if t.cursor >= len(t.order) {
		t.order = t.rng.Perm(t.train.Len())
		t.cursor = 0
		t.epoch++
	}
	end := min(t.cursor+64, len(t.order))
	rows, used, err := t.packer.FillFrom(t.train, t.order[t.cursor:end], t.cfg.Train.MicroBatch, read)
	if err != nil {
		return nil, err
	}
	t.cursor += used
	return rows, nil
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
