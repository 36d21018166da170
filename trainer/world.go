package trainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"train/collective"
	"train/config"
	"train/device"
	"train/host"
	"train/model"
	"train/ops"
	"train/shard"
)

// World is this rank's place in a run and the communicators it talks over. For
// a single process world is nil, the plan has one stage and one replica, and
// every exchange below is a no-op, so one code path serves every world size.
type World struct {
	world     collective.Comm // nil for a single process
	localRank int             // among this host's ranks: which GPU to use
	plan      *shard.Plan
	me        shard.Rank
	dp        collective.Comm // this stage across the replicas; nil when D == 1
	tied      collective.Comm // the first and last stage of this replica, when embeddings are tied and P > 1
	zero1     bool
	work      shard.Workload    // what the plan was split for
	launch    collective.Config // how this rank joined: the job token's and the timeout's sources, for the rank log
	events    *commEvents       // what the collectives report; nil for a single process
}

// commEvents is the collectives' Logf for a training rank: each event goes to
// stderr, as by default, and, while a rank log is open, into it too, so that
// refused connections and the job's failure verdict sit with the rank's other
// records.
type commEvents struct {
	stderr func(format string, args ...any)
	log    atomic.Pointer[slog.Logger]
}

func (e *commEvents) logf(format string, args ...any) {
	e.stderr(format, args...)
	if l := e.log.Load(); l != nil {
		l.Warn("collective", "event", fmt.Sprintf(format, args...))
	}
}

// recordCommEvents starts (or, with nil, stops) recording the collectives'
// events in the rank log l.
func (d *World) recordCommEvents(l *slog.Logger) {
	if d.events != nil {
		d.events.log.Store(l)
	}
}

// launchConfig is how this rank joins the job: the launcher's environment
// (getenv) and the flags (which may be nil), with the run's
// parallel.timeout_seconds where neither -comm-timeout nor
// TRAIN_COMM_TIMEOUT set the timeout (collective.DefaultTimeout has the order).
func launchConfig(cfg config.Config, flags *collective.Flags, getenv func(string) string) (collective.Config, error) {
	cc, err := collective.FromEnv(getenv)
	if flags != nil {
		cc, err = flags.Config(getenv)
	}
	if err != nil {
		return cc, fmt.Errorf("launch: %w", err)
	}
	cc.FallbackTimeout(time.Duration(cfg.Parallel.TimeoutSeconds)*time.Second, "parallel.timeout_seconds")
	return cc, nil
}

func (d *World) rank() int { return d.me.Rank }

func (d *World) IsRoot() bool { return d.me.Rank == 0 }

func (d *World) first() bool { return d.me.Embed }

func (d *World) last() bool { return d.me.Head }

// ringPeers are the ranks of the previous and next stage of this rank's
// replica around the ring: interleaved chunks go from the last stage back to
// the first. Without pipeline stages both are this rank.
func (d *World) ringPeers() (prev, next int) {
	P, s := d.plan.Stages, d.me.Stage
	return d.me.Pipeline[(s-1+P)%P], d.me.Pipeline[(s+1)%P]
}

// Join connects to the other ranks when a launcher (or flags, which may be nil)
// says there are any, and plans the run. It returns a single-process World
// otherwise. Close ends it.
//
// The layers are split for the run's method and, on GPUs, within the smallest
// device memory of the world (gpuBytes here, 0 on the CPU): every rank must
// plan alike, so the world agrees on that budget first.
func Join(ctx context.Context, cfg config.Config, flags *collective.Flags, mc *model.Config, gpuBytes int64, compute ops.DType) (*World, error) {
	cc, err := launchConfig(cfg, flags, os.Getenv)
	if err != nil {
		return nil, err
	}
	size := max(cc.Size, 1)
	var world collective.Comm
	var events *commEvents
	if size > 1 {
		events = &commEvents{stderr: collective.StderrLogf(cc.Rank)}
		cc.Logf = events.logf
		if world, err = collective.Connect(ctx, cc); err != nil {
			return nil, err
		}
		budget := collective.F64{float64(gpuBytes)}
		if err := world.AllReduce(budget, collective.Min); err != nil {
			world.Abort(err)
			return nil, fmt.Errorf("agreeing on the GPU memory budget: %w", err)
		}
		gpuBytes = int64(budget[0])
	}
	zero1 := cfg.Parallel.Zero1 && size/max(cfg.Parallel.PP, 1) > 1
	work := shard.Workload{SeqLen: cfg.Data.SeqLen, Method: cfg.Train.Method,
		Budget: gpuBytes, Setup: memorySetup(cfg, zero1, compute), Chunks: cfg.Parallel.PPChunks}
	plan, err := shard.NewFor(mc, size, cfg.Parallel.PP, work)
	if err != nil {
		if world != nil {
			world.Abort(err)
		}
		return nil, err
	}
	d := &World{plan: plan, me: plan.Ranks[cc.Rank], localRank: cc.LocalRank, zero1: zero1, work: work, world: world, launch: cc, events: events}
	if size == 1 {
		return d, nil
	}
	// Split is collective over the world: every rank calls it, in this order.
	if d.dp, err = d.world.Split(d.me.Stage, d.me.Replica); err != nil {
		return nil, fmt.Errorf("data-parallel group: %w", err)
	}
	if plan.Replicas == 1 {
		d.dp = nil
	}
	color := -1
	if mc.TieEmbeddings && plan.Stages > 1 && (d.first() || d.last()) {
		color = d.me.Replica
	}
	if d.tied, err = d.world.Split(color, d.me.Stage); err != nil {
		return nil, fmt.Errorf("tied-embedding group: %w", err)
	}
	return d, nil
}

