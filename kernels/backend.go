// Package kernels is the CUDA backend of ops.Backend: the driver and cuBLAS
// loaded at run time (cuda.go, a cgo file; libs.go says
// where cuBLAS is looked for, pip's wheels included), the kernels of
// kernels/*.cu compiled into kernels.fatbin and embedded, and Go launch wrappers.
//
// The model of the package:
//
//   - One Backend is one GPU: its primary context, one stream, the kernel module
//     and a cuBLAS handle. Every CUDA call runs on one goroutine locked to one OS
//     thread (thread.go), which owns the context; Close ends it.
//   - A Buf is a device pointer, a length and a dtype; views (Slice) offset the
//     pointer. F32 is float32 and I32 int32 (4 bytes), BF16 bfloat16 (2 bytes,
//     converted on the host by Upload and Download, to nearest even), U8 bytes
//     (UploadBytes, DownloadBytes: NF4 weights' packed codes, nf4.go).
//   - Mixed precision (ops.Backend's "Float types"): every kernel exists for
//     float and bfloat16 data (kernels/*.cu: name_f32, name_bf16), loads to
//     float, computes in float and rounds once on store. The wrapper picks the
//     kernel by its data buffers' dtype and records an error when they mix
//     types or when a statistic, rope table, parameter gradient or optimizer
//     buffer is not F32.
//   - Ops are launched on the stream and return at once; Upload, Download and
//     Sync wait for the stream. Like the CPU backend, a bad argument (a buffer
//     too short, a token id out of range) records the first error, later ops are
//     skipped, and Sync or Download returns it. Range errors found inside a
//     kernel go to a small device error word that Sync reads.
//   - Matmuls: float32 through cublasSgemm (default math mode: no TF32);
//     bfloat16 a and b through cublasGemmEx computing in float32, into a
//     float32 or bfloat16 out. Training attention is cuDNN's fused attention
//     where libcudnn.so.9 loads and the rows need no segment mask (cudnn.go),
//     else our FlashAttention-2 on the tensor cores for bf16 and f16 at head
//     dims 64 and 128 (flash_attention.go), and strided-batched GEMMs of the
//     same kinds around row kernels otherwise (attention.go). Everything else
//     runs in the kernels. Our kernels are deterministic: no atomics (but the
//     error word); reductions in a fixed order. cuDNN does not promise that
//     of its backward (TRAIN_ATTENTION=flash keeps it out).
//   - Workspaces outside the caller's memory plan, grown on demand and freed by
//     Close: SumSquares' partial sums (scratch) and the attention's workspace
//     (cuDNN: its plan's, softmax_sum and the dQ accumulator; flash: delta,
//     B×H×T floats; GEMM: score matrices, at most 256 MiB whatever T;
//     AttentionWorkspaceBytes).
//
// Later work (kernels/NOTES.md): wgmma attention, cuBLASLt.
package kernels

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"unsafe"

	"train/ops"
)

// fatbin is kernels/*.cu compiled by scripts/build-kernels.sh (sm_80, sm_90 and
// compute_90 PTX); kernels.sum holds the hash of the sources it came from.
//
//go:embed kernels.fatbin
var fatbin []byte

// FatbinEnv names a file that replaces the embedded kernel image, for
// developing kernels on a GPU machine before the new fatbin is committed.
const FatbinEnv = "TRAIN_KERNELS_FATBIN"

// Backend is one GPU. Like ops.CPU its ops are not safe for concurrent use:
// one goroutine drives a Backend at a time.
type Backend struct {
	th  *thread
	dev *device
	err error // first op error, returned by Sync/Download

	errWord  uint64 // device int32[4]: code, row, value, limit (see common.cuh)
	scratch  uint64 // SumSquares' partial sums; grown on demand
	scratchB int64  // its size in bytes
	// The training attention's workspace: flash attention's delta
	// (flash_attention.go), or the GEMM attention's score matrices of one
	// chunk and bf16 backward's accumulators (attention.go, planAttention),
	// grown on demand. attnLimit replaces attnWorkspaceLimit when not 0
	// (tests force small chunks with it).
	attnWS    uint64
	attnWSB   int64
	attnLimit int64
	// attnPick is TRAIN_ATTENTION: "auto" (cuDNN's fused attention where it
	// takes the call, else flash, else GEMM), "cudnn" (an error where cuDNN
	// cannot take an unpacked call) or "flash" (never cuDNN).
	attnPick string
	closed   bool
}

// AttentionEnv chooses the training attention (Backend.attnPick).
const AttentionEnv = "TRAIN_ATTENTION"

