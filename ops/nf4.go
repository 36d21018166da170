package ops

import (
	"fmt"
	"math"
)

// NF4 is a weight in 4-bit NF4 on a backend, as bitsandbytes stores it (package
// quant holds the format on the host and explains it): N weights, flattened
// row-major, in blocks of BlockSize sharing one absmax; two 4-bit codes per
// byte, weight 2j in the high nibble of byte j and 2j+1 in the low one. With
// double quantization the absmaxes themselves are 8-bit codes into Map, scaled
// per NestedBlock codes by Absmax2 and shifted by Offset.
type NF4 struct {
	N, BlockSize int
	Packed       Buf // U8, (N+1)/2 bytes
	Absmax       Buf // F32, one per block; nil with double quantization
	Codes        Buf // U8, one per block (double quantization)
	Absmax2      Buf // F32, one per NestedBlock codes (double quantization)
	Map          Buf // F32, the 256-entry 8-bit code book (double quantization)
	NestedBlock  int
	Offset       float32
}

// Blocks is the number of absmax blocks: ceil(N / BlockSize).
func (w *NF4) Blocks() int { return (w.N + w.BlockSize - 1) / w.BlockSize }

// NF4Code is the NF4 code book: code q stands for NF4Code[q] x absmax. These are
// bitsandbytes' values (get_4bit_type("nf4"), the CUDA kernel's lookup table),
// quantiles of N(0, 1) scaled to [-1, 1] with an exact 0 at code 7.
var NF4Code = [16]float32{
	-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
	-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
	0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
	0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
}

// NF4Thresholds are the decision points of bitsandbytes' CUDA quantizer
// (dQuantizeNF4): decimal literals, written as the float64 midpoints between
// neighbouring NF4Code entries, with an f suffix, so the compiler rounds each
// decimal straight to float32, as Go does with these constants. A normalized
// weight above threshold i gets a code above i. Four of the float64 midpoints
// (thresholds 0, 8, 12, 14) lie exactly halfway between two float32 values, and
// there the decimal's last digit picks the neighbour: rounding through float64
// (torch.tensor of the Python floats), or the float32 midpoint (a+b)/2 that
// bitsandbytes' pure-PyTorch backend computes, picks the other one. The CUDA
// kernel made the checkpoints people download, so its constants are used
// (kernels/nf4.cu holds the same literals).
var NF4Thresholds = [15]float32{
	-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
	-0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
	0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
	0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
}

// NF4Index is the code of a normalized weight x = w x (1/absmax): the number of
// thresholds x lies strictly above, found by binary search (four comparisons,
// the shape of dQuantizeNF4's decision tree). A value on a threshold takes the
// lower code; a NaN lies above none and takes code 0.
func NF4Index(x float32) byte {
	q := 0
	if x > NF4Thresholds[7] {
		q = 8
	}
	if x > NF4Thresholds[q+3] {
		q += 4
	}
	if x > NF4Thresholds[q+1] {
		q += 2
	}
	if x > NF4Thresholds[q] {
		q++
	}
	return byte(q)
}

// QuantizeNF4Block codes one block of weights into out (two per byte) and
// returns its absmax. The order of operations is bitsandbytes' CUDA kernel's:
// absmax = max |w|, inv = 1/absmax in float32, code = NF4Index(w x inv). An
// all-zero block has inv = +Inf and every w x inv is NaN: code 0, as the kernel
// stores it. An odd block ends with the code of the kernel's zero padding in
// the last low nibble.
func QuantizeNF4Block(w []float32, out []byte) float32 {
	var absmax float32
	for _, v := range w {
		absmax = max(absmax, math.Float32frombits(math.Float32bits(v)&^(1<<31)))
	}
	inv := 1 / absmax
	for j := 0; j < len(w); j += 2 {
		var pad float32
		lo := NF4Index(pad * inv)
		if j+1 < len(w) {
			lo = NF4Index(w[j+1] * inv)
		}
		out[j/2] = NF4Index(w[j]*inv)<<4 | lo
	}
	return absmax
}

