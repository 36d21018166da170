package shard

import (
	"fmt"
	"strings"
)

// Op is what one Action does.
type Op uint8

const (
	// Forward runs this stage's layers on micro-batch Micro, keeping what its
	// backward needs.
	Forward Op = iota
	// Backward runs the backward of micro-batch Micro, accumulating parameter
	// gradients, and frees its saved activations.
	Backward
	// SendActivation sends micro-batch Micro's stage output to the next stage.
	SendActivation
	// RecvActivation receives micro-batch Micro's stage input from the previous stage.
	RecvActivation
	// SendGrad sends the gradient of micro-batch Micro's stage input to the previous stage.
	SendGrad
	// RecvGrad receives the gradient of micro-batch Micro's stage output from the next stage.
	RecvGrad
	// ReduceGrads averages (or, with ZeRO-1, reduce-scatters) the accumulated
	// gradients across the stage's data-parallel group; once per step.
	ReduceGrads
	// OptimizerStep clips and applies the optimizer (and, with ZeRO-1,
	// all-gathers the parameters); once per step.
	OptimizerStep
)

var opNames = [...]string{"Forward", "Backward", "SendActivation", "RecvActivation", "SendGrad", "RecvGrad", "ReduceGrads", "OptimizerStep"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", o)
}

// Action is one step of a rank's work. Micro is the micro-batch (0..M-1), or
// -1 for the step-level ReduceGrads and OptimizerStep. Peer is the other end of
// a send or receive — a stage index in Schedule's lists, a world rank in
// Plan.Actions' — and -1 for the rest.
type Action struct {
	Op    Op
	Micro int
	Peer  int
	// Chunk is which of the rank's layer chunks the action is for
	// (InterleavedSchedule); 0 in 1F1B, where a rank holds one.
	Chunk int
}

func (a Action) String() string {
	switch {
	case a.Micro < 0:
		return a.Op.String()
	case a.Peer < 0:
		return fmt.Sprintf("%v(%d)", a.Op, a.Micro)
	}
	return fmt.Sprintf("%v(%d)@%d", a.Op, a.Micro, a.Peer)
}

// IsComm reports whether a is a point-to-point send or receive.
func (a Action) IsComm() bool {
	return a.Op == SendActivation || a.Op == RecvActivation || a.Op == SendGrad || a.Op == RecvGrad
}

// Schedule returns, for each of stages pipeline stages, the ordered actions of
// one optimizer step of micro micro-batches under 1F1B (PipeDream-Flush, as in
// Megatron-LM without interleaving). Stage s:
//
//	warm-up     w = min(P-s-1, M) forwards:  RecvActivation, Forward, SendActivation
//	steady      M-w rounds of one forward (micro w+j) and one backward (micro j):
//	            RecvActivation(w+j), Forward(w+j), RecvGrad(j), SendActivation(w+j),
//	            Backward(j), SendGrad(j)
//	cool-down   the w backwards left:        RecvGrad, Backward, SendGrad
//	then        ReduceGrads, OptimizerStep
//
// The first stage has no RecvActivation or SendGrad, the last no SendActivation
// or RecvGrad. Stage s thus holds at most P-s micro-batches forwarded but not yet
// backwarded, so its activation memory is bounded by P-s, not M.
//
// In the steady state RecvGrad(j) comes before SendActivation(w+j) on purpose:
// the next stage, one round behind in warm-up, sends that gradient before it
// asks for that activation, so each pair of neighbours issues its transfers in
// the same order. The lists therefore run to completion even when every Send
// blocks until its Recv is posted (NCCL, or TCP with large messages): an
// executor may run them one action at a time with blocking Send and Recv.
// Schedule is a pure function; the tests simulate it with unbuffered channels.
func Schedule(stages, micro int) ([][]Action, error) {
	if stages < 1 {
		return nil, fmt.Errorf("schedule: %d pipeline stages; need at least 1", stages)
	}
	if micro < 1 {
		return nil, fmt.Errorf("schedule: %d micro-batches; need at least 1", micro)
	}
	out := make([][]Action, stages)
	for s := range out {
		out[s] = stageSchedule(s, stages, micro)
	}
	return out, nil
}

