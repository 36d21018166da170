package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"train/runlog"
)

// runLogs is `train logs RUN`: a summary of the per-rank logs of a run (failures
// first, then silent ranks, stragglers, step times, throughput, checkpoints),
// `-follow` to watch a live run, `-json` for machines, `-plot FILE` for a
// picture of the curves.
func runLogs(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("logs", "train logs RUN [flags]: inspect a run's per-rank logs (RUN/logs/rank-NNNNN.jsonl):\n"+
		"which rank failed first and why, stragglers and where their time goes, ranks that stopped logging,\n"+
		"step-time percentiles, throughput over time and checkpoints.", stderr)
	rank := fs.Int("rank", -1, "show only this rank (stragglers are still judged against every rank)")
	follow := fs.Bool("follow", false, "watch a live run: print new records and progress until every rank ends or Ctrl-C")
	asJSON := fs.Bool("json", false, "print the summary as JSON (with -follow: one JSON object per event, then the summary)")
	margin := fs.Float64("straggler", 1.2, "name a rank a straggler when its median own work (or step time) exceeds the median of ranks by this factor")
	plotPath := fs.String("plot", "", "draw loss, eval loss, learning rate and tokens/s against step into this .png or .svg file")
	interval := fs.Duration("interval", 2*time.Second, "with -follow: how often to read the logs")
	nContext := fs.Int("context", 5, "records shown before each failed rank's first error")
	windows := fs.Int("windows", 8, "throughput is shown over this many windows of steps")
	run, err := parseRunArg(fs, args)
	if err != nil {
		return err
	}
	switch {
	case *margin <= 1:
		return usagef("-straggler %v: must be above 1 (1.2 names ranks 20%% slower than the median)", *margin)
	case *interval <= 0:
		return usagef("-interval %v: must be positive", *interval)
	case *rank < -1:
		return usagef("-rank %d: a rank is 0 or more", *rank)
	case *plotPath != "" && *follow:
		return usagef("-plot and -follow do not go together: plot once the run is over, or again while it runs")
	}
	opts := runlog.DefaultOptions()
	opts.Straggler, opts.Rank, opts.Context, opts.Windows = *margin, *rank, max(*nContext, 0), max(*windows, 1)
	if *plotPath != "" {
		return plotRun(run, *plotPath, stdout)
	}
	if *follow {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return followLogs(ctx, run, opts, *interval, *asJSON, stdout)
	}
	logs, err := runlog.ReadRun(run)
	if err != nil {
		return err
	}
	opts.Now = time.Now()
	return writeSummary(runlog.Summarize(run, logs, opts), *asJSON, stdout)
}

// parseRunArg parses flags placed before or after the one RUN argument.
func parseRunArg(fs *flag.FlagSet, args []string) (string, error) {
	var run string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", err
			}
			return "", &usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if run != "" {
			return "", usagef("unexpected argument %q: give one run directory", rest[0])
		}
		run, args = rest[0], rest[1:]
	}
	if run == "" {
		return "", usagef("give the run directory: train logs RUN")
	}
	return run, nil
}

func writeSummary(s runlog.Summary, asJSON bool, w io.Writer) error {
	if !asJSON {
		return s.WriteText(w)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// followLogs polls the run's logs every interval, printing each new record
// other than steps (starts, warnings, errors, checkpoints, ends) and a progress
// line when the run has moved on, until every rank has ended or ctx is done;
// then it prints the summary. It starts no goroutine: one loop, one ticker.
func followLogs(ctx context.Context, run string, opts runlog.Options, interval time.Duration, asJSON bool, w io.Writer) error {
	d := runlog.NewDir(run)
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
		s := runlog.Summarize(run, logs, o)
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
			return writeSummary(runlog.Summarize(run, d.Logs(), o), asJSON, w)
		}
		doneBefore = s.Done
		select {
		case <-ctx.Done():
			d.Flush()
			return writeSummary(runlog.Summarize(run, d.Logs(), o), asJSON, w)
		case <-tick.C:
		}
	}
}

// anyLost reports whether the summary judges a rank lost.
func anyLost(s runlog.Summary) bool {
	for _, r := range s.Ranks {
		if r.State == runlog.Lost {
			return true
		}
	}
	return false
}

// progressLine is one line on where a live run is: the newest step, its loss,
// how far behind the slowest rank is, and the stragglers so far.
func progressLine(s runlog.Summary, logs []*runlog.RankLog) string {
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

// plotRun draws the run's curves from metrics.jsonl, or from the rank logs
// when there is none, into path (.png or .svg).
func plotRun(run, path string, stdout io.Writer) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if format != "png" && format != "svg" {
		return usagef("-plot %s: name a .png or .svg file", path)
	}
	var series runlog.Series
	source := filepath.Join(run, "metrics.jsonl")
	f, err := os.Open(source)
	switch {
	case err == nil:
		var bad int
		series, bad, err = runlog.ReadMetrics(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", source, err)
		}
		if bad > 0 {
			fmt.Fprintf(stdout, "%s: %d malformed lines skipped\n", source, bad)
		}
	case errors.Is(err, os.ErrNotExist):
		logs, err := runlog.ReadRun(run)
		if err != nil {
			return fmt.Errorf("%s: no metrics.jsonl, and %w", run, err)
		}
		series, source = runlog.SeriesFromRanks(logs), filepath.Join(run, "logs")
	default:
		return err
	}
	var buf bytes.Buffer
	if err := runlog.WritePlot(&buf, series, format, filepath.Base(filepath.Clean(run))); err != nil {
		return fmt.Errorf("%s: %w", run, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "wrote %s: %d steps, %d eval points, from %s\n", path, len(series.Loss), len(series.EvalLoss), source)
	return err
}
