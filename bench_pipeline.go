package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"train/collective"
	"train/config"
	"train/model"
	"train/ops"
	"train/shard"
	"train/trainer"
)

// benchPipeline measures the pipeline bubble of real training steps against the
// 1F1B theory, (P-1)/(M+P-1): every rank of the world is one stage (P = world
// size), and for each number of micro-batches M it trains a few steps and reports
// the share of step time the stages spent waiting on their neighbours.
func benchPipeline(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench pipeline", `Usage: mpirun -np P train bench pipeline [flags]

Trains -steps steps for each number of micro-batches in -micro with every rank
one pipeline stage, and prints per M the bubble theory predicts for 1F1B,
(P-1)/(M+P-1), and the bubble measured: time a stage waited on its neighbours
over its step time, averaged over stages and steps (the first step, warm-up,
left out). Stages other than the last recompute a micro-batch's forward before
its backward (activations are kept per stage for one micro-batch), which makes
them slower than the last stage and shifts the measured bubble from the theory.`, stderr)
	cf := collective.AddFlags(fs)
	modelName := fs.String("model", "random:tiny", "model (its layers must be at least the number of ranks)")
	micro := fs.String("micro", "1,2,4,8,16", "comma-separated micro-batch counts M")
	steps := fs.Int("steps", 4, "steps per M (the first is not measured)")
	seq := fs.Int("seq", 64, "tokens per sequence")
	batch := fs.Int("batch", 4, "sequences per micro-batch")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var ms []int
	for _, f := range strings.Split(*micro, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || m < 1 {
			return usagef("-micro: %q is not a positive count", f)
		}
		ms = append(ms, m)
	}
	if *steps < 2 {
		return usagef("-steps %d: need at least 2 (the first is warm-up)", *steps)
	}
	cfg := config.Default()
	cfg.Model, cfg.Data.SeqLen, cfg.Train.MicroBatch, cfg.Train.Steps = *modelName, *seq, *batch, *steps
	cfg.Train.LogEvery = 1 << 30
	mc, err := model.SourceConfig(cfg.Model)
	if err != nil {
		return err
	}
	cc, err := cf.Config(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	cfg.Parallel.PP = max(cc.Size, 1)
	d, err := trainer.Join(context.Background(), cfg, cf, &mc, 0, ops.F32)
	if err != nil {
		return err
	}
	defer d.Close(nil)
	dir, err := os.MkdirTemp("", "train-bench-pipeline-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	P := cfg.Parallel.PP
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if d.IsRoot() {
		fmt.Fprintf(stdout, "pipeline bubble: %s, P=%d stages, micro-batch %d x %d tokens, %d measured steps per M\n",
			cfg.Model, P, *batch, *seq, *steps-1)
		fmt.Fprintln(tw, "M\ttheory (P-1)/(M+P-1)\tmeasured\tstep ms\t")
	}
	for _, m := range ms {
		cfg.Train.GradAccum = m
		cfg.RunDir = fmt.Sprintf("%s/M%d", dir, m)
		res, err := trainer.RunOn(context.Background(), cfg, mc, d, io.Discard, io.Discard)
		if err != nil {
			return fmt.Errorf("M=%d: %w", m, err)
		}
		wall := res.Wall.Seconds()
		sums := []float64{res.Bubble.Seconds() / wall, wall}
		if err := d.AllReduce(sums); err != nil {
			return err
		}
		if d.IsRoot() {
			fmt.Fprintf(tw, "%d\t%.3f\t%.3f\t%.1f\t\n", m, shard.TheoreticalBubble(P, m), sums[0]/float64(P),
				1000*sums[1]/float64(P)/float64(*steps-1))
		}
	}
	return tw.Flush()
}