func stageSchedule(s, P, M int) []Action {
	first, last := s == 0, s == P-1
	acts := make([]Action, 0, 6*M+2)
	add := func(op Op, m, peer int) { acts = append(acts, Action{Op: op, Micro: m, Peer: peer}) }
	recvAct := func(m int) {
		if !first {
			add(RecvActivation, m, s-1)
		}
	}
	sendAct := func(m int) {
		if !last {
			add(SendActivation, m, s+1)
		}
	}
	recvGrad := func(m int) {
		if !last {
			add(RecvGrad, m, s+1)
		}
	}
	sendGrad := func(m int) {
		if !first {
			add(SendGrad, m, s-1)
		}
	}
	w := min(P-s-1, M)
	for m := 0; m < w; m++ {
		recvAct(m)
		add(Forward, m, -1)
		sendAct(m)
	}
	for j := 0; j < M-w; j++ {
		f := w + j
		recvAct(f)
		add(Forward, f, -1)
		recvGrad(j)
		sendAct(f)
		add(Backward, j, -1)
		sendGrad(j)
	}
	for j := M - w; j < M; j++ {
		recvGrad(j)
		add(Backward, j, -1)
		sendGrad(j)
	}
	add(ReduceGrads, -1, -1)
	add(OptimizerStep, -1, -1)
	return acts
}

// Actions is rank's action list for one step of micro micro-batches: its
// stage's Schedule (InterleavedSchedule when the plan has chunks) with each
// Peer turned into the world rank of that stage in rank's replica, ready for
// Send and Recv.
func (p *Plan) Actions(rank, micro int) ([]Action, error) {
	if rank < 0 || rank >= p.World {
		return nil, fmt.Errorf("actions: rank %d outside the world of %d", rank, p.World)
	}
	var all [][]Action
	var err error
	if p.chunks() > 1 {
		all, err = InterleavedSchedule(p.Stages, p.Chunks, micro)
	} else {
		all, err = Schedule(p.Stages, micro)
	}
	if err != nil {
		return nil, err
	}
	r := p.Ranks[rank]
	acts := all[r.Stage]
	for i := range acts {
		if acts[i].Peer >= 0 {
			acts[i].Peer = r.Pipeline[acts[i].Peer]
		}
	}
	return acts, nil
}

