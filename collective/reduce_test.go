package collective

import (
	"math"
	"testing"
)

func TestBF16Rounding(t *testing.T) {
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even stays
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, odd rounds up
		{math.Float32frombits(0x3f808001), 0x3f81},
		{float32(math.Inf(1)), 0x7f80},
	}
	for _, c := range cases {
		if got := Float32ToBF16(c.f); got != c.want {
			t.Errorf("Float32ToBF16(%v) = %#x, want %#x", c.f, got, c.want)
		}
	}
	if nan := Float32ToBF16(float32(math.NaN())); !math.IsNaN(float64(BF16ToFloat32(nan))) {
		t.Errorf("NaN became %#x", nan)
	}
	for h := 0; h < 1<<16; h++ {
		f := BF16ToFloat32(uint16(h))
		if !math.IsNaN(float64(f)) && Float32ToBF16(f) != uint16(h) {
			t.Fatalf("%#x does not round-trip", h)
		}
	}
}

func TestReduceKernels(t *testing.T) {
	a := F32{1, -2, 3, 4, 5, 6, 7}
	b := F32{2, 2, -3, 9, 0, 1, 7}
	for _, tc := range []struct {
		op   Op
		want F32
	}{
		{Sum, F32{3, 0, 0, 13, 5, 7, 14}},
		{Max, F32{2, 2, 3, 9, 5, 6, 7}},
		{Min, F32{1, -2, -3, 4, 0, 1, 7}},
	} {
		dst := make(F32, len(a))
		reduce(Float32, tc.op, asBytes(dst), asBytes(a), asBytes(b))
		for i := range dst {
			if dst[i] != tc.want[i] {
				t.Errorf("%v: %v, want %v", tc.op, dst, tc.want)
				break
			}
		}
	}
	x := F32{2, 4}
	scale(Float32, asBytes(x), 4)
	if x[0] != 0.5 || x[1] != 1 {
		t.Errorf("scale: %v", x)
	}
	if checkOp(Int64, Avg) == nil || checkOp(Byte, Sum) == nil || checkOp(Float32, Op(9)) == nil {
		t.Error("checkOp accepted an impossible reduction")
	}
}

func BenchmarkReduceF32(b *testing.B) {
	x := make(F32, 1<<18)
	y := make(F32, 1<<18)
	b.SetBytes(1 << 20)
	for b.Loop() {
		reduce(Float32, Sum, asBytes(x), asBytes(x), asBytes(y))
	}
}

func BenchmarkReduceBF16(b *testing.B) {
	x := make(BF16, 1<<19)
	y := make(BF16, 1<<19)
	b.SetBytes(1 << 20)
	for b.Loop() {
		reduce(BFloat16, Sum, asBytes(x), asBytes(x), asBytes(y))
	}
}