// Info describes the device and the libraries a Backend runs on.
type Info struct {
	Name    string // the GPU, e.g. "NVIDIA H100 80GB HBM3"
	Ordinal int
	// Capability is the compute capability as major*10 + minor: 90 for an
	// H100 or H200, 75 for a T4, 70 for a V100.
	Capability     int
	Driver, CUBLAS int // versions, e.g. 13000 and 130000
	// The files loaded: libcuda, libcublas and the libcublasLt beside it
	// (paths where the dynamic linker tells them; "" for cuBLASLt when it
	// cannot be found among the loaded objects).
	LibCUDA, CUBLASL, CUBLASLt string
	FreeMem, Total             int64
}

// New opens GPU 0. Without a usable GPU it returns an error starting with
// "device cuda: no usable NVIDIA GPU: " that says why (libcuda missing, no
// device, ...).
func New() (*Backend, error) { return Open(0) }

// DeviceCount is how many GPUs the driver shows this process (after
// CUDA_VISIBLE_DEVICES), or an error saying why there is no usable GPU.
func DeviceCount() (int, error) {
	n, err := deviceCount()
	if err != nil {
		return 0, fmt.Errorf("device cuda: no usable NVIDIA GPU: %w", err)
	}
	return n, nil
}

// LocalGPU is the GPU a rank with the given local rank uses when the driver
// shows it count GPUs: its own when the node's GPUs are all visible, the one
// GPU when the launcher gave each rank one (CUDA_VISIBLE_DEVICES per task, as
// Slurm's --gpus-per-task does), and an error when there are fewer GPUs than
// ranks on the node.
func LocalGPU(localRank, count int) (int, error) {
	switch {
	case count == 1:
		return 0, nil
	case localRank >= 0 && localRank < count:
		return localRank, nil
	}
	return 0, fmt.Errorf("device cuda: local rank %d, but this process sees %d GPUs: start one rank per GPU (or give each rank its own GPU with CUDA_VISIBLE_DEVICES)", localRank, count)
}

// Open opens GPU ord (the local rank's GPU under a launcher).
func Open(ord int) (*Backend, error) {
	img := fatbin
	if p := os.Getenv(FatbinEnv); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("device cuda: %s: %w", FatbinEnv, err)
		}
		img = b
	}
	pick := os.Getenv(AttentionEnv)
	switch pick {
	case "":
		pick = "auto"
	case "auto", "cudnn", "flash":
	default:
		return nil, fmt.Errorf("device cuda: %s=%q: want auto, cudnn or flash", AttentionEnv, pick)
	}
	b := &Backend{th: startThread(), attnPick: pick}
	var err error
	b.th.do(func() { b.dev, err = openDevice(ord, img) })
	if err != nil {
		b.th.stop()
		return nil, fmt.Errorf("device cuda: no usable NVIDIA GPU: %w", err)
	}
	b.th.do(func() {
		if b.errWord, err = b.dev.alloc(16); err == nil {
			err = b.dev.memset32(b.errWord, 0, 4)
		}
	})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("device cuda: %w", err)
	}
	return b, nil
}

// Close waits for pending work, frees the backend's own memory and the
// context's resources, and ends its thread. Buffers from Alloc must be freed
// before. It is safe to call twice.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	var err error
	b.th.do(func() {
		err = b.dev.sync()
		for _, p := range []uint64{b.errWord, b.scratch, b.attnWS} {
			if p != 0 {
				if e := b.dev.free(p); err == nil {
					err = e
				}
			}
		}
		if e := b.dev.close(); err == nil {
			err = e
		}
	})
	b.th.stop()
	return err
}

// Info reports the device, library versions and memory.
func (b *Backend) Info() (Info, error) {
	in := Info{Name: b.dev.name, Ordinal: b.dev.ord, Capability: b.dev.cc, Driver: b.dev.driver, CUBLAS: b.dev.blasVer}
	in.LibCUDA, in.CUBLASL, in.CUBLASLt = libPaths()
	err := b.call(func(d *device) error {
		var e error
		in.FreeMem, in.Total, e = d.memInfo()
		return e
	})
	if err != nil {
		return in, fmt.Errorf("kernels: %w", err)
	}
	return in, nil
}

// HasBF16 reports whether the GPU computes on bfloat16 natively (tensor cores
// and cuBLAS' bf16 GEMMs: compute capability 8.0, Ampere, and later). Older
// GPUs train in F16 with loss scaling instead.
func (b *Backend) HasBF16() bool { return b.dev.cc >= minBF16CC }

// minBF16CC is the compute capability of native bfloat16 (sm_80).
const minBF16CC = 80

