package trainer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"train/config"
	"train/internal/fixture"
	"train/model"
)

// storiesDir is the real pretrained stories260K model in ../shared.
const storiesDir = "../../shared/models/stories260K"

func requireStories(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(storiesDir, "model.safetensors")); err != nil {
		t.Skipf("stories260K is not at %s (%v): these tests run in a checkout beside ../shared", storiesDir, err)
	}
}

// testConfig is the default configuration with the run directory in a fresh
// temporary folder and quiet progress, changed by edit and then validated as
// the command line validates it.
func testConfig(t *testing.T, edit func(c *config.Config)) config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.RunDir = filepath.Join(t.TempDir(), "run")
	cfg.Train.LogEvery = 100
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test configuration: %v", err)
	}
	return cfg
}

// storiesConfig is a short stories260K fine-tune on n generated stories.
func storiesConfig(t *testing.T, method string, steps int, edit func(c *config.Config)) config.Config {
	t.Helper()
	requireStories(t)
	data := filepath.Join(t.TempDir(), "train.jsonl")
	writeStories(t, data, 48, 5)
	return testConfig(t, func(c *config.Config) {
		c.Model, c.Data.Train, c.Train.Method, c.Train.Steps, c.Train.LR = storiesDir, data, method, steps, 5e-3
		c.Train.MicroBatch, c.Data.SeqLen, c.LoRA.Rank = 2, 64, 4
		if edit != nil {
			edit(c)
		}
	})
}

// run trains cfg as one process through the library and returns what it printed.
func run(t *testing.T, cfg config.Config) (res Result, stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	res, err = Run(context.Background(), cfg, nil, &out, &errOut)
	return res, out.String(), errOut.String(), err
}

// mustRun is run, failing the test on an error.
func mustRun(t *testing.T, cfg config.Config) (Result, string, string) {
	t.Helper()
	res, stdout, stderr, err := run(t, cfg)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	return res, stdout, stderr
}

// writeStories writes n short stories that all end with the same sentence, as
// {"text"} lines.
func writeStories(t *testing.T, path string, n int, seed uint64) {
	t.Helper()
	if err := fixture.WriteStories(path, n, seed); err != nil {
		t.Fatal(err)
	}
}

// metricValues maps step -> the named value of a run's metrics.jsonl.
func metricValues(t *testing.T, runDir, key string) map[int]float64 {
	t.Helper()
	f, err := os.Open(filepath.Join(runDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]float64
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("metrics.jsonl line %q: %v", sc.Text(), err)
		}
		if v, ok := m[key]; ok {
			out[int(m["step"])] = v
		}
	}
	return out
}

// writeRandomModel writes the architecture cfg with random weights, as edit
// (when not nil) leaves them, as a Hugging Face directory, with the tokenizer
// files of tokenizerDir (when not "").
func writeRandomModel(t *testing.T, dir string, cfg model.Config, tokenizerDir string, edit func(*model.Weights)) string {
	t.Helper()
	w, err := model.RandomWeights(cfg, 7, 0, cfg.NumLayers, true, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(w)
	}
	if err := model.WriteHFModel(dir, w, tokenizerDir, 0); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tinyConfig is random:tiny's architecture.
func tinyConfig(t *testing.T) model.Config {
	t.Helper()
	cfg, err := model.RandomConfig("random:tiny")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
