package shard

import (
	"fmt"
	"strings"
	"testing"
)

// TestInterleavedSchedule simulates interleaved 1F1B for P in {1..4, 8}, V in
// {1..4} and M in {P, 2P, 4P} with sends that do not wait (the executor's) and
// FIFO links: no deadlock, every message received where it is expected, each
// rank forwards and backwards every (chunk, micro-batch) once, forward before
// backward, and the bubble is within 2% of (P-1)/(V*M+P-1) when a backward
// costs twice a forward, below 1F1B's for V > 1.
func TestInterleavedSchedule(t *testing.T) {
	for _, P := range []int{1, 2, 3, 4, 8} {
		for _, V := range []int{1, 2, 3, 4} {
			for _, M := range []int{P, 2 * P, 4 * P} {
				name := fmt.Sprintf("P%d V%d M%d", P, V, M)
				sched, err := InterleavedSchedule(P, V, M)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				for r, acts := range sched {
					fwd, bwd := map[[2]int]int{}, map[[2]int]int{}
					for i, a := range acts {
						key := [2]int{a.Chunk, a.Micro}
						switch a.Op {
						case Forward:
							fwd[key] = i + 1
						case Backward:
							if fwd[key] == 0 {
								t.Errorf("%s rank %d: backward of %v before its forward", name, r, key)
							}
							bwd[key] = i + 1
						}
					}
					if len(fwd) != V*M || len(bwd) != V*M {
						t.Errorf("%s rank %d: %d forwards and %d backwards, want %d each", name, r, len(fwd), len(bwd), V*M)
					}
				}
				tl, err := SimulateAsync(sched, 1, 2)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got, want := tl.Bubble(), InterleavedBubble(P, V, M)
				if got > want+0.02 {
					t.Errorf("%s: simulated bubble %.4f, more than the theory's %.4f", name, got, want)
				}
				if V > 1 && P > 1 && !(got < TheoreticalBubble(P, M)) {
					t.Errorf("%s: bubble %.4f not below 1F1B's %.4f", name, got, TheoreticalBubble(P, M))
				}
			}
		}
	}
}

// TestInterleavedScheduleErrors: bad shapes are refused by name.
func TestInterleavedScheduleErrors(t *testing.T) {
	for _, c := range []struct {
		P, V, M int
		want    string
	}{{0, 1, 1, "pipeline stages"}, {2, 0, 2, "chunks"}, {2, 2, 0, "micro-batches"}, {4, 2, 6, "multiple of the 4 stages"}} {
		if _, err := InterleavedSchedule(c.P, c.V, c.M); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("InterleavedSchedule(%d, %d, %d) = %v, want an error naming %q", c.P, c.V, c.M, err, c.want)
		}
	}
}

// SimulateAsync must catch what a FIFO transport would get wrong: a message
// received out of order on its link, one never received, and a deadlock.
func TestSimulateAsyncFindsFaults(t *testing.T) {
	for _, c := range []struct {
		name  string
		sched [][]Action
		want  string
	}{
		{"out of order", [][]Action{
			{{Op: SendActivation, Micro: 0, Peer: 1}, {Op: SendActivation, Micro: 1, Peer: 1}},
			{{Op: RecvActivation, Micro: 1, Peer: 0}, {Op: RecvActivation, Micro: 0, Peer: 0}},
		}, "out of order"},
		{"never received", [][]Action{
			{{Op: SendActivation, Micro: 0, Peer: 1}},
			{},
		}, "never received"},
		{"deadlock", [][]Action{
			{{Op: RecvGrad, Micro: 0, Peer: 1}, {Op: SendActivation, Micro: 0, Peer: 1}},
			{{Op: RecvActivation, Micro: 0, Peer: 0}, {Op: SendGrad, Micro: 0, Peer: 0}},
		}, "deadlock"},
	} {
		if _, err := SimulateAsync(c.sched, 1, 2); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: SimulateAsync = %v, want %q", c.name, err, c.want)
		}
	}
}