// Name reports "cuda"; the storage type (F32 or BF16) is the model's choice,
// logged beside it as the precision.
func (b *Backend) Name() string { return "cuda" }

// buf is a device buffer or a view of one.
type buf struct {
	ptr  uint64
	n    int
	dt   ops.DType
	base bool // returned by Alloc or AllocHost (Free takes only these)
	host bool // page-locked host memory (AllocHost): only Copy moves it
}

func (x *buf) Len() int         { return x.n }
func (x *buf) DType() ops.DType { return x.dt }

func (x *buf) Slice(off, n int) ops.Buf {
	if off < 0 || n < 0 || off+n > x.n {
		panic(fmt.Sprintf("kernels: view [%d:%d] of a buffer of %d", off, off+n, x.n))
	}
	return &buf{ptr: x.ptr + uint64(elemSize(x.dt)*off), n: n, dt: x.dt, host: x.host}
}

// elemSize is the size in bytes of an element of type dt, 0 for an unknown
// type.
func elemSize(dt ops.DType) int {
	switch dt {
	case ops.F32, ops.I32:
		return 4
	case ops.BF16, ops.F16:
		return 2
	case ops.U8:
		return 1
	}
	return 0
}

// zero sets n elements of type dt at p to zero (all bits zero in every type).
func zero(d *device, p uint64, dt ops.DType, n int) error {
	switch elemSize(dt) {
	case 1:
		return d.memset8(p, 0, n)
	case 2:
		return d.memset16(p, 0, n)
	}
	return d.memset32(p, 0, n)
}

// Alloc returns a zeroed buffer of n elements of type dt (F32, I32, BF16, F16
// or U8).
func (b *Backend) Alloc(dt ops.DType, n int) (ops.Buf, error) {
	if n < 0 || elemSize(dt) == 0 {
		return nil, fmt.Errorf("kernels: alloc of %d elements of %v", n, dt)
	}
	x := &buf{n: n, dt: dt, base: true}
	if n == 0 {
		return x, nil
	}
	err := b.call(func(d *device) error {
		var e error
		if x.ptr, e = d.alloc(elemSize(dt) * n); e == nil {
			e = zero(d, x.ptr, dt, n)
		}
		return e
	})
	if err != nil {
		return nil, fmt.Errorf("kernels: alloc of %d %v: %w", n, dt, err)
	}
	return x, nil
}

// AllocHost returns a buffer of n elements of type dt in page-locked host
// memory, mapped for the device: Copy moves data between it and device
// buffers on the stream (at PCIe speed) and no other op takes it. It holds
// what does not fit on the device, such as offloaded activations.
func (b *Backend) AllocHost(dt ops.DType, n int) (ops.Buf, error) {
	if n < 0 || elemSize(dt) == 0 {
		return nil, fmt.Errorf("kernels: host alloc of %d elements of %v", n, dt)
	}
	x := &buf{n: n, dt: dt, base: true, host: true}
	if n == 0 {
		return x, nil
	}
	err := b.call(func(d *device) error {
		var e error
		x.ptr, e = d.allocHost(elemSize(dt) * n)
		return e
	})
	if err != nil {
		return nil, fmt.Errorf("kernels: host alloc of %d %v: %w", n, dt, err)
	}
	return x, nil
}

// Free waits for pending work and releases an allocation. Freeing a view or a
// foreign buffer records an error.
func (b *Backend) Free(x ops.Buf) {
	d, ok := x.(*buf)
	if !ok || !d.base {
		b.fail("Free: %s is not an allocation of this backend", describe(x))
		return
	}
	if d.ptr == 0 {
		return
	}
	err := b.call(func(dv *device) error {
		if e := dv.sync(); e != nil {
			return e
		}
		if d.host {
			return dv.freeHost(d.ptr)
		}
		return dv.free(d.ptr)
	})
	d.ptr, d.n = 0, 0
	if err != nil {
		b.fail("Free: %w", err)
	}
}

// Upload copies host values into an F32 buffer, or into a BF16 or F16 one
// rounded to nearest even on the host (ops.ToBF16, ops.ToF16).
func (b *Backend) Upload(dst ops.Buf, src []float32) error {
	if dt := dtypeOf(dst, ops.F32); dt.IsHalf() {
		to := ops.ToBF16
		if dt == ops.F16 {
			to = ops.ToF16
		}
		h := make([]uint16, len(src))
		for i, v := range src {
			h[i] = to(v)
		}
		return b.upload(dst, dt, hostBytes(h), len(h), "values")
	}
	return b.upload(dst, ops.F32, hostBytes(src), len(src), "values")
}

