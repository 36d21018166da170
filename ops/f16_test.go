package ops

import (
	"math"
	"testing"
)

// TestF16 checks ToF16 against the definition on every half: each finite
// half widens and narrows back to itself, the midpoint between two
// neighbours rounds to the even one, and the floats just either side of it
// round to the nearer neighbour. Overflow, signed zero and NaN are named.
func TestF16(t *testing.T) {
	for h := uint16(0); h < 0x7c00; h++ { // every positive finite half
		v := FromF16(h)
		for _, s := range []uint16{0, 0x8000} {
			want := h | s
			x := v
			if s != 0 {
				x = -v
			}
			if got := ToF16(x); got != want {
				t.Fatalf("ToF16(FromF16(%#04x) = %g) = %#04x", want, x, got)
			}
		}
		next := FromF16(h + 1) // 0x7c00 is infinity: the midpoint is the overflow boundary
		if h+1 == 0x7c00 {
			next = 65536
		}
		mid := (v + next) / 2 // exact: halves have 11 significant bits
		even := h
		if h&1 == 1 {
			even = h + 1
		}
		if got := ToF16(mid); got != even {
			t.Fatalf("ToF16(%g), midway between %#04x and %#04x, = %#04x, want %#04x", mid, h, h+1, got, even)
		}
		if got := ToF16(math.Nextafter32(mid, 0)); got != h {
			t.Fatalf("ToF16 just below %g = %#04x, want %#04x", mid, got, h)
		}
		if got := ToF16(math.Nextafter32(mid, float32(math.Inf(1)))); got != h+1 {
			t.Fatalf("ToF16 just above %g = %#04x, want %#04x", mid, got, h+1)
		}
	}
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff}, {1e6, 0x7c00}, {float32(math.Inf(-1)), 0xfc00},
		{float32(math.Copysign(0, -1)), 0x8000}, {5.960464477539063e-08, 0x0001}, {2.9802322387695312e-08, 0}, {1e-10, 0},
	} {
		if got := ToF16(c.in); got != c.want {
			t.Errorf("ToF16(%g) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if nan := FromF16(ToF16(float32(math.NaN()))); !math.IsNaN(float64(nan)) {
		t.Errorf("NaN became %v", nan)
	}
	if got := FromF16(0x7bff); got != MaxF16 {
		t.Errorf("FromF16(0x7bff) = %v, want %v", got, MaxF16)
	}
}
