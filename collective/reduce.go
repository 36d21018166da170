package collective

import (
	"fmt"
	"math"
	"unsafe"

	"train/ops"
)

// The reduction kernels combine two operands element-wise into dst. dst may be
// either operand (in place); all three have the same length in bytes, a whole
// number of elements, aligned for the element type.

func view[T any](b []byte) []T {
	if len(b) == 0 {
		return nil
	}
	var z T
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), len(b)/int(unsafe.Sizeof(z)))
}

// checkOp reports whether op can reduce elements of type dt.
func checkOp(dt DType, op Op) error {
	switch op {
	case Sum, Max, Min:
	case Avg:
		if dt == Int64 {
			return fmt.Errorf("avg is not defined for %v (sum and divide instead)", dt)
		}
	default:
		return fmt.Errorf("unknown reduction %v", op)
	}
	switch dt {
	case Float32, BFloat16, Float64, Int64:
		return nil
	}
	return fmt.Errorf("%v buffers cannot be reduced", dt)
}

// reduce sets dst = a op b element-wise. Avg reduces like Sum; the caller
// scales the finished sum once with scale.
func reduce(dt DType, op Op, dst, a, b []byte) {
	switch dt {
	case Float32:
		reduceNum(op, view[float32](dst), view[float32](a), view[float32](b))
	case Float64:
		reduceNum(op, view[float64](dst), view[float64](a), view[float64](b))
	case Int64:
		reduceNum(op, view[int64](dst), view[int64](a), view[int64](b))
	case BFloat16:
		reduceBF16(op, view[uint16](dst), view[uint16](a), view[uint16](b))
	}
}

func reduceNum[T float32 | float64 | int64](op Op, dst, a, b []T) {
	b = b[:len(dst)]
	a = a[:len(dst)]
	switch op {
	case Sum, Avg:
		i := 0
		for ; i+4 <= len(dst); i += 4 {
			d, x, y := dst[i:i+4:i+4], a[i:i+4:i+4], b[i:i+4:i+4]
			d[0], d[1], d[2], d[3] = x[0]+y[0], x[1]+y[1], x[2]+y[2], x[3]+y[3]
		}
		for ; i < len(dst); i++ {
			dst[i] = a[i] + b[i]
		}
	case Max:
		for i := range dst {
			dst[i] = max(a[i], b[i]) // NaN wins, like NCCL
		}
	case Min:
		for i := range dst {
			dst[i] = min(a[i], b[i])
		}
	}
}

func reduceBF16(op Op, dst, a, b []uint16) {
	b = b[:len(dst)]
	a = a[:len(dst)]
	switch op {
	case Sum, Avg:
		i := 0
		for ; i+4 <= len(dst); i += 4 {
			d, x, y := dst[i:i+4:i+4], a[i:i+4:i+4], b[i:i+4:i+4]
			s0 := math.Float32bits(math.Float32frombits(uint32(x[0])<<16) + math.Float32frombits(uint32(y[0])<<16))
			s1 := math.Float32bits(math.Float32frombits(uint32(x[1])<<16) + math.Float32frombits(uint32(y[1])<<16))
			s2 := math.Float32bits(math.Float32frombits(uint32(x[2])<<16) + math.Float32frombits(uint32(y[2])<<16))
			s3 := math.Float32bits(math.Float32frombits(uint32(x[3])<<16) + math.Float32frombits(uint32(y[3])<<16))
			if (s0|s1|s2|s3)&0x7f800000 == 0x7f800000 { // an Inf or NaN among them: the careful way
				d[0], d[1], d[2], d[3] = roundBF16(s0), roundBF16(s1), roundBF16(s2), roundBF16(s3)
				continue
			}
			d[0] = uint16((s0 + 0x7fff + (s0>>16)&1) >> 16)
			d[1] = uint16((s1 + 0x7fff + (s1>>16)&1) >> 16)
			d[2] = uint16((s2 + 0x7fff + (s2>>16)&1) >> 16)
			d[3] = uint16((s3 + 0x7fff + (s3>>16)&1) >> 16)
		}
		for ; i < len(dst); i++ {
			dst[i] = Float32ToBF16(BF16ToFloat32(a[i]) + BF16ToFloat32(b[i]))
		}
	case Max:
		for i := range dst {
			dst[i] = Float32ToBF16(max(BF16ToFloat32(a[i]), BF16ToFloat32(b[i])))
		}
	case Min:
		for i := range dst {
			dst[i] = Float32ToBF16(min(BF16ToFloat32(a[i]), BF16ToFloat32(b[i])))
		}
	}
}

// scale divides every element of a finished sum by n (for Avg).
func scale(dt DType, buf []byte, n int) {
	switch dt {
	case Float32:
		s := view[float32](buf)
		d := float32(n)
		for i := range s {
			s[i] /= d
		}
	case Float64:
		s := view[float64](buf)
		d := float64(n)
		for i := range s {
			s[i] /= d
		}
	case BFloat16:
		s := view[uint16](buf)
		d := float32(n)
		for i := range s {
			s[i] = Float32ToBF16(BF16ToFloat32(s[i]) / d)
		}
	}
}

// BF16ToFloat32 widens a bfloat16 bit pattern exactly (ops.FromBF16).
func BF16ToFloat32(h uint16) float32 { return ops.FromBF16(h) }

// Float32ToBF16 rounds to the nearest bfloat16, ties to even; NaN stays NaN
// (ops.ToBF16, the one rounding every device and the CPU twin use).
func Float32ToBF16(f float32) uint16 { return ops.ToBF16(f) }

// roundBF16 is Float32ToBF16 of a float32's bits.
func roundBF16(u uint32) uint16 { return ops.ToBF16(math.Float32frombits(u)) }
