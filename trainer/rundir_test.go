package trainer

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"train/ckpt"
	"train/collective"
	"train/config"
	"train/model"
)

// readFile is the file's bytes, failing the test when it cannot be read.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRunDirRefusesReuse: a fresh run into a -run directory that holds
// another run's checkpoints is refused, naming -resume and -overwrite, and
// leaves that run as it was: its metrics, and its checkpoint as the latest.
func TestRunDirRefusesReuse(t *testing.T) {
	first := testConfig(t, func(c *config.Config) { c.Train.Steps = 2 })
	mustRun(t, first)
	metrics := readFile(t, filepath.Join(first.RunDir, "metrics.jsonl"))
	second := first
	second.Seed, second.Train.Steps = 7, 4
	_, _, _, err := run(t, second)
	want := fmt.Sprintf("run dir %s holds another run (checkpoints up to step 2): continue it with -resume, or start over with -overwrite (the old contents move to %s.old-<date>-<time>)",
		first.RunDir, first.RunDir)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("a second run into a used run dir: %v\nwant %q", err, want)
	}
	if got := readFile(t, filepath.Join(first.RunDir, "metrics.jsonl")); !bytes.Equal(got, metrics) {
		t.Error("the refused run changed the first run's metrics.jsonl")
	}
	if info, err := ckpt.Latest(first.RunDir); err != nil || info.Step != 2 {
		t.Errorf("the first run's latest checkpoint after the refusal: %+v, %v", info, err)
	}
}

// TestRunDirOverwrite: -overwrite moves the previous run aside whole (its
// metrics and its checkpoint still there) and starts over; the new run's
// config.toml can be resumed with; and -overwrite refuses to move a model
// this run reads out of the directory.
func TestRunDirOverwrite(t *testing.T) {
	first := testConfig(t, func(c *config.Config) { c.Train.Steps = 2 })
	mustRun(t, first)
	metrics := readFile(t, filepath.Join(first.RunDir, "metrics.jsonl"))
	second := first
	second.Seed, second.Train.Steps, second.Ckpt.Overwrite = 7, 3, true
	_, _, stderr := mustRun(t, second)
	moved, _ := filepath.Glob(first.RunDir + ".old-*")
	if len(moved) != 1 {
		t.Fatalf("after -overwrite: %v beside the run dir, want one RUN.old-*", moved)
	}
	if want := fmt.Sprintf("train: -overwrite: moved the previous run in %s to %s\n", first.RunDir, moved[0]); !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if got := readFile(t, filepath.Join(moved[0], "metrics.jsonl")); !bytes.Equal(got, metrics) {
		t.Error("the moved run's metrics.jsonl is not the first run's")
	}
	if info, err := ckpt.Latest(moved[0]); err != nil || info.Step != 2 {
		t.Errorf("the moved run's checkpoint: %+v, %v", info, err)
	} else if _, err := ckpt.Verify(info.Dir); err != nil {
		t.Errorf("the moved run's checkpoint: %v", err)
	}
	if info, err := ckpt.Latest(first.RunDir); err != nil || info.Step != 3 {
		t.Errorf("the new run's checkpoint: %+v, %v; want step 3", info, err)
	}
	saved, err := config.Load(filepath.Join(first.RunDir, "config.toml"))
	if err != nil || saved.Ckpt.Overwrite {
		t.Errorf("the new run's config.toml: %+v, %v; want one that -resume accepts (overwrite false)", saved.Ckpt, err)
	}

	fromOwn := second
	fromOwn.Model = filepath.Join(first.RunDir, "model") // the model the last run saved
	_, _, _, err = run(t, fromOwn)
	if err == nil || !strings.Contains(err.Error(), "-overwrite would move model "+fromOwn.Model+" out from under this run") {
		t.Errorf("-overwrite with the model inside the run dir: %v", err)
	}
}

