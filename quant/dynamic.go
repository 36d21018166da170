package quant

import (
	"math"
	"slices"
	"sync"
	"train/ops"
)

// DynamicMap is bitsandbytes' signed dynamic 8-bit map, the code book of the
// double quantization: create_dynamic_map(signed=True, max_exponent_bits=7,
// total_bits=8), 256 sorted float32 values in (-1, 1] with code 127 = 0 and
// code 255 = 1. Its values are decimal "exponent" ranges 1e-6 .. 1 each split
// linearly: range i (i = 0..6) holds the 2^i midpoints of
// linspace(0.1, 1, 2^i + 1), times 10^(i-6), and their negatives.
//
// The construction is redone here in float32 step by step, as PyTorch computes
// it on the CPU (linspace32, then (b[j] + b[j+1]) / 2, then float32(10^(i-6)) x
// mean), because the values are only defined by that computation; the tests
// compare them bit for bit with the map the fixture script builds in PyTorch. A
// checkpoint stores its own map (nested_quant_map), and reading one uses that.
func DynamicMap() [256]float32 { return dynamicMap() }

var dynamicMap = sync.OnceValue(func() [256]float32 {
	// The powers of ten as Python computes 10 ** (i - 6): float64 values, which
	// PyTorch rounds to float32 before multiplying a float32 tensor by them.
	pow10 := [7]float64{1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1}
	var v []float32
	for i := range 7 {
		b := linspace32(0.1, 1, 1<<i+1)
		s := float32(pow10[i])
		for j := 0; j+1 < len(b); j++ {
			m := float32(b[j]+b[j+1]) / 2
			v = append(v, s*m, -(s * m))
		}
	}
	v = append(v, 0, 1)
	slices.Sort(v)
	var out [256]float32
	copy(out[:], v)
	return out
})

// linspace32 is torch.linspace(start, end, steps, dtype=torch.float32) as
// PyTorch's CPU kernel computes it: step = (end - start) / (steps - 1) in
// float32; the first half counts up from start (start + step x i), the second
// half down from end (end - step x (steps-1-i)). Each of those is one fused
// multiply-add, rounded once: the kernel is compiled for AVX2 and AVX-512 with
// FMA contraction, and the map built with separate roundings differs at 24 of
// its linspace points (map entry 18 is the first), which the fixture's map, made
// by PyTorch 2.11 on the GPU test machine, shows. The products and sums are exact
// in float64 for these operands (24-bit step, i < 64), so math.FMA followed by
// one rounding to float32 is fmaf exactly.
func linspace32(start, end float32, steps int) []float32 {
	out := make([]float32, steps)
	step := (end - start) / float32(steps-1)
	for i := range out {
		if i < steps/2 {
			out[i] = float32(math.FMA(float64(step), float64(i), float64(start)))
		} else {
			out[i] = float32(math.FMA(-float64(step), float64(steps-1-i), float64(end)))
		}
	}
	return out
}

// quantize8 is the 8-bit code of x (x = v x (1/absmax2), in [-1, 1]) under the
// sorted map code, found as bitsandbytes' dQuantize (non-stochastic) finds it: a
// seven-step binary search from code 127 that leaves x between the codes either
// side of the final pivot, then a comparison with the float32 midpoint on x's
// side. A value on that midpoint keeps the pivot. The search can end at the
// pivot's neighbour even when another entry is marginally nearer, so this is
// not "the nearest entry" in every last bit; it is what bitsandbytes stores.
// A NaN (0 x (1/0) for a block of zeros) compares false everywhere: code 0.
func quantize8(x float32, code *[256]float32) byte {
	pivot, lo, hi := 127, 0, 255
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for step := 64; step > 0; step >>= 1 {
		if x > val {
			lo, lower = pivot, val
			pivot += step
		} else {
			hi, upper = pivot, val
			pivot -= step
		}
		val = code[pivot]
	}
	if hi == 255 {
		upper = code[255]
	}
	if lo == 0 {
		lower = code[0]
	}
	if x > val {
		if x > (upper+val)*0.5 {
			return byte(hi)
		}
		return byte(pivot)
	}
	if x < (lower+val)*0.5 {
		return byte(lo)
	}
	return byte(pivot)
}

// quantizeBlockwise8 is bitsandbytes' quantize_blockwise (8-bit, blockwise)
// of x with the map code: per block of blockSize values, absmax2 = max |x|,
// inv = 1/absmax2 in float32, code = quantize8(x x inv).
func quantizeBlockwise8(x []float32, blockSize int, code *[256]float32) (codes []byte, absmax []float32) {
	codes = make([]byte, len(x))
	absmax = make([]float32, ceilDiv(len(x), blockSize))
	for b := range absmax {
		blk := x[b*blockSize : min(len(x), (b+1)*blockSize)]
		var m float32
		for _, v := range blk {
			m = max(m, abs32(v))
		}
		inv := 1 / m
		for j, v := range blk {
			codes[b*blockSize+j] = quantize8(v*inv, code)
		}
		absmax[b] = m
	}
	return codes, absmax
}

// doubleQuantize is the compress_statistics step of quantize_4bit: offset =
// mean(absmax), then absmax - offset quantized blockwise (NestedBlockSize) with
// the dynamic map.
//
// The mean: bitsandbytes takes PyTorch's float32 mean on the GPU, whose
// summation order is its own and cannot be reproduced here; this is the float32
// nearest to the float64 mean (a compensated sum), which agrees with it to the
// last bit or one ulp. A checkpoint stores its offset, so reading one is exact.
func doubleQuantize(absmax []float32) *Nested {
	offset := meanF32(absmax)
	d := make([]float32, len(absmax))
	for i, a := range absmax {
		d[i] = a - offset
	}
	nq := &Nested{BlockSize: NestedBlockSize, Offset: offset, Map: dynamicMap()}
	nq.Codes, nq.Absmax = quantizeBlockwise8(d, NestedBlockSize, &nq.Map)
	return nq
}

// meanF32 is the mean of v rounded to float32, summed in float64 with
// Neumaier's compensation so that the order of summation does not matter to
// the result (0 for no values).
func meanF32(v []float32) float32 {
	if len(v) == 0 {
		return 0
	}
	var sum, c float64
	for _, x := range v {
		f := float64(x)
		t := sum + f
		if math.Abs(sum) >= math.Abs(f) {
			c += (sum - t) + f
		} else {
			c += (f - t) + sum
		}
		sum = t
	}
	return float32((sum + c) / float64(len(v)))
}

// absmaxes rebuilds the NF4 absmaxes as bitsandbytes' dequantize_blockwise and
// the offset addition do: float32(Map[code] x absmax2), then + Offset.
func (nq *Nested) absmaxes() []float32 {
	out := make([]float32, len(nq.Codes))
	for i, c := range nq.Codes {
		out[i] = ops.NF4Scale(nq.Map[c], nq.Absmax[i/nq.BlockSize], nq.Offset)
	}
	return out
}

// DoubleQuantize quantizes the float32 absmaxes of an NF4 tensor to 8 bits as
// Quantize does with Options.DoubleQuant (for absmaxes computed elsewhere, such
// as by a GPU's QuantizeNF4).
func DoubleQuantize(absmax []float32) *Nested { return doubleQuantize(absmax) }
