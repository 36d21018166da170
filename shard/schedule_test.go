package shard

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// runWithChannels executes the schedule as an executor would, one goroutine
// per stage and one unbuffered channel per direction between neighbours, so a
// send blocks until its receive: the strictest transport. It fails on a
// deadlock (a timeout) or a transfer whose micro-batch is not the expected one.
func runWithChannels(sched [][]Action) error {
	P := len(sched)
	type link struct{ from, to int }
	act := map[link]chan int{}  // activations s -> s+1
	grad := map[link]chan int{} // gradients s+1 -> s
	for s := 0; s+1 < P; s++ {
		act[link{s, s + 1}] = make(chan int)
		grad[link{s + 1, s}] = make(chan int)
	}
	errs := make(chan error, P)
	var wg sync.WaitGroup
	for s := range sched {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for _, a := range sched[s] {
				var err error
				switch a.Op {
				case SendActivation:
					act[link{s, a.Peer}] <- a.Micro
				case SendGrad:
					grad[link{s, a.Peer}] <- a.Micro
				case RecvActivation:
					if m := <-act[link{a.Peer, s}]; m != a.Micro {
						err = fmt.Errorf("stage %d %v received activation of micro-batch %d", s, a, m)
					}
				case RecvGrad:
					if m := <-grad[link{a.Peer, s}]; m != a.Micro {
						err = fmt.Errorf("stage %d %v received gradient of micro-batch %d", s, a, m)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(s)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("deadlock: stages did not finish")
	}
	close(errs)
	return <-errs
}

// checkInvariants checks one stage's list: every micro-batch forwarded once
// then backwarded once, receives before the compute that needs them and sends
// after the compute that makes them, at most P-s micro-batches in flight, and
// the step-level actions last.
func checkInvariants(sched [][]Action, M int) error {
	P := len(sched)
	for s, acts := range sched {
		first, last := s == 0, s == P-1
		fwd := make([]int, M) // index of Forward(m), -1 before
		bwd := make([]int, M)
		recvA := make([]int, M)
		recvG := make([]int, M)
		for m := range M {
			fwd[m], bwd[m], recvA[m], recvG[m] = -1, -1, -1, -1
		}
		inFlight, peak := 0, 0
		var lastFwd, lastBwd = -1, -1
		for i, a := range acts {
			if a.Micro >= M {
				return fmt.Errorf("stage %d: %v outside %d micro-batches", s, a, M)
			}
			switch a.Op {
			case RecvActivation:
				if first || a.Peer != s-1 || recvA[a.Micro] >= 0 {
					return fmt.Errorf("stage %d: unexpected %v", s, a)
				}
				recvA[a.Micro] = i
			case RecvGrad:
				if last || a.Peer != s+1 || recvG[a.Micro] >= 0 {
					return fmt.Errorf("stage %d: unexpected %v", s, a)
				}
				recvG[a.Micro] = i
			case Forward:
				if fwd[a.Micro] >= 0 || (!first && recvA[a.Micro] < 0) || a.Micro != lastFwd+1 {
					return fmt.Errorf("stage %d: %v repeated, out of order or before its input", s, a)
				}
				fwd[a.Micro], lastFwd = i, a.Micro
				inFlight++
				peak = max(peak, inFlight)
			case Backward:
				if fwd[a.Micro] < 0 || bwd[a.Micro] >= 0 || (!last && recvG[a.Micro] < 0) || a.Micro != lastBwd+1 {
					return fmt.Errorf("stage %d: %v before its forward or gradient, repeated or out of order", s, a)
				}
				bwd[a.Micro], lastBwd = i, a.Micro
				inFlight--
			case SendActivation:
				if last || a.Peer != s+1 || fwd[a.Micro] < 0 {
					return fmt.Errorf("stage %d: %v before its forward", s, a)
				}
			case SendGrad:
				if first || a.Peer != s-1 || bwd[a.Micro] < 0 {
					return fmt.Errorf("stage %d: %v before its backward", s, a)
				}
			case ReduceGrads, OptimizerStep:
				if a.Micro != -1 || i < len(acts)-2 {
					return fmt.Errorf("stage %d: %v at %d, not at the end", s, a, i)
				}
			}
		}
		if lastFwd != M-1 || lastBwd != M-1 {
			return fmt.Errorf("stage %d: %d forwards, %d backwards for %d micro-batches", s, lastFwd+1, lastBwd+1, M)
		}
		if acts[len(acts)-2].Op != ReduceGrads || acts[len(acts)-1].Op != OptimizerStep {
			return fmt.Errorf("stage %d: does not end with ReduceGrads, OptimizerStep", s)
		}
		if peak > P-s {
			return fmt.Errorf("stage %d: %d micro-batches in flight, more than P-s = %d", s, peak, P-s)
		}
		if want := min(P-s, M); peak != want {
			return fmt.Errorf("stage %d: peak %d micro-batches in flight, 1F1B keeps %d", s, peak, want)
		}
	}
	return nil
}

// sendsMatchReceives checks, per direction between neighbours, that the
// sequence of micro-batches sent equals the sequence received.
func sendsMatchReceives(sched [][]Action) error {
	type key struct {
		from, to int
		grad     bool
	}
	sent, recv := map[key][]int{}, map[key][]int{}
	for s, acts := range sched {
		for _, a := range acts {
			switch a.Op {
			case SendActivation:
				sent[key{s, a.Peer, false}] = append(sent[key{s, a.Peer, false}], a.Micro)
			case SendGrad:
				sent[key{s, a.Peer, true}] = append(sent[key{s, a.Peer, true}], a.Micro)
			case RecvActivation:
				recv[key{a.Peer, s, false}] = append(recv[key{a.Peer, s, false}], a.Micro)
			case RecvGrad:
				recv[key{a.Peer, s, true}] = append(recv[key{a.Peer, s, true}], a.Micro)
			}
		}
	}
	if len(sent) != len(recv) {
		return fmt.Errorf("%d send directions, %d receive directions", len(sent), len(recv))
	}
	for k, ms := range sent {
		if fmt.Sprint(ms) != fmt.Sprint(recv[k]) {
			return fmt.Errorf("%+v: sent %v, received %v", k, ms, recv[k])
		}
	}
	return nil
}

func TestScheduleAllShapes(t *testing.T) {
	for P := 1; P <= 8; P++ {
		for M := 1; M <= 16; M++ {
			sched, err := Schedule(P, M)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("P=%d M=%d", P, M)
			if err := checkInvariants(sched, M); err != nil {
				t.Errorf("%s: %v\n%s", name, err, FormatSchedule(sched))
			}
			if err := sendsMatchReceives(sched); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if err := runWithChannels(sched); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, FormatSchedule(sched))
			}
			tl, err := Simulate(sched, 1, 2)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			// Unit-cost 1F1B is ideal: every stage idles exactly the theory's share.
			if got, want := tl.Bubble(), TheoreticalBubble(P, M); math.Abs(got-want) > 1e-12 {
				t.Errorf("%s: simulated bubble %.4f, theory %.4f", name, got, want)
			}
			if want := float64(3 * (M + P - 1)); tl.Makespan != want {
				t.Errorf("%s: makespan %g, want 3*(M+P-1) = %g", name, tl.Makespan, want)
			}
		}
	}
}

// The textbook picture for P=4, M=8, so a reader can check the shape by eye.
func TestScheduleShape(t *testing.T) {
	sched, err := Schedule(4, 8)
	if err != nil {
		t.Fatal(err)
	}
	compute := func(acts []Action) string {
		var parts []string
		for _, a := range acts {
			if a.Op == Forward || a.Op == Backward {
				parts = append(parts, a.Op.String()[:1]+fmt.Sprint(a.Micro))
			}
		}
		return strings.Join(parts, " ")
	}
	want := []string{
		"F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7",
		"F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7",
		"F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7",
		"F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7",
	}
	for s := range sched {
		if got := compute(sched[s]); got != want[s] {
			t.Errorf("stage %d: %s\nwant     %s", s, got, want[s])
		}
	}
	if got := FormatSchedule(sched[:1]); !strings.HasPrefix(got, "stage 0: F0 >a0 F1 >a1 F2 >a2 F3 <g0 >a3 B0 F4") {
		t.Errorf("FormatSchedule: %s", got)
	}
}

// A schedule that sends before it receives in the steady state deadlocks
// under blocking sends; Simulate must say so rather than hang or pass.
func TestSimulateFindsDeadlock(t *testing.T) {
	bad := [][]Action{
		{{Op: SendActivation, Micro: 0, Peer: 1}, {Op: RecvGrad, Micro: 0, Peer: 1}},
		{{Op: SendGrad, Micro: 0, Peer: 0}, {Op: RecvActivation, Micro: 0, Peer: 0}},
	}
	if _, err := Simulate(bad, 1, 2); err == nil || !strings.Contains(err.Error(), "deadlock") {
		t.Errorf("Simulate = %v, want a deadlock", err)
	}
	mismatch := [][]Action{{{Op: SendActivation, Micro: 0, Peer: 1}}, {{Op: RecvActivation, Micro: 1, Peer: 0}}}
	if _, err := Simulate(mismatch, 1, 2); err == nil {
		t.Error("Simulate accepted a send of micro-batch 0 received as 1")
	}
}

func TestScheduleErrors(t *testing.T) {
	for _, c := range [][2]int{{0, 4}, {2, 0}, {-1, 1}} {
		if _, err := Schedule(c[0], c[1]); err == nil {
			t.Errorf("Schedule(%d, %d): no error", c[0], c[1])
		}
	}
}

func TestTheoreticalBubble(t *testing.T) {
	if got := TheoreticalBubble(4, 8); math.Abs(got-3.0/11) > 1e-15 {
		t.Errorf("TheoreticalBubble(4, 8) = %g", got)
	}
	if got := TheoreticalBubble(1, 5); got != 0 {
		t.Errorf("TheoreticalBubble(1, 5) = %g", got)
	}
	got, err := SimulatedBubble(4, 8)
	if err != nil || math.Abs(got-3.0/11) > 1e-12 {
		t.Errorf("SimulatedBubble(4, 8) = %g, %v", got, err)
	}
}
