package ops

import (
	"math"
	"strings"
	"testing"
)

func TestToBF16(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{1 + 1.0/256, 0x3f80},             // a tie: to even (down)
		{1 + 3.0/256, 0x3f82},             // a tie: to even (up)
		{1 + 1.0/256 + 1.0/65536, 0x3f81}, // above the tie
		{-2, 0xc000},
		{float32(math.Inf(1)), 0x7f80},
		{3.4e38, 0x7f80}, // rounds past the largest finite bfloat16
	} {
		if got := ToBF16(c.in); got != c.want {
			t.Errorf("ToBF16(%v) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if nan := FromBF16(ToBF16(float32(math.NaN()))); !math.IsNaN(float64(nan)) {
		t.Errorf("NaN became %v", nan)
	}
}

// TestBF16Storage checks that the CPU backend's BF16 buffers hold bfloat16
// values after an upload and after an op, and that mixing types is refused.
func TestBF16Storage(t *testing.T) {
	c := NewCPU()
	a, _ := c.Alloc(BF16, 2)
	b, _ := c.Alloc(BF16, 2)
	f, _ := c.Alloc(F32, 2)
	if err := c.Upload(a, []float32{1 + 1.0/1024, 3}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(b, []float32{1.0 / 128, 1.0 / 128}); err != nil {
		t.Fatal(err)
	}
	c.Add(a, a, b, 2) // 1 + 1/128 is a bfloat16; 3 + 1/128 is not
	got := make([]float32, 2)
	if err := c.Download(got, a); err != nil {
		t.Fatal(err)
	}
	if got[0] != 1+1.0/128 || got[1] != 3 {
		t.Errorf("bf16 add gave %v, want [1.0078125 3]", got)
	}
	c.Add(f, a, b, 2)
	if err := c.Sync(); err == nil || !strings.Contains(err.Error(), "mixed types") {
		t.Errorf("adding bf16 into f32: err %v, want a mixed-types error", err)
	}
	c2 := NewCPU()
	c2.RMSNormForward(a, b, a, a, 1, 2, 1e-5) // rstd must be f32
	if err := c2.Sync(); err == nil || !strings.Contains(err.Error(), "want an f32") {
		t.Errorf("bf16 rstd: err %v, want an f32 error", err)
	}
}
