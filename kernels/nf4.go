package kernels

import (
	"fmt"
	"math"
	"math/bits"

	"train/ops"
)

// NF4 weights and random weights on the GPU (kernels/nf4.cu), the twins of
// ops.CPU's DequantNF4, QuantizeNF4 and FillNormal (ops/nf4.go): dequantization
// and quantization equal the CPU's bit for bit; FillNormal's values may differ
// from the host's by one float32 ulp in rare elements (CUDA's double log and
// sincos are not Go's). The wrappers check the arguments as ops.CPU does and
// record an error instead of launching on a bad one.

// UploadBytes copies host bytes into a U8 buffer (len(src) <= dst.Len()).
func (b *Backend) UploadBytes(dst ops.Buf, src []byte) error {
	return b.upload(dst, ops.U8, src, len(src), "bytes")
}

// DownloadBytes waits for pending work and copies the first len(dst) bytes of
// a U8 buffer to the host; it returns the first recorded op error.
func (b *Backend) DownloadBytes(dst []byte, src ops.Buf) error {
	if err := b.Sync(); err != nil {
		return err
	}
	s, ok := src.(*buf)
	if !ok || s.dt != ops.U8 {
		return fmt.Errorf("kernels: byte download from %s", describe(src))
	}
	if len(dst) > s.n {
		return fmt.Errorf("kernels: download of %d bytes from a buffer of %d", len(dst), s.n)
	}
	if len(dst) == 0 {
		return nil
	}
	if err := b.call(func(dv *device) error { return dv.download(dst, s.ptr) }); err != nil {
		return fmt.Errorf("kernels: download: %w", err)
	}
	return nil
}

// u8 is ptr for a U8 buffer.
func (b *Backend) u8(x ops.Buf, n int, op, arg string) uint64 {
	return b.ptr(x, n, ops.U8, op, arg, false)
}

// dequantChunks is how many chunks one dequant_nf4 thread does (R in
// nf4.cu), by out's type; a chunk is 16 bytes of out: 8 bf16 or f16, or 4 f32
// weights.
// dequantBlock is the threads per block.
func dequantChunks(dt ops.DType) int {
	if dt.IsHalf() {
		return 8
	}
	return 2
}

const dequantBlock = 128

// DequantNF4 writes w's N weights into out (F32, BF16 or F16): out[i] = NF4Code[code
// of i] x the absmax of its block, one float32 product rounded once to out's
// type; with double quantization each absmax is rebuilt on the fly
// (ops.NF4Scale). One thread per 64 (bf16, f16) or 16 (f32) weights
// (dequant_nf4_bf16, _f16, _f32).
//
// Speed: the kernel reads half a byte and writes 2 (bf16) bytes per weight, so
// a 70B MLP matrix (8192x28672 = 235M weights) reads 118 MB and writes 470 MB:
// at an H200's ~4 TB/s about 0.15 ms. Measured on an H200 (driver 580, the
// sm_90 SASS of nvcc 11.8): 0.16 ms (3.7 TB/s read and written), 0.19 ms with
// double quantization; TestDequantNF4Throughput logs it.
func (b *Backend) DequantNF4(out ops.Buf, w ops.NF4) {
	const op = "DequantNF4"
	if b.err != nil {
		return
	}
	if err := checkNF4(&w); err != nil {
		b.fail("%s: %v", op, err)
		return
	}
	blocks := w.Blocks()
	o := b.data(out, w.N, op, "out")
	p := b.u8(w.Packed, (w.N+1)/2, op, "packed")
	var am, codes, am2, cmap uint64
	if w.Absmax != nil {
		am = b.f(w.Absmax, blocks, op, "absmax")
	} else {
		codes = b.u8(w.Codes, blocks, op, "codes")
		am2 = b.f(w.Absmax2, (blocks+w.NestedBlock-1)/w.NestedBlock, op, "absmax2")
		cmap = b.f(w.Map, 256, op, "map")
	}
	if b.err != nil || w.N == 0 {
		return
	}
	// The kernel tells the two layouts apart by a null absmax: a buffer of at
	// least one element (N > 0) has a non-zero pointer.
	per := 8 / elemSize(out.DType()) * dequantChunks(out.DType()) // packed bytes per thread
	threads := ((w.N+1)/2 + per - 1) / per
	b.launch1(op, kname("dequant_nf4", out), threads, dequantBlock, o, p, am, codes, am2, cmap, aL(w.N),
		aI(w.BlockSize), aI(pow2Shift(w.BlockSize)), aI(w.NestedBlock), aI(pow2Shift(w.NestedBlock)), aF(w.Offset))
}

// pow2Shift is log2(v) when v is a power of two, else -1.
func pow2Shift(v int) int {
	if v > 0 && v&(v-1) == 0 {
		return bits.TrailingZeros(uint(v))
	}
	return -1
}

// checkNF4 is ops' check of an NF4 weight's sizes, and the kernel's limits:
// block sizes that fit an int32.
func checkNF4(w *ops.NF4) error {
	if err := w.Check(); err != nil {
		return err
	}
	switch {
	case w.BlockSize > math.MaxInt32:
		return fmt.Errorf("block size %d is too large for this kernel", w.BlockSize)
	case w.Absmax == nil && w.NestedBlock > math.MaxInt32:
		return fmt.Errorf("nested block size %d is too large for this kernel", w.NestedBlock)
	}
	return nil
}

// QuantizeNF4 codes the n F32 values of x in blocks of blockSize (even) into
// packed (U8, (n+1)/2 bytes) and absmax (F32, one per block), as
// ops.QuantizeNF4Block does: one warp per block (quantize_nf4).
func (b *Backend) QuantizeNF4(packed, absmax, x ops.Buf, n, blockSize int) {
	const op = "QuantizeNF4"
	if b.err != nil {
		return
	}
	if blockSize < 2 || blockSize%2 != 0 || n < 0 {
		b.fail("%s: %d values in blocks of %d: the block size must be even and positive", op, n, blockSize)
		return
	}
	if blockSize > math.MaxInt32 {
		b.fail("%s: block size %d is too large for this kernel", op, blockSize)
		return
	}
	blocks := (n + blockSize - 1) / blockSize
	xv := b.f(x, n, op, "x")
	p := b.u8(packed, (n+1)/2, op, "packed")
	am := b.f(absmax, blocks, op, "absmax")
	if b.err != nil || n == 0 {
		return
	}
	b.launch1(op, "quantize_nf4", 32*blocks, ewBlock, p, am, xv, aL(n), aI(blockSize))
}

// FillNormal writes the first n values of the normal generator keyed by key
// (ops.FillNormalHost from element 0, std) into out, F32, BF16 or F16 (rounded
// from the float32 value): one thread per Box-Muller pair (fill_normal_f32,
// _bf16, _f16).
// A rare value differs from the host's by one float32 ulp (nf4.cu says why).
func (b *Backend) FillNormal(out ops.Buf, n int, key uint64, std float64) {
	const op = "FillNormal"
	o := b.data(out, n, op, "out")
	b.launch1(op, kname("fill_normal", out), (n+1)/2, ewBlock, o, aL(n), key, aD(std))
}
