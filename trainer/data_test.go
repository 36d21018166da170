package trainer

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"train/config"
	"train/data"
	"train/model"
)

// TestRunRefusesBadChatTemplate: a chat_template that does not compile stops
// the run at start-up, naming the tokenizer_config.json it came from, before
// the data is read or the weights are built.
func TestRunRefusesBadChatTemplate(t *testing.T) {
	requireStories(t)
	dir := filepath.Join(t.TempDir(), "tok")
	os.MkdirAll(dir, 0o755)
	b, err := os.ReadFile(filepath.Join(storiesDir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"chat_template": "{% for m in messages %}{{ m.content }"}`), 0o644)
	cfg := storiesConfig(t, "lora", 2, func(c *config.Config) { c.Tokenizer = dir })
	_, _, stderr, err := run(t, cfg)
	if want := filepath.Join(dir, "tokenizer_config.json") + ": chat_template"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("want an error naming %s, got %v\n%s", want, err, stderr)
	}
}

// counting records which examples were read.
type counting struct {
	data.Examples
	read map[int]bool
}

func (c counting) Example(i int) (data.TokenExample, error) {
	c.read[i] = true
	return c.Examples.Example(i)
}

// TestReplicasReadDisjointRows: two data-parallel ranks, each with its own
// handle on one token cache, draw the same steps (the same scored-label
// totals, which normalise the loss) but read disjoint examples, which
// together are every example drawn.
func TestReplicasReadDisjointRows(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for i := range 200 {
		ids := []string{}
		for j := range 3 + i%13 {
			ids = append(ids, fmt.Sprint((i+j)%50))
		}
		lines = append(lines, `{"input_ids": [`+strings.Join(ids, ", ")+`]}`)
	}
	path := filepath.Join(dir, "ids.jsonl")
	os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	cfg := testConfig(t, func(c *config.Config) {
		c.Data.Train, c.Data.Cache, c.Train.MicroBatch, c.Train.GradAccum, c.Data.SeqLen = path, filepath.Join(dir, "cache"), 2, 2, 16
	})
	const M, D, steps = 2, 2, 12
	var reads [D]map[int]bool
	var totals [D][]int
	for r := range D {
		_, train, _, done, err := loadTrainingData(context.Background(), cfg, model.Config{VocabSize: 50}, nil, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		defer done()
		reads[r] = map[int]bool{}
		tr := &trainer{cfg: cfg, train: counting{train, reads[r]}, rng: rand.New(rand.NewPCG(1, 2)),
			packer: data.Packer{T: cfg.Data.SeqLen, Pack: true}}
		for range steps {
			total := 0
			for i := range M * D {
				rows, err := tr.nextRows(i/M == r)
				if err != nil {
					t.Fatal(err)
				}
				total += rows.ScoredLabels()
			}
			totals[r] = append(totals[r], total)
		}
	}
	if !slices.Equal(totals[0], totals[1]) {
		t.Errorf("the ranks counted different scored labels per step: %v, %v", totals[0], totals[1])
	}
	for i := range reads[0] {
		if reads[1][i] {
			t.Fatalf("both ranks read example %d", i)
		}
	}
	if n := len(reads[0]) + len(reads[1]); n < 100 {
		t.Errorf("the ranks read %d examples in all, want most of the 190 training examples", n)
	}
}
