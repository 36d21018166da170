package runlog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// Follow watches the live run in the directory run: it polls the logs every
// interval, writing each new record other than steps (starts, warnings,
// errors, checkpoints, ends) and a progress line when the run has moved on,
// until every rank has ended or ctx is done; then it writes the summary. With
// asJSON each record is a JSON object, there are no progress lines, and the
// summary is JSON too. It starts no goroutine: one loop, one ticker.
func Follow(ctx context.Context, run string, opts Options, interval time.Duration, asJSON bool, w io.Writer) error {
	d := NewDir(run)
	printed := map[int]int{} // events printed per rank
	lastStep := -1
	waiting := false
	doneBefore := false // the previous poll found the run over
	tick := time.NewTicker(interval)
	defer tick.Stop()
	enc := json.NewEncoder(w)
	for {
		if _, err := d.Poll(); err != nil {
			return err
		}
		logs := d.Logs()
		if len(logs) == 0 && !waiting && !asJSON {
			waiting = true
			if _, err := fmt.Fprintf(w, "waiting for %s to appear\n", filepath.Join(run, "logs")); err != nil {
				return err
			}
		}
		for _, l := range logs {
			if opts.Rank >= 0 && l.Rank != opts.Rank {
				continue
			}
			for _, e := range l.Events[printed[l.Rank]:] {
				var err error
				if asJSON {
					err = enc.Encode(e)
				} else {
					_, err = fmt.Fprintf(w, "rank %d  %s\n", l.Rank, e)
				}
				if err != nil {
					return err
				}
			}
			printed[l.Rank] = len(l.Events)
		}
		o := opts
		o.Now = time.Now()
		s := Summarize(run, logs, o)
		if s.LastStep != lastStep && s.LastStep > 0 && !asJSON {
			lastStep = s.LastStep
			if _, err := fmt.Fprintln(w, progressLine(s, logs)); err != nil {
				return err
			}
		}
		// A rank judged lost may still write its end record (it failed a moment
		// after the others named it): a run that looks over with a rank lost
		// is read once more before the summary.
		if s.Done && (doneBefore || !anyLost(s)) {
			d.Flush()
			return writeSummary(Summarize(run, d.Logs(), o), asJSON, w)
		}
		doneBefore = s.Done
		select {
		case <-ctx.Done():
			d.Flush()
			return writeSummary(Summarize(run, d.Logs(), o), asJSON, w)
		case <-tick.C:
		}
	}
}

// anyLost reports whether the summary judges a rank lost.
func anyLost(s Summary) bool {
	for _, r := range s.Ranks {
		if r.State == Lost {
			return true
		}
	}
	return false
}

// writeSummary writes s as JSON or as text.
func writeSummary(s Summary, asJSON bool, w io.Writer) error {
	if asJSON {
		return s.WriteJSON(w)
	}
	return s.WriteText(w)
}

// progressLine is one line on where a live run is: the newest step, its loss,
// how far behind the slowest rank is, and the stragglers so far.
func progressLine(s Summary, logs []*RankLog) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "step %d", s.LastStep)
	low, lowRank := s.LastStep, -1
	for _, l := range logs {
		if len(l.Steps) == 0 {
			continue
		}
		last := l.Steps[len(l.Steps)-1]
		if last.Step == s.LastStep && !strings.Contains(b.String(), "loss") {
			fmt.Fprintf(&b, "  loss %.4f  lr %.2e", last.Loss, last.LR)
		}
		if last.Step < low {
			low, lowRank = last.Step, l.Rank
		}
	}
	if lowRank >= 0 {
		fmt.Fprintf(&b, "  slowest rank %d at step %d", lowRank, low)
	}
	if n := len(s.Throughput); n > 0 {
		fmt.Fprintf(&b, "  %.0f tokens/s", s.Throughput[n-1].TokensPerS)
	}
	for _, x := range s.Stragglers {
		fmt.Fprintf(&b, "  straggler: rank %d (%.2fx, %s)", x.Rank, x.Ratio, x.Where)
	}
	return b.String()
}