// NF4Scale is an absmax rebuilt from its double-quantized code as bitsandbytes'
// dequantize_blockwise and the offset addition do: float32(code2 x absmax2),
// then + offset, two float32 roundings.
func NF4Scale(code2, absmax2, offset float32) float32 {
	return float32(code2*absmax2) + offset
}

// FillNormalHost writes N(0, std²) values for elements [first, first+len(dst))
// of the tensor whose generator is keyed by key; first must be even. Element
// pair (2j, 2j+1) is the Box-Muller transform of the uniforms from counters
// key+2j and key+2j+1 through splitmix64's finaliser, computed in float64 and
// rounded once to float32. It is a counter-based generator, so any piece of a
// tensor can be drawn alone and a device can draw the same values
// (Backend.FillNormal).
func FillNormalHost(dst []float32, key uint64, first int, std float64) {
	for i := 0; i < len(dst); i += 2 {
		j := uint64(first + i)
		u1 := (float64(Splitmix64(key+j)>>11) + 1) / (1 << 53) // (0, 1]: log is finite
		u2 := float64(Splitmix64(key+j+1)>>11) / (1 << 53)
		r := math.Sqrt(-2*math.Log(u1)) * std
		s, c := math.Sincos(2 * math.Pi * u2)
		dst[i] = float32(r * c)
		if i+1 < len(dst) {
			dst[i+1] = float32(r * s)
		}
	}
}

// Splitmix64 is the finaliser of Steele, Lea and Flood's SplitMix64: a bijective
// mix whose outputs on consecutive counters pass BigCrush.
func Splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// UploadBytes copies host bytes into a U8 buffer.
func (c *CPU[T]) UploadBytes(dst Buf, src []byte) error {
	d, ok := dst.(*cpuBuf[T])
	if !ok || d.dt != U8 {
		return fmt.Errorf("ops: byte upload into %s", describe(dst))
	}
	if len(src) > len(d.u) {
		return fmt.Errorf("ops: upload of %d bytes into a buffer of %d", len(src), len(d.u))
	}
	copy(d.u, src)
	return nil
}

// DownloadBytes copies the first len(dst) bytes of a U8 buffer to the host.
func (c *CPU[T]) DownloadBytes(dst []byte, src Buf) error {
	if c.err != nil {
		return c.err
	}
	s, ok := src.(*cpuBuf[T])
	if !ok || s.dt != U8 {
		return fmt.Errorf("ops: byte download from %s", describe(src))
	}
	if len(dst) > len(s.u) {
		return fmt.Errorf("ops: download of %d bytes from a buffer of %d", len(dst), len(s.u))
	}
	copy(dst, s.u)
	return nil
}

// bytes returns the first n bytes of a U8 buffer, or records an error.
func (c *CPU[T]) bytes(b Buf, n int, op, arg string) []byte {
	if c.err != nil {
		return nil
	}
	cb, ok := b.(*cpuBuf[T])
	if !ok || cb.dt != U8 {
		c.fail("%s: %s is %s, want a u8 buffer", op, arg, describe(b))
		return nil
	}
	if n < 0 || len(cb.u) < n {
		c.fail("%s: %s has %d bytes, need %d", op, arg, len(cb.u), n)
		return nil
	}
	return cb.u[:n:n]
}

// Check reports whether w's layout is usable: a count, an even block size,
// and either absmaxes or every part of double quantization. Backends check it
// before DequantNF4.
func (w *NF4) Check() error {
	switch {
	case w.N < 0:
		return fmt.Errorf("%d weights", w.N)
	case w.BlockSize < 2 || w.BlockSize%2 != 0:
		return fmt.Errorf("block size %d must be even and positive", w.BlockSize)
	case w.Absmax == nil && (w.NestedBlock <= 0 || w.Codes == nil || w.Absmax2 == nil || w.Map == nil):
		return fmt.Errorf("neither absmax values nor double-quantized codes, absmax2, map and a nested block size")
	}
	return nil
}

