package ops

import "math"

// ToF16 rounds f to the nearest IEEE 754 half-precision value, ties to even,
// as CUDA's __float2half_rn does: values beyond the largest half (65504, and
// the rounding boundary 65520 above it) become infinity, small ones become
// subnormal halves or zero, and a NaN stays a (quiet) NaN.
func ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	abs := u & 0x7fffffff
	switch {
	case abs > 0x7f800000: // NaN: keep the top mantissa bits, force quiet
		return sign | 0x7e00 | uint16(abs>>13)&0x3ff
	case abs >= 0x477ff000: // >= 65520 rounds to infinity (and infinity itself)
		return sign | 0x7c00
	case abs >= 0x38800000: // normal half: exponent >= -14
		// Rebias the exponent (127 -> 15) and round the 13 dropped bits.
		h := (abs - 0x38000000) >> 13
		rest := abs & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++ // a carry into the exponent is the correct rounding
		}
		return sign | uint16(h)
	case abs < 0x33000000: // below half the smallest subnormal (2^-25): zero
		return sign
	}
	// Subnormal half: value = m * 2^-24 with m < 1024. The float's full
	// significand (implicit bit included) shifted right by the exponent gap.
	e := int(abs >> 23)          // biased float exponent, 102..112
	m := abs&0x7fffff | 0x800000 // 24-bit significand
	shift := uint(126 - e)       // 14..24: bits dropped
	h := m >> shift
	rest := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rest > half || (rest == half && h&1 == 1) {
		h++
	}
	return sign | uint16(h)
}

// FromF16 widens a half-precision bit pattern to float32 exactly.
func FromF16(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // infinity or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: m * 2^-24, exactly representable in float32.
	v := float32(man) * (1.0 / (1 << 24))
	if sign != 0 {
		v = -v
	}
	return v
}

// RoundF16 is f rounded to the nearest half-precision value, as float32.
func RoundF16(f float32) float32 { return FromF16(ToF16(f)) }

// MaxF16 is the largest finite half-precision value.
const MaxF16 = 65504

// RoundAs is f rounded to what a buffer of type dt stores: bfloat16 for BF16,
// half precision for F16, f itself otherwise.
func RoundAs(dt DType, f float32) float32 {
	switch dt {
	case BF16:
		return RoundBF16(f)
	case F16:
		return RoundF16(f)
	}
	return f
}
