package ops

import "math"

// ToBF16 rounds f to the nearest bfloat16, ties to even, as PyTorch and CUDA's
// __float2bfloat16 do; a NaN stays a (quiet) NaN.
func ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// FromBF16 widens a bfloat16 bit pattern to float32 exactly.
func FromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// RoundBF16 is f rounded to the nearest bfloat16 value, as float32.
func RoundBF16(f float32) float32 { return FromBF16(ToBF16(f)) }
