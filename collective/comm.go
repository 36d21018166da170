package collective

import (
	"errors"
	"fmt"
	"unsafe"
)

// Comm is a communicator: a fixed, ordered group of ranks that run collectives
// together. Every rank of the group must call the collectives of a Comm in the
// same order with matching arguments (like MPI and NCCL); a mismatch is detected
// and reported as an error on every rank rather than a hang.
//
// The blocking methods are the asynchronous ones followed by Wait. Collectives
// issued on one Comm run one at a time in issue order; Send and Recv run in issue
// order per peer, independently of the collectives, so a pipeline stage can
// overlap its activations with a gradient all-reduce. Buffers passed to an
// operation belong to it until Wait returns.
//
// After any communication failure (a lost rank, a dropped connection, a timeout,
// a mismatched call) every operation of every Comm of the job returns an error
// naming the rank at fault; the job cannot continue and should exit non-zero.
type Comm interface {
	Rank() int // this process's rank in the group, 0 <= Rank() < Size()
	Size() int // number of ranks in the group

	// AllReduce replaces buf on every rank by the element-wise reduction of
	// every rank's buf. Every rank ends with bit-identical results.
	AllReduce(buf Buffer, op Op) error
	// AllGather concatenates every rank's send (all the same length) into recv
	// in rank order: recv.Len() == Size()*send.Len(). send may be exactly the
	// rank's own block of recv (in place).
	AllGather(send, recv Buffer) error
	// ReduceScatter reduces send (Size()*recv.Len() elements on every rank)
	// element-wise across ranks and leaves block Rank() of the result in recv.
	// send is not modified; recv must not overlap send.
	ReduceScatter(send, recv Buffer, op Op) error
	// Broadcast copies root's buf into buf on every other rank.
	Broadcast(buf Buffer, root int) error
	// Send sends buf to rank dst, which must Recv a buffer of the same type and
	// length. Messages between two ranks arrive in the order they were sent.
	Send(buf Buffer, dst int) error
	// Recv receives the next message from rank src into buf.
	Recv(buf Buffer, src int) error
	// Barrier returns once every rank of the group has called it.
	Barrier() error

	AllReduceAsync(buf Buffer, op Op) Handle
	AllGatherAsync(send, recv Buffer) Handle
	ReduceScatterAsync(send, recv Buffer, op Op) Handle
	BroadcastAsync(buf Buffer, root int) Handle
	SendAsync(buf Buffer, dst int) Handle
	RecvAsync(buf Buffer, src int) Handle

	// Split partitions the group like MPI_Comm_split: ranks passing the same
	// color form a new Comm, ordered by key and then by rank in this Comm. It is
	// collective over this Comm. A negative color joins no group and returns
	// (nil, nil).
	Split(color, key int) (Comm, error)
	// Sub makes a Comm of the listed ranks of this Comm, in the listed order
	// (new rank i is ranks[i]). It is collective over the listed ranks only,
	// which must all pass the same list.
	Sub(ranks []int) (Comm, error)

	// Abort makes every rank of the job fail with an error naming this rank and
	// reason. It returns once the job is aborted (or the timeout passed).
	Abort(reason error)
	// Close is collective over the group: it waits for every rank to reach it,
	// then releases the connections. Closing the world Comm ends the job's
	// session (and every Comm split from it). Operations still pending on
	// point-to-point links end with ErrClosed.
	Close() error
}

// Handle is the pending result of an asynchronous operation.
type Handle interface {
	// Wait blocks until the operation has finished and returns its error. It
	// may be called more than once, from any goroutine.
	Wait() error
}

// ErrClosed is returned by operations on a closed Comm.
var ErrClosed = errors.New("collective: communicator closed")

// Op is a reduction operator.
type Op uint8

const (
	Sum Op = iota + 1
	Avg    // sum divided by the group size (floating-point types only)
	Max
	Min
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	case Max:
		return "max"
	case Min:
		return "min"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// DType is the element type of a Buffer.
type DType uint8

const (
	Float32  DType = iota + 1
	BFloat16       // bfloat16 stored as uint16 bit patterns
	Float64
	Int64
	Byte // raw bytes: not reducible
)

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case BFloat16:
		return "bf16"
	case Float64:
		return "float64"
	case Int64:
		return "int64"
	case Byte:
		return "byte"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the size of one element in bytes.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case BFloat16:
		return 2
	case Float64, Int64:
		return 8
	case Byte:
		return 1
	}
	return 0
}

// Buffer is memory an operation reads or writes. The TCP backend takes the
// host-memory types of this package (F32, BF16, F64, I64, Bytes); a device
// backend adds its own types.
type Buffer interface {
	DType() DType
	Len() int // number of elements
}

// Host-memory buffers. Converting a slice is free: F32(grads).
type (
	F32   []float32
	BF16  []uint16
	F64   []float64
	I64   []int64
	Bytes []byte
)

func (b F32) DType() DType   { return Float32 }
func (b F32) Len() int       { return len(b) }
func (b BF16) DType() DType  { return BFloat16 }
func (b BF16) Len() int      { return len(b) }
func (b F64) DType() DType   { return Float64 }
func (b F64) Len() int       { return len(b) }
func (b I64) DType() DType   { return Int64 }
func (b I64) Len() int       { return len(b) }
func (b Bytes) DType() DType { return Byte }
func (b Bytes) Len() int     { return len(b) }

// hostBytes views a host buffer's memory as bytes (little-endian on the wire:
// the TCP backend refuses big-endian hosts).
func hostBytes(b Buffer) ([]byte, error) {
	switch v := b.(type) {
	case F32:
		return asBytes(v), nil
	case BF16:
		return asBytes(v), nil
	case F64:
		return asBytes(v), nil
	case I64:
		return asBytes(v), nil
	case Bytes:
		return v, nil
	case nil:
		return nil, errors.New("nil buffer")
	}
	return nil, fmt.Errorf("the TCP backend cannot use %T buffers (host memory only)", b)
}

func asBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(s[0])))
}

// overlap reports whether two byte slices share memory.
func overlap(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0 := uintptr(unsafe.Pointer(&a[0]))
	b0 := uintptr(unsafe.Pointer(&b[0]))
	return a0 < b0+uintptr(len(b)) && b0 < a0+uintptr(len(a))
}

func same(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// RankError is the cause of a job's failure: the rank that was lost or at
// fault, where it ran, and what happened. Every operation failing because of
// it wraps it, so errors.As(err, &re) finds the rank.
type RankError struct {
	Rank   int    // world rank
	Host   string // host name it reported ("" if unknown)
	Addr   string // its listening address ("" if unknown)
	Reason string
}

func (e *RankError) Error() string {
	where := ""
	switch {
	case e.Host != "" && e.Addr != "":
		where = fmt.Sprintf(" (host %s, %s)", e.Host, e.Addr)
	case e.Host != "":
		where = fmt.Sprintf(" (host %s)", e.Host)
	case e.Addr != "":
		where = fmt.Sprintf(" (%s)", e.Addr)
	}
	return fmt.Sprintf("rank %d%s: %s", e.Rank, where, e.Reason)
}
