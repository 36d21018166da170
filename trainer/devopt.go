package trainer

import (
	"fmt"
	"io"
	"os"

	"train/device"
	"train/model"
	"train/ops"
	"train/optim"
	"train/shard"
)

// deviceOptimizer runs the optimizer where the model is: AdamW's moments live on
// the device beside the float32 master weights, the gradient norm is summed
// there, and a step moves no tensor to the host, only the squared norm (one
// float) and the loss. The host mirror (flatParams) is brought up to date only
// when a checkpoint or the outputs need it (syncHost).
//
// Every layout runs it, on device buffers over deviceComms (NCCL between GPUs):
//
//   - replicas: each decoder layer's gradients are summed over the replicas
//     as soon as the step's last backward has finished the layer (the
//     all-reduce of those tensors starts while the layers below compute),
//     the others after the backward;
//   - ZeRO-1: the stage's gradients, laid end to end in one device buffer
//     (flatParams' layout), are reduce-scattered, AdamW updates this
//     replica's block, and the same buffer all-gathers the parameters;
//   - pipeline stages: each stage sums the squares of what it owns and the
//     step's one small all-reduce over the world adds them (loop); with tied
//     embeddings the first and last stage sum the embedding's two gradients.
type deviceOptimizer struct {
	be     ops.Backend
	chunks []*model.Model
	// replicas is how many replicas dp sums over (the traffic counted in the step's times).
	replicas int
	flat     *flatParams
	adam     *optim.AdamW
	dp       deviceComm // this stage across the replicas; nil with one replica
	tied     deviceComm // the first and last stage's embeddings; nil otherwise
	zero1    bool
	// overlap starts each layer's all-reduce during the backward (replicas
	// without ZeRO-1); the tensors outside the layers follow it.
	overlap bool
	pieces  []devPiece // per flatParams.opt entry: what this rank updates
	state   ops.Buf    // F32: both moments of every piece, end to end
	// flatBuf is ZeRO-1's F32 [padded] buffer in flatParams' layout: the
	// gradients to reduce-scatter, then the parameters to all-gather.
	flatBuf ops.Buf
	norm    ops.Buf // F32 [1]: the squared gradient norm
	fresh   bool    // moments are zero: no update has run yet
	// normSq receives the norm: its own allocation, since cgo refuses a
	// pointer into memory that also holds Go pointers (this struct).
	normSq []float32
}

// devPiece is the part of one tensor this rank updates: elements
// [start, start+n) of view, with their moments.
type devPiece struct {
	view     flatView
	start, n int
	dup      bool // the tied head's copy of the embedding: counted by the first stage
	m, v     ops.Buf
}

// value, grad and work are the piece's parameters, gradient (ZeRO-1: in the
// reduced flat buffer) and bf16 compute copy (nil in f32).
func (o *deviceOptimizer) value(p devPiece) ops.Buf { return p.view.p.Value.Slice(p.start, p.n) }

func (o *deviceOptimizer) grad(p devPiece) ops.Buf {
	if o.zero1 {
		return o.flatBuf.Slice(p.view.off+p.start, p.n)
	}
	return p.view.p.Grad.Slice(p.start, p.n)
}

func (o *deviceOptimizer) work(p devPiece) ops.Buf {
	if p.view.p.W == p.view.p.Value {
		return nil
	}
	return p.view.p.W.Slice(p.start, p.n)
}

// OptimizerEnv chooses where the optimizer runs: "host" or "device"; unset is
// the default (the device on a GPU, when NCCL connects every group it needs).
// Tests set it to run the device optimizer on CPU ranks.
const OptimizerEnv = "TRAIN_OPTIMIZER"

// deviceLinks are the device communicators of a device optimizer.
type deviceLinks struct{ dp, tied deviceComm }

func (l deviceLinks) close() {
	for _, c := range []deviceComm{l.dp, l.tied} {
		if c != nil {
			c.Close()
		}
	}
}

// optimizerPlacement says whether this rank's optimizer runs on its device
// and returns the communicators it needs there (the caller closes them).
// Every rank decides alike: the environment is the job's, and NCCL's start is
// agreed on.
func optimizerPlacement(be ops.Backend, d *World, warn io.Writer) (onDevice bool, links deviceLinks, err error) {
	env := os.Getenv(OptimizerEnv)
	switch env {
	case "host":
		return false, links, nil
	case "device":
		onDevice = true
	case "":
		_, onDevice = be.(device.GPU)
	default:
		return false, links, fmt.Errorf("%s=%q: want host or device", OptimizerEnv, env)
	}
	if !onDevice || d.plan.World == 1 {
		return onDevice, links, nil
	}
	var ok bool
	if links.dp, ok = openDeviceComm(be, d, d.dp, "data-parallel replicas", warn); !ok {
		return false, links, nil
	}
	if links.tied, ok = openDeviceComm(be, d, d.tied, "tied embedding", warn); !ok {
		links.close()
		return false, links, nil
	}
	return true, links, nil
}

