//go:build !cgo

package kernels

import "fmt"

// Without cgo there is no dlopen: NVML is reported unavailable, like the GPU.

// Utilization reports that this build cannot load NVML; the error wraps
// ErrNVMLUnavailable.
func (b *Backend) Utilization() (gpuPct, memPct int, err error) {
	return 0, 0, fmt.Errorf("kernels: utilization: %w: this binary was built without cgo (CGO_ENABLED=0), so it cannot load libnvidia-ml.so.1",
		ErrNVMLUnavailable)
}
