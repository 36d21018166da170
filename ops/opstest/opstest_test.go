package opstest

import (
	"testing"

	"train/ops"
)

// TestCPU32 holds the float32 CPU backend to the float64 reference.
func TestCPU32(t *testing.T) { Check(t, ops.NewCPU(), 1e-5) }

// TestCPUBF16 holds the CPU's bfloat16 emulation to the float64 reference at
// bfloat16's tolerance (ops' TestBF16Storage checks the emulation rounds).
func TestCPUBF16(t *testing.T) { CheckBF16(t, ops.NewCPU(), 1e-2) }

func TestCPUF16(t *testing.T) { CheckF16(t, ops.NewCPU(), 1e-2) }

// TestCPUNF4 holds the CPU backend's NF4 ops to package quant, bit for bit.
func TestCPUNF4(t *testing.T) { CheckNF4(t, ops.NewCPU()) }