// WithChunks is d with its layers split into chunks ranges per stage
// (interleaved 1F1B; 1 is plain 1F1B), over the same communicators: `train
// bench pipeline` runs both schedules in one world. The groups stay valid:
// the first and last stages, which hold the embedding and the head, are the
// same ranks either way.
func (d *World) WithChunks(mc *model.Config, chunks int) (*World, error) {
	if max(d.plan.Chunks, 1) == max(chunks, 1) {
		return d, nil
	}
	w := d.work
	w.Chunks = chunks
	plan, err := shard.NewFor(mc, d.plan.World, d.plan.Stages, w)
	if err != nil {
		return nil, err
	}
	c := *d
	c.plan, c.me, c.work = plan, plan.Ranks[d.me.Rank], w
	return &c, nil
}

// close ends the collective session (collective: every rank reaches it), or aborts
// the job when this rank failed, so that the others stop at once naming it.
func (d *World) Close(failure error) error {
	if d.world == nil {
		return nil
	}
	if failure != nil {
		d.world.Abort(failure)
		return nil
	}
	return d.world.Close()
}

// allReduceF64 sums vals over the world in place.
func (d *World) AllReduce(vals []float64) error {
	if d.world == nil {
		return nil
	}
	return d.world.AllReduce(collective.F64(vals), collective.Sum)
}

// checkFits refuses, before anything is loaded, a plan whose rank would need more
// host memory than this host has for it (the memory available now, shared by the
// ranks the launcher put on this host), and says what would fit. The estimate is
// shard's, with the CPU's sizes: float32 activations, and float32 base weights
// held twice while the model is built (the loaded tensors and the backend's copy).
//
// On a GPU the host holds, while loading, one float32 layer and the stage's
// embedding and head (layers are read one at a time), then the optimizer's
// host mirror and any offloaded layer inputs; the device's share is compared
// with the GPU's free memory, and a plan that looks too large is warned about
// (the estimate is not exact there; an allocation that fails names itself).
func checkFits(cfg config.Config, mc *model.Config, d *World, be ops.Backend, compute ops.DType, warn io.Writer) error {
	est, err := shard.EstimateMemory(mc, d.plan, memorySetup(cfg, d.zero1, compute))
	if err != nil {
		return err
	}
	m := est.Ranks[d.rank()]
	need := m.Total() + 3*m.Weights // bf16 in the estimate; float32, twice, here
	if g, ok := be.(device.GPU); ok {
		loading := 4*mc.LayerParams() + mc.HostBytes(d.me.Lo, d.me.Lo, d.me.Embed, d.me.Head)
		need = loading + m.Master + m.Grads + m.Optimizer + m.OffloadHost
		if in, err := g.Info(); err == nil && m.Total() > in.FreeMem {
			fmt.Fprintf(warn, "train: warning: rank %d (stage %d) may need about %s of GPU memory and GPU %d has %s free; if it runs out: more pipeline stages (-pp), -activation-checkpointing, a smaller -batch or -seq, or -lora\n",
				d.rank(), d.me.Stage, shard.FormatBytes(m.Total()), in.Ordinal, shard.FormatBytes(in.FreeMem))
		}
	}
	avail := host.AvailableMemory()
	if avail <= 0 {
		return nil // unknown: nothing to check against
	}
	budget := avail / int64(host.Ranks())
	if need <= budget {
		return nil
	}
	msg := fmt.Sprintf("rank %d (stage %d) needs about %s of host memory and this host has %s for it (%s available, %d ranks here)",
		d.rank(), d.me.Stage, shard.FormatBytes(need), shard.FormatBytes(budget), shard.FormatBytes(avail), host.Ranks())
	if sugg, err := shard.Suggest(mc, est, budget*m.Total()/need); err == nil && len(sugg) > 0 {
		msg += "; what would fit:"
		for _, s := range sugg {
			msg += "\n  " + s.Change
		}
	} else {
		msg += "; try more pipeline stages (-pp), -activation-checkpointing, a smaller -batch or -seq, or -lora"
	}
	return errors.New(msg)
}

