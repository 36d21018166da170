package quant

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"

	"train/ops"
)

// DefaultBlockSize is the number of weights sharing one absmax: bitsandbytes'
// default for 4-bit weights, and what every *-bnb-4bit checkpoint uses.
const DefaultBlockSize = 64

// NestedBlockSize is the number of absmaxes sharing one absmax2 under double
// quantization (quantize_4bit passes 256 to quantize_blockwise).
const NestedBlockSize = 256

// NF4Code is the NF4 code book: code q stands for NF4Code[q] x absmax
// (ops.NF4Code, where the backends' dequantization reads it).
var NF4Code = ops.NF4Code

// nf4Thresholds are the decision points of bitsandbytes' CUDA quantizer
// (ops.NF4Thresholds says why these literals).
var nf4Thresholds = ops.NF4Thresholds

// nf4IndexRef is the code of a normalized weight x = w x (1/absmax): the number
// of thresholds x lies strictly above. A value on a threshold takes the lower
// code; a NaN lies above none and takes code 0, as in dQuantizeNF4.
func nf4IndexRef(x float32) byte {
	var q byte
	for _, t := range nf4Thresholds {
		if x > t {
			q++
		}
	}
	return q
}

// nf4Index is the code of a normalized weight (ops.NF4Index: a binary search
// over the thresholds, which the tests hold to nf4IndexRef).
func nf4Index(x float32) byte { return ops.NF4Index(x) }

// Options choose how Quantize quantizes. The zero value is bitsandbytes'
// quantize_4bit default: blocks of 64, no double quantization.
type Options struct {
	BlockSize   int  // weights per absmax; 0 means DefaultBlockSize
	DoubleQuant bool // quantize the absmaxes to 8 bits (compress_statistics)
}

// NF4 is one tensor in 4-bit NF4 as bitsandbytes stores it.
type NF4 struct {
	Shape     []int     // the weight's shape, e.g. [out, in]; flattened row-major
	BlockSize int       // weights per absmax
	Packed    []byte    // (Len()+1)/2 bytes: element 2j in the high nibble of byte j, 2j+1 in the low
	Absmax    []float32 // one per block; nil when Nested holds them
	Nested    *Nested   // the double-quantized absmaxes, or nil
}

// Nested holds the absmaxes of an NF4 tensor in 8 bits (double quantization):
// absmax[i] = float32(Map[Codes[i]] x Absmax[i/BlockSize]) + Offset.
type Nested struct {
	BlockSize int          // absmaxes per absmax2 (NestedBlockSize)
	Offset    float32      // the mean of the absmaxes
	Codes     []byte       // one per NF4 block
	Absmax    []float32    // one absmax2 per BlockSize codes
	Map       [256]float32 // the 8-bit code book (DynamicMap, or the checkpoint's own)
}

// Len is the number of weights.
func (q *NF4) Len() int {
	n, _ := shapeLen(q.Shape)
	return n
}

// Blocks is the number of absmax blocks: ceil(Len() / BlockSize).
func (q *NF4) Blocks() int { return ceilDiv(q.Len(), q.BlockSize) }

// Bytes is what q holds in memory: the packed codes and the scales (float32
// absmaxes, or one byte per block plus the nested absmax2s and the 8-bit map).
func (q *NF4) Bytes() int64 {
	b := int64(len(q.Packed)) + 4*int64(len(q.Absmax))
	if q.Nested != nil {
		b += int64(len(q.Nested.Codes)) + 4*int64(len(q.Nested.Absmax)) + 4*256
	}
	return b
}

