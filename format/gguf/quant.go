package gguf

import (
	"encoding/binary"
	"math"

	"train/format/internal/float16"
)

// llama.cpp's two simplest block quantizations, written the way its reference
// quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref in ggml-quants.c)
// compute them, in float32, so that the same input gives the same bytes:
//
//	Q8_0, 34 bytes per 32 values: fp16 d = amax/127, then 32 int8 q = round(x/d)
//	      (round half away from zero, of x times the float32 reciprocal of d).
//	      Dequantized: q·d. Error: |x - q·d16| <= d/2 + 127·|d - d16|, with d16
//	      the stored half of d.
//	Q4_0, 18 bytes per 32 values: fp16 d = m/-8 with m the value of largest
//	      magnitude (the first such, sign kept), then 16 bytes of 4-bit codes
//	      q = min(15, trunc(x/d + 8.5)): byte j holds element j in its low nibble
//	      and element j+16 in its high one. Dequantized: (q-8)·d. Error: d/2,
//	      except that x/d in (7.5, 8] (values of the opposite sign to m, near its
//	      magnitude) clamps to 7 and errs by up to |d|; plus 8·|d - d16|.
//
// The reciprocal is 0 when d is 0 (an all-zero block), so such a block codes
// to zeros (Q8_0) or to 8 (Q4_0), both dequantizing to 0.
const (
	// Q8_0 and Q4_0 are ggml's type numbers.
	Q8_0 GGMLType = 8
	Q4_0 GGMLType = 2

	// QuantBlock is the number of values in a Q8_0 or Q4_0 block: a row length
	// must be a multiple of it.
	QuantBlock = 32
)

// appendQ8_0 appends the Q8_0 blocks of x (len(x) a multiple of 32).
func appendQ8_0(b []byte, x []float32) []byte {
	for i := 0; i+QuantBlock <= len(x); i += QuantBlock {
		blk := x[i : i+QuantBlock]
		var amax float32
		for _, v := range blk {
			amax = max(amax, abs32(v))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		b = binary.LittleEndian.AppendUint16(b, float16.FromFloat32(d))
		for _, v := range blk {
			b = append(b, byte(int8(roundf(float32(v*id))))) // float32(): no fused multiply-add
		}
	}
	return b
}

// appendQ4_0 appends the Q4_0 blocks of x (len(x) a multiple of 32).
func appendQ4_0(b []byte, x []float32) []byte {
	const half = QuantBlock / 2
	for i := 0; i+QuantBlock <= len(x); i += QuantBlock {
		blk := x[i : i+QuantBlock]
		var amax, m float32
		for _, v := range blk {
			if amax < abs32(v) { // strict: the first of equal magnitudes wins
				amax, m = abs32(v), v
			}
		}
		d := m / -8
		var id float32
		if d != 0 {
			id = 1 / d
		}
		b = binary.LittleEndian.AppendUint16(b, float16.FromFloat32(d))
		for j := 0; j < half; j++ {
			b = append(b, nibble4_0(float32(blk[j]*id))|nibble4_0(float32(blk[j+half]*id))<<4)
		}
	}
	return b
}

// nibble4_0 is the 4-bit code of x/d: truncated toward zero after adding
// 8.5, as C's (int8_t) cast does, capped at 15. x/d is at least -8 (d is the
// largest magnitude over -8), so the code is never negative.
func nibble4_0(v float32) byte {
	q := int32(float32(v + 8.5)) // Go truncates toward zero, like the C cast
	return byte(min(max(q, 0), 15))
}

// dequantQ8_0 decodes n values from Q8_0 blocks in b into out.
func dequantQ8_0(out []float32, b []byte) {
	for i := 0; i < len(out); i += QuantBlock {
		blk := b[i/QuantBlock*34:]
		d := float16.ToFloat32(binary.LittleEndian.Uint16(blk))
		for j := 0; j < QuantBlock; j++ {
			out[i+j] = float32(int8(blk[2+j])) * d
		}
	}
}

// dequantQ4_0 decodes n values from Q4_0 blocks in b into out.
func dequantQ4_0(out []float32, b []byte) {
	const half = QuantBlock / 2
	for i := 0; i < len(out); i += QuantBlock {
		blk := b[i/QuantBlock*18:]
		d := float16.ToFloat32(binary.LittleEndian.Uint16(blk))
		for j := 0; j < half; j++ {
			q := blk[2+j]
			out[i+j] = float32(int(q&0x0f)-8) * d
			out[i+j+half] = float32(int(q>>4)-8) * d
		}
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// roundf rounds half away from zero, as C's roundf does (math.Round's rule);
// every float32 is exact in float64, and so is the result.
func roundf(x float32) float32 { return float32(math.Round(float64(x))) }
