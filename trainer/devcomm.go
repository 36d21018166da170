package trainer

import (
	"fmt"
	"io"

	"train/collective"
	"train/kernels"
	"train/ops"
)

// deviceComm moves device buffers between the ranks of one group: NCCL between
// GPUs (ncclComm), or the TCP collectives through host copies (hostComm), which
// lets every layout of the device optimizer run, and be tested, on CPU ranks.
// Counts are elements of the buffers' type; a rank's calls are matched with the
// others' in the order they are made, as NCCL requires. Calls may return
// before the work is done: Wait waits for it and returns the first failure.
type deviceComm interface {
	// AllReduce sums the first n elements of x over the group, in place.
	AllReduce(x ops.Buf, n int) error
	// ReduceScatter sums send (Size()*count elements) over the group and
	// leaves this rank's block of count in recv (which may be that block
	// of send).
	ReduceScatter(send, recv ops.Buf, count int) error
	// AllGather concatenates every rank's count elements of send into recv
	// in rank order (send may be this rank's block of recv).
	AllGather(send, recv ops.Buf, count int) error
	// Group runs f, whose calls are issued as one operation.
	Group(f func() error) error
	Wait() error
	Close() error
}

// ncclComm is a deviceComm over an NCCL communicator.
type ncclComm struct{ n *kernels.NCCL }

func (c ncclComm) AllReduce(x ops.Buf, n int) error { return c.n.AllReduce(x, n, kernels.NCCLSum) }
func (c ncclComm) ReduceScatter(send, recv ops.Buf, count int) error {
	return c.n.ReduceScatter(send, recv, count, kernels.NCCLSum)
}
func (c ncclComm) AllGather(send, recv ops.Buf, count int) error {
	return c.n.AllGather(send, recv, count)
}
func (c ncclComm) Group(f func() error) error { return c.n.Group(f) }
func (c ncclComm) Wait() error                { return c.n.Wait() }
func (c ncclComm) Close() error               { return c.n.Close() }

// hostComm is a deviceComm over a collective.Comm: each call copies its device
// buffers to the host, runs the TCP collective and copies the result back, so
// it returns when the work is done. The numbers are the host optimizer's (the
// same ring, the same summation order).
type hostComm struct {
	be ops.Backend
	c  collective.Comm
}

func (h hostComm) AllReduce(x ops.Buf, n int) error {
	v := make([]float32, n)
	if err := h.be.Download(v, x.Slice(0, n)); err != nil {
		return err
	}
	if err := h.c.AllReduce(collective.F32(v), collective.Sum); err != nil {
		return err
	}
	return h.be.Upload(x.Slice(0, n), v)
}

func (h hostComm) ReduceScatter(send, recv ops.Buf, count int) error {
	all := make([]float32, count*h.c.Size())
	if err := h.be.Download(all, send.Slice(0, len(all))); err != nil {
		return err
	}
	own := make([]float32, count)
	if err := h.c.ReduceScatter(collective.F32(all), collective.F32(own), collective.Sum); err != nil {
		return err
	}
	return h.be.Upload(recv.Slice(0, count), own)
}

func (h hostComm) AllGather(send, recv ops.Buf, count int) error {
	own := make([]float32, count)
	if err := h.be.Download(own, send.Slice(0, count)); err != nil {
		return err
	}
	all := make([]float32, count*h.c.Size())
	if err := h.c.AllGather(collective.F32(own), collective.F32(all)); err != nil {
		return err
	}
	return h.be.Upload(recv.Slice(0, len(all)), all)
}

func (h hostComm) Group(f func() error) error { return f() }
func (h hostComm) Wait() error                { return nil }

// Close leaves the TCP communicator to the World that made it.
func (h hostComm) Close() error { return nil }

// openDeviceComm connects this rank's devices in the group c (nil: no group,
// nil result): NCCL on a GPU, hostComm elsewhere. When NCCL cannot start on
// some rank of the world, every rank agrees to go without it (ok false): the
// caller then keeps the host optimizer. Every rank of the world calls it, for
// the same groups in the same order, since agreeing is a world collective.
func openDeviceComm(be ops.Backend, d *World, c collective.Comm, what string, warn io.Writer) (dc deviceComm, ok bool) {
	g, gpu := be.(*kernels.Backend)
	var n *kernels.NCCL
	var err error
	if gpu && c != nil {
		n, err = kernels.NCCLOver(g, c, 0)
	}
	if aerr := d.agree(err, "a rank could not start NCCL for the %s", what); aerr != nil {
		if n != nil {
			n.Close()
		}
		fmt.Fprintf(warn, "train: warning: NCCL unavailable for the %s (%v); the optimizer runs on the host and its tensors travel over TCP\n", what, aerr)
		return nil, false
	}
	switch {
	case c == nil:
		return nil, true
	case n != nil:
		return ncclComm{n}, true
	}
	return hostComm{be: be, c: c}, true
}
