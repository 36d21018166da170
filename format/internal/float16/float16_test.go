package float16

import (
	"math"
	"testing"
)

func TestToFloat32(t *testing.T) {
	// Every finite half converts exactly: check against the formula on all 65536.
	for h := 0; h < 1<<16; h++ {
		got := ToFloat32(uint16(h))
		exp, mant := (h>>10)&0x1f, h&0x3ff
		var want float64
		switch {
		case exp == 0x1f && mant == 0:
			want = math.Inf(1)
		case exp == 0x1f:
			if !math.IsNaN(float64(got)) {
				t.Fatalf("%#x: want NaN, got %v", h, got)
			}
			continue
		case exp == 0:
			want = math.Ldexp(float64(mant), -24)
		default:
			want = math.Ldexp(float64(mant|0x400), exp-25)
		}
		if h&0x8000 != 0 {
			want = -want
		}
		if float64(got) != want {
			t.Fatalf("ToFloat32(%#x) = %v, want %v", h, got, want)
		}
	}
}

func TestFromFloat32(t *testing.T) {
	// Every half converts to float32 and back to itself.
	for h := 0; h < 1<<16; h++ {
		if h&0x7c00 == 0x7c00 && h&0x3ff != 0 {
			continue // NaN
		}
		if got := FromFloat32(ToFloat32(uint16(h))); got != uint16(h) {
			t.Fatalf("half %#04x -> %v -> %#04x", h, ToFloat32(uint16(h)), got)
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{1 + 1.0/2048, 0x3c00},          // tie, even stays
		{1 + 3.0/2048, 0x3c02},          // tie, odd rounds up
		{65520, 0x7c00},                 // rounds to infinity
		{65519, 0x7bff},                 // largest finite
		{5.960464477539063e-08, 0x0001}, // smallest subnormal
		{2.98e-08, 0x0000},              // below half of it
		{-2.0, 0xc000},
	} {
		if got := FromFloat32(c.f); got != c.want {
			t.Errorf("FromFloat32(%v) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}