// TestRunDirDefaultAdvances: with no -run, a second run of a model and method
// does not write into the first's runs/NAME: it takes runs/NAME-2 and says
// so; -resume then continues the newest, runs/NAME-2.
func TestRunDirDefaultAdvances(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg := testConfig(t, func(c *config.Config) { c.RunDir, c.Train.Steps = "", 2 })
	_, stdout, _ := mustRun(t, cfg)
	base := filepath.Join("runs", "random-tiny-full")
	if !strings.Contains(stdout, "outputs: "+base+" (") {
		t.Fatalf("the first run's outputs are not in %s:\n%s", base, stdout)
	}
	metrics := readFile(t, filepath.Join(base, "metrics.jsonl"))
	second := cfg
	second.Seed = 7
	_, stdout, stderr := mustRun(t, second)
	if want := "train: " + base + " holds another run (checkpoints up to step 2); this run writes to " + base + "-2\n"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if !strings.Contains(stdout, "outputs: "+base+"-2 (") {
		t.Errorf("the second run's outputs are not in %s-2:\n%s", base, stdout)
	}
	if got := readFile(t, filepath.Join(base, "metrics.jsonl")); !bytes.Equal(got, metrics) {
		t.Error("the second run changed the first run's metrics.jsonl")
	}
	resumed := second
	resumed.Train.Steps, resumed.Ckpt.Resume = 3, "latest"
	_, _, stderr = mustRun(t, resumed)
	if want := "resumed from " + ckpt.StepDir(base+"-2", 2) + " after step 2"; !strings.Contains(stderr, want) {
		t.Errorf("-resume with no -run: stderr lacks %q:\n%s", want, stderr)
	}
}

