package kernels

import (
	"errors"
	"fmt"
	"time"

	"train/collective"
)

// NCCLOver makes an NCCL communicator of c's ranks on each rank's GPU: rank 0
// creates the id and broadcasts it over c (the TCP collectives every run
// already has), then every rank joins. A rank 0 that cannot create one says so
// to all, so none waits for it. The trainer's replicas and the pre-flight both
// start NCCL this way.
func NCCLOver(be *Backend, c collective.Comm, timeout time.Duration) (*NCCL, error) {
	msg := make(collective.Bytes, 1+NCCLIDBytes) // ok flag, id
	var idErr error
	if c.Rank() == 0 {
		id, err := be.NCCLUniqueID()
		if err == nil {
			msg[0] = 1
			copy(msg[1:], id)
		}
		idErr = err
	}
	if err := c.Broadcast(msg, 0); err != nil {
		return nil, fmt.Errorf("sending the NCCL id: %w", err)
	}
	if msg[0] != 1 {
		if idErr != nil {
			return nil, idErr
		}
		return nil, errors.New("rank 0 could not create an NCCL id (see its report)")
	}
	return be.NewNCCL(msg[1:], c.Rank(), c.Size(), timeout)
}
