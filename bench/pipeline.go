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
	// Chunks is V of interleaved 1F1B, run beside plain 1F1B at every M that
	// is a multiple of P (the model needs P*V layers); 1 runs 1F1B alone.
	Chunks int
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
	P, V := cfg.Parallel.PP, max(opts.Chunks, 1)
	if V > 1 && P*V > mc.NumLayers {
		return fmt.Errorf("-chunks %d: %d stages x %d chunks need %d layers, and %s has %d", V, P, V, P*V, cfg.Model, mc.NumLayers)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if d.IsRoot() {
		fmt.Fprintf(stdout, "pipeline bubble: %s, P=%d stages, micro-batch %d x %d tokens, %d measured steps per M\n",
			cfg.Model, P, opts.Batch, opts.Seq, opts.Steps-1)
		head := "M\ttheory (P-1)/(M+P-1)\tmeasured\tstep ms\t"
		if V > 1 {
			head += fmt.Sprintf("V=%d theory (P-1)/(VM+P-1)\tmeasured\tstep ms\tsimulated\t", V)
		}
		fmt.Fprintln(tw, head)
	}
	// run trains at M micro-batches with V chunks and returns the bubble
	// (averaged over the ranks) and the step time (ms).
	run := func(M, V int) (bubble, stepMS float64, err error) {
		d, err := d.WithChunks(&mc, V)
		if err != nil {
			return 0, 0, err
		}
		cfg.Train.GradAccum, cfg.Parallel.PPChunks = M, V
		cfg.RunDir = fmt.Sprintf("%s/M%d-V%d", dir, M, V)
		res, err := trainer.RunOn(context.Background(), cfg, mc, d, io.Discard, io.Discard)
		if err != nil {
			return 0, 0, fmt.Errorf("M=%d V=%d: %w", M, V, err)
		}
		wall := res.Wall.Seconds()
		sums := []float64{res.Bubble.Seconds() / wall, wall}
		if err := d.AllReduce(sums); err != nil {
			return 0, 0, err
		}
		return sums[0] / float64(P), 1000 * sums[1] / float64(P) / float64(opts.Steps-1), nil
	}
	for _, m := range opts.Micro {
		bubble, ms, err := run(m, 1)
		if err != nil {
			return err
		}
		row := fmt.Sprintf("%d\t%.3f\t%.3f\t%.1f\t", m, shard.TheoreticalBubble(P, m), bubble, ms)
		if V > 1 && m%P == 0 {
			ib, ims, err := run(m, V)
			if err != nil {
				return err
			}
			row += fmt.Sprintf("%.3f\t%.3f\t%.1f\t%s\t", shard.InterleavedBubble(P, V, m), ib, ims, interleavedBubble(P, V, m))
		} else if V > 1 {
			row += "-\t-\t-\t-\t"
		}
		if d.IsRoot() {
			fmt.Fprintln(tw, row)
		}
	}
	return tw.Flush()
}

// interleavedBubble is the bubble interleaved 1F1B with V chunks per stage
// has at M micro-batches by shard.SimulateAsync (a backward twice a forward,
// every virtual stage alike), beside the measured one; "-" where M is not a
// multiple of P.
func interleavedBubble(P, V, M int) string {
	sched, err := shard.InterleavedSchedule(P, V, M)
	if err != nil {
		return "-"
	}
	tl, err := shard.SimulateAsync(sched, 1, 2)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%.3f", tl.Bubble())
}
