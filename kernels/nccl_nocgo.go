//go:build !cgo

package kernels

import (
	"errors"
	"fmt"
	"time"
)

// Without cgo there is no dlopen: NCCL is reported missing, like the GPU.

var errNCCLNoCgo = errors.New("kernels: nccl: this binary was built without cgo (CGO_ENABLED=0), so it cannot load libnccl")

// NCCLVersion reports that this build cannot load NCCL.
func NCCLVersion() (version int, path string, err error) { return 0, "", errNCCLNoCgo }

// NCCLUniqueID reports that this build cannot load NCCL.
func (b *Backend) NCCLUniqueID() ([]byte, error) { return nil, errNCCLNoCgo }

// NewNCCL reports that this build cannot load NCCL.
func (b *Backend) NewNCCL(id []byte, rank, size int, timeout time.Duration) (*NCCL, error) {
	return nil, errNCCLNoCgo
}

// Version is 0: no NCCL in this build.
func (n *NCCL) Version() int { return 0 }

func (n *NCCL) do(c ncclCall) error { return fmt.Errorf("nccl %s: %w", c.fn, errNCCLNoCgo) }
func (n *NCCL) groupStart() error   { return errNCCLNoCgo }
func (n *NCCL) groupEnd() error     { return errNCCLNoCgo }

// Wait reports that this build cannot use NCCL.
func (n *NCCL) Wait() error { return errNCCLNoCgo }

// Close does nothing: no communicator exists in this build.
func (n *NCCL) Close() error { return nil }
