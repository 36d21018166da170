package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"train/ckpt"
	"train/model"
)

// runCkpt inspects checkpoints without training: `train ckpt verify DIR`
// checks one fully (every checksum), `train ckpt ls RUN` lists a run's
// checkpoints with step, size and status.
func runCkpt(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			_, err := fmt.Fprint(stdout, `train ckpt inspects checkpoints without training.

Usage:
  train ckpt ls RUN       list a run's checkpoints with step, size and status
  train ckpt verify DIR   check one checkpoint fully: every checksum, every entry decompressed

Run "train ckpt <command> -h" for its flags.
`)
			return err
		case "verify":
			return ckptVerify(args[1:], stdout, stderr)
		case "ls":
			return ckptLs(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("which? train ckpt verify DIR | train ckpt ls RUN")
	}
	return usagef("unknown ckpt command %q (there are: verify, ls)", args[0])
}

// oneArg parses flags (before or after) and one positional argument.
func oneArg(fs *flag.FlagSet, args []string, what string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return "", err
			}
			return "", usagef("%v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", usagef("want one %s, got %d arguments", what, len(pos))
	}
	return pos[0], nil
}

func ckptVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ckpt verify", `train ckpt verify DIR

Check the checkpoint in DIR (RUN/checkpoints/step-N, or RUN for its newest
complete one) without training: the DONE marker, the manifest and its
checksum, every shard file's size and checksum, and every entry decompressed
against its checksum. Exits non-zero, printing every problem, unless the
checkpoint is complete and correct.`, stderr)
	dir, err := oneArg(fs, args, "checkpoint directory")
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, ckpt.ManifestName)); err != nil {
		if _, err2 := os.Stat(ckpt.Dir(dir)); err2 == nil { // a run directory
			in, err := ckpt.Latest(dir)
			if err != nil {
				return err
			}
			dir = in.Dir
		}
	}
	rep, err := ckpt.Verify(dir)
	if err != nil {
		fmt.Fprintf(stdout, "%s: NOT OK: %d problem(s)\n", dir, len(rep.Problems))
		for _, p := range rep.Problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		return fmt.Errorf("%s is not a complete and correct checkpoint", dir)
	}
	ratio := 0.0
	if rep.Bytes > 0 {
		ratio = float64(rep.RawBytes) / float64(rep.Bytes)
	}
	fmt.Fprintf(stdout, "%s: OK: step %d, world size %d, %d files, %d entries, %s stored, %s raw (%.2fx)\n",
		dir, rep.Step, rep.WorldSize, rep.Files, rep.Entries, model.HumanBytes(rep.Bytes), model.HumanBytes(rep.RawBytes), ratio)
	return nil
}

func ckptLs(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ckpt ls", `train ckpt ls RUN

List the checkpoints of the run directory RUN (RUN/checkpoints/step-N): step,
size on disk, status (complete; incomplete: no DONE marker, a commit that did
not finish; tmp: shards being written or left by a crash; corrupt: why) and
which one is the newest complete checkpoint (what -resume would load). Status
comes from the cheap check (DONE, manifest checksum, file sizes); use
train ckpt verify for every checksum.`, stderr)
	run, err := oneArg(fs, args, "run directory")
	if err != nil {
		return err
	}
	if st, err := os.Stat(run); err != nil || !st.IsDir() {
		return fmt.Errorf("%s: not a run directory", run)
	}
	infos, err := ckpt.List(run)
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		fmt.Fprintf(stdout, "%s: no checkpoints\n", ckpt.Dir(run))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSIZE\tSTATUS\tLATEST\tDIR")
	for _, in := range infos {
		status := string(in.Status)
		if in.Status != ckpt.Complete && in.Reason != "" {
			status += ": " + in.Reason
		}
		latest := ""
		if in.Latest {
			latest = "*"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", in.Step, model.HumanBytes(in.Size), status, latest, filepath.Base(in.Dir))
	}
	return tw.Flush()
}
