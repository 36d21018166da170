// Command train fine-tunes Llama-family language models. One identical binary runs
// per rank (mpirun, srun or by hand); the first argument names a subcommand, and
// without one it trains.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// command is one subcommand: its name, a one-line summary for `train -h`, and the
// function that runs it with the remaining arguments.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"train", "fine-tune a model (the default when no subcommand is given)", runTrain},
		{"check", "describe a Hugging Face model directory and list every incompatibility", runCheck},
		{"eval", "mean cross-entropy of a model (and optional LoRA adapter) over a JSONL file", runEval},
		{"logs", "inspect a run's per-rank logs: failures first, stragglers, step times, throughput, checkpoints (-follow, -json, -plot FILE)", runLogs},
		{"ckpt", "inspect checkpoints: `train ckpt ls RUN`, `train ckpt verify DIR`", runCkpt},
		{"export", "write a model (and LoRA adapter) as a peft adapter, a merged Hugging Face model or a merged GGUF file", runExport},
		{"plan", "print the parallel plan and per-rank memory for LoRA, QLoRA and full fine-tuning (-np N -pp P)", runPlan},
		{"generate", "continue a prompt with a model (and optional LoRA adapter): greedy or sampled, KV cache, -chat", runGenerate},
		{"tokenize", "encode JSON-string lines on stdin to JSON arrays of token ids", runTokenize},
		{"selftest", "pre-flight checks across every rank: `train selftest collective` (the network), `train selftest gpu` (GPUs, libraries, NCCL, disk)", runSelftest},
		{"bench", "benchmarks against a peer measured in the same run: `train bench collective | pipeline | ckpt | model`", runBench},
	}
}

func main() {
	os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr))
}

// mainExit runs the program and returns its exit status: 0 on success, 2 on a usage
// error, 1 on any other failure.
func mainExit(args []string, stdout, stderr io.Writer) int {
	name, rest := "train", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, rest = args[0], args[1:]
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(rest, stdout, stderr)
		prefix := "train " + name
		if name == "train" {
			prefix = "train"
		}
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, new(*usageError)):
			fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
			return 2
		default:
			fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "train: unknown subcommand %q; run `train -h` for the list\n", name)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `train fine-tunes Llama-family language models (LoRA, QLoRA, full) on CPUs and NVIDIA GPUs.
One identical binary runs per rank: ./train, mpirun -np N ./train, or srun ./train.

Usage:
  train [flags]                      train (embedded default: a tiny Llama on a generated task, CPU)
  train -config run.toml [flags]     train as the TOML file says; flags override it
  train <subcommand> [flags]

Subcommands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "train <subcommand> -h" for its flags, and "train train -h" for every training flag.
Examples:
  train check -model ../shared/models/stories260K
  train eval -model DIR -data tokens.jsonl
  train -print-config > run.toml
`)
}

// usageError is a mistake in how the program was called (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// newFlagSet makes a flag set that reports errors instead of exiting, and prints
// its usage, headed by a line that says what the subcommand does, on -h.
func newFlagSet(name, synopsis string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "%s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// flagSet reports whether the flag name was given on the command line (not
// left at its default).
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// parseFlags parses args, turning a bad flag into a usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
