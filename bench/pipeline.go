package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"train/collective"
	"train/config"
	"train/model"
	"train/ops"
	"train/shard"
	"train/trainer"
)

// PipelineOptions are the settings of `train bench pipeline`.
type PipelineOptions struct {
	Model string // random:NAME or a Hugging Face directory; at least as many layers as ranks
	Micro []int  // micro-batch counts M, each at least 1
	Steps int    // steps per M, at least 2 (the first is warm-up)
	Seq   int    // tokens per sequence
	Batch int    // sequences per micro-batch
}

// Pipeline measures the pipeline bubble of real training steps against the
// 1F1B theory, (P-1)/(M+P-1): every rank of the world (joined as launch says)
// is one stage, and for each number of micro-batches M it trains a few steps
// through the trainer and reports the share of step time the stages spent
// waiting on their neighbours. Rank 0 prints the table.
func Pipeline(launch *collective.Flags, opts PipelineOptions, stdout io.Writer) error {
	cfg := config.Default()
	cfg.Model, cfg.Data.SeqLen, cfg.Train.MicroBatch, cfg.Train.Steps = opts.Model, opts.Seq, opts.Batch, opts.Steps
	cfg.Train.LogEvery = 1 << 30
	mc, err := model.SourceConfig(cfg.Model)
	if err != nil {
		return err
	}
	cc, err := launch.Config(os.Getenv)
	if err != nil {
		return err
	}
	cfg.Parallel.PP = max(cc.Size, 1)
	d, err := trainer.Join(context.Background(), cfg, launch, &mc, 0, ops.F32)
	if err != nil {
		return err
	}
	defer d.Close(nil)
	// One run directory for every rank: a checkpoint is committed by rank 0
	// from the shards all ranks wrote there.
	dir, err := d.TempDir("train-bench-pipeline-")
	if err != nil {
		return err
	}
	if d.IsRoot() {
		defer os.RemoveAll(dir)
	}
	P := cfg.Parallel.PP
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if d.IsRoot() {
		fmt.Fprintf(stdout, "pipeline bubble: %s, P=%d stages, micro-batch %d x %d tokens, %d measured steps per M\n",
			cfg.Model, P, opts.Batch, opts.Seq, opts.Steps-1)
		fmt.Fprintln(tw, "M\ttheory (P-1)/(M+P-1)\tmeasured\tstep ms\tinterleaved V=2, simulated\t")
	}
	for _, m := range opts.Micro {
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
			fmt.Fprintf(tw, "%d\t%.3f\t%.3f\t%.1f\t%s\t\n", m, shard.TheoreticalBubble(P, m), sums[0]/float64(P),
				1000*sums[1]/float64(P)/float64(opts.Steps-1), interleavedBubble(P, m))
		}
	}
	return tw.Flush()
}

// interleavedBubble is the bubble interleaved 1F1B with two chunks per stage
// would have at M micro-batches, by shard.SimulateAsync (a backward twice a
// forward): the schedule exists, the trainer does not run it yet. "-" where M
// is not a multiple of P.
func interleavedBubble(P, M int) string {
	sched, err := shard.InterleavedSchedule(P, 2, M)
	if err != nil {
		return "-"
	}
	tl, err := shard.SimulateAsync(sched, 1, 2)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%.3f", tl.Bubble())
}
