package kernels

// NCCL on device buffers: the part that needs no cgo (the type, argument
// checks, names of NCCL's codes). nccl.go binds the library with dlopen;
// nccl_nocgo.go stands in for it in CGO_ENABLED=0 builds.
//
// The model: one NCCL is one rank's communicator, bound to one Backend (one
// GPU). Its operations run on the Backend's CUDA thread and enqueue on the
// Backend's stream, so they are ordered with the Backend's ops like any kernel:
// an all-reduce issued after a backward pass reads the gradients that pass
// wrote. They return once NCCL has queued the work; Wait waits for the stream.
//
// Nothing here can hang for ever. The communicator is non-blocking (NCCL's
// config blocking=0): every NCCL call returns at once and the CUDA thread polls
// ncclCommGetAsyncError, and Wait polls the stream, each bounded by the
// timeout given to NewNCCL. A call that fails or times out aborts the
// communicator (ncclCommAbort), which also ends its kernels on the GPU; that
// error is then returned by every later call. A lost or stuck rank thus
// becomes an error on every rank within the timeout, never a hang.

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"train/ops"
)

// NCCLIDBytes is the size of an ncclUniqueId (NCCL_UNIQUE_ID_BYTES in nccl.h).
const NCCLIDBytes = 128

// NCCLEnv names a file that replaces libnccl.so.2 (an NCCL of a pip wheel, a
// build of one's own).
const NCCLEnv = "TRAIN_NCCL"

// DefaultNCCLTimeout bounds an NCCL call or Wait when NewNCCL is given no
// timeout. Like PyTorch's default it is long: Wait also covers this rank's own
// queued work and the slowest rank reaching the collective.
const DefaultNCCLTimeout = 10 * time.Minute

// NCCLOp is a reduction operator; the values are ncclRedOp_t's (nccl.h).
type NCCLOp int

const (
	NCCLSum NCCLOp = 0
	NCCLMax NCCLOp = 2
	NCCLMin NCCLOp = 3
	NCCLAvg NCCLOp = 4 // floating-point types only
)

func (o NCCLOp) String() string {
	switch o {
	case NCCLSum:
		return "sum"
	case NCCLMax:
		return "max"
	case NCCLMin:
		return "min"
	case NCCLAvg:
		return "avg"
	}
	return fmt.Sprintf("NCCLOp(%d)", int(o))
}

// ncclDataType_t values (nccl.h).
const (
	ncclInt32    = 2
	ncclFloat32  = 7
	ncclBfloat16 = 9
)

// ncclResult_t values (nccl.h) that the code acts on.
const (
	ncclSuccess    = 0
	ncclInProgress = 7
)

var ncclResultNames = []string{
	"ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
	"ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress", "ncclTimeout",
}

func ncclResultName(r int) string {
	if r >= 0 && r < len(ncclResultNames) {
		return ncclResultNames[r]
	}
	return fmt.Sprintf("ncclResult %d", r)
}

// FormatNCCLVersion writes NCCL_VERSION_CODE as major.minor.patch: 22805 is
// 2.28.5 (from 2.9 on, major*10000+minor*100+patch; before, major*1000+minor*100+patch).
func FormatNCCLVersion(v int) string {
	if v >= 10000 {
		return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000, v/100%10, v%100)
}

// NCCL is one rank's communicator on the GPU of a Backend. Like the Backend,
// it is driven by one goroutine at a time. Close it before the Backend.
type NCCL struct {
	b          *Backend
	comm       unsafe.Pointer // ncclComm_t; nil once closed or aborted
	rank, size int
	timeout    time.Duration
	err        error // the failure that aborted the communicator, returned by every later call
	inGroup    bool  // between Group's ncclGroupStart and ncclGroupEnd
}

// Rank is this process's rank in the communicator.
func (n *NCCL) Rank() int { return n.rank }

// Size is the number of ranks.
func (n *NCCL) Size() int { return n.size }

// Timeout is the bound on each call and Wait.
func (n *NCCL) Timeout() time.Duration { return n.timeout }