// dtypeOf is x's dtype when it is BF16 or F16, else def: the type a float
// transfer wants (a wrong type is reported by the transfer itself).
func dtypeOf(x ops.Buf, def ops.DType) ops.DType {
	if x != nil && x.DType().IsHalf() {
		return x.DType()
	}
	return def
}

// UploadInt copies host values into an I32 buffer.
func (b *Backend) UploadInt(dst ops.Buf, src []int32) error {
	return b.upload(dst, ops.I32, hostBytes(src), len(src), "ints")
}

// hostBytes is the memory of v as bytes, for device.upload and download.
func hostBytes[E byte | uint16 | int32 | float32](v []E) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), len(v)*int(unsafe.Sizeof(v[0])))
}

// upload copies n host elements of type dt, the bytes src, into dst, a buffer
// of type dt.
func (b *Backend) upload(dst ops.Buf, dt ops.DType, src []byte, n int, what string) error {
	d, ok := dst.(*buf)
	if !ok || d.dt != dt {
		return fmt.Errorf("kernels: upload of %s into %s", what, describe(dst))
	}
	if n > d.n {
		return fmt.Errorf("kernels: upload of %d %s into a buffer of %d", n, what, d.n)
	}
	if n == 0 {
		return nil
	}
	err := b.call(func(dv *device) error { return dv.upload(d.ptr, src) })
	if err != nil {
		return fmt.Errorf("kernels: upload: %w", err)
	}
	return nil
}

// Download waits for pending work and copies the first len(dst) values of src,
// an F32, BF16 or F16 buffer (widened on the host, exactly).
func (b *Backend) Download(dst []float32, src ops.Buf) error {
	if err := b.Sync(); err != nil {
		return err
	}
	s, ok := src.(*buf)
	if !ok || !s.dt.IsFloat() {
		return fmt.Errorf("kernels: download from %s", describe(src))
	}
	if len(dst) > s.n {
		return fmt.Errorf("kernels: download of %d values from a buffer of %d", len(dst), s.n)
	}
	if len(dst) == 0 {
		return nil
	}
	var err error
	if s.dt.IsHalf() {
		from := ops.FromBF16
		if s.dt == ops.F16 {
			from = ops.FromF16
		}
		h := make([]uint16, len(dst))
		err = b.call(func(dv *device) error { return dv.download(hostBytes(h), s.ptr) })
		for i, v := range h {
			dst[i] = from(v)
		}
	} else {
		err = b.call(func(dv *device) error { return dv.download(hostBytes(dst), s.ptr) })
	}
	if err != nil {
		return fmt.Errorf("kernels: download: %w", err)
	}
	return nil
}

// Download64 is Download widened to float64.
func (b *Backend) Download64(dst []float64, src ops.Buf) error {
	tmp := make([]float32, len(dst))
	if err := b.Download(tmp, src); err != nil {
		return err
	}
	for i, v := range tmp {
		dst[i] = float64(v)
	}
	return nil
}

// Sync waits for the stream and returns the first error: a recorded op error,
// a CUDA error, or a range error a kernel reported.
func (b *Backend) Sync() error {
	if b.err != nil {
		return b.err
	}
	if b.closed {
		return fmt.Errorf("kernels: backend used after Close")
	}
	var word [4]int32
	err := b.call(func(d *device) error { return d.download(hostBytes(word[:]), b.errWord) })
	if err != nil {
		b.fail("%w", err)
		return b.err
	}
	if word[0] != 0 {
		b.fail("%s", kernelError(word))
	}
	return b.err
}

// Kernel error codes, as common.cuh defines them.
var kernelOps = map[int32]string{
	1: "EmbeddingForward: token id %[2]d at row %[1]d outside vocabulary [0,%[3]d)",
	2: "EmbeddingBackward: token id %[2]d at row %[1]d outside vocabulary [0,%[3]d)",
	3: "RopeForward/RopeBackward: position %[2]d at row %[1]d outside the rope table [0,%[3]d)",
	4: "CrossEntropyForward: target %[2]d at row %[1]d outside vocabulary [0,%[3]d) and not -100",
	5: "CrossEntropyBackward: target %[2]d at row %[1]d outside vocabulary [0,%[3]d) and not -100",
}

func kernelError(w [4]int32) string {
	if f, ok := kernelOps[w[0]]; ok {
		return fmt.Sprintf(f, w[1], w[2], w[3])
	}
	return fmt.Sprintf("kernel error code %d (row %d, value %d, limit %d)", w[0], w[1], w[2], w[3])
}

func describe(x ops.Buf) string {
	if x == nil {
		return "a nil buffer"
	}
	return fmt.Sprintf("a %T of %d %v", x, x.Len(), x.DType())
}

