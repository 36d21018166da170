package trainer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"train/ckpt"
	"train/config"
	"train/model"
)

// A run directory belongs to one run. Writing a second run's metrics and
// outputs over a first one's checkpoints leaves `train ckpt ls`, -resume and
// `train export -ckpt` pointing at weights that no longer match anything
// else in the directory, so a fresh run never writes into a used directory:
//
//   - -run DIR that holds another run is refused, naming -resume (continue
//     it) and -overwrite (move it aside to DIR.old-<date>-<time>, then
//     start over; nothing is deleted);
//   - the default, runs/<model>-<method>, is a family of names (runs/NAME,
//     runs/NAME-2, ...): a fresh run makes the one after the newest that
//     exists, and says so when that is not runs/NAME; -resume and
//     -overwrite mean the newest.
//
// Rank 0 decides and tells every rank (World.share): ranks may be on several
// hosts of a shared file system, where another host can see a directory rank
// 0 just made or moved late (attribute caches), or a rank starting a moment
// later would see rank 0's new directory as used. Nothing is written before
// the decision: it is the first thing RunOn does.

// runPlace is where a run writes and what it resumes from, as rank 0 decided.
type runPlace struct {
	Dir     string    `json:"dir"`
	Resume  string    `json:"resume"`             // the checkpoint to restore; "" for a fresh start
	Skipped []skipped `json:"skipped,omitempty"`  // checkpoints newer than Resume that could not be used
	Passed  string    `json:"passed,omitempty"`   // the default directory this run did not write into, and why
	MovedTo string    `json:"moved_to,omitempty"` // where -overwrite moved the previous run
}

// skipped is a checkpoint -resume did not take, and why.
type skipped struct {
	Dir    string `json:"dir"`
	Reason string `json:"reason"`
}

// placeNote is a line for rank 0's stderr and a record for the rank log.
type placeNote struct {
	warn  bool
	msg   string // printed after "train: " (and "warning: ")
	event string // the log record's message
	attrs []any
}

// print writes the note as rank 0 shows it.
func (n placeNote) print(w io.Writer) {
	warn := ""
	if n.warn {
		warn = "warning: "
	}
	fmt.Fprintf(w, "train: %s%s\n", warn, n.msg)
}

// record writes the note to the rank log.
func (n placeNote) record(l *rankLog) {
	if n.warn {
		l.Warn(n.event, n.attrs...)
	} else {
		l.Info(n.event, n.attrs...)
	}
}

// notes says what the decision did that a person should know: a default name
// passed over, a run moved aside, checkpoints skipped.
func (p *runPlace) notes() []placeNote {
	var out []placeNote
	if p.Passed != "" {
		out = append(out, placeNote{false, fmt.Sprintf("%s; this run writes to %s", p.Passed, p.Dir),
			"run dir taken", []any{"dir", p.Dir, "passed", p.Passed}})
	}
	if p.MovedTo != "" {
		out = append(out, placeNote{false, fmt.Sprintf("-overwrite: moved the previous run in %s to %s", p.Dir, p.MovedTo),
			"previous run moved aside", []any{"dir", p.Dir, "moved_to", p.MovedTo}})
	}
	for _, s := range p.Skipped {
		then := "resuming from " + p.Resume + " instead"
		if p.Resume == "" {
			then = "no complete checkpoint is left, so the run starts from step 0"
		}
		out = append(out, placeNote{true, fmt.Sprintf("-resume skipped checkpoint %s (%s): %s", s.Dir, s.Reason, then),
			"resume skipped a checkpoint", []any{"checkpoint", s.Dir, "reason", s.Reason, "resumed_from", p.Resume}})
	}
	return out
}

// choosePlace is rank 0's decision for cfg (see the comment at the top);
// cfg.RunDir "" is the default family of names.
func choosePlace(cfg config.Config, now time.Time) (runPlace, error) {
	c := cfg.Ckpt
	p := runPlace{Dir: cfg.RunDir}
	base := cfg.RunDirOrDefault()
	if c.Resume != "" {
		// Continuing a run: its directory is meant to be used.
		if p.Dir == "" {
			p.Dir = familyName(base, max(newestInFamily(base), 1))
			if parent := filepath.Dir(filepath.Clean(c.Resume)); c.Resume != "latest" && filepath.Base(parent) == "checkpoints" {
				p.Dir = filepath.Dir(parent) // -resume=RUN/checkpoints/step-N continues RUN
			}
		}
		p.Resume = c.Resume
		if c.Resume == "latest" {
			var err error
			p.Resume, p.Skipped, err = latestCheckpoint(p.Dir)
			return p, err
		}
		return p, nil
	}
	if p.Dir == "" && !c.Overwrite {
		// A fresh run under the default name takes a name no run has had.
		newest := newestInFamily(base)
		if newest > 0 {
			prev := familyName(base, newest)
			p.Passed = prev + " is taken"
			if use := runUse(prev); use != "" {
				p.Passed = fmt.Sprintf("%s holds another run (%s)", prev, use)
			}
		}
		var err error
		p.Dir, err = claimInFamily(base, newest+1)
		return p, err
	}
	if p.Dir == "" {
		p.Dir = familyName(base, max(newestInFamily(base), 1)) // -overwrite: the newest run
	}
	use := runUse(p.Dir)
	switch {
	case use == "":
		return p, nil
	case c.Overwrite:
		if err := inputsOutside(cfg, p.Dir); err != nil {
			return p, err
		}
		var err error
		p.MovedTo, err = moveAside(p.Dir, now)
		return p, err
	}
	return p, fmt.Errorf("run dir %s holds another run (%s): continue it with -resume, or start over with -overwrite (the old contents move to %s.old-<date>-<time>), or give another -run",
		p.Dir, use, filepath.Clean(p.Dir))
}