// ncclCall is one NCCL operation, as nccl.go issues it.
type ncclCall struct {
	fn         string // AllReduce, ReduceScatter, AllGather, Broadcast, Send, Recv
	send, recv uint64 // device pointers (Send uses send, Recv recv)
	count      int    // elements, as NCCL counts them for fn
	dt         int    // ncclDataType_t
	op         NCCLOp
	peer       int // the root of Broadcast, the peer of Send and Recv
}

// ncclType maps a buffer type to NCCL's, and gives its element size.
func ncclType(dt ops.DType) (nt, size int, err error) {
	switch dt {
	case ops.F32:
		return ncclFloat32, 4, nil
	case ops.I32:
		return ncclInt32, 4, nil
	case ops.BF16:
		return ncclBfloat16, 2, nil
	}
	return 0, 0, fmt.Errorf("no NCCL type for %v", dt)
}

// span is the device memory of an argument: start address and bytes.
type span struct {
	ptr   uint64
	bytes uint64
	dt    ops.DType
}

// ncclArg checks that x is a buffer of this package holding at least n
// elements and returns its first n elements' memory.
func ncclArg(x ops.Buf, n int, name string) (span, error) {
	d, ok := x.(*buf)
	if !ok || d == nil {
		return span{}, fmt.Errorf("%s is %s, want a GPU buffer of this backend", name, describe(x))
	}
	_, size, err := ncclType(d.dt)
	if err != nil {
		return span{}, fmt.Errorf("%s: %w", name, err)
	}
	if n < 0 || d.n < n {
		return span{}, fmt.Errorf("%s has %d elements, need %d", name, d.n, n)
	}
	if n > 0 && d.ptr == 0 {
		return span{}, fmt.Errorf("%s is freed", name)
	}
	return span{ptr: d.ptr, bytes: uint64(n) * uint64(size), dt: d.dt}, nil
}

// overlapOK reports whether send and recv may share memory as NCCL allows: not
// at all, or exactly in place, the rank's block of the larger buffer being the
// smaller one (off is that block's offset in bytes).
func overlapOK(small, large span, off uint64) bool {
	if small.bytes == 0 || large.bytes == 0 {
		return true
	}
	disjoint := small.ptr+small.bytes <= large.ptr || large.ptr+large.bytes <= small.ptr
	return disjoint || small.ptr == large.ptr+off
}

// AllReduce replaces the first n elements of x on every rank by their
// reduction over the ranks (F32, BF16 or I32; Avg for floats only).
func (n *NCCL) AllReduce(x ops.Buf, count int, op NCCLOp) error {
	a, err := ncclArg(x, count, "buf")
	if err != nil {
		return n.argErr("AllReduce", err)
	}
	nt, _, _ := ncclType(a.dt)
	return n.issue(ncclCall{fn: "AllReduce", send: a.ptr, recv: a.ptr, count: count, dt: nt, op: op})
}

// ReduceScatter reduces send (Size()*count elements on every rank) over the
// ranks and leaves block Rank() of the result, count elements, in recv. recv
// may be exactly that block of send (in place), else it must not overlap it.
func (n *NCCL) ReduceScatter(send, recv ops.Buf, count int, op NCCLOp) error {
	s, r, err := n.pair(send, recv, count, count*n.size, count)
	if err != nil {
		return n.argErr("ReduceScatter", err)
	}
	if !overlapOK(r, s, uint64(n.rank)*r.bytes) {
		return n.argErr("ReduceScatter", errors.New("recv overlaps send other than as its own block"))
	}
	nt, _, _ := ncclType(s.dt)
	return n.issue(ncclCall{fn: "ReduceScatter", send: s.ptr, recv: r.ptr, count: count, dt: nt, op: op})
}

// AllGather concatenates every rank's count elements of send into recv
// (Size()*count elements) in rank order. send may be exactly this rank's block
// of recv (in place), else it must not overlap it.
func (n *NCCL) AllGather(send, recv ops.Buf, count int) error {
	s, r, err := n.pair(send, recv, count, count, count*n.size)
	if err != nil {
		return n.argErr("AllGather", err)
	}
	if !overlapOK(s, r, uint64(n.rank)*s.bytes) {
		return n.argErr("AllGather", errors.New("send overlaps recv other than as this rank's block"))
	}
	nt, _, _ := ncclType(s.dt)
	return n.issue(ncclCall{fn: "AllGather", send: s.ptr, recv: r.ptr, count: count, dt: nt})
}