// fail records the first op error.
func (b *Backend) fail(format string, args ...any) {
	if b.err == nil {
		b.err = fmt.Errorf("kernels: "+format, args...)
	}
}

// ptr returns the device pointer of the first n elements of x, of type dt, or
// records an error naming op and arg. A nil x gives 0 when optional.
func (b *Backend) ptr(x ops.Buf, n int, dt ops.DType, op, arg string, optional bool) uint64 {
	if b.err != nil {
		return 0
	}
	if x == nil && optional {
		return 0
	}
	d, ok := x.(*buf)
	if !ok || d.dt != dt {
		b.fail("%s: %s is %s, want a %v buffer of this backend", op, arg, describe(x), dt)
		return 0
	}
	if n < 0 || d.n < n {
		b.fail("%s: %s has %d elements, need %d", op, arg, d.n, n)
		return 0
	}
	return d.ptr
}

// f is ptr for an F32 buffer: a statistic (rstd, lse, losses), a rope table,
// a parameter gradient (dtable, dw) or an optimizer buffer, F32 whatever the
// compute type.
func (b *Backend) f(x ops.Buf, n int, op, arg string) uint64 {
	return b.ptr(x, n, ops.F32, op, arg, false)
}

// data is ptr for a data buffer (activations, weights, their gradients): F32,
// BF16 or F16. Wrappers check with same that an op's data buffers agree.
func (b *Backend) data(x ops.Buf, n int, op, arg string) uint64 {
	d, ok := x.(*buf)
	if b.err == nil && (!ok || !d.dt.IsFloat()) {
		b.fail("%s: %s is %s, want an f32, bf16 or f16 buffer of this backend", op, arg, describe(x))
	}
	if b.err != nil {
		return 0
	}
	return b.ptr(x, n, d.dt, op, arg, false)
}

// same records an error unless every non-nil buffer has the dtype of the
// first: an op's data buffers share the compute type (ops.Backend).
func (b *Backend) same(op string, bufs ...ops.Buf) {
	if b.err != nil || len(bufs) == 0 || bufs[0] == nil {
		return
	}
	for _, x := range bufs[1:] {
		if x != nil && x.DType() != bufs[0].DType() {
			b.fail("%s: mixed types %v and %v; data buffers share the compute type", op, bufs[0].DType(), x.DType())
			return
		}
	}
}

// kname is kernel's instantiation for x's data type: kernel_f32, kernel_bf16
// or kernel_f16 (see TR_KERNEL_FLOATS in common.cuh).
func kname(kernel string, x ops.Buf) string {
	if x == nil {
		return kernel + "_f32"
	}
	return kernel + dtSuffix(x.DType())
}

func (b *Backend) i(x ops.Buf, n int, op, arg string, optional bool) uint64 {
	return b.ptr(x, n, ops.I32, op, arg, optional)
}

// run calls f on the CUDA thread unless an error is recorded, and records its
// error under op's name.
func (b *Backend) run(op string, f func(d *device) error) {
	if b.err != nil {
		return
	}
	if b.closed {
		b.fail("%s: backend used after Close", op)
		return
	}
	if err := b.call(f); err != nil {
		b.fail("%s: %w", op, err)
	}
}

var errClosed = errors.New("backend used after Close")

// call runs f on the CUDA thread and returns its error; after Close it runs
// nothing and returns errClosed.
func (b *Backend) call(f func(d *device) error) error {
	var err error
	if !b.th.do(func() { err = f(b.dev) }) {
		return errClosed
	}
	return err
}

// launch1 launches kernel over n threads in blocks of block (a 1-D grid); n == 0
// launches nothing.
func (b *Backend) launch1(op, kernel string, n, block int, args ...uint64) {
	if n <= 0 || b.err != nil {
		return
	}
	grid := (n + block - 1) / block
	if grid > math.MaxInt32 {
		b.fail("%s: %d threads is too many for one launch", op, n)
		return
	}
	b.run(op, func(d *device) error { return d.launch(kernel, [3]int{grid, 1, 1}, [3]int{block, 1, 1}, args) })
}

// Kernel argument slots (see tr_launch in cuda.go).
func aI(v int) uint64     { return uint64(uint32(int32(v))) }
func aL(v int) uint64     { return uint64(int64(v)) }
func aF(v float32) uint64 { return uint64(math.Float32bits(v)) }
func aD(v float64) uint64 { return math.Float64bits(v) }
func aB(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}
func (b *Backend) ew() uint64 { return b.errWord }

// Backend implements ops.Backend.
var _ ops.Backend = (*Backend)(nil)