func newDeviceOptimizer(be ops.Backend, chunks []*model.Model, d *World, f *flatParams, adam *optim.AdamW, links deviceLinks) (*deviceOptimizer, error) {
	o := &deviceOptimizer{be: be, chunks: chunks, replicas: d.plan.Replicas, flat: f, adam: adam, dp: links.dp, tied: links.tied,
		zero1: d.zero1 && links.dp != nil, fresh: true, normSq: make([]float32, 1)}
	o.overlap = o.dp != nil && !o.zero1
	var plan ops.Plan
	o.pieces = make([]devPiece, len(f.opt))
	for i, p := range f.opt {
		o.pieces[i] = devPiece{view: f.optView[i], start: int(f.optStart[i]), n: len(p.Value), dup: f.optDup[i]}
		plan.Add(&o.pieces[i].m, len(p.Value))
		plan.Add(&o.pieces[i].v, len(p.Value))
	}
	plan.Add(&o.norm, 1)
	if o.zero1 {
		plan.Add(&o.flatBuf, len(f.grad))
	}
	var err error
	if o.state, err = plan.Alloc(be, ops.F32); err != nil {
		return nil, fmt.Errorf("train: optimizer state on the device: %w", err)
	}
	for _, p := range o.pieces {
		be.Zero(p.m, p.n)
		be.Zero(p.v, p.n)
	}
	if o.zero1 {
		be.Zero(o.flatBuf, len(f.grad)) // the padding stays zero
	}
	return o, nil
}

func (o *deviceOptimizer) close() {
	o.be.Free(o.state)
	deviceLinks{o.dp, o.tied}.close()
}

// deviceBytes is the device memory of the moments (and ZeRO-1's flat buffer).
func (o *deviceOptimizer) deviceBytes() int64 { return ops.Bytes(o.state) }

func (o *deviceOptimizer) where() (string, bool) {
	_, nccl := o.dp.(ncclComm)
	return "device", nccl
}

// layerDone starts a layer's all-reduce over the replicas as soon as its
// gradients are final (replicas without ZeRO-1; nil otherwise). The model
// calls it for every layer of the step's last backward of each chunk.
func (o *deviceOptimizer) layerDone() func(int) error {
	if !o.overlap {
		return nil
	}
	return func(l int) error { return o.allReduceViews(o.flat.layerViews(l)) }
}

// allReduceViews sums the gradients of vs over the replicas, one NCCL group.
func (o *deviceOptimizer) allReduceViews(vs []flatView) error {
	return o.dp.Group(func() error {
		for _, v := range vs {
			if err := o.dp.AllReduce(v.p.Grad, v.n); err != nil {
				return fmt.Errorf("gradient all-reduce of %s: %w", v.p.Name, err)
			}
		}
		return nil
	})
}

// reduce brings the gradients together on the devices (the tied embedding's
// two halves, then the replicas) and sums the squares of what this rank owns;
// only that one float comes to the host.
func (o *deviceOptimizer) reduce(times *stepTimes) (float64, error) {
	for _, m := range o.chunks {
		m.FinishGrads()
	}
	f := o.flat
	err := timed(&times.comm, func() error {
		if o.tied != nil && f.embed != nil {
			times.ring(f.embed.n, 2, 2)
			if err := o.tied.AllReduce(f.embed.p.Grad, f.embed.n); err != nil {
				return fmt.Errorf("tied embedding: %w", err)
			}
		}
		if o.dp == nil {
			return o.waitAll()
		}
		switch {
		case o.zero1:
			for _, v := range f.views {
				o.be.Copy(o.flatBuf.Slice(v.off, v.n), v.p.Grad, v.n)
			}
			per := len(f.grad) / o.replicas
			times.ring(len(f.grad), o.replicas, 1)
			if err := o.dp.ReduceScatter(o.flatBuf, o.flatBuf.Slice(f.lo, per), per); err != nil {
				return fmt.Errorf("gradient reduce-scatter: %w", err)
			}
		default:
			// The layers went out during the backward; the rest follow.
			times.ring(len(f.grad), o.replicas, 2)
			if err := o.allReduceViews(f.rest); err != nil {
				return err
			}
		}
		return o.waitAll()
	})
	if err != nil {
		return 0, err
	}
	return o.sumSquares()
}

// waitAll waits for the communicators' work, naming the first failure.
func (o *deviceOptimizer) waitAll() error {
	for _, c := range []deviceComm{o.tied, o.dp} {
		if c == nil {
			continue
		}
		if err := c.Wait(); err != nil {
			return fmt.Errorf("gradient reduction: %w", err)
		}
	}
	return nil
}

