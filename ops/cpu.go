package ops

import (
	"fmt"
	"runtime"
)

// Float is the element type of the CPU kernels.
type Float interface{ ~float32 | ~float64 }

// CPU is the reference backend: plain Go over slices of T, synchronous, with the
// matmuls and attention spread over goroutines. Its zero value is not usable; use
// NewCPU or NewCPU64.
type CPU[T Float] struct {
	workers int   // goroutines per parallel op
	err     error // first op error, returned by Sync/Download
}

// NewCPU returns the float32 CPU backend, using up to GOMAXPROCS goroutines per op.
func NewCPU() *CPU[float32] { return &CPU[float32]{workers: runtime.GOMAXPROCS(0)} }

// NewCPU64 returns the float64 CPU backend, the reference for gradient checks.
func NewCPU64() *CPU[float64] { return &CPU[float64]{workers: runtime.GOMAXPROCS(0)} }

// SetWorkers sets how many goroutines an op may use (at least 1). Results do not
// depend on it.
func (c *CPU[T]) SetWorkers(n int) { c.workers = max(1, n) }

// Name reports "cpu-f32" or "cpu-f64".
func (c *CPU[T]) Name() string {
	var z T
	if _, ok := any(z).(float64); ok {
		return "cpu-f64"
	}
	return "cpu-f32"
}

// cpuBuf is a CPU buffer or view: exactly one of f, i and u is set.
type cpuBuf[T Float] struct {
	f  []T
	i  []int32
	u  []byte
	dt DType
}

func (b *cpuBuf[T]) Len() int {
	switch b.dt {
	case I32:
		return len(b.i)
	case U8:
		return len(b.u)
	}
	return len(b.f)
}

func (b *cpuBuf[T]) DType() DType { return b.dt }

func (b *cpuBuf[T]) Slice(off, n int) Buf {
	switch b.dt {
	case I32:
		return &cpuBuf[T]{i: b.i[off : off+n : off+n], dt: I32}
	case U8:
		return &cpuBuf[T]{u: b.u[off : off+n : off+n], dt: U8}
	}
	return &cpuBuf[T]{f: b.f[off : off+n : off+n], dt: b.dt}
}

// Alloc returns a zeroed buffer.
func (c *CPU[T]) Alloc(dt DType, n int) (Buf, error) {
	if n < 0 {
		return nil, fmt.Errorf("ops: alloc of %d elements", n)
	}
	switch dt {
	case F32, BF16, F16:
		return &cpuBuf[T]{f: make([]T, n), dt: dt}, nil
	case I32:
		return &cpuBuf[T]{i: make([]int32, n), dt: I32}, nil
	case U8:
		return &cpuBuf[T]{u: make([]byte, n), dt: U8}, nil
	}
	return nil, fmt.Errorf("ops: alloc of unknown dtype %v", dt)
}

// AllocHost is Alloc: the CPU's memory is the host's.
func (c *CPU[T]) AllocHost(dt DType, n int) (Buf, error) { return c.Alloc(dt, n) }

// Free drops the reference; the garbage collector does the rest.
func (c *CPU[T]) Free(b Buf) {}

// Upload copies host values into an F32, BF16 or F16 buffer.
func (c *CPU[T]) Upload(dst Buf, src []float32) error {
	d, ok := dst.(*cpuBuf[T])
	if !ok || !d.dt.IsFloat() {
		return fmt.Errorf("ops: upload into %s", describe(dst))
	}
	if len(src) > len(d.f) {
		return fmt.Errorf("ops: upload of %d values into a buffer of %d", len(src), len(d.f))
	}
	for i, v := range src {
		d.f[i] = T(v)
	}
	c.round(dst, d.f[:len(src)])
	return nil
}

// UploadInt copies host values into an I32 buffer.
func (c *CPU[T]) UploadInt(dst Buf, src []int32) error {
	d, ok := dst.(*cpuBuf[T])
	if !ok || d.dt != I32 {
		return fmt.Errorf("ops: int upload into %s", describe(dst))
	}
	if len(src) > len(d.i) {
		return fmt.Errorf("ops: upload of %d ints into a buffer of %d", len(src), len(d.i))
	}
	copy(d.i, src)
	return nil
}

// Download copies the first len(dst) values of src to the host.
func (c *CPU[T]) Download(dst []float32, src Buf) error { return download(c, dst, src) }

// Download64 copies the first len(dst) values of src to the host as float64.
func (c *CPU[T]) Download64(dst []float64, src Buf) error { return download(c, dst, src) }