// TestRunDirSharedByRanks: the ranks of one job take the same default
// directory (rank 0 decides and tells the others): with runs/NAME used, both
// ranks of a 2-rank job write into runs/NAME-2, and nothing else is made.
func TestRunDirSharedByRanks(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("TRAIN_JOB_ID", fmt.Sprintf("trainer-rundir-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	cfg := testConfig(t, func(c *config.Config) { c.RunDir, c.Train.Steps = "", 1 })
	mustRun(t, cfg)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r := range errs {
		fs := flag.NewFlagSet("train", flag.ContinueOnError)
		launch := collective.AddFlags(fs)
		if err := fs.Parse([]string{"-rank", fmt.Sprint(r), "-world-size", "2", "-comm-timeout", "60s"}); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			_, errs[r] = Run(context.Background(), cfg, launch, &out, &out)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	base := filepath.Join("runs", "random-tiny-full")
	for r := range errs {
		if _, err := os.Stat(filepath.Join(base+"-2", "logs", fmt.Sprintf("rank-%05d.jsonl", r))); err != nil {
			t.Errorf("rank %d did not write into %s-2: %v", r, base, err)
		}
	}
	if dirs, _ := filepath.Glob(base + "*"); len(dirs) != 2 {
		t.Errorf("run directories %v, want %s and %s-2", dirs, base, base)
	}
}

// TestResumeRefusesAnotherBase: a checkpoint of stories260K does not resume
// on a random model of the same config.json and tensor shapes: the refusal
// names the first tensor that differs and -resume-any-base; with
// -resume-any-base it resumes, with a warning in stderr and the rank log.
// The same weights in another directory are the same base.
func TestResumeRefusesAnotherBase(t *testing.T) {
	a := storiesConfig(t, "lora", 2, nil)
	mustRun(t, a)
	storiesCfg, err := model.LoadConfig(storiesDir)
	if err != nil {
		t.Fatal(err)
	}
	lookalike := writeRandomModel(t, filepath.Join(t.TempDir(), "lookalike"), storiesCfg, storiesDir, nil)
	b := a
	b.Model, b.Train.Steps, b.Ckpt.Resume = lookalike, 3, "latest"
	_, _, _, err = run(t, b)
	if err == nil || !strings.Contains(err.Error(), "was trained on another base model: tensor model.embed_tokens.weight differs") ||
		!strings.Contains(err.Error(), "resume with -model "+storiesDir+", the base it was trained on, or give -resume-any-base") {
		t.Fatalf("resuming stories260K's checkpoint on a look-alike: %v", err)
	}
	b.Ckpt.ResumeAnyBase = true
	_, _, stderr := mustRun(t, b)
	if !strings.Contains(stderr, "on another base model (ckpt.resume_any_base): tensor model.embed_tokens.weight differs") {
		t.Errorf("-resume-any-base: no warning naming the tensor:\n%s", stderr)
	}
	if log := readFile(t, filepath.Join(a.RunDir, "logs", "rank-00000.jsonl")); !bytes.Contains(log, []byte(`"msg":"resumed on another base model"`)) {
		t.Error("the rank log does not record the resume on another base")
	}

	moved := t.TempDir()
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} {
		if err := os.WriteFile(filepath.Join(moved, f), readFile(t, filepath.Join(storiesDir, f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := a
	c.RunDir, c.Model, c.Train.Steps, c.Ckpt.Resume = filepath.Join(t.TempDir(), "c"), moved, 3, ckpt.StepDir(a.RunDir, 2)
	if _, _, stderr := mustRun(t, c); strings.Contains(stderr, "base model") {
		t.Errorf("stories260K copied elsewhere is another base:\n%s", stderr)
	}
}

// TestResumeOldCheckpointWarns: a checkpoint without the base model's
// identity (as builds before it wrote) resumes, warning that the base could
// not be checked.
func TestResumeOldCheckpointWarns(t *testing.T) {
	a := testConfig(t, func(c *config.Config) { c.Train.Steps = 2 })
	mustRun(t, a)
	dropEntries(t, ckpt.StepDir(a.RunDir, 2), ckptBase)
	b := a
	b.Train.Steps, b.Ckpt.Resume = 3, "latest"
	_, _, stderr := mustRun(t, b)
	if !strings.Contains(stderr, "records no identity of its base model (an older build wrote it): the base model could not be checked against random:tiny") {
		t.Errorf("no warning that the base was not checked:\n%s", stderr)
	}
}

// dropEntries rewrites a committed checkpoint's manifest without the entries
// whose names start with prefix (their bytes stay in the shards, unlisted),
// and its DONE marker to match: a checkpoint as an older build wrote it.
func dropEntries(t *testing.T, stepDir, prefix string) {
	t.Helper()
	r, err := ckpt.Open(stepDir)
	if err != nil {
		t.Fatal(err)
	}
	m := *r.Manifest()
	r.Close()
	var kept []ckpt.Entry
	for _, e := range m.Entries {
		if !strings.HasPrefix(e.Name, prefix) {
			kept = append(kept, e)
		}
	}
	if len(kept) == len(m.Entries) {
		t.Fatalf("%s has no entry named %s...", stepDir, prefix)
	}
	m.Entries = kept
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	done, _ := json.Marshal(map[string]any{"step": m.Step, "manifest_size": len(b),
		"manifest_crc32c": crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))})
	if err := os.WriteFile(filepath.Join(stepDir, ckpt.ManifestName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stepDir, ckpt.DoneName), done, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ckpt.Verify(stepDir); err != nil {
		t.Fatalf("the rewritten checkpoint: %v", err)
	}
}

// TestResumeSkipsBrokenNewest: when the newest checkpoint's shard is cut
// short, -resume goes back to the one before and says which it skipped and
// why, on stderr and in the rank log.
func TestResumeSkipsBrokenNewest(t *testing.T) {
	a := testConfig(t, func(c *config.Config) { c.Train.Steps, c.Ckpt.Every = 4, 2 })
	mustRun(t, a)
	newest, older := ckpt.StepDir(a.RunDir, 4), ckpt.StepDir(a.RunDir, 2)
	shard := filepath.Join(newest, ckpt.ShardName(0))
	st, err := os.Stat(shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(shard, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	b := a
	b.Train.Steps, b.Ckpt.Resume = 6, "latest"
	_, _, stderr := mustRun(t, b)
	want := fmt.Sprintf("train: warning: -resume skipped checkpoint %s (%s: corrupt checkpoint: truncated: %d bytes, manifest expects %d): resuming from %s instead\n",
		newest, shard, st.Size()/2, st.Size(), older)
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if !strings.Contains(stderr, "resumed from "+older+" after step 2") {
		t.Errorf("did not resume from step 2:\n%s", stderr)
	}
	log := readFile(t, filepath.Join(a.RunDir, "logs", "rank-00000.jsonl"))
	if !bytes.Contains(log, []byte(`"msg":"resume skipped a checkpoint"`)) || !bytes.Contains(log, []byte(`"checkpoint":"`+newest+`"`)) {
		t.Error("the rank log does not record the skipped checkpoint")
	}
}