// FormatSchedule prints one line per stage, the actions separated by spaces,
// with sends and receives shortened (F3 B3 >a3 <a3 >g3 <g3): the shape of the
// 1F1B schedule is easy to see this way.
func FormatSchedule(sched [][]Action) string {
	short := [...]string{"F", "B", ">a", "<a", ">g", "<g", "reduce", "step"}
	var sb strings.Builder
	for s, acts := range sched {
		fmt.Fprintf(&sb, "stage %d:", s)
		for _, a := range acts {
			if a.Micro < 0 {
				fmt.Fprintf(&sb, " %s", short[a.Op])
			} else {
				fmt.Fprintf(&sb, " %s%d", short[a.Op], a.Micro)
			}
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

// TheoreticalBubble is the idle fraction of 1F1B with P stages and M
// micro-batches when every stage takes the same time: (P-1)/(M+P-1).
func TheoreticalBubble(stages, micro int) float64 {
	return float64(stages-1) / float64(micro+stages-1)
}

// Timeline is the outcome of Simulate: when each stage finished, and how long
// it computed.
type Timeline struct {
	Makespan float64   // time the last stage finished its last backward
	Busy     []float64 // per stage, time spent in Forward and Backward
	Finish   []float64 // per stage, time its last action completed
}

// Bubble is the idle fraction: 1 - total busy / (stages * makespan).
func (t Timeline) Bubble() float64 {
	if t.Makespan == 0 {
		return 0
	}
	var busy float64
	for _, b := range t.Busy {
		busy += b
	}
	return 1 - busy/(float64(len(t.Busy))*t.Makespan)
}

// Simulate runs the stages' action lists in virtual time, Forward taking fwd
// and Backward bwd time units, transfers taking none, and a send and its
// receive completing together once both stages have reached them (blocking
// semantics). ReduceGrads and OptimizerStep take no time. It returns an error
// naming the stuck actions when the lists cannot all finish (a deadlock) or a
// send's micro-batch does not match its receive's. With fwd=1, bwd=2 its
// Bubble is what `train bench pipeline` compares measurements against.
func Simulate(sched [][]Action, fwd, bwd float64) (Timeline, error) {
	P := len(sched)
	pc := make([]int, P)        // next action per stage
	clock := make([]float64, P) // time each stage is ready for its next action
	tl := Timeline{Busy: make([]float64, P), Finish: make([]float64, P)}
	for {
		progressed, done := false, true
		for s := 0; s < P; s++ {
			for pc[s] < len(sched[s]) {
				a := sched[s][pc[s]]
				if !a.IsComm() {
					switch a.Op {
					case Forward:
						clock[s] += fwd
						tl.Busy[s] += fwd
					case Backward:
						clock[s] += bwd
						tl.Busy[s] += bwd
					}
					pc[s]++
					progressed = true
					continue
				}
				q := a.Peer
				if q < 0 || q >= P {
					return tl, fmt.Errorf("stage %d action %d %v: peer outside the %d stages", s, pc[s], a, P)
				}
				if pc[q] >= len(sched[q]) {
					return tl, fmt.Errorf("stage %d action %d %v: stage %d has already finished", s, pc[s], a, q)
				}
				b := sched[q][pc[q]]
				if !b.IsComm() || b.Peer != s || !matches(a.Op, b.Op) {
					break // the peer is not at our transfer (yet); come back later
				}
				if a.Micro != b.Micro {
					return tl, fmt.Errorf("stage %d %v meets stage %d %v: mismatched transfer", s, a, q, b)
				}
				t := max(clock[s], clock[q])
				clock[s], clock[q] = t, t
				pc[s]++
				pc[q]++
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
	tl.finish(clock)
	return tl, nil
}

// deadlock is the error of a simulation stuck with stage s at action pc[s]:
// it names each unfinished stage's action.
func deadlock(sched [][]Action, pc []int) error {
	var stuck []string
	for s := range sched {
		if pc[s] < len(sched[s]) {
			stuck = append(stuck, fmt.Sprintf("stage %d at %v", s, describe(sched[s][pc[s]])))
		}
	}
	return fmt.Errorf("deadlock: %s", strings.Join(stuck, ", "))
}

// finish sets each stage's finish time and the makespan from the clocks.
func (t *Timeline) finish(clock []float64) {
	for s, c := range clock {
		t.Finish[s] = c
		t.Makespan = max(t.Makespan, c)
	}
}

// matches reports whether a and b are the two ends of one transfer.
func matches(a, b Op) bool {
	switch a {
	case SendActivation:
		return b == RecvActivation
	case RecvActivation:
		return b == SendActivation
	case SendGrad:
		return b == RecvGrad
	case RecvGrad:
		return b == SendGrad
	}
	return false
}

// SimulatedBubble is the bubble of 1F1B with P stages and M micro-batches
// when a backward costs twice a forward, by Simulate.
func SimulatedBubble(stages, micro int) (float64, error) {
	sched, err := Schedule(stages, micro)
	if err != nil {
		return 0, err
	}
	tl, err := Simulate(sched, 1, 2)
	if err != nil {
		return 0, err
	}
	return tl.Bubble(), nil
}

// InFlight is, per chunk, the most micro-batches an action list holds
// forwarded and not yet backwarded at once: the activation sets a stage needs
// to keep them all (parallel.keep_activations).
func InFlight(acts []Action, chunks int) []int {
	most := make([]int, max(chunks, 1))
	open := make([]int, len(most))
	for _, a := range acts {
		if a.Chunk < 0 || a.Chunk >= len(most) {
			continue
		}
		switch a.Op {
		case Forward:
			open[a.Chunk]++
			most[a.Chunk] = max(most[a.Chunk], open[a.Chunk])
		case Backward:
			open[a.Chunk]--
		}
	}
	return most
}