// Broadcast copies root's first count elements of x into x on every rank.
func (n *NCCL) Broadcast(x ops.Buf, count, root int) error {
	a, err := ncclArg(x, count, "buf")
	if err == nil && (root < 0 || root >= n.size) {
		err = fmt.Errorf("root %d is not a rank of %d", root, n.size)
	}
	if err != nil {
		return n.argErr("Broadcast", err)
	}
	nt, _, _ := ncclType(a.dt)
	return n.issue(ncclCall{fn: "Broadcast", send: a.ptr, recv: a.ptr, count: count, dt: nt, peer: root})
}

// Send sends the first count elements of x to rank peer, which must Recv as
// many of the same type. A rank that both sends and receives (a ring, a
// pipeline exchange) must put the pair in one Group, or both ranks wait on
// each other.
func (n *NCCL) Send(x ops.Buf, count, peer int) error {
	a, err := ncclArg(x, count, "buf")
	if err == nil && (peer < 0 || peer >= n.size) {
		err = fmt.Errorf("peer %d is not a rank of %d", peer, n.size)
	}
	if err != nil {
		return n.argErr("Send", err)
	}
	nt, _, _ := ncclType(a.dt)
	return n.issue(ncclCall{fn: "Send", send: a.ptr, count: count, dt: nt, peer: peer})
}

// Recv receives count elements from rank peer into x.
func (n *NCCL) Recv(x ops.Buf, count, peer int) error {
	a, err := ncclArg(x, count, "buf")
	if err == nil && (peer < 0 || peer >= n.size) {
		err = fmt.Errorf("peer %d is not a rank of %d", peer, n.size)
	}
	if err != nil {
		return n.argErr("Recv", err)
	}
	nt, _, _ := ncclType(a.dt)
	return n.issue(ncclCall{fn: "Recv", recv: a.ptr, count: count, dt: nt, peer: peer})
}

// pair checks the two buffers of a collective of count: send of ns
// elements, recv of nr, one type.
func (n *NCCL) pair(send, recv ops.Buf, count, ns, nr int) (s, r span, err error) {
	if count < 0 {
		return s, r, fmt.Errorf("count %d", count)
	}
	if s, err = ncclArg(send, ns, "send"); err != nil {
		return s, r, err
	}
	if r, err = ncclArg(recv, nr, "recv"); err != nil {
		return s, r, err
	}
	if s.dt != r.dt {
		return s, r, fmt.Errorf("send is %v, recv is %v", s.dt, r.dt)
	}
	return s, r, nil
}

// argErr is the error of a call refused before it reached NCCL. It does not
// abort the communicator: nothing was issued. Other ranks may still wait for
// this rank's part, until their timeout.
func (n *NCCL) argErr(fn string, err error) error {
	return fmt.Errorf("kernels: nccl %s (rank %d of %d): %w", fn, n.rank, n.size, err)
}

// issue runs c unless the communicator failed or is closed; a zero count
// issues nothing (every rank passes the same count, so all skip alike).
func (n *NCCL) issue(c ncclCall) error {
	if n.err != nil {
		return n.err
	}
	if n.comm == nil {
		return n.argErr(c.fn, errors.New("communicator used after Close"))
	}
	if c.count == 0 {
		return nil
	}
	return n.do(c)
}

// Group runs f, whose NCCL calls on this communicator are fused into one
// operation (ncclGroupStart/ncclGroupEnd): needed for a rank that sends to
// and receives from others at once. f must issue only NCCL calls of this
// package and no Wait.
func (n *NCCL) Group(f func() error) error {
	if n.err != nil {
		return n.err
	}
	if n.comm == nil {
		return n.argErr("Group", errors.New("communicator used after Close"))
	}
	if err := n.groupStart(); err != nil {
		return err
	}
	n.inGroup = true
	ferr := f()
	n.inGroup = false
	// Always end the group: NCCL's group depth is per thread, and the CUDA
	// thread runs every later call of the Backend.
	gerr := n.groupEnd()
	if ferr != nil {
		return ferr
	}
	return gerr
}
