package shard

import (
	"fmt"
)

// Interleaved 1F1B (Megatron-LM's virtual pipeline): each of P ranks holds V
// chunks of layers, chunk c of rank r being virtual stage c*P + r of P*V, so
// a micro-batch's forward visits the ranks V times around the ring. A rank
// works on P micro-batches of one chunk, then the same P of its next chunk:
//
//	forward k:  chunk (k/P) mod V,        micro-batch (k/(P*V))*P + k mod P
//	backward k: chunk V-1 - (k/P) mod V,  the same micro-batch
//
// Rank r warms up with min(2(P-r-1) + (V-1)P, V*M) forwards, then alternates
// one forward and one backward, then cools down with the backwards left. The
// idle time shrinks V-fold against 1F1B: (P-1)/(V*M) of the ideal step, for
// V times the point-to-point transfers.
//
// Each action carries its chunk; a receive stands right before the compute
// that needs it and a send right after the one that produced it. Sends must not
// block (the executor's SendAsync): with blocking sends the ring of
// transfers can deadlock. Between two ranks every message goes in one order on
// both sides, so a FIFO transport (one TCP stream per pair) delivers each
// where it is expected: SimulateAsync checks both.

// InterleavedSchedule returns each rank's actions for one step of micro
// micro-batches over stages ranks of chunks chunks each; micro must be a
// multiple of stages (the schedule goes P micro-batches at a time). chunks 1
// is Schedule's 1F1B but for the order of sends and receives.
func InterleavedSchedule(stages, chunks, micro int) ([][]Action, error) {
	switch {
	case stages < 1:
		return nil, fmt.Errorf("schedule: %d pipeline stages; need at least 1", stages)
	case chunks < 1:
		return nil, fmt.Errorf("schedule: %d chunks per stage; need at least 1", chunks)
	case micro < 1:
		return nil, fmt.Errorf("schedule: %d micro-batches; need at least 1", micro)
	case chunks > 1 && micro%stages != 0:
		return nil, fmt.Errorf("schedule: interleaving %d chunks needs the micro-batches (%d) to be a multiple of the %d stages", chunks, micro, stages)
	}
	out := make([][]Action, stages)
	for r := range out {
		out[r] = interleavedRank(r, stages, chunks, micro)
	}
	return out, nil
}

func interleavedRank(r, P, V, M int) []Action {
	last := P*V - 1 // the last virtual stage
	prev, next := (r-1+P)%P, (r+1)%P
	acts := make([]Action, 0, 6*V*M+2)
	add := func(op Op, c, m, peer int) { acts = append(acts, Action{Op: op, Micro: m, Peer: peer, Chunk: c}) }
	group := func(k int) (chunk, mb int) { return (k / P) % V, (k/(P*V))*P + k%P }
	forward := func(k int) {
		c, m := group(k)
		v := c*P + r
		if v > 0 {
			add(RecvActivation, c, m, prev)
		}
		add(Forward, c, m, -1)
		if v < last {
			add(SendActivation, c, m, next)
		}
	}
	backward := func(k int) {
		c, m := group(k)
		c = V - 1 - c
		v := c*P + r
		if v < last {
			add(RecvGrad, c, m, next)
		}
		add(Backward, c, m, -1)
		if v > 0 {
			add(SendGrad, c, m, prev)
		}
	}
	total := V * M
	warm := min(2*(P-r-1)+(V-1)*P, total)
	for k := 0; k < warm; k++ {
		forward(k)
	}
	for j := 0; j < total-warm; j++ {
		forward(warm + j)
		backward(j)
	}
	for j := total - warm; j < total; j++ {
		backward(j)
	}
	add(ReduceGrads, 0, -1, -1)
	add(OptimizerStep, 0, -1, -1)
	return acts
}

// InterleavedBubble is the idle fraction of interleaved 1F1B when every
// virtual stage takes the same time: (P-1)/(V*M + P-1).
func InterleavedBubble(stages, chunks, micro int) float64 {
	return float64(stages-1) / float64(chunks*micro+stages-1)
}

// SimulateAsync runs the ranks' action lists in virtual time as Simulate
// does, but with sends that do not wait for their receive (the executor's):
// a send queues its message on the link to its peer at the sender's clock and
// takes no time; a receive waits until the first message queued on its link
// is there, and fails unless that message is the one it expects (same kind,
// micro-batch and chunk), as a FIFO transport would deliver it. Forward and
// Backward take fwd and bwd per chunk. It returns an error naming the stuck
// actions on a deadlock, and fails when a step ends with messages never
// received.
func SimulateAsync(sched [][]Action, fwd, bwd float64) (Timeline, error) {
	P := len(sched)
	type link struct{ from, to int }
	type msg struct {
		a  Action // the send
		at float64
	}
	queues := map[link][]msg{}
	pc := make([]int, P)
	clock := make([]float64, P)
	tl := Timeline{Busy: make([]float64, P), Finish: make([]float64, P)}
	for {
		progressed, done := false, true
		for s := 0; s < P; s++ {
		run:
			for pc[s] < len(sched[s]) {
				a := sched[s][pc[s]]
				switch a.Op {
				case Forward, Backward:
					d := fwd
					if a.Op == Backward {
						d = bwd
					}
					clock[s] += d
					tl.Busy[s] += d
				case SendActivation, SendGrad:
					if a.Peer < 0 || a.Peer >= P {
						return tl, fmt.Errorf("stage %d action %d %v: peer outside the %d stages", s, pc[s], a, P)
					}
					l := link{s, a.Peer}
					queues[l] = append(queues[l], msg{a, clock[s]})
				case RecvActivation, RecvGrad:
					if a.Peer < 0 || a.Peer >= P {
						return tl, fmt.Errorf("stage %d action %d %v: peer outside the %d stages", s, pc[s], a, P)
					}
					l := link{a.Peer, s}
					q := queues[l]
					if len(q) == 0 {
						break run // the message is not sent yet; come back later
					}
					m := q[0]
					if !matches(m.a.Op, a.Op) || m.a.Micro != a.Micro || !chunkFollows(m.a, a, P) {
						return tl, fmt.Errorf("stage %d %v receives stage %d's %v (chunk %d): out of order on their link", s, describe(a), a.Peer, describe(m.a), m.a.Chunk)
					}
					queues[l] = q[1:]
					clock[s] = max(clock[s], m.at)
				}
				pc[s]++
				progressed = true
			}
			if pc[s] < len(sched[s]) {
				done = false
			}
		}
		if done {
			break
		}
		if !progressed {
			return tl, deadlock(sched, pc)
		}
	}
	for l, q := range queues {
		if len(q) > 0 {
			return tl, fmt.Errorf("stage %d's %v to stage %d was never received", l.from, describe(q[0].a), l.to)
		}
	}
	tl.finish(clock)
	return tl, nil
}

// chunkFollows reports whether a receive of chunk recv.Chunk on its rank is
// the other end of a send of chunk send.Chunk on the peer: an activation goes
// to the next virtual stage, a gradient to the previous, and both cross a
// chunk boundary where they wrap around the ring of P ranks.
func chunkFollows(send, recv Action, P int) bool {
	vs := send.Chunk*P + recv.Peer // the sender's virtual stage
	vr := recv.Chunk*P + send.Peer // the receiver's
	if send.Op == SendActivation {
		return vr == vs+1
	}
	return vr == vs-1
}

// describe is an action with its chunk when it has one.
func describe(a Action) string {
	if a.Micro < 0 || a.Chunk == 0 {
		return a.String()
	}
	return fmt.Sprintf("%v/c%d", a, a.Chunk)
}
