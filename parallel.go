package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"train/collective"
	"train/config"
	"train/data"
	"train/device"
	"train/format/safetensors"
	"train/host"
	"train/model"
	"train/ops"
	"train/optim"
	"train/shard"
)

// dist is this rank's place in a run and the communicators it talks over. For a
// single process world is nil, the plan has one stage and one replica, and every
// exchange below is a no-op, so one code path serves every world size.
type dist struct {
	world     collective.Comm // nil for a single process
	localRank int             // among this host's ranks: which GPU to use
	plan      *shard.Plan
	me        shard.Rank
	dp        collective.Comm // this stage across the replicas; nil when D == 1
	tied      collective.Comm // the first and last stage of this replica, when embeddings are tied and P > 1
	zero1     bool
}

func (d *dist) rank() int    { return d.me.Rank }
func (d *dist) isRoot() bool { return d.me.Rank == 0 }
func (d *dist) first() bool  { return d.me.Embed }
func (d *dist) last() bool   { return d.me.Head }

// joinWorld connects to the other ranks when a launcher (or flags) says there are
// any, and plans the run. It returns a single-process dist otherwise.
//
// The layers are split for the run's method and, on GPUs, within the smallest
// device memory of the world (gpuBytes here, 0 on the CPU): every rank must
// plan alike, so the world agrees on that budget first.
func joinWorld(ctx context.Context, cfg config.Config, flags *collective.Flags, mc *model.Config, gpuBytes int64, compute ops.DType) (*dist, error) {
	cc, err := flags.Config(os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	if cfg.Parallel.TimeoutSeconds > 0 && cc.Timeout == 0 {
		cc.Timeout = time.Duration(cfg.Parallel.TimeoutSeconds) * time.Second
	}
	size := max(cc.Size, 1)
	var world collective.Comm
	if size > 1 {
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
	plan, err := shard.NewFor(mc, size, cfg.Parallel.PP, shard.Workload{SeqLen: cfg.Data.SeqLen, Method: cfg.Train.Method,
		Budget: gpuBytes, Setup: memorySetup(cfg, zero1, compute)})
	if err != nil {
		if world != nil {
			world.Abort(err)
		}
		return nil, err
	}
	d := &dist{plan: plan, me: plan.Ranks[cc.Rank], localRank: cc.LocalRank, zero1: zero1, world: world}
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

// close ends the collective session (collective: every rank reaches it), or aborts
// the job when this rank failed, so that the others stop at once naming it.
func (d *dist) close(failure error) error {
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
func (d *dist) allReduceF64(vals []float64) error {
	if d.world == nil {
		return nil
	}
	return d.world.AllReduce(collective.F64(vals), collective.Sum)
}

// flatParams lays every trainable tensor of this rank's stage end to end in host
// memory, so that a gradient reduction is one collective over one buffer and a
// ZeRO-1 shard is one contiguous range of it. The optimizer works on the views of
// the range this rank owns (all of it without ZeRO-1).
type flatParams struct {
	value, grad []float32 // padded to a multiple of the data-parallel size
	views       []flatView
	lo, hi      int            // the owned range
	opt         []*optim.Param // the owned range, split at tensor boundaries
	optDup      []bool         // per opt entry: counted on another stage too (the tied head)
	optView     []flatView     // per opt entry: the tensor it is part of
	optStart    []int64        // per opt entry: its first element within that tensor
	embed       *flatView      // the embedding, for the tied-embedding sum; nil if not held
	tiedDup     bool           // this stage's embedding is the tied head, a copy of the first stage's
	// layers maps a decoder layer to the flat range of its tensors (contiguous:
	// the model lists a layer's tensors together), the unit of the gradient
	// buckets reduced while backward still runs; rest are the other tensors.
	layers map[int][2]int
	rest   []flatView
}

type flatView struct {
	p      *model.Param
	off, n int
}

func newFlatParams(m *model.Model, be ops.Backend, replicas int, shardIndex int, tiedDup bool) (*flatParams, error) {
	f := &flatParams{tiedDup: tiedDup}
	n := 0
	for _, p := range m.Params() {
		if p.Grad == nil {
			continue
		}
		f.views = append(f.views, flatView{p: p, off: n, n: p.Value.Len()})
		n += p.Value.Len()
	}
	if n == 0 {
		return nil, errors.New("train: the model has no trainable tensors")
	}
	padded := (n + replicas - 1) / replicas * replicas
	f.value, f.grad = make([]float32, padded), make([]float32, padded)
	for i := range f.views {
		v := &f.views[i]
		if err := be.Download(f.value[v.off:v.off+v.n], v.p.Value); err != nil {
			return nil, fmt.Errorf("train: %s: %w", v.p.Name, err)
		}
		if v.p.Name == "model.embed_tokens.weight" {
			f.embed = v
		}
	}
	f.layers = map[int][2]int{}
	for _, v := range f.views {
		l, ok := layerOf(v.p.Name)
		if !ok {
			f.rest = append(f.rest, v)
			continue
		}
		r, seen := f.layers[l]
		if !seen {
			r = [2]int{v.off, v.off}
		}
		if r[1] != v.off {
			return nil, fmt.Errorf("train: the tensors of layer %d are not contiguous", l)
		}
		r[1] = v.off + v.n
		f.layers[l] = r
	}
	per := padded / replicas
	f.lo, f.hi = shardIndex*per, (shardIndex+1)*per
	for _, v := range f.views {
		a, b := max(v.off, f.lo), min(v.off+v.n, f.hi)
		if a >= b {
			continue
		}
		f.opt = append(f.opt, &optim.Param{Name: v.p.Name, Value: f.value[a:b], Grad: f.grad[a:b], NoDecay: len(v.p.Shape) == 1})
		f.optDup = append(f.optDup, tiedDup && v.p.Name == "model.embed_tokens.weight")
		f.optView = append(f.optView, v)
		f.optStart = append(f.optStart, int64(a-v.off))
	}
	return f, nil
}

// layerOf is the decoder layer a tensor belongs to, from its Hugging Face or peft name.
func layerOf(name string) (int, bool) {
	i := strings.Index(name, "model.layers.")
	if i < 0 {
		return 0, false
	}
	var l int
	if _, err := fmt.Sscanf(name[i+len("model.layers."):], "%d.", &l); err != nil {
		return 0, false
	}
	return l, true
}

// downloadViews copies the gradients of views from the model into the flat buffer.
func (f *flatParams) downloadViews(be ops.Backend, views []flatView) error {
	for _, v := range views {
		if err := be.Download(f.grad[v.off:v.off+v.n], v.p.Grad); err != nil {
			return fmt.Errorf("%s: %w", v.p.Name, err)
		}
	}
	return nil
}

func (f *flatParams) values() int64 {
	var n int64
	for _, v := range f.views {
		n += int64(v.n)
	}
	return n
}

// downloadGrads copies the gradients not yet on the host: all of them, or with
// overlapped buckets only the tensors outside the decoder layers.
func (f *flatParams) downloadGrads(m *model.Model, be ops.Backend, overlapped bool) error {
	m.FinishGrads()
	if overlapped {
		return f.downloadViews(be, f.rest)
	}
	return f.downloadViews(be, f.views)
}

// uploadValues copies the updated values back to the model, and from there
// into its compute copies (bf16).
func (f *flatParams) uploadValues(m *model.Model, be ops.Backend) error {
	for _, v := range f.views {
		if err := be.Upload(v.p.Value, f.value[v.off:v.off+v.n]); err != nil {
			return fmt.Errorf("%s: %w", v.p.Name, err)
		}
	}
	m.RefreshCompute()
	return nil
}

// sumSquares is the squared norm of the owned gradients, leaving out tensors that
// another stage also counts.
func (f *flatParams) sumSquares() float64 {
	var s float64
	for i, p := range f.opt {
		if !f.optDup[i] {
			s += optim.SumSquares([]*optim.Param{p})
		}
	}
	return s
}

// stepTimes splits a step's wall time for the rank log: computing, waiting on the
// neighbouring stages (the pipeline bubble), and waiting on collectives; and
// counts the payload bytes this rank sent and received (the algorithms' data, not
// the wire's framing: a ring all-reduce of n bytes over g ranks moves
// 2(g-1)/g x n each way, a reduce-scatter or all-gather half that).
type stepTimes struct {
	compute, bubble, comm time.Duration
	sent, received        int64
	recomputed            int // forwards run again before their backward
}

// p2p counts a point-to-point transfer of n values of elemBytes each.
func (s *stepTimes) p2p(n, elemBytes int, send bool) {
	if send {
		s.sent += int64(elemBytes) * int64(n)
	} else {
		s.received += int64(elemBytes) * int64(n)
	}
}

// stageWire moves stage activations and their gradients between neighbouring
// stages. In bf16 the values come from the model's bfloat16 buffers, so they
// travel as their 2-byte patterns: half the bytes, bitwise the same numbers.
type stageWire struct {
	world collective.Comm
	bf16  bool
}

func newStageWire(d *dist, m *model.Model) stageWire {
	return stageWire{world: d.world, bf16: m.Compute() == ops.BF16}
}

// elemBytes is the bytes one value takes on the wire.
func (w stageWire) elemBytes() int {
	if w.bf16 {
		return 2
	}
	return 4
}

func (w stageWire) send(v []float32, peer int) error { return w.sendAsync(v, peer).Wait() }

// sendAsync starts sending v, which must not change until the handle's Wait
// returns.
func (w stageWire) sendAsync(v []float32, peer int) collective.Handle {
	if !w.bf16 {
		return w.world.SendAsync(collective.F32(v), peer)
	}
	bits := make(collective.BF16, len(v))
	for i, x := range v {
		bits[i] = ops.ToBF16(x)
	}
	return w.world.SendAsync(bits, peer)
}

func (w stageWire) recv(v []float32, peer int) error {
	if !w.bf16 {
		return w.world.Recv(collective.F32(v), peer)
	}
	bits := make(collective.BF16, len(v))
	if err := w.world.Recv(bits, peer); err != nil {
		return err
	}
	for i, b := range bits {
		v[i] = ops.FromBF16(b)
	}
	return nil
}

// ring counts a ring collective of n float32 values over a group of g ranks:
// passes is 2 for an all-reduce, 1 for a reduce-scatter or an all-gather.
func (s *stepTimes) ring(n, g, passes int) {
	if g < 2 {
		return
	}
	b := int64(passes) * 4 * int64(n) * int64(g-1) / int64(g)
	s.sent += b
	s.received += b
}

func timed(d *time.Duration, f func() error) error {
	t0 := time.Now()
	err := f()
	*d += time.Since(t0)
	return err
}

// microBatch is one micro-batch of this replica's share of a step.
type microBatch struct {
	rows *data.Rows
	seed uint64
}

// runPipeline executes this rank's 1F1B action list for one step over its
// replica's micro-batches and returns the summed loss (non-zero on the last stage
// only). Activations and their gradients cross stage boundaries in host buffers,
// sent without waiting for the neighbour to take them (a stage goes on to its
// next action; the step ends when every send has finished).
// Micro-batch k's activations go to the model's slot k mod slots. With one slot
// (the default) a stage that must backward a micro-batch other than the one it
// forwarded last first recomputes its forward from the saved input: bitwise the
// same activations, one extra forward per micro-batch on the stages before the
// last. With as many slots as micro-batches in flight (keep_activations) no
// slot is overwritten before its backward.
func (t *trainer) runPipeline(mbs []microBatch, scale float32, times *stepTimes) (float64, error) {
	acts, err := t.dist.plan.Actions(t.dist.rank(), len(mbs))
	if err != nil {
		return 0, err
	}
	d, m, be := t.dist, t.m, t.be
	C := t.m.Config().HiddenSize
	wire := newStageWire(d, m)
	var sends []collective.Handle
	waitSends := func() error {
		var first error
		for _, h := range sends {
			if err := h.Wait(); err != nil && first == nil {
				first = err
			}
		}
		sends = sends[:0]
		return first
	}
	inputs := map[int][]float32{}   // micro-batch -> stage input received
	outputs := map[int][]float32{}  // micro-batch -> gradient to send, or output to send
	grads := map[int][]float32{}    // micro-batch -> gradient of the stage output received
	holds := make([]int, m.Slots()) // per slot, the micro-batch whose activations it holds
	for i := range holds {
		holds[i] = -1
	}
	slot := func(k int) (int, error) { s := k % len(holds); return s, m.UseSlot(s) }
	var lossSum float64
	buf := func(r *data.Rows) []float32 { return make([]float32, r.B*r.T*C) }
	forward := func(k int) error {
		mb := mbs[k]
		s, err := slot(k)
		if err != nil {
			return err
		}
		if !d.first() {
			if err := m.Plan(mb.rows.B, mb.rows.T); err != nil {
				return err
			}
			if err := be.Upload(m.StageInput(), inputs[k]); err != nil {
				return err
			}
		}
		ls, _, err := m.Forward(batchOf(mb.rows, mb.seed))
		if err != nil {
			return err
		}
		holds[s] = k
		if d.last() {
			lossSum += ls
		}
		return nil
	}
	for _, a := range acts {
		k := a.Micro
		switch a.Op {
		case shard.RecvActivation:
			inputs[k] = buf(mbs[k].rows)
			times.p2p(len(inputs[k]), wire.elemBytes(), false)
			err = timed(&times.bubble, func() error { return wire.recv(inputs[k], a.Peer) })
		case shard.Forward:
			err = timed(&times.compute, func() error { return forward(k) })
			if err == nil && !d.last() {
				outputs[k] = buf(mbs[k].rows)
				err = be.Download(outputs[k], m.StageOutput())
			}
		case shard.SendActivation:
			times.p2p(len(outputs[k]), wire.elemBytes(), true)
			sends = append(sends, wire.sendAsync(outputs[k], a.Peer))
			delete(outputs, k) // the send holds the buffer until it is done
		case shard.RecvGrad:
			grads[k] = buf(mbs[k].rows)
			times.p2p(len(grads[k]), wire.elemBytes(), false)
			err = timed(&times.bubble, func() error { return wire.recv(grads[k], a.Peer) })
		case shard.Backward:
			err = timed(&times.compute, func() error {
				s, err := slot(k)
				if err != nil {
					return err
				}
				if holds[s] != k {
					times.recomputed++
					if err := forward(k); err != nil {
						return err
					}
					if d.last() { // the loss was counted the first time
						return errors.New("internal: the last stage recomputed a forward")
					}
				}
				if !d.last() {
					if err := be.Upload(m.StageGrad(), grads[k]); err != nil {
						return err
					}
					delete(grads, k)
				}
				holds[s] = -1
				if t.overlap && k == len(mbs)-1 {
					m.SetLayerDone(t.startBucket)
					defer m.SetLayerDone(nil)
				}
				return m.Backward(scale)
			})
			if err == nil && !d.first() {
				outputs[k] = buf(mbs[k].rows)
				err = be.Download(outputs[k], m.StageGrad())
			}
			delete(inputs, k)
		case shard.SendGrad:
			times.p2p(len(outputs[k]), wire.elemBytes(), true)
			sends = append(sends, wire.sendAsync(outputs[k], a.Peer))
			delete(outputs, k)
		case shard.ReduceGrads, shard.OptimizerStep:
			// The trainer does these after the pipeline drains (see step).
		}
		if err != nil {
			// Sends still in flight end when the job is aborted, which a
			// failed rank does next; waiting for them here could wait on a
			// neighbour that waits for this rank.
			return 0, fmt.Errorf("%v: %w", a, err)
		}
	}
	if err := timed(&times.bubble, waitSends); err != nil {
		return 0, fmt.Errorf("sending to a neighbouring stage: %w", err)
	}
	return lossSum, nil
}

// startBucket is called by the model as soon as the step's last backward has
// finished layer l: it copies that layer's gradients to the host and starts
// their all-reduce across the replicas, which runs while the layers below are
// still computing their backward.
func (t *trainer) startBucket(l int) error {
	f := t.flat
	r, ok := f.layers[l]
	if !ok {
		return nil // a layer with nothing to train
	}
	var views []flatView
	for _, v := range f.views {
		if v.off >= r[0] && v.off < r[1] {
			views = append(views, v)
		}
	}
	if err := f.downloadViews(t.be, views); err != nil {
		return err
	}
	t.bucketTraffic.ring(r[1]-r[0], t.dist.plan.Replicas, 2)
	t.pending = append(t.pending, t.dist.dp.AllReduceAsync(collective.F32(f.grad[r[0]:r[1]]), collective.Sum))
	return nil
}

// reduceGrads brings every replica's gradients together: the tied embedding's two
// halves summed between the first and last stage, then a sum over the replicas
// (all-reduce, or with ZeRO-1 a reduce-scatter that leaves each rank its shard).
// The loss was already normalised by the whole step's token count, so a sum, not a
// mean, gives the step's gradient.
func (t *trainer) reduceGrads(times *stepTimes) error {
	f, d := t.flat, t.dist
	return timed(&times.comm, func() error {
		if d.tied != nil && f.embed != nil {
			e := f.grad[f.embed.off : f.embed.off+f.embed.n]
			times.ring(len(e), 2, 2)
			if err := d.tied.AllReduce(collective.F32(e), collective.Sum); err != nil {
				return fmt.Errorf("tied embedding: %w", err)
			}
		}
		if d.dp == nil {
			return nil
		}
		if t.overlap {
			// The layers' buckets went out during backward; the rest follow.
			for _, h := range t.pending {
				if err := h.Wait(); err != nil {
					return fmt.Errorf("gradient all-reduce: %w", err)
				}
			}
			t.pending = t.pending[:0]
			times.sent += t.bucketTraffic.sent
			times.received += t.bucketTraffic.received
			t.bucketTraffic = stepTimes{}
			for _, v := range f.rest {
				times.ring(v.n, d.plan.Replicas, 2)
				if err := d.dp.AllReduce(collective.F32(f.grad[v.off:v.off+v.n]), collective.Sum); err != nil {
					return fmt.Errorf("gradient all-reduce: %w", err)
				}
			}
			return nil
		}
		if d.zero1 {
			own := make([]float32, f.hi-f.lo)
			times.ring(len(f.grad), d.plan.Replicas, 1)
			if err := d.dp.ReduceScatter(collective.F32(f.grad), collective.F32(own), collective.Sum); err != nil {
				return fmt.Errorf("gradient reduce-scatter: %w", err)
			}
			copy(f.grad[f.lo:f.hi], own)
			return nil
		}
		times.ring(len(f.grad), d.plan.Replicas, 2)
		if err := d.dp.AllReduce(collective.F32(f.grad), collective.Sum); err != nil {
			return fmt.Errorf("gradient all-reduce: %w", err)
		}
		return nil
	})
}

// gatherParams shares the updated shards (ZeRO-1) so every replica holds the
// whole stage again.
func (t *trainer) gatherParams(times *stepTimes) error {
	f, d := t.flat, t.dist
	if !d.zero1 {
		return nil
	}
	return timed(&times.comm, func() error {
		own := append([]float32(nil), f.value[f.lo:f.hi]...)
		times.ring(len(f.value), d.plan.Replicas, 1)
		if err := d.dp.AllGather(collective.F32(own), collective.F32(f.value)); err != nil {
			return fmt.Errorf("parameter all-gather: %w", err)
		}
		return nil
	})
}

// evalPipeline is the mean loss over examples, each in a row of its own, run
// through the pipeline: replica d takes examples d, d+D, ...; the last stages'
// sums are added over the world.
func (t *trainer) evalPipeline(examples []data.TokenExample) (float64, int, error) {
	d := t.dist
	var mine []data.TokenExample
	for i := d.me.Replica; i < len(examples); i += d.plan.Replicas {
		mine = append(mine, examples[i])
	}
	C := t.m.Config().HiddenSize
	wire := newStageWire(d, t.m)
	var lossSum float64
	var count int
	err := evalRows(mine, t.cfg.Data.SeqLen, t.cfg.Train.MicroBatch, func(r *data.Rows) error {
		if !d.first() {
			in := make([]float32, r.B*r.T*C)
			if err := wire.recv(in, d.me.Prev()); err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			if err := t.m.Plan(r.B, r.T); err != nil {
				return err
			}
			if err := t.be.Upload(t.m.StageInput(), in); err != nil {
				return err
			}
		}
		ls, n, err := t.m.Forward(batchOf(r, 0))
		if err != nil {
			return fmt.Errorf("eval: %w", err)
		}
		if !d.last() {
			out := make([]float32, r.B*r.T*C)
			if err := t.be.Download(out, t.m.StageOutput()); err != nil {
				return err
			}
			if err := wire.send(out, d.me.Next()); err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			return nil
		}
		lossSum, count = lossSum+ls, count+n
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	sums := []float64{lossSum, float64(count)}
	if err := d.allReduceF64(sums); err != nil {
		return 0, 0, fmt.Errorf("eval: %w", err)
	}
	return meanLoss(sums[0], int(sums[1]))
}

// gatherTensors collects the trainable tensors of every stage of replica 0 on rank
// 0, by name. Each stage sends its tensors as one safetensors blob: a format both
// ends already check. Other replicas hold the same values and send nothing.
func (t *trainer) gatherTensors() (map[string][]float32, error) {
	d := t.dist
	own := map[string][]float32{}
	for _, v := range t.flat.views {
		own[v.p.Name] = t.flat.value[v.off : v.off+v.n]
	}
	if d.world == nil || d.me.Replica != 0 {
		return own, nil
	}
	if !d.isRoot() {
		var w safetensors.Writer
		for _, v := range t.flat.views {
			if err := w.AddFloat32(v.p.Name, safetensors.F32, v.p.Shape, own[v.p.Name]); err != nil {
				return nil, err
			}
		}
		var blob bytes.Buffer
		if _, err := w.WriteTo(&blob); err != nil {
			return nil, err
		}
		if err := d.world.Send(collective.I64{int64(blob.Len())}, 0); err != nil {
			return nil, err
		}
		return nil, d.world.Send(collective.Bytes(blob.Bytes()), 0)
	}
	for s := 1; s < d.plan.Stages; s++ {
		n := collective.I64{0}
		if err := d.world.Recv(n, s); err != nil {
			return nil, err
		}
		if n[0] < 0 || n[0] > 1<<40 {
			return nil, fmt.Errorf("rank %d announced %d bytes of tensors", s, n[0])
		}
		blob := make([]byte, n[0])
		if err := d.world.Recv(collective.Bytes(blob), s); err != nil {
			return nil, err
		}
		st, err := safetensors.Parse(fmt.Sprintf("rank %d's tensors", s), bytes.NewReader(blob), int64(len(blob)))
		if err != nil {
			return nil, err
		}
		for _, ti := range st.Tensors() {
			if _, ok := own[ti.Name]; ok {
				continue // the tied embedding, held by the first stage too
			}
			v, _, err := st.ReadFloat32(ti.Name)
			if err != nil {
				return nil, err
			}
			own[ti.Name] = v
		}
	}
	return own, nil
}

// finiteAll is false when any value is NaN or infinite.
func finiteAll(vals ...float64) bool {
	for _, v := range vals {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// checkFits refuses, before anything is loaded, a plan whose rank would need more
// host memory than this host has for it (the memory available now, shared by the
// ranks the launcher put on this host), and says what would fit. The estimate is
// shard's, with the CPU's sizes: float32 activations, and float32 base weights
// held twice while the model is built (the loaded tensors and the backend's copy).
//
// On a GPU the host holds the stage's float32 weights as loaded (twice the
// estimate's bf16) and the optimizer's host mirror; the device's share is
// compared with the GPU's free memory, and a plan that looks too large is
// warned about (the estimate is not exact there; an allocation that fails
// names itself).
func checkFits(cfg config.Config, mc *model.Config, d *dist, be ops.Backend, compute ops.DType, warn io.Writer) error {
	est, err := shard.EstimateMemory(mc, d.plan, memorySetup(cfg, d.zero1, compute))
	if err != nil {
		return err
	}
	m := est.Ranks[d.rank()]
	need := m.Total() + 3*m.Weights // bf16 in the estimate; float32, twice, here
	if g, ok := be.(device.GPU); ok {
		need = 2*m.Weights + m.Master + m.Grads + m.Optimizer
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
		Zero1: zero1, Checkpoint: cfg.Train.ActivationCheckpointing, ActBytes: compute.Size(),
		KeepActivations: cfg.Parallel.KeepActivations && cfg.Parallel.PP > 1}
	if cfg.Train.Method != "lora" && cfg.Train.Method != "qlora" {
		setup.LoRATargets = nil
	}
	return setup
}

// activationSlots is how many micro-batches' activations this rank's stage
// keeps: with parallel.keep_activations as many as 1F1B has in flight there
// (P - stage, at most M), otherwise one.
func activationSlots(cfg config.Config, d *dist) int {
	if !cfg.Parallel.KeepActivations || d.plan.Stages == 1 {
		return 1
	}
	return max(1, min(d.plan.Stages-d.me.Stage, cfg.Train.GradAccum))
}