// download is Download for either host type: the backend's values converted.
func download[T Float, D float32 | float64](c *CPU[T], dst []D, src Buf) error {
	if c.err != nil {
		return c.err
	}
	s, ok := src.(*cpuBuf[T])
	if !ok || !s.dt.IsFloat() {
		return fmt.Errorf("ops: download from %s", describe(src))
	}
	if len(dst) > len(s.f) {
		return fmt.Errorf("ops: download of %d values from a buffer of %d", len(dst), len(s.f))
	}
	for i := range dst {
		dst[i] = D(s.f[i])
	}
	return nil
}

// Sync returns the first recorded op error; CPU ops have already run.
func (c *CPU[T]) Sync() error { return c.err }

func describe(b Buf) string {
	if b == nil {
		return "a nil buffer"
	}
	return fmt.Sprintf("a %T of %d %v", b, b.Len(), b.DType())
}

// fail records the first op error.
func (c *CPU[T]) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("ops: "+format, args...)
	}
}

// f returns the first n floats of b (F32, BF16 or F16), or records an error naming
// op and arg.
func (c *CPU[T]) f(b Buf, n int, op, arg string) []T {
	return c.floats(b, n, op, arg, false)
}

// stat is f for a buffer that must be F32 whatever the compute type:
// statistics, rope tables, parameter gradients, optimizer state.
func (c *CPU[T]) stat(b Buf, n int, op, arg string) []T {
	return c.floats(b, n, op, arg, true)
}

func (c *CPU[T]) floats(b Buf, n int, op, arg string, f32 bool) []T {
	if c.err != nil {
		return nil
	}
	cb, ok := b.(*cpuBuf[T])
	if !ok || (cb.dt != F32 && (f32 || !cb.dt.IsHalf())) {
		want := "an f32, bf16 or f16"
		if f32 {
			want = "an f32"
		}
		c.fail("%s: %s is %s, want %s buffer of %s", op, arg, describe(b), want, c.Name())
		return nil
	}
	if n < 0 || len(cb.f) < n {
		c.fail("%s: %s has %d elements, need %d", op, arg, len(cb.f), n)
		return nil
	}
	return cb.f[:n:n]
}

// round rounds vals, the written part of buffer b, to bfloat16 when b is BF16
// and to half precision when it is F16: every op ends with it on each output,
// so that a 2-byte float buffer always holds values of its type, as a device
// stores them.
func (c *CPU[T]) round(b Buf, vals []T) {
	cb, ok := b.(*cpuBuf[T])
	if !ok {
		return
	}
	if !cb.dt.IsHalf() {
		return
	}
	for i, v := range vals {
		vals[i] = T(RoundAs(cb.dt, float32(v)))
	}
}

// same records an error unless every buffer has the type of the first: an
// op's data buffers share the compute type.
func (c *CPU[T]) same(op string, bufs ...Buf) {
	if c.err != nil || len(bufs) == 0 {
		return
	}
	for _, b := range bufs[1:] {
		if b != nil && bufs[0] != nil && b.DType() != bufs[0].DType() {
			c.fail("%s: mixed types %v and %v; data buffers share the compute type", op, bufs[0].DType(), b.DType())
			return
		}
	}
}

// statOpt is stat for an optional buffer: nil stays nil.
func (c *CPU[T]) statOpt(b Buf, n int, op, arg string) []T {
	if b == nil {
		return nil
	}
	return c.stat(b, n, op, arg)
}

// matmulOut records an error unless out is F32 or of a's type.
func (c *CPU[T]) matmulOut(op string, out, a Buf) {
	if c.err == nil && out != nil && a != nil && out.DType() != F32 && out.DType() != a.DType() {
		c.fail("%s: out is %v, want f32 or %v like a and b", op, out.DType(), a.DType())
	}
}

// i returns the first n ints of b, or records an error; a nil b gives nil when
// optional.
func (c *CPU[T]) i(b Buf, n int, op, arg string, optional bool) []int32 {
	if c.err != nil {
		return nil
	}
	if b == nil && optional {
		return nil
	}
	cb, ok := b.(*cpuBuf[T])
	if !ok || cb.dt != I32 {
		c.fail("%s: %s is %s, want an i32 buffer", op, arg, describe(b))
		return nil
	}
	if n < 0 || len(cb.i) < n {
		c.fail("%s: %s has %d elements, need %d", op, arg, len(cb.i), n)
		return nil
	}
	return cb.i[:n:n]
}

// check records err, if any, as op's error.
func (c *CPU[T]) check(op string, err error) {
	if err != nil {
		c.fail("%s: %w", op, err)
	}
}

// Both CPU backends implement Backend.
var (
	_ Backend = (*CPU[float32])(nil)
	_ Backend = (*CPU[float64])(nil)
)