// familyName is the n-th name of the default run directory base: base
// itself, then base-2, base-3, ...
func familyName(base string, n int) string {
	if n <= 1 {
		return base
	}
	return base + "-" + strconv.Itoa(n)
}

// newestInFamily is the highest n whose familyName exists (0: none does).
// Fresh runs take names upwards, so that is the newest run.
func newestInFamily(base string) int {
	des, err := os.ReadDir(filepath.Dir(base))
	if err != nil {
		return 0
	}
	newest, stem := 0, filepath.Base(base)
	for _, de := range des {
		name := de.Name()
		if name == stem {
			newest = max(newest, 1)
			continue
		}
		digits, ok := strings.CutPrefix(name, stem+"-")
		if n, err := strconv.Atoi(digits); ok && err == nil && n >= 2 && strconv.Itoa(n) == digits {
			newest = max(newest, n)
		}
	}
	return newest
}

// claimInFamily makes the first familyName of base from n on that does not
// exist yet. os.Mkdir fails on a name that exists, so two jobs starting at
// once never take the same directory.
func claimInFamily(base string, n int) (string, error) {
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		return "", fmt.Errorf("run dir: %w", err)
	}
	for ; ; n++ {
		dir := familyName(base, n)
		err := os.Mkdir(dir, 0o755)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("run dir: %w", err)
		}
	}
}

// runUse says what in dir shows that a run used it: a checkpoint, complete
// or not, or a metrics.jsonl with lines. "" when nothing does: the directory
// is absent or empty, or holds only what a run that failed before its first
// step leaves (config.toml, plan.txt, its logs).
func runUse(dir string) string {
	infos, _ := ckpt.List(dir) // an unreadable checkpoints/ holds no checkpoint to lose
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].Latest {
			return fmt.Sprintf("checkpoints up to step %d", infos[i].Step)
		}
	}
	if len(infos) > 0 {
		return fmt.Sprintf("an unfinished checkpoint of step %d", infos[len(infos)-1].Step)
	}
	metrics, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
	if err != nil || len(metrics) == 0 {
		return ""
	}
	return fmt.Sprintf("metrics.jsonl with %d lines, no checkpoint", bytes.Count(metrics, []byte("\n")))
}

// moveAside renames dir to dir.old-<date>-<time> (-2, -3, ... when taken):
// one rename, so the previous run is whole either at its old name or at its
// new one. It returns the new name.
func moveAside(dir string, now time.Time) (string, error) {
	dir = filepath.Clean(dir)
	stem := dir + ".old-" + now.Format("20060102-150405")
	for n := 1; ; n++ {
		to := familyName(stem, n)
		if _, err := os.Lstat(to); err == nil {
			continue
		}
		if err := os.Rename(dir, to); err != nil {
			return "", fmt.Errorf("-overwrite: moving the previous run aside: %w", err)
		}
		return to, nil
	}
}

// inputsOutside refuses -overwrite when it would move away a file this run
// reads (a model trained earlier in the same directory, say).
func inputsOutside(cfg config.Config, dir string) error {
	for _, in := range []struct{ key, path string }{
		{"model", cfg.Model}, {"tokenizer", cfg.Tokenizer}, {"data.train", cfg.Data.Train},
		{"data.eval", cfg.Data.Eval}, {"lora.init_adapter", cfg.LoRA.InitAdapter},
	} {
		if in.path == "" || model.IsRandomModel(in.path) || !within(in.path, dir) {
			continue
		}
		return fmt.Errorf("-overwrite would move %s %s out from under this run: it is inside run dir %s; give another -run, or copy it elsewhere first", in.key, in.path, dir)
	}
	return nil
}

// within reports whether path is dir or lies under it.
func within(path, dir string) bool {
	ap, err1 := filepath.Abs(path)
	ad, err2 := filepath.Abs(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(ad, ap)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// latestCheckpoint is the newest complete checkpoint of runDir ("" when there
// is none: a fresh start, so that a requeued job that never checkpointed
// starts over), and every newer one that is not complete, with the reason.
func latestCheckpoint(runDir string) (string, []skipped, error) {
	infos, err := ckpt.List(runDir)
	if err != nil {
		return "", nil, err
	}
	latest := ckpt.Info{Step: -1}
	for _, in := range infos {
		if in.Latest {
			latest = in
		}
	}
	// List sorts by step: the newer ones come last. A step-N.tmp beside the
	// step-N resumed is a leftover, not newer.
	var skips []skipped
	for i := len(infos) - 1; i >= 0 && infos[i].Step > latest.Step; i-- {
		skips = append(skips, skipped{Dir: infos[i].Dir, Reason: infos[i].Reason})
	}
	return latest.Dir, skips, nil
}

// choosePlace is rank 0's decision, shared with every rank.
func (d *World) choosePlace(cfg config.Config) (runPlace, error) {
	var msg []byte
	var err error
	if d.IsRoot() {
		var p runPlace
		if p, err = choosePlace(cfg, time.Now()); err == nil {
			msg, err = json.Marshal(p)
		}
	}
	if msg, err = d.share(msg, err, "choose the run directory"); err != nil {
		return runPlace{}, err
	}
	var p runPlace
	if err := json.Unmarshal(msg, &p); err != nil {
		return p, fmt.Errorf("the run directory rank 0 chose: %w", err)
	}
	return p, nil
}
