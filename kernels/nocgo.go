//go:build !cgo

package kernels

import (
	"errors"

	"train/ops"
)

// Without cgo there is no dlopen: the package builds, and New reports that this
// binary cannot use a GPU.

var errNoCgo = errors.New("this binary was built without cgo (CGO_ENABLED=0), so it cannot load libcuda")

type device struct {
	ord     int
	cc      int
	name    string
	driver  int
	blasVer int
}

func openDevice(int, []byte) (*device, error) { return nil, errNoCgo }

func deviceCount() (int, error) { return 0, errNoCgo }

func (d *device) close() error                                  { return errNoCgo }
func (d *device) launch(string, [3]int, [3]int, []uint64) error { return errNoCgo }
func (d *device) memInfo() (int64, int64, error)                { return 0, 0, errNoCgo }
func (d *device) alloc(int) (uint64, error)                     { return 0, errNoCgo }
func (d *device) free(uint64) error                             { return errNoCgo }
func (d *device) allocHost(int) (uint64, error)                 { return 0, errNoCgo }
func (d *device) freeHost(uint64) error                         { return errNoCgo }
func (d *device) copyAny(uint64, uint64, int) error             { return errNoCgo }
func (d *device) sync() error                                   { return errNoCgo }
func (d *device) copyAsync(uint64, uint64, int) (uint64, error) { return 0, errNoCgo }
func (d *device) waitCopy(uint64) error                         { return errNoCgo }
func (d *device) upload(uint64, []byte) error                   { return errNoCgo }
func (d *device) download([]byte, uint64) error                 { return errNoCgo }
func (d *device) copy(uint64, uint64, int) error                { return errNoCgo }
func (d *device) memset32(uint64, uint32, int) error            { return errNoCgo }
func (d *device) memset16(uint64, uint16, int) error            { return errNoCgo }
func (d *device) memset8(uint64, uint8, int) error              { return errNoCgo }
func (d *device) sgemm(bool, bool, int, int, int, float32, uint64, int, uint64, int, float32, uint64, int) error {
	return errNoCgo
}
func (d *device) gemmEx(bool, bool, int, int, int, float32, uint64, int, uint64, int, ops.DType, float32, uint64, ops.DType, int) error {
	return errNoCgo
}
func (d *device) launchSmem(string, [3]int, [3]int, int, []uint64) error {
	return errNoCgo
}
func libPaths() (cuda, cublas, cublasLt string) { return "", "", "" }