// Quantize quantizes w (a tensor of the given shape, flattened row-major; nil
// shape means [len(w)]) to NF4 as bitsandbytes' quantize_4bit(quant_type="nf4")
// does. name is the tensor's, for errors: a weight that is not finite is refused,
// naming its block, since training weights must be finite and bitsandbytes'
// kernel would silently turn it into other numbers.
func Quantize(name string, w []float32, shape []int, opt Options) (*NF4, error) {
	bs := opt.BlockSize
	if bs == 0 {
		bs = DefaultBlockSize
	}
	if err := checkBlockSize(bs); err != nil {
		return nil, fmt.Errorf("quantize %s: %w", name, err)
	}
	if shape == nil {
		shape = []int{len(w)}
	}
	n, err := shapeLen(shape)
	if err != nil {
		return nil, fmt.Errorf("quantize %s: %w", name, err)
	}
	if n != len(w) {
		return nil, fmt.Errorf("quantize %s: shape %v holds %d weights, got %d", name, shape, n, len(w))
	}
	for i, v := range w {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			b := i / bs
			return nil, fmt.Errorf("quantize %s: block %d (weights %d..%d) holds %v at weight %d: NF4 needs finite weights",
				name, b, b*bs, min(n, (b+1)*bs)-1, v, i)
		}
	}
	q := &NF4{
		Shape:     slices.Clone(shape),
		BlockSize: bs,
		Packed:    make([]byte, (n+1)/2),
		Absmax:    make([]float32, ceilDiv(n, bs)),
	}
	forBlocks(len(q.Absmax), bs, func(lo, hi int) {
		for b := lo; b < hi; b++ {
			start := b * bs
			q.Absmax[b] = quantizeBlock(w[start:min(n, start+bs)], q.Packed[start/2:])
		}
	})
	if opt.DoubleQuant {
		q.Nested = doubleQuantize(q.Absmax)
		q.Absmax = nil
	}
	return q, nil
}

// quantizeBlock codes one block of weights into out and returns its absmax
// (ops.QuantizeNF4Block, which a backend's QuantizeNF4 equals bit for bit).
func quantizeBlock(w []float32, out []byte) float32 { return ops.QuantizeNF4Block(w, out) }

// Scales returns the absmax of every block: Absmax itself, or rebuilt from the
// nested 8-bit codes as bitsandbytes' dequantize_4bit rebuilds them
// (dequantize_blockwise, then + offset: two float32 roundings).
func (q *NF4) Scales() []float32 {
	if q.Nested == nil {
		return q.Absmax
	}
	return q.Nested.absmaxes()
}

// Dequantize writes the weights in float32 into dst (len(dst) == Len()):
// NF4Code[code] x absmax, one float32 product (bitsandbytes' dequantize_4bit
// with dtype float32).
func (q *NF4) Dequantize(dst []float32) error {
	return dequantize(q, dst, func(f float32) float32 { return f })
}

// DequantizeBF16 writes the weights as bfloat16 bit patterns into dst
// (len(dst) == Len()): the float32 product NF4Code[code] x absmax rounded once to
// bf16, nearest even (bitsandbytes' dequantize_4bit with dtype bfloat16).
func (q *NF4) DequantizeBF16(dst []uint16) error { return dequantize(q, dst, ops.ToBF16) }

// dequantize expands q into dst block by block, each block through a table of
// its 16 possible values round(NF4Code[k] x absmax).
func dequantize[T float32 | uint16](q *NF4, dst []T, round func(float32) T) error {
	if want := q.Len(); len(dst) != want {
		return fmt.Errorf("dequantize: destination holds %d weights, the tensor %d", len(dst), want)
	}
	scales := q.Scales()
	forBlocks(len(scales), q.BlockSize, func(lo, hi int) {
		for b := lo; b < hi; b++ {
			var lut [16]T
			for k := range lut {
				lut[k] = round(NF4Code[k] * scales[b])
			}
			start := b * q.BlockSize
			dequantizeBlock(q.Packed[start/2:], dst[start:min(len(dst), start+q.BlockSize)], &lut)
		}
	})
	return nil
}

// dequantizeBlock expands the codes of one block through lut, the block's 16
// possible values (each code's product with the block's absmax, computed once
// per block instead of once per weight: the same numbers, 4x fewer multiplies).
func dequantizeBlock[T float32 | uint16](packed []byte, dst []T, lut *[16]T) {
	j := 0
	for ; j+1 < len(dst); j += 2 {
		b := packed[j/2]
		dst[j], dst[j+1] = lut[b>>4], lut[b&15]
	}
	if j < len(dst) {
		dst[j] = lut[packed[j/2]>>4]
	}
}

