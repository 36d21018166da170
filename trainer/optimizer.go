package trainer

import (
	"fmt"
	"io"
	"train/collective"
	"train/model"
	"train/ops"
	"train/optim"
)

// An optimizer turns a step's gradients into updated weights on this rank. The
// step is the same wherever it runs (see loop): the pipeline's backward, then
// reduce (the replicas' gradients summed, the squared norm of what this rank
// owns returned), one all-reduce of the loss and the norm across the world,
// then update (clip and AdamW). Two places implement it:
//
//   - hostOptimizer: the trainable tensors mirrored on the host (flatParams),
//     reduced over the TCP collectives; every layout (pipeline stages, ZeRO-1).
//   - deviceOptimizer: AdamW's moments on the GPU beside the weights, the
//     gradients reduced on device buffers over NCCL; every layout, the GPU's
//     default.
type optimizer interface {
	// layerDone, when not nil, is what the model calls during the step's last
	// backward as each decoder layer's gradients become final, so their
	// reduction overlaps the layers still computing below.
	layerDone() func(layer int) error
	// reduce brings the replicas' gradients together after the pipeline has
	// drained and returns the squared norm of the gradients this rank owns.
	reduce(times *stepTimes) (sumSq float64, err error)
	// update applies AdamW at learning rate lr with the gradients scaled by
	// clip, leaving the model's weights (and their compute copies) updated.
	update(lr, clip float64, times *stepTimes) error
	// syncHost brings the host mirror up to date, for a checkpoint or the outputs.
	syncHost() error
	// restored takes a host mirror just read from a checkpoint to where the
	// optimizer keeps its state.
	restored() error
	// deviceBytes is the device memory it holds beside the model's.
	deviceBytes() int64
	// where says where it runs ("host" or "device") and whether NCCL sums
	// the replicas' gradients, for the logs.
	where() (place string, nccl bool)
	close()
}

// newOptimizer returns the optimizer of this rank: on the device when
// optimizerPlacement says so, on the host otherwise.
func newOptimizer(be ops.Backend, chunks []*model.Model, d *World, f *flatParams, adam *optim.AdamW, warn io.Writer) (optimizer, error) {
	onDevice, links, err := optimizerPlacement(be, d, warn)
	if err != nil {
		return nil, err
	}
	if onDevice {
		o, err := newDeviceOptimizer(be, chunks, d, f, adam, links)
		if err != nil {
			links.close()
		}
		return o, err
	}
	return &hostOptimizer{be: be, chunks: chunks, dist: d, flat: f, adam: adam, overlap: d.dp != nil && !d.zero1}, nil
}

// hostOptimizer runs AdamW on the host over flatParams: gradients come down
// from the device, are reduced over the TCP collectives (all-reduce, or with
// ZeRO-1 a reduce-scatter and, after the update, an all-gather of parameters),
// and the updated values go back up.
type hostOptimizer struct {
	be     ops.Backend
	chunks []*model.Model
	dist   *World
	flat   *flatParams
	adam   *optim.AdamW
	// overlap reduces each layer's gradients while backward goes on below it
	// (data parallel without ZeRO-1); pending are those reductions in flight.
	overlap       bool
	pending       []collective.Handle
	bucketTraffic stepTimes // bytes of the buckets in flight, added to the step's when they end
}

func (o *hostOptimizer) layerDone() func(int) error {
	if !o.overlap {
		return nil
	}
	return o.startBucket
}

func (o *hostOptimizer) reduce(times *stepTimes) (float64, error) {
	if err := o.flat.downloadGrads(o.chunks, o.be, o.overlap); err != nil {
		return 0, err
	}
	if err := o.reduceGrads(times); err != nil {
		return 0, err
	}
	return o.flat.sumSquares(), nil
}

func (o *hostOptimizer) update(lr, clip float64, times *stepTimes) error {
	f := o.flat
	err := timed(&times.compute, func() error {
		optim.ScaleGrads(f.opt, clip)
		return o.adam.Step(f.opt, lr)
	})
	if err != nil {
		return err
	}
	if err := o.gatherParams(times); err != nil {
		return err
	}
	return f.uploadValues(o.chunks, o.be)
}

func (o *hostOptimizer) syncHost() error       { return nil } // the mirror is where it works
func (o *hostOptimizer) restored() error       { return nil }
func (o *hostOptimizer) deviceBytes() int64    { return 0 }
func (o *hostOptimizer) where() (string, bool) { return "host", false }
func (o *hostOptimizer) close()                {}

// startBucket is called by the model as soon as the step's last backward has
// finished layer l: it copies that layer's gradients to the host and starts
// their all-reduce across the replicas, which runs while the layers below are
// still computing their backward.
func (o *hostOptimizer) startBucket(l int) error {
	f := o.flat
	r, ok := f.layers[l]
	if !ok {
		return nil // a layer with nothing to train
	}
	if err := f.downloadViews(o.be, f.layerViews(l)); err != nil {
		return err
	}
	o.bucketTraffic.ring(r[1]-r[0], o.dist.plan.Replicas, 2)
	o.pending = append(o.pending, o.dist.dp.AllReduceAsync(collective.F32(f.grad[r[0]:r[1]]), collective.Sum))
	return nil
}

// reduceGrads brings every replica's gradients together: the tied embedding's two
// halves summed between the first and last stage, then a sum over the replicas
// (all-reduce, or with ZeRO-1 a reduce-scatter that leaves each rank its shard).
// The loss was already normalised by the whole step's token count, so a sum, not a
// mean, gives the step's gradient.
func (o *hostOptimizer) reduceGrads(times *stepTimes) error {
	f, d := o.flat, o.dist
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
		if o.overlap {
			// The layers' buckets went out during backward; the rest follow.
			for _, h := range o.pending {
				if err := h.Wait(); err != nil {
					return fmt.Errorf("gradient all-reduce: %w", err)
				}
			}
			o.pending = o.pending[:0]
			times.sent += o.bucketTraffic.sent
			times.received += o.bucketTraffic.received
			o.bucketTraffic = stepTimes{}
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
func (o *hostOptimizer) gatherParams(times *stepTimes) error {
	f, d := o.flat, o.dist
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
