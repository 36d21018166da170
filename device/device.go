// Package device chooses the ops.Backend a command computes on: the CPU (the
// reference), an NVIDIA GPU through kernels, or with "auto" the GPU when there
// is one; and the compute type a precision setting means on it. Training,
// evaluation, generation, benchmarks and the pre-flight all open their device
// here, so they agree on what "-device" and "-precision" mean.
package device

import (
	"fmt"
	"io"

	"train/kernels"
	"train/ops"
)

// GPU is what a GPU backend tells about its device (kernels.Backend).
type GPU interface {
	Info() (kernels.Info, error)
}

// Open returns the device name names: "cpu", GPU number gpu ("cuda"; the
// rank's local rank, so each rank of a host has its own), or with "auto" that
// GPU when there is one and the CPU otherwise. Release it with Close.
func Open(name string, gpu int) (ops.Backend, error) {
	switch name {
	case "cpu":
		return ops.NewCPU(), nil
	case "cuda":
		be, err := OpenGPU(gpu)
		if err != nil {
			return nil, err // not the typed nil: it would make a non-nil ops.Backend
		}
		return be, nil
	case "auto":
		if be, err := OpenGPU(gpu); err == nil {
			return be, nil
		}
		return ops.NewCPU(), nil
	}
	return nil, fmt.Errorf("device %q is not one of cpu, cuda, auto", name)
}

// OpenGPU opens the GPU of the rank with this local rank (kernels.LocalGPU).
func OpenGPU(localRank int) (*kernels.Backend, error) {
	n, err := kernels.DeviceCount()
	if err != nil {
		return nil, err
	}
	ord, err := kernels.LocalGPU(localRank, n)
	if err != nil {
		return nil, err
	}
	return kernels.Open(ord)
}

// IsGPU says whether be computes on a GPU.
func IsGPU(be ops.Backend) bool {
	_, ok := be.(GPU)
	return ok
}

// ComputeType is the model's compute type for a precision setting on be:
// "auto" is bf16 on a GPU that has it (compute capability 8.0 and later), fp16
// on older GPUs (V100, T4), and fp32 on the CPU, where bf16 and fp16 are
// emulations for tests (correct, but slower than fp32). bf16 on a GPU without
// it is refused, naming fp16.
func ComputeType(precision string, be ops.Backend) (ops.DType, error) {
	bf16 := true
	if g, ok := be.(interface{ HasBF16() bool }); ok {
		bf16 = g.HasBF16()
	}
	switch precision {
	case "fp32":
		return ops.F32, nil
	case "bf16":
		if !bf16 {
			return ops.F32, fmt.Errorf("precision bf16: %s has no bfloat16 (it needs compute capability 8.0 or later); use -precision fp16 (or auto, which picks it)", gpuName(be))
		}
		return ops.BF16, nil
	case "fp16":
		return ops.F16, nil
	case "auto", "":
		if IsGPU(be) {
			if bf16 {
				return ops.BF16, nil
			}
			return ops.F16, nil
		}
		return ops.F32, nil
	}
	return ops.F32, fmt.Errorf("precision %q is not one of auto, fp32, bf16, fp16", precision)
}

// gpuName is the GPU's name and compute capability for messages.
func gpuName(be ops.Backend) string {
	g, ok := be.(GPU)
	if !ok {
		return "this device"
	}
	in, err := g.Info()
	if err != nil {
		return "this GPU"
	}
	return fmt.Sprintf("this GPU (%s, compute capability %d.%d)", in.Name, in.Capability/10, in.Capability%10)
}

// Close releases a device that holds resources (a GPU context and the
// goroutine that owns it).
func Close(be ops.Backend) {
	if c, ok := be.(io.Closer); ok {
		c.Close()
	}
}
