package trainer

import (
	"fmt"
	"io"
	"os"

	"train/device"
	"train/kernels"
	"train/model"
	"train/ops"
	"train/optim"
)

// deviceOptimizer runs the optimizer where the model is: AdamW's moments live on
// the device beside the float32 master weights, the gradient norm is summed
// there, and a step moves no tensor to the host, only the squared norm (one
// float) and the loss. The host mirror (flatParams) is brought up to date only
// when a checkpoint or the outputs need it (syncHost).
//
// The trainer uses it on a GPU when the stage is the whole model and ZeRO-1 is
// off; pipeline stages and ZeRO-1 shards keep the host optimizer, whose tensors
// travel over the TCP collectives anyway.
type deviceOptimizer struct {
	be    ops.Backend
	model *model.Model
	// replicas is how many replicas nccl sums over (the traffic counted in the step's times).
	replicas int
	flat     *flatParams
	adam     *optim.AdamW
	nccl     *kernels.NCCL // sums the replicas' gradients on their GPUs; nil with one replica
	views    []flatView    // every trainable tensor, as flatParams lists them
	state    ops.Buf       // F32: both moments of every tensor, end to end
	m, v     []ops.Buf     // per view
	norm     ops.Buf       // F32 [1]: the squared gradient norm
	fresh    bool          // moments are zero: no update has run yet
	// normSq receives the norm: its own allocation, since cgo refuses a
	// pointer into memory that also holds Go pointers (this struct).
	normSq []float32
}

// OptimizerEnv chooses where the optimizer runs: "host" or "device"; unset is
// the default (device on a GPU for a whole-model stage without ZeRO-1). Tests
// set it to compare the two on the CPU.
const OptimizerEnv = "TRAIN_OPTIMIZER"

// optimizerPlacement says whether this rank's optimizer runs on its device
// and, for data-parallel replicas, returns the NCCL communicator that sums
// their gradients there (nil otherwise; the caller closes it).
func optimizerPlacement(be ops.Backend, d *World, warn io.Writer) (onDevice bool, nccl *kernels.NCCL, err error) {
	whole := d.plan.Stages == 1 && !d.zero1
	env := os.Getenv(OptimizerEnv)
	switch env {
	case "host":
		return false, nil, nil
	case "device":
		onDevice = whole
	case "":
		_, gpu := be.(device.GPU)
		onDevice = gpu && whole
	default:
		return false, nil, fmt.Errorf("%s=%q: want host or device", OptimizerEnv, env)
	}
	if onDevice && d.dp != nil {
		if g, ok := be.(*kernels.Backend); ok {
			nccl = openReplicaNCCL(g, d, warn)
		}
		onDevice = nccl != nil
	}
	if env == "device" && !onDevice {
		return false, nil, fmt.Errorf("%s=device needs one pipeline stage, no ZeRO-1, and NCCL between replicas", OptimizerEnv)
	}
	return onDevice, nccl, nil
}

func newDeviceOptimizer(be ops.Backend, m *model.Model, replicas int, f *flatParams, adam *optim.AdamW, nccl *kernels.NCCL) (*deviceOptimizer, error) {
	o := &deviceOptimizer{be: be, model: m, replicas: replicas, flat: f, adam: adam, nccl: nccl, views: f.views, fresh: true, normSq: make([]float32, 1)}
	o.m, o.v = make([]ops.Buf, len(f.views)), make([]ops.Buf, len(f.views))
	var plan ops.Plan
	for i, v := range f.views {
		plan.Add(&o.m[i], v.n)
		plan.Add(&o.v[i], v.n)
	}
	plan.Add(&o.norm, 1)
	var err error
	if o.state, err = plan.Alloc(be, ops.F32); err != nil {
		return nil, fmt.Errorf("train: optimizer state on the device: %w", err)
	}
	return o, nil
}

func (o *deviceOptimizer) close() {
	o.be.Free(o.state)
	if o.nccl != nil {
		o.nccl.Close()
	}
}

// deviceBytes is the device memory of the moments.
func (o *deviceOptimizer) deviceBytes() int64 { return ops.Bytes(o.state) }

func (o *deviceOptimizer) where() (string, bool) { return "device", o.nccl != nil }

// layerDone is nil: the replicas' gradients are summed in one all-reduce
// after the backward (reduceGradsNCCL).
func (o *deviceOptimizer) layerDone() func(int) error { return nil }

