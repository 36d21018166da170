package runlog

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes the summary for a machine: one indented JSON object.
func (s Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// WriteText writes the summary for a person: what went wrong first (failures,
// silent ranks, stragglers), then the per-rank table, throughput and
// checkpoints.
func (s Summary) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	p := ew.printf
	p("run %s: %s", s.Run, s.Status)
	if s.World > 0 {
		p(", world %d", s.World)
	}
	if s.Model != "" {
		p(", %s %s on %s", s.Model, s.Method, s.Device)
	}
	if s.LastStep > 0 {
		p(", last step %d", s.LastStep)
	}
	if !s.Newest.IsZero() {
		p(", newest record %s", s.Newest.Format(time.DateTime))
	}
	p("\n")
	if len(s.Failures) > 0 {
		p("\nfailed ranks, first failure first:\n")
		for _, f := range s.Failures {
			how, cause := "failed", ""
			if f.Lost {
				how = "lost"
			}
			if f.CausedBy != nil {
				cause = fmt.Sprintf(", because of rank %d", *f.CausedBy)
			}
			p("  rank %d%s %s at %s after step %d%s: %s\n", f.Rank, onHost(f.Host), how, f.Time.Format("15:04:05.000"), f.LastStep, cause, f.Error)
			if len(f.Context) > 0 && f.CausedBy == nil { // a consequence's records tell nothing new
				p("    last records before it:\n")
				for _, c := range f.Context {
					p("      %s\n", c)
				}
			}
		}
	}
	if len(s.Silent) > 0 {
		p("\nranks that stopped logging (no finished or failed record; killed, out of memory, or the node lost?):\n")
		for _, x := range s.Silent {
			p("  rank %d%s: last record %s after step %d, %s before the newest record of the run\n",
				x.Rank, onHost(x.Host), x.Last.Format("15:04:05.000"), x.LastStep, x.Behind.Round(time.Millisecond))
		}
	}
	if len(s.Missing) > 0 {
		p("\nranks with no log at all (never started, or started elsewhere): %s\n", ints(s.Missing))
	}
	if len(s.Stragglers) > 0 {
		p("\nstragglers (median own work or step time over %.2fx the median of ranks):\n", s.Margin)
		for _, x := range s.Stragglers {
			p("  rank %d%s: %.2fx; own work %s per step vs %s median, step %s vs %s; most extra time in %s (+%s per step)\n",
				x.Rank, onHost(x.Host), x.Ratio, sec(x.WorkP50), sec(x.MedianWork), sec(x.StepP50), sec(x.MedianStep), x.Where, sec(x.Excess))
			p("    per step: compute %s, comm %s, bubble %s, other %s (%s)\n", sec(x.Compute), sec(x.Comm), sec(x.Bubble), sec(x.Other), whereHint(x.Where))
		}
	} else if len(s.Ranks) > 1 {
		p("\nno stragglers (margin %.2fx)\n", s.Margin)
	}
	if len(s.Ranks) > 0 {
		p("\nper rank (seconds per step; work = step less comm and bubble; means leave out warm-up):\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		gpu := false
		for _, r := range s.Ranks {
			gpu = gpu || r.GPUPeak > 0
		}
		head := "rank\thost\tstage\treplica\tstate\tsteps\tlast\tp50\tp90\tmax\twork p50\tcompute\tcomm\tbubble\tother\trss max\t"
		if gpu {
			head += "gpu mem\tgpu util\t"
		}
		fmt.Fprintln(tw, head+"warn\t")
		for _, r := range s.Ranks {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%s\t",
				r.Rank, r.Host, r.Stage, r.Replica, r.State, r.Steps, r.LastStep, r.StepP50, r.StepP90, r.StepMax, r.WorkP50,
				r.Compute, r.Comm, r.Bubble, r.Other, bytesString(r.RSSMax))
			if gpu {
				util := "-"
				if r.GPUUtil >= 0 {
					util = fmt.Sprintf("%.0f%%", r.GPUUtil)
				}
				fmt.Fprintf(tw, "%s\t%s\t", bytesString(r.GPUPeak), util)
			}
			fmt.Fprintf(tw, "%d\t\n", r.Warnings)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(s.Throughput) > 0 {
		p("\nthroughput (tokens per second of step time):\n")
		for _, x := range s.Throughput {
			p("  steps %5d-%-5d from %s  %10.0f tokens/s\n", x.FromStep, x.ToStep, x.Start.Format("15:04:05"), x.TokensPerS)
		}
	}
	if len(s.Checkpoints) > 0 {
		p("\ncheckpoints:\n")
		for _, c := range s.Checkpoints {
			p("  step %d at %s (%s) %s\n", c.Step, c.Time.Format("15:04:05"), sec(c.Seconds), c.Dir)
		}
	}
	if len(s.Malformed) > 0 {
		p("\nunreadable lines (skipped):\n")
		for _, m := range s.Malformed {
			p("  rank %d:", m.Rank)
			if m.Lines > 0 {
				p(" %d malformed (lines %s)", m.Lines, ints(m.First))
			}
			if m.Truncated {
				p(" last line cut short (killed mid-write)")
			}
			p("\n")
		}
	}
	return ew.err
}

// whereHint says what usually puts a straggler's time where it is.
func whereHint(where string) string {
	switch where {
	case "compute":
		return "a slower device, more layers on its stage, or a throttled GPU"
	case "comm":
		return "a slow link or NIC to this rank's peers"
	case "bubble":
		return "waiting on its pipeline neighbours: a stage balance problem"
	default:
		return "outside compute and communication: a busy host, data loading, swapping, or a debug sleep"
	}
}

func onHost(h string) string {
	if h == "" {
		return ""
	}
	return " on " + h
}

func sec(s float64) string {
	if s < 1 {
		return fmt.Sprintf("%.0fms", s*1000)
	}
	return fmt.Sprintf("%.2fs", s)
}

func ints(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, ", ")
}

func bytesString(b float64) string {
	switch {
	case b <= 0:
		return "-"
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGiB", b/(1<<30))
	default:
		return fmt.Sprintf("%.0fMiB", b/(1<<20))
	}
}

// errWriter keeps the first write error so that a long report checks once.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, a ...any) { fmt.Fprintf(e, format, a...) }
