package main

import (
	"context"
	"errors"
	"flag"
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
	if *plotPath != "" {
		if ext := strings.ToLower(filepath.Ext(*plotPath)); ext != ".png" && ext != ".svg" {
			return usagef("-plot %s: name a .png or .svg file", *plotPath)
		}
		return runlog.PlotRun(run, *plotPath, stdout)
	}
	opts := runlog.DefaultOptions()
	opts.Straggler, opts.Rank, opts.Context, opts.Windows = *margin, *rank, max(*nContext, 0), max(*windows, 1)
	if *follow {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runlog.Follow(ctx, run, opts, *interval, *asJSON, stdout)
	}
	logs, err := runlog.ReadRun(run)
	if err != nil {
		return err
	}
	opts.Now = time.Now()
	s := runlog.Summarize(run, logs, opts)
	if *asJSON {
		return s.WriteJSON(stdout)
	}
	return s.WriteText(stdout)
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
