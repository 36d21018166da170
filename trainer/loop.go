package trainer

import (
	"fmt"
	"math"
	"time"
	"train/data"
	"train/host"
	"train/model"
	"train/optim"
	"train/shard"
)

// maxBadSteps is how many steps in a row may have a non-finite loss or gradient
// (each skipped with a warning) before the run stops with an error.
const maxBadSteps = 5

// Result is what a run's training loop reports.
type Result struct {
	Steps       int     // optimizer steps run (fewer than asked when stopped by a signal)
	First, Last float64 // training loss of the first and last step
	Tokens      int     // tokens processed, padding included
	BestEval    float64 // lowest eval loss seen during the loop (+Inf if none)
	Stopped     bool    // a signal ended the loop early
	// FirstMean and LastMean are the mean training loss of the first and of
	// the last MeanSteps steps this process ran (at most ten, at most half
	// of them; 0 without steps): one step's loss is noisy, so the summary
	// compares these.
	FirstMean, LastMean float64
	MeanSteps           int
	// Truncated counts the examples the steps drew that were longer than
	// data.seq_len and cut to it.
	Truncated int
	// ScaleSkips counts the steps fp16's loss scaler skipped (gradient
	// overflow) in this process.
	ScaleSkips int
	// Compute, Bubble and Comm split the time of every step after the first
	// (which pays for warm-up), and Wall is their steps' total: what
	// `train bench pipeline` reports.
	Compute, Bubble, Comm time.Duration
	Wall                  time.Duration
}