// dequantizeRef is the plain reference for Dequantize and DequantizeBF16: one
// weight at a time, straight from the definition. The tests hold the fast
// versions to it.
func (q *NF4) dequantizeRef() []float32 {
	scales := q.Scales()
	out := make([]float32, q.Len())
	for i := range out {
		code := q.Packed[i/2] >> 4
		if i%2 == 1 {
			code = q.Packed[i/2] & 15
		}
		out[i] = NF4Code[code] * scales[i/q.BlockSize]
	}
	return out
}

// Validate checks that q's parts fit together (the sizes of the codes and
// scales for its shape and block sizes) and that every scale is finite; a
// quantized weight read from a file passes it before it is used.
func (q *NF4) Validate() error {
	n, err := shapeLen(q.Shape)
	if err != nil {
		return err
	}
	if err := checkBlockSize(q.BlockSize); err != nil {
		return err
	}
	if len(q.Packed) != (n+1)/2 {
		return fmt.Errorf("%d weights need %d bytes of 4-bit codes, got %d", n, (n+1)/2, len(q.Packed))
	}
	blocks := ceilDiv(n, q.BlockSize)
	if q.Nested == nil {
		if len(q.Absmax) != blocks {
			return fmt.Errorf("%d weights in blocks of %d need %d absmax values, got %d", n, q.BlockSize, blocks, len(q.Absmax))
		}
		return checkFinite("absmax", q.Absmax)
	}
	if q.Absmax != nil {
		return errors.New("both absmax values and nested (double-quantized) absmax codes")
	}
	nq := q.Nested
	if err := checkBlockSize(nq.BlockSize); err != nil {
		return fmt.Errorf("nested: %w", err)
	}
	if len(nq.Codes) != blocks {
		return fmt.Errorf("%d weights in blocks of %d need %d 8-bit absmax codes, got %d", n, q.BlockSize, blocks, len(nq.Codes))
	}
	if want := ceilDiv(blocks, nq.BlockSize); len(nq.Absmax) != want {
		return fmt.Errorf("%d absmax codes in blocks of %d need %d nested absmax values, got %d", blocks, nq.BlockSize, want, len(nq.Absmax))
	}
	if err := checkFinite("nested absmax", nq.Absmax); err != nil {
		return err
	}
	if err := checkFinite("nested quant map", nq.Map[:]); err != nil {
		return err
	}
	if f := float64(nq.Offset); math.IsNaN(f) || math.IsInf(f, 0) {
		return fmt.Errorf("nested offset is %v", nq.Offset)
	}
	return nil
}

func checkFinite(what string, v []float32) error {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("%s[%d] is %v", what, i, x)
		}
	}
	return nil
}

// checkBlockSize accepts bitsandbytes' block sizes: powers of two from 32 to 4096.
func checkBlockSize(bs int) error {
	if bs < 32 || bs > 4096 || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d is not one of bitsandbytes' (32, 64, 128, ..., 4096)", bs)
	}
	return nil
}

// maxWeights bounds a tensor's size (2^40 weights: far beyond any real layer),
// so that a shape read from a file cannot overflow the arithmetic on it.
const maxWeights = 1 << 40

func shapeLen(shape []int) (int, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %v has a negative dimension", shape)
		}
		if d != 0 && n > maxWeights/d {
			return 0, fmt.Errorf("shape %v has more than 2^40 weights", shape)
		}
		n *= d
	}
	return n, nil
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// forBlocks runs fn over the block range [0, blocks) split across the CPUs.
// Blocks are independent and each writes only its own outputs, so the result
// does not depend on the split; small tensors stay on the calling goroutine.
func forBlocks(blocks, blockSize int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), blocks)
	if workers <= 1 || blocks*blockSize < 1<<16 {
		fn(0, blocks)
		return
	}
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := blocks*w/workers, blocks*(w+1)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}
