package trainer

import (
	"errors"
	"fmt"
	"train/collective"
	"train/data"
	"train/model"
	"train/ops"
	"train/shard"
)

// stageWire moves stage activations and their gradients between neighbouring
// stages. In bf16 or f16 the values come from the model's 2-byte buffers, so they
// travel as their 2-byte patterns: half the bytes, bitwise the same numbers.
type stageWire struct {
	world collective.Comm
	half  ops.DType // BF16 or F16: the 2-byte type the values hold; F32: none
}

func newStageWire(d *World, m *model.Model) stageWire {
	return stageWire{world: d.world, half: m.Compute()}
}

// elemBytes is the bytes one value takes on the wire.
func (w stageWire) elemBytes() int {
	if w.half.IsHalf() {
		return 2
	}
	return 4
}

// bits converts between float32 and the wire's 2-byte patterns. F16 values
// ride in a collective.BF16 buffer: Send and Recv move bits and never add
// them.
func (w stageWire) bits() (to func(float32) uint16, from func(uint16) float32) {
	if w.half == ops.F16 {
		return ops.ToF16, ops.FromF16
	}
	return ops.ToBF16, ops.FromBF16
}

func (w stageWire) send(v []float32, peer int) error { return w.sendAsync(v, peer).Wait() }

// sendAsync starts sending v, which must not change until the handle's Wait
// returns.
func (w stageWire) sendAsync(v []float32, peer int) collective.Handle {
	if !w.half.IsHalf() {
		return w.world.SendAsync(collective.F32(v), peer)
	}
	to, _ := w.bits()
	bits := make(collective.BF16, len(v))
	for i, x := range v {
		bits[i] = to(x)
	}
	return w.world.SendAsync(bits, peer)
}

func (w stageWire) recv(v []float32, peer int) error {
	if !w.half.IsHalf() {
		return w.world.Recv(collective.F32(v), peer)
	}
	_, from := w.bits()
	bits := make(collective.BF16, len(v))
	if err := w.world.Recv(bits, peer); err != nil {
		return err
	}
	for i, b := range bits {
		v[i] = from(b)
	}
	return nil
}

// microBatch is one micro-batch of this replica's share of a step.
type microBatch struct {
	rows *data.Rows
	seed uint64
}

// runPipeline executes this rank's 1F1B action list (interleaved 1F1B with
// chunks) for one step over its replica's micro-batches and returns the summed
// loss (non-zero on the rank holding the head only). Activations and their
// gradients cross stage boundaries in host buffers, sent without waiting for
// the neighbour to take them (a stage goes on to its next action; the step
// ends when every send has finished).
// Micro-batch k's activations go to slot k mod slots of its chunk's model.
// With one slot (the default) a chunk that must backward a micro-batch other
// than the one it forwarded last first recomputes its forward from the saved
// input: bitwise the same activations, one extra forward per micro-batch on the
// virtual stages before the last. With as many slots as micro-batches in flight
// (keep_activations) no slot is overwritten before its backward.
func (t *trainer) runPipeline(mbs []microBatch, scale float32, times *stepTimes) (float64, error) {
	acts, err := t.dist.plan.Actions(t.dist.rank(), len(mbs))
	if err != nil {
		return 0, err
	}
	d, be := t.dist, t.be
	C := t.chunks[0].Config().HiddenSize
	wire := newStageWire(d, t.chunks[0])
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
	type key struct{ chunk, micro int }
	inputs := map[key][]float32{}         // stage input received
	outputs := map[key][]float32{}        // gradient to send, or output to send
	grads := map[key][]float32{}          // gradient of the stage output received
	holds := make([][]int, len(t.chunks)) // per chunk and slot, the micro-batch whose activations it holds
	for c, m := range t.chunks {
		holds[c] = make([]int, m.Slots())
		for i := range holds[c] {
			holds[c][i] = -1
		}
	}
	lastMicro := make([]int, len(t.chunks)) // per chunk, the micro-batch of its last backward
	for _, a := range acts {
		if a.Op == shard.Backward {
			lastMicro[a.Chunk] = a.Micro
		}
	}
	slot := func(c, k int) (int, error) { s := k % len(holds[c]); return s, t.chunks[c].UseSlot(s) }
	var lossSum float64
	buf := func(r *data.Rows) []float32 { return make([]float32, r.B*r.T*C) }
	forward := func(c, k int) error {
		mb, m, ch := mbs[k], t.chunks[c], t.ranges[c]
		s, err := slot(c, k)
		if err != nil {
			return err
		}
		if !ch.Embed {
			if err := m.Plan(mb.rows.B, mb.rows.T); err != nil {
				return err
			}
			if err := be.Upload(m.StageInput(), inputs[key{c, k}]); err != nil {
				return err
			}
		}
		ls, _, err := m.Forward(batchOf(mb.rows, mb.seed))
		if err != nil {
			return err
		}
		holds[c][s] = k
		if ch.Head {
			lossSum += ls
		}
		return nil
	}
	for _, a := range acts {
		k, c := a.Micro, a.Chunk
		if a.Micro >= 0 && (c < 0 || c >= len(t.chunks)) {
			return 0, fmt.Errorf("internal: %v is for chunk %d of %d", a, c, len(t.chunks))
		}
		kc := key{c, k}
		switch a.Op {
		case shard.RecvActivation:
			inputs[kc] = buf(mbs[k].rows)
			times.p2p(len(inputs[kc]), wire.elemBytes(), false)
			err = timed(&times.bubble, func() error { return wire.recv(inputs[kc], a.Peer) })
		case shard.Forward:
			err = timed(&times.compute, func() error { return forward(c, k) })
			if err == nil && !t.ranges[c].Head {
				outputs[kc] = buf(mbs[k].rows)
				err = be.Download(outputs[kc], t.chunks[c].StageOutput())
			}
		case shard.SendActivation:
			times.p2p(len(outputs[kc]), wire.elemBytes(), true)
			sends = append(sends, wire.sendAsync(outputs[kc], a.Peer))
			delete(outputs, kc) // the send holds the buffer until it is done
		case shard.RecvGrad:
			grads[kc] = buf(mbs[k].rows)
			times.p2p(len(grads[kc]), wire.elemBytes(), false)
			err = timed(&times.bubble, func() error { return wire.recv(grads[kc], a.Peer) })
		case shard.Backward:
			m, ch := t.chunks[c], t.ranges[c]
			err = timed(&times.compute, func() error {
				s, err := slot(c, k)
				if err != nil {
					return err
				}
				if holds[c][s] != k {
					times.recomputed++
					if err := forward(c, k); err != nil {
						return err
					}
					if ch.Head { // the loss was counted the first time
						return errors.New("internal: the last stage recomputed a forward")
					}
				}
				if !ch.Head {
					if err := be.Upload(m.StageGrad(), grads[kc]); err != nil {
						return err
					}
					delete(grads, kc)
				}
				holds[c][s] = -1
				if done := t.opt.layerDone(); done != nil && k == lastMicro[c] {
					m.SetLayerDone(done)
					defer m.SetLayerDone(nil)
				}
				return m.Backward(scale)
			})
			if err == nil && !ch.Embed {
				outputs[kc] = buf(mbs[k].rows)
				err = be.Download(outputs[kc], m.StageGrad())
			}
			delete(inputs, kc)
		case shard.SendGrad:
			times.p2p(len(outputs[kc]), wire.elemBytes(), true)
			sends = append(sends, wire.sendAsync(outputs[kc], a.Peer))
			delete(outputs, kc)
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
