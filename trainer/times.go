package trainer

import "time"

// stepTimes splits a step's wall time for the rank log: computing, waiting on the
// neighbouring stages (the pipeline bubble), and waiting on collectives; and
// counts the payload bytes this rank sent and received (the algorithms' data, not
// the wire's framing: a ring all-reduce of n bytes over g ranks moves
// 2(g-1)/g x n each way, a reduce-scatter or all-gather half that).
type stepTimes struct {
	compute, bubble, comm time.Duration
	sent, received        int64
	recomputed            int // forwards run again before their backward
}

// p2p counts a point-to-point transfer of n values of elemBytes each.
func (s *stepTimes) p2p(n, elemBytes int, send bool) {
	if send {
		s.sent += int64(elemBytes) * int64(n)
	} else {
		s.received += int64(elemBytes) * int64(n)
	}
}

// ring counts a ring collective of n float32 values over a group of g ranks:
// passes is 2 for an all-reduce, 1 for a reduce-scatter or an all-gather.
func (s *stepTimes) ring(n, g, passes int) {
	if g < 2 {
		return
	}
	b := int64(passes) * 4 * int64(n) * int64(g-1) / int64(g)
	s.sent += b
	s.received += b
}

func timed(d *time.Duration, f func() error) error {
	t0 := time.Now()
	err := f()
	*d += time.Since(t0)
	return err
}