// update runs AdamW on the device and, with ZeRO-1, gathers the replicas'
// updated blocks.
func (o *deviceOptimizer) update(lr, clip float64, times *stepTimes) error {
	o.step(o.adam, lr, clip)
	if !o.zero1 {
		return nil
	}
	f := o.flat
	err := timed(&times.comm, func() error {
		for _, p := range o.pieces {
			o.be.Copy(o.flatBuf.Slice(p.view.off+p.start, p.n), o.value(p), p.n)
		}
		per := len(f.value) / o.replicas
		times.ring(len(f.value), o.replicas, 1)
		if err := o.dp.AllGather(o.flatBuf.Slice(f.lo, per), o.flatBuf, per); err != nil {
			return fmt.Errorf("parameter all-gather: %w", err)
		}
		if err := o.dp.Wait(); err != nil {
			return fmt.Errorf("parameter all-gather: %w", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, v := range f.views {
		o.be.Copy(v.p.Value, o.flatBuf.Slice(v.off, v.n), v.n)
	}
	for _, m := range o.chunks {
		m.RefreshCompute()
	}
	return nil
}

// sumSquares is the squared norm of the gradients this rank owns (after
// reduce), leaving out the tied head's copy of the embedding, which the
// first stage counts.
func (o *deviceOptimizer) sumSquares() (float64, error) {
	o.be.Zero(o.norm, 1)
	for _, p := range o.pieces {
		if !p.dup {
			o.be.SumSquares(o.norm, o.grad(p), p.n)
		}
	}
	if err := o.be.Download(o.normSq, o.norm); err != nil {
		return 0, fmt.Errorf("gradient norm: %w", err)
	}
	return float64(o.normSq[0]), nil
}

// step applies one AdamW update with the gradients scaled by clip, writing the
// bf16 compute copies as it goes.
func (o *deviceOptimizer) step(opt *optim.AdamW, lr, clip float64) {
	stepSize, sqrtBC2 := opt.Begin(lr)
	for _, p := range o.pieces {
		decay := float32(1)
		if len(p.view.p.Shape) != 1 { // norms do not decay, as on the host
			decay = float32(1 - lr*opt.WeightDecay)
		}
		o.be.AdamW(o.value(p), o.grad(p), p.m, p.v, o.work(p), p.n, ops.AdamWStep{
			B1: float32(opt.Beta1), B2: float32(opt.Beta2), Decay: decay, GradScale: float32(clip),
			StepSize: stepSize, SqrtBC2: sqrtBC2, Eps: opt.Eps,
		})
	}
	o.fresh = false
}

// syncHost copies the values of every tensor and the moments of the pieces
// this rank owns into the host mirror, for a checkpoint or the outputs.
func (o *deviceOptimizer) syncHost() error {
	f := o.flat
	for _, v := range f.views {
		if err := o.be.Download(f.value[v.off:v.off+v.n], v.p.Value); err != nil {
			return fmt.Errorf("train: %s: %w", v.p.Name, err)
		}
	}
	if o.fresh {
		return nil
	}
	for i, p := range o.pieces {
		h := f.opt[i]
		if h.M == nil {
			h.M, h.V = make([]float32, p.n), make([]float32, p.n)
		}
		if err := o.be.Download(h.M, p.m); err != nil {
			return fmt.Errorf("train: optimizer state of %s: %w", h.Name, err)
		}
		if err := o.be.Download(h.V, p.v); err != nil {
			return fmt.Errorf("train: optimizer state of %s: %w", h.Name, err)
		}
	}
	return nil
}

// restored copies the moments of the host mirror to the device (resuming);
// the values are already there (restore uploaded them).
func (o *deviceOptimizer) restored() error {
	for i, p := range o.pieces {
		h := o.flat.opt[i]
		if h.M == nil {
			continue
		}
		if err := o.be.Upload(p.m, h.M); err != nil {
			return err
		}
		if err := o.be.Upload(p.v, h.V); err != nil {
			return err
		}
		o.fresh = false
	}
	return nil
}

// DeviceAdamW is the trainer's device optimizer on its own, over every
// trainable tensor of one model with no replicas: what `train bench model`
// times as a GPU run's update.
type DeviceAdamW struct {
	o    *deviceOptimizer
	adam optim.AdamW // the update's settings and step count, which o reads
}

// NewDeviceAdamW allocates the moments of m's trainable tensors on be.
func NewDeviceAdamW(be ops.Backend, m *model.Model, adam optim.AdamW) (*DeviceAdamW, error) {
	f, err := newFlatParams([]*model.Model{m}, be, 1, 0, false)
	if err != nil {
		return nil, err
	}
	a := &DeviceAdamW{adam: adam}
	one := &World{plan: &shard.Plan{World: 1, Stages: 1, Replicas: 1}}
	if a.o, err = newDeviceOptimizer(be, []*model.Model{m}, one, f, &a.adam, deviceLinks{}); err != nil {
		return nil, err
	}
	return a, nil
}

// Step applies one AdamW update at lr with the gradients scaled by clip
// (after the model's FinishGrads).
func (a *DeviceAdamW) Step(lr, clip float64) { a.o.step(a.o.adam, lr, clip) }

// Bytes is the device memory of the moments.
func (a *DeviceAdamW) Bytes() int64 { return a.o.deviceBytes() }

// Close frees the moments.
func (a *DeviceAdamW) Close() { a.o.close() }