// reduce sums the replicas' gradients on their GPUs and the squared norm
// there; only that one float comes to the host.
func (o *deviceOptimizer) reduce(times *stepTimes) (float64, error) {
	o.model.FinishGrads()
	if err := o.reduceGradsNCCL(times); err != nil {
		return 0, err
	}
	return o.sumSquares()
}

// update runs AdamW on the device.
func (o *deviceOptimizer) update(lr, clip float64, _ *stepTimes) error {
	o.step(o.adam, lr, clip)
	return nil
}

// sumSquares is the squared norm of every gradient (after Model.FinishGrads).
func (o *deviceOptimizer) sumSquares() (float64, error) {
	o.be.Zero(o.norm, 1)
	for _, v := range o.views {
		o.be.SumSquares(o.norm, v.p.Grad, v.n)
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
	for i, v := range o.views {
		decay := float32(1)
		if len(v.p.Shape) != 1 { // norms do not decay, as on the host
			decay = float32(1 - lr*opt.WeightDecay)
		}
		var work ops.Buf
		if v.p.W != v.p.Value {
			work = v.p.W
		}
		o.be.AdamW(v.p.Value, v.p.Grad, o.m[i], o.v[i], work, v.n, ops.AdamWStep{
			B1: float32(opt.Beta1), B2: float32(opt.Beta2), Decay: decay, GradScale: float32(clip),
			StepSize: stepSize, SqrtBC2: sqrtBC2, Eps: opt.Eps,
		})
	}
	o.fresh = false
}

// syncHost copies the values and moments into the host mirror f, for a
// checkpoint or the outputs. Without ZeRO-1, f.opt[i] is all of f.views[i].
func (o *deviceOptimizer) syncHost() error {
	f := o.flat
	for i, v := range o.views {
		if err := o.be.Download(f.value[v.off:v.off+v.n], v.p.Value); err != nil {
			return fmt.Errorf("train: %s: %w", v.p.Name, err)
		}
		if o.fresh {
			continue
		}
		p := f.opt[i]
		if p.M == nil {
			p.M, p.V = make([]float32, v.n), make([]float32, v.n)
		}
		if err := o.be.Download(p.M, o.m[i]); err != nil {
			return fmt.Errorf("train: optimizer state of %s: %w", v.p.Name, err)
		}
		if err := o.be.Download(p.V, o.v[i]); err != nil {
			return fmt.Errorf("train: optimizer state of %s: %w", v.p.Name, err)
		}
	}
	return nil
}

// restored copies the moments of the host mirror to the device (resuming);
// the values are already there (restore uploaded them).
func (o *deviceOptimizer) restored() error {
	f := o.flat
	for i := range o.views {
		p := f.opt[i]
		if p.M == nil {
			continue
		}
		if err := o.be.Upload(o.m[i], p.M); err != nil {
			return err
		}
		if err := o.be.Upload(o.v[i], p.V); err != nil {
			return err
		}
		o.fresh = false
	}
	return nil
}

// openReplicaNCCL connects the data-parallel replicas' GPUs through NCCL.
// When NCCL cannot start on some rank, every rank agrees to go on without it
// (nil): gradients then travel through the host and the TCP ring, slower but
// correct.
func openReplicaNCCL(g *kernels.Backend, d *World, warn io.Writer) *kernels.NCCL {
	n, err := kernels.NCCLOver(g, d.dp, 0)
	if aerr := d.agree(err, "a replica could not start NCCL"); aerr != nil {
		if n != nil {
			n.Close()
		}
		fmt.Fprintf(warn, "train: warning: NCCL unavailable (%v); gradients go through the host and TCP\n", aerr)
		return nil
	}
	return n
}

// reduceGradsNCCL sums the replicas' gradients on their GPUs, the whole
// gradient allocation in one all-reduce (the loss was normalised over the whole
// step, so a sum gives the step's gradient).
func (o *deviceOptimizer) reduceGradsNCCL(times *stepTimes) error {
	if o.nccl == nil {
		return nil
	}
	return timed(&times.comm, func() error {
		g := o.model.GradBuffer()
		times.ring(g.Len(), o.replicas, 2)
		if err := o.nccl.AllReduce(g, g.Len(), kernels.NCCLSum); err != nil {
			return fmt.Errorf("gradient all-reduce (NCCL): %w", err)
		}
		if err := o.nccl.Wait(); err != nil {
			return fmt.Errorf("gradient all-reduce (NCCL): %w", err)
		}
		return nil
	})
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
	if a.o, err = newDeviceOptimizer(be, m, 1, f, &a.adam, nil); err != nil {
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