// memorySetup is what, besides the plan, decides a rank's memory in cfg.
func memorySetup(cfg config.Config, zero1 bool, compute ops.DType) shard.Setup {
	setup := shard.Setup{Method: cfg.Train.Method, MicroBatch: cfg.Train.MicroBatch, SeqLen: cfg.Data.SeqLen,
		MicroBatches: cfg.Train.GradAccum, LoRARank: cfg.LoRA.Rank, LoRATargets: cfg.LoRA.Targets,
		Zero1: zero1, Checkpoint: cfg.Train.ActivationCheckpointing, Offload: cfg.Train.OffloadActivations,
		KeepAttention: cfg.Train.KeepAttention, ActBytes: compute.Size(),
		KeepActivations: cfg.Parallel.KeepActivations && cfg.Parallel.PP > 1}
	if cfg.Train.Method != "lora" && cfg.Train.Method != "qlora" {
		setup.LoRATargets = nil
	}
	return setup
}

// activationSlots is how many micro-batches' activations each of this
// rank's chunks keeps: with parallel.keep_activations as many as its schedule
// has in flight there (1F1B: P - stage, at most M), otherwise one.
func activationSlots(cfg config.Config, d *World) ([]int, error) {
	V := len(d.me.Ranges())
	slots := make([]int, V)
	for c := range slots {
		slots[c] = 1
	}
	if !cfg.Parallel.KeepActivations || d.plan.Stages == 1 {
		return slots, nil
	}
	acts, err := d.plan.Actions(d.rank(), cfg.Train.GradAccum)
	if err != nil {
		return nil, err
	}
	for c, n := range shard.InFlight(acts, V) {
		slots[c] = max(1, n)
	}
	return slots, nil
}

// agree tells every rank whether any rank failed: local is this rank's error (nil
// on success). It returns local itself, or an error saying another rank failed.
func (d *World) agree(local error, format string, a ...any) error {
	vote := []float64{0}
	if local != nil {
		vote[0] = 1
	}
	if err := d.AllReduce(vote); err != nil {
		if local != nil {
			return fmt.Errorf("%w (and the vote across ranks on it failed: %v)", local, err)
		}
		return fmt.Errorf("vote across ranks: %w", err)
	}
	switch {
	case local != nil:
		return local
	case vote[0] > 0:
		return fmt.Errorf(format, a...)
	}
	return nil
}

// TempDir makes a temporary directory on rank 0 and tells every rank its
// name, so that ranks sharing a file system (one host, or a shared /tmp) run
// jobs in one run directory. Rank 0 removes it when done.
func (d *World) TempDir(prefix string) (string, error) {
	var name string
	var mkErr error
	if d.IsRoot() {
		name, mkErr = os.MkdirTemp("", prefix)
	}
	b, err := d.share([]byte(name), mkErr, "make a temporary directory")
	return string(b), err
}

// share gives every rank rank 0's msg, or an error when rank 0 failed to
// make it (rootErr: rank 0's own error; every other rank says rank 0 could
// not do what). msg and rootErr are ignored on the other ranks.
func (d *World) share(msg []byte, rootErr error, what string) ([]byte, error) {
	if d.world == nil {
		return msg, rootErr
	}
	if !d.IsRoot() {
		msg, rootErr = nil, nil
	}
	if err := d.agree(rootErr, "rank 0 could not %s", what); err != nil {
		return nil, err
	}
	n := collective.I64{int64(len(msg))}
	if err := d.world.Broadcast(n, 0); err != nil {
		return nil, fmt.Errorf("%s: sharing rank 0's result: %w", what, err)
	}
	if n[0] < 0 || n[0] > 1<<30 {
		return nil, fmt.Errorf("%s: rank 0 announced a result of %d bytes", what, n[0])
	}
	if !d.IsRoot() {
		msg = make([]byte, n[0])
	}
	if n[0] > 0 {
		if err := d.world.Broadcast(collective.Bytes(msg), 0); err != nil {
			return nil, fmt.Errorf("%s: sharing rank 0's result: %w", what, err)
		}
	}
	return msg, nil
}