// loop runs every optimizer step: forward and backward over the step's
// micro-batches with the loss normalised by the step's total scored labels, the
// global gradient norm, clipping, AdamW, and a metrics line per step.
func (t *trainer) loop() (Result, error) {
	cfg := t.cfg.Train
	res := Result{BestEval: math.Inf(1)}
	prog := newProgress(t.out, cfg.Steps, cfg.LogEvery)
	defer prog.finish()
	t.setTraining(true)
	bad := 0
	var losses []float64 // of every step this process ran, for FirstMean and LastMean
	lastSave, lastSaveTime := t.startStep, time.Now()
	res.Steps = t.startStep
	// checkpoint saves after step (1-based) and notes the time.
	checkpoint := func(step int) error {
		if err := t.saveCheckpoint(step); err != nil {
			if !t.cfg.Ckpt.ContinueOnError {
				return fmt.Errorf("%w (the previous complete checkpoint is intact; ckpt.continue_on_error trains on without saving)", err)
			}
			prog.note("warning: %v: training goes on without this checkpoint (ckpt.continue_on_error)", err)
			t.log.Warn("checkpoint failed; continuing", "step", step, "error", err.Error())
		}
		lastSave, lastSaveTime = step, time.Now()
		return nil
	}
	// finish acts on the votes every rank took alike after step (0-based):
	// stop checkpoints and ends the loop (stop reports it), save checkpoints.
	finish := func(step int, stopNow, saveNow bool) (stop bool, err error) {
		if stopNow {
			res.Stopped = true
			prog.note("signal received: checkpointing and stopping after step %d", step+1)
			return true, checkpoint(step + 1)
		}
		if saveNow {
			return false, checkpoint(step + 1)
		}
		return false, nil
	}
	for step := t.startStep; step < cfg.Steps; step++ {
		stepStart := time.Now()
		time.Sleep(t.stepSleep)
		// Every rank draws the whole step's micro-batches in the same order, so the
		// token count that normalises the loss is known everywhere without talking;
		// replica d runs micro-batches [d*M, (d+1)*M).
		M, D := cfg.GradAccum, t.dist.plan.Replicas
		total, stepTokens, cutBefore := 0, 0, t.packer.CutLabels
		var mine []microBatch
		for i := 0; i < M*D; i++ {
			r, err := t.nextRows(i/M == t.dist.me.Replica)
			if err != nil {
				return res, err
			}
			total += r.ScoredLabels()
			stepTokens += r.B * r.T
			if i/M == t.dist.me.Replica {
				mine = append(mine, microBatch{rows: r, seed: uint64(t.cfg.Seed)<<32 ^ uint64(step*M*D+i)})
			}
		}
		res.Truncated = t.packer.Truncated
		if cut := t.packer.CutLabels - cutBefore; total == 0 && cut > 0 {
			return res, fmt.Errorf("step %d: every label of the step that is not -100 was cut off: its examples are longer than data.seq_len %d and their scored tokens (a completion, an assistant turn) lie past it (%d of %d examples are longer, the longest %d tokens); raise -seq or shorten the prompts",
				step+1, t.cfg.Data.SeqLen, t.long.count, t.train.Len()+t.eval.Len(), t.long.longest)
		}
		if total == 0 {
			return res, fmt.Errorf("step %d: every label of the step is masked (-100): nothing to learn from; check the data's labels", step+1)
		}
		var times stepTimes
		for _, m := range t.chunks {
			m.ZeroGrads()
		}
		S := t.scaler.factor() // fp16: the loss scale; 1 otherwise
		lossSum, err := t.runPipeline(mine, float32(S/float64(total)), &times)
		if err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		res.Tokens += stepTokens
		t.tokens += stepTokens
		sumSq, err := t.opt.reduce(&times)
		if err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		// The loss lives on the last stages and each rank holds part of the norm:
		// one all-reduce gives every rank both, so every rank decides alike below.
		// With the loss and the norm go two decisions every rank must take alike:
		// stop (any rank got a signal) and checkpoint (rank 0's clock says so).
		var stopVote, saveVote float64
		if t.ctx.Err() != nil {
			stopVote = 1
		}
		ck := t.cfg.Ckpt
		if t.dist.IsRoot() && ((ck.Every > 0 && (step+1-lastSave) >= ck.Every) ||
			(ck.Minutes > 0 && time.Since(lastSaveTime).Minutes() >= ck.Minutes)) {
			saveVote = 1
		}
		if step+1 == t.overflowAt {
			sumSq = math.Inf(1) // the test hook: this rank's gradients overflowed
		}
		sums := []float64{lossSum, sumSq, stopVote, saveVote}
		if err := timed(&times.comm, func() error { return t.dist.AllReduce(sums) }); err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		stopNow, saveNow := sums[2] > 0, sums[3] > 0
		if !t.dist.zero1 {
			sums[1] /= float64(D) // every replica counted the same reduced gradient
		}
		loss, norm := sums[0]/float64(total), math.Sqrt(sums[1])/S
		if t.scaler.overflowed(loss, norm) {
			// Every rank saw the same all-reduced norm: all skip this step alike.
			t.scaler.skip()
			res.ScaleSkips++
			prog.note("step %d: fp16 gradients overflowed: step skipped, loss scale now %g", step+1, t.scaler.scale)
			t.log.Warn("step skipped: fp16 gradient overflow", "step", step+1, "loss", loss, "loss_scale", t.scaler.scale,
				"overflow_skips", res.ScaleSkips)
			if err := t.writeMetric(map[string]any{"step": step + 1, "overflow_skipped": 1, "loss_scale": t.scaler.scale}); err != nil {
				return res, err
			}
			if stop, err := finish(step, stopNow, saveNow); stop || err != nil {
				return res, err
			}
			continue
		}
		if !finiteAll(loss, norm) {
			bad++
			prog.note("warning: step %d: loss %v, gradient norm %v: step skipped (%d in a row)", step+1, loss, norm, bad)
			t.log.Warn("step skipped: non-finite loss or gradient", "step", step+1, "loss", fmt.Sprint(loss), "grad_norm", fmt.Sprint(norm))
			if bad >= maxBadSteps {
				return res, fmt.Errorf("step %d: %d steps in a row had a non-finite loss or gradient; lower train.lr or check the data", step+1, bad)
			}
			if stop, err := finish(step, stopNow, false); stop || err != nil {
				return res, err
			}
			continue
		}
		bad = 0
		lr := t.sched.LR(step)
		// The update divides the loss scale out with the clipping factor.
		if err := t.opt.update(lr, optim.ClipScale(norm, cfg.MaxGradNorm)/S, &times); err != nil {
			return res, fmt.Errorf("step %d: %w", step+1, err)
		}
		if step == t.startStep {
			res.First = loss
		}
		res.Last, res.Steps = loss, step+1
		if t.scaler.stepped() {
			t.log.Info("loss scale raised", "step", step+1, "loss_scale", t.scaler.scale)
		}
		losses = append(losses, loss)
		res.FirstMean, res.LastMean, res.MeanSteps = endMeans(losses)
		tps := float64(stepTokens) / time.Since(stepStart).Seconds()
		prog.step(step+1, loss, lr, tps)
		metric := map[string]any{"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm,
			"tokens": t.tokens, "scored_tokens": total, "tokens_per_s": tps, "epoch": t.epoch}
		if t.scaler.on {
			metric["loss_scale"] = t.scaler.scale
		}
		if err := t.writeMetric(metric); err != nil {
			return res, err
		}
		if step > 0 {
			res.Compute += times.compute
			res.Bubble += times.bubble
			res.Comm += times.comm
			res.Wall += time.Since(stepStart)
		}
		rss, cpu := host.Usage()
		gpuUsed := t.gpuUsed()
		fields := []any{"gpu_used_bytes", gpuUsed, "gpu_peak_bytes", t.gpuPeak, "step", step + 1, "loss", loss, "lr", lr, "grad_norm", norm, "tokens", stepTokens,
			"step_s", time.Since(stepStart).Seconds(), "compute_s", times.compute.Seconds(),
			"bubble_s", times.bubble.Seconds(), "comm_s", times.comm.Seconds(),
			"bytes_sent", times.sent, "bytes_received", times.received, "recomputed_forwards", times.recomputed, "heap_bytes", host.HeapBytes(),
			"rss_bytes", rss, "cpu_s", cpu, "truncated_examples", t.packer.Truncated}
		if t.scaler.on {
			fields = append(fields, "loss_scale", t.scaler.scale, "overflow_skips", res.ScaleSkips)
		}
		t.log.Info("step", append(fields, t.gpuUtil()...)...)
		if budget := host.AvailableMemory() + rss; !t.warnedMemory && budget > 0 && rss > budget*9/10 {
			t.warnedMemory = true
			t.log.Warn("near the host's memory limit", "rss_bytes", rss, "available_bytes", host.AvailableMemory(),
				"relieve", "more pipeline stages (-pp), -activation-checkpointing, a smaller -batch or -seq, or -lora")
			prog.note("warning: rank %d uses %s of host memory, near the limit: consider -pp, -activation-checkpointing, a smaller -batch/-seq, or -lora",
				t.dist.rank(), shard.FormatBytes(rss))
		}
		if cfg.EvalEvery > 0 && (step+1)%cfg.EvalEvery == 0 && step+1 < cfg.Steps && t.hasEval() {
			el, n, err := t.evaluate()
			if err != nil {
				return res, err
			}
			t.setTraining(true)
			res.BestEval = min(res.BestEval, el)
			prog.note("step %5d/%d  eval_loss %.4f over %d tokens", step+1, cfg.Steps, el, n)
			if err := t.writeMetric(map[string]any{"step": step + 1, "eval_loss": el, "eval_tokens": n}); err != nil {
				return res, err
			}
		}
		if stop, err := finish(step, stopNow, saveNow); stop || err != nil {
			return res, err
		}
	}
	if res.Steps > lastSave {
		return res, checkpoint(res.Steps)
	}
	return res, nil
}

// endMeans is the mean of the first and of the last k losses, k at most ten
// and at most half of them (so the two do not overlap), and k.
func endMeans(losses []float64) (first, last float64, k int) {
	k = min(10, len(losses)/2)
	if k == 0 {
		k = len(losses) // one step: first and last are the same
	}
	for i := 0; i < k; i++ {
		first += losses[i]
		last += losses[len(losses)-k+i]
	}
	return first / float64(k), last / float64(k), k
}

func batchOf(r *data.Rows, seed uint64) *model.Batch {
	return &model.Batch{B: r.B, T: r.T, IDs: r.IDs, Labels: r.Labels, Positions: r.Positions, Segments: r.Segments, Seed: seed}
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// finiteAll is false when any value is NaN or infinite.
func finiteAll(vals ...float64) bool {
	for _, v := range vals {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}
