package trainer

import (
	"math"
	"testing"

	"train/ops"
)

// TestLossScaler: GradScaler's rule step by step, and off outside fp16.
func TestLossScaler(t *testing.T) {
	s := newLossScaler(ops.F16, 3)
	if s.factor() != 65536 {
		t.Fatalf("initial scale %v", s.factor())
	}
	inf := math.Inf(1)
	if !s.overflowed(2.5, inf) || s.overflowed(2.5, 1) || s.overflowed(math.NaN(), inf) {
		t.Error("overflowed: a finite loss with a non-finite norm only")
	}
	s.skip()
	if s.factor() != 32768 {
		t.Errorf("after an overflow %v, want 32768", s.factor())
	}
	s.stepped()
	s.stepped()
	if s.factor() != 32768 || !s.stepped() || s.factor() != 65536 {
		t.Errorf("after 3 clean steps %v, want 65536", s.factor())
	}
	s.stepped()
	s.skip() // resets the clean count
	s.stepped()
	s.stepped()
	if s.factor() != 32768 {
		t.Errorf("the clean count survived an overflow: %v", s.factor())
	}
	for range 60 {
		s.skip()
	}
	if s.factor() != minLossScale || s.overflowed(1, inf) {
		t.Errorf("at the floor %v the scaler must hand the step to the non-finite rule", s.factor())
	}
	off := newLossScaler(ops.BF16, 3)
	if off.factor() != 1 || off.overflowed(1, inf) || off.stepped() {
		t.Error("bf16: the scaler must be off")
	}
}
