//go:build !cgo

package kernels

import "train/ops"

// Without cgo there is no cuDNN (nocgo.go).

func (b *Backend) dnnAttention(string, attnPtrs, bool, ops.DType, int, int, int, int, int) bool {
	return false
}

func (b *Backend) dnnCheck(ops.DType, int, int, int) string { return errNoCgo.Error() }

func cudnnVersion() (int, string, error) { return 0, "", errNoCgo }
