//go:build !cgo

package kernels

import "train/ops"

func (d *device) gemmBatched(bool, bool, int, int, int, float32, uint64, int, int, uint64, int, int, ops.DType,
	float32, uint64, int, int, ops.DType, int) error {
	return errNoCgo
}
