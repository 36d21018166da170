package opstest

import (
	"testing"

	"train/ops"
)

// TestCPU32 holds the float32 CPU backend to the float64 reference.
func TestCPU32(t *testing.T) { Check(t, ops.NewCPU(), 1e-5) }