// DequantNF4 writes w's N weights into out (F32 or the compute type):
// out[i] = NF4Code[code i] x absmax of its block, one float32 product rounded
// once to out's type. With double quantization each absmax is rebuilt on the
// fly (NF4Scale).
func (c *CPU[T]) DequantNF4(out Buf, w NF4) {
	const op = "DequantNF4"
	if err := w.Check(); err != nil {
		c.fail("%s: %v", op, err)
		return
	}
	blocks := w.Blocks()
	o := c.f(out, w.N, op, "out")
	packed := c.bytes(w.Packed, (w.N+1)/2, op, "packed")
	var absmax, absmax2, cmap []T
	var codes []byte
	if w.Absmax != nil {
		absmax = c.stat(w.Absmax, blocks, op, "absmax")
	} else {
		codes = c.bytes(w.Codes, blocks, op, "codes")
		absmax2 = c.stat(w.Absmax2, (blocks+w.NestedBlock-1)/w.NestedBlock, op, "absmax2")
		cmap = c.stat(w.Map, 256, op, "map")
	}
	if c.err != nil {
		return
	}
	dt := out.DType()
	parallelFor(blocks, c.workers, w.N, func(lo, hi int) {
		for b := lo; b < hi; b++ {
			var scale float32
			if absmax != nil {
				scale = float32(absmax[b])
			} else {
				scale = NF4Scale(float32(cmap[codes[b]]), float32(absmax2[b/w.NestedBlock]), w.Offset)
			}
			var lut [16]T
			for k := range lut {
				lut[k] = T(RoundAs(dt, NF4Code[k]*scale))
			}
			for i := b * w.BlockSize; i < min(w.N, (b+1)*w.BlockSize); i++ {
				code := packed[i/2] >> 4
				if i%2 == 1 {
					code = packed[i/2] & 15
				}
				o[i] = lut[code]
			}
		}
	})
}

// QuantizeNF4 codes the n F32 values of x in blocks of blockSize into packed
// (U8, (n+1)/2 bytes) and absmax (F32, one per block), as QuantizeNF4Block
// does; double quantization of the absmaxes is the host's (package quant).
func (c *CPU[T]) QuantizeNF4(packed, absmax, x Buf, n, blockSize int) {
	const op = "QuantizeNF4"
	if blockSize < 2 || blockSize%2 != 0 || n < 0 {
		c.fail("%s: %d values in blocks of %d: the block size must be even and positive", op, n, blockSize)
		return
	}
	blocks := (n + blockSize - 1) / blockSize
	xs := c.stat(x, n, op, "x")
	p := c.bytes(packed, (n+1)/2, op, "packed")
	am := c.stat(absmax, blocks, op, "absmax")
	if c.err != nil {
		return
	}
	parallelFor(blocks, c.workers, n, func(lo, hi int) {
		w := make([]float32, blockSize)
		for b := lo; b < hi; b++ {
			start := b * blockSize
			blk := w[:min(n, start+blockSize)-start]
			for i := range blk {
				blk[i] = float32(xs[start+i])
			}
			am[b] = T(QuantizeNF4Block(blk, p[start/2:]))
		}
	})
}

// FillNormal writes n values of the generator keyed by key (FillNormalHost
// from element 0, std) into out, F32, BF16 or F16 (rounded from the float32 value,
// as Upload rounds).
func (c *CPU[T]) FillNormal(out Buf, n int, key uint64, std float64) {
	o := c.f(out, n, "FillNormal", "out")
	if c.err != nil {
		return
	}
	const piece = 1 << 16 // even, so every piece starts a Box-Muller pair
	pieces := (n + piece - 1) / piece
	parallelFor(pieces, c.workers, 16*n, func(lo, hi int) {
		buf := make([]float32, piece)
		for p := lo; p < hi; p++ {
			start := p * piece
			v := buf[:min(n, start+piece)-start]
			FillNormalHost(v, key, start, std)
			for i, x := range v {
				o[start+i] = T(x)
			}
		}
	})
	c.round(out, o)
}
