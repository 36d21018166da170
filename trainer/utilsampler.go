package trainer

import (
	"sync"
	"time"

	"train/kernels"
)

// utilSampler averages NVML's utilisation of one GPU over each training step.
// One reading at a step's end would see the GPU idle while the host syncs,
// logs and talks to the other ranks, so a goroutine reads it every period and
// the step takes the mean of the readings since the last step.
type utilSampler struct {
	mu          sync.Mutex
	gpu, mem, n float64
	stop, done  chan struct{}
}

// startUtilSampler starts reading g's utilisation every period, or returns
// NVML's error (no NVML: no utilisation in the logs). Call close before the
// backend's Close.
func startUtilSampler(g *kernels.Backend, period time.Duration) (*utilSampler, error) {
	if _, _, err := g.Utilization(); err != nil {
		return nil, err
	}
	s := &utilSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				gpu, mem, err := g.Utilization()
				if err != nil {
					continue // a transient failure: the next reading may work
				}
				s.add(float64(gpu), float64(mem))
			}
		}
	}()
	return s, nil
}

func (s *utilSampler) add(gpu, mem float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gpu, s.mem, s.n = s.gpu+gpu, s.mem+mem, s.n+1
}

// take returns the mean readings since the last take and starts over; ok is
// false when there were none (a step shorter than the period).
func (s *utilSampler) take() (gpu, mem float64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		return 0, 0, false
	}
	gpu, mem = s.gpu/s.n, s.mem/s.n
	s.gpu, s.mem, s.n = 0, 0, 0
	return gpu, mem, true
}

// close stops the readings and waits for the goroutine to end.
func (s *utilSampler) close() {
	close(s.stop)
	<-s.done
}
