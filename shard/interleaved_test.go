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

// TestPlanChunks checks an interleaved plan: every rank holds V ranges, chunk
// c of stage s being virtual stage c*P+s; the virtual stages cover the layers
// in order; the embedding is on stage 0's first chunk and the head on the
// last stage's last chunk; and Actions name the ring's world ranks.
func TestPlanChunks(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-8b")
	for _, tc := range []struct{ world, P, V int }{{2, 2, 2}, {4, 4, 2}, {8, 4, 2}, {6, 3, 4}, {4, 2, 8}} {
		p, err := NewFor(cfg, tc.world, tc.P, Workload{Chunks: tc.V})
		if err != nil {
			t.Fatal(err)
		}
		if p.Chunks != tc.V || len(p.StageInfo) != tc.P*tc.V {
			t.Fatalf("P=%d V=%d: chunks %d, %d virtual stages", tc.P, tc.V, p.Chunks, len(p.StageInfo))
		}
		next := 0
		for v, st := range p.StageInfo {
			if st.Lo != next || st.Hi <= st.Lo || st.Embed != (v == 0) || st.Head != (v == tc.P*tc.V-1) {
				t.Fatalf("P=%d V=%d: virtual stage %d is %+v after layer %d", tc.P, tc.V, v, st, next)
			}
			next = st.Hi
		}
		if next != cfg.NumLayers {
			t.Fatalf("P=%d V=%d: the virtual stages end at layer %d of %d", tc.P, tc.V, next, cfg.NumLayers)
		}
		for _, r := range p.Ranks {
			ch := r.Ranges()
			if len(ch) != tc.V {
				t.Fatalf("rank %d has %d chunks", r.Rank, len(ch))
			}
			layers := 0
			for c, x := range ch {
				st := p.StageInfo[c*tc.P+r.Stage]
				if x.Lo != st.Lo || x.Hi != st.Hi || x.Embed != st.Embed || x.Head != st.Head {
					t.Errorf("rank %d chunk %d is %+v, virtual stage %+v", r.Rank, c, x, st)
				}
				layers += x.Hi - x.Lo
			}
			if r.Layers() != layers || r.Embed != (r.Stage == 0) || r.Head != (r.Stage == tc.P-1) {
				t.Errorf("rank %d: %d layers (want %d), embed %v, head %v", r.Rank, r.Layers(), layers, r.Embed, r.Head)
			}
			acts, err := p.Actions(r.Rank, 2*tc.P)
			if err != nil {
				t.Fatal(err)
			}
			prev, nxt := r.Pipeline[(r.Stage+tc.P-1)%tc.P], r.Pipeline[(r.Stage+1)%tc.P]
			for _, a := range acts {
				want := -1
				switch a.Op {
				case RecvActivation, SendGrad:
					want = prev
				case SendActivation, RecvGrad:
					want = nxt
				}
				if a.Peer != want {
					t.Fatalf("rank %d: %v names peer %d, want %d", r.Rank, a, a.Peer, want)
				}
			}
		}
		if s := p.String(); !strings.Contains(s, "interleaved 1F1B") || !strings.Contains(s, "+[") {
			t.Errorf("P=%d V=%d: the plan does not show its chunks:\n%s", tc.P, tc.V, s)
		}
	}
	for _, tc := range []struct {
		P, V int
		want string
	}{{1, 2, "at least 2 pipeline stages"}, {4, 9, "every chunk needs at least one layer"}} {
		if _, err := NewFor(cfg, tc.P, tc.P, Workload{Chunks: tc.V}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("P=%d V=%d: error %v, want one saying %q", tc.P, tc.V, err, tc.want)
		}
	}
}

// TestInFlight checks the activation sets a schedule holds at once: 1F1B's
// min(P-s, M) per stage, and for interleaved 1F1B a count found by replaying
// the list the slow way (a set of open micro-batches per chunk).
func TestInFlight(t *testing.T) {
	for _, P := range []int{1, 2, 4} {
		for _, M := range []int{1, 3, 8} {
			sched, err := Schedule(P, M)
			if err != nil {
				t.Fatal(err)
			}
			for s, acts := range sched {
				if got := InFlight(acts, 1); got[0] != min(P-s, M) {
					t.Errorf("1F1B P=%d M=%d stage %d: %d in flight, want %d", P, M, s, got[0], min(P-s, M))
				}
			}
		}
	}
	for _, P := range []int{2, 3, 4} {
		for _, V := range []int{2, 3} {
			sched, err := InterleavedSchedule(P, V, 2*P)
			if err != nil {
				t.Fatal(err)
			}
			for s, acts := range sched {
				want := make([]int, V)
				open := make([]map[int]bool, V)
				for c := range open {
					open[c] = map[int]bool{}
				}
				for _, a := range acts {
					switch a.Op {
					case Forward:
						open[a.Chunk][a.Micro] = true
					case Backward:
						delete(open[a.Chunk], a.Micro)
					}
					if a.Op == Forward {
						want[a.Chunk] = max(want[a.Chunk], len(open[a.Chunk]))
					}
				}
				got := InFlight(acts, V)
				for c := range want {
					if got[c] != want[c] || got[c] < 1 {
						t.Errorf("P=%d V=%d stage %d chunk %d: %d in flight, want %d", P, V, s, c, got[c], want[c])
					}
				}
			}
		}
	}
}

// TestMemoryChunks checks an interleaved rank's estimate: the sum of its
// chunks' models (each with the micro-batches the schedule holds in flight
// there) and one reserve.
func TestMemoryChunks(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-8b")
	s := Setup{Method: "lora", MicroBatch: 1, SeqLen: 4096, MicroBatches: 8, LoRARank: 16, Checkpoint: true, KeepActivations: true}
	p, err := NewFor(cfg, 4, 4, Workload{Chunks: 2, SeqLen: 4096, Method: "lora"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := EstimateMemory(cfg, p, s)
	if err != nil {
		t.Fatal(err)
	}
	sched, err := InterleavedSchedule(4, 2, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.validate(); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Ranks {
		inFlight := InFlight(sched[r.Stage], 2)
		want := Memory{Reserve: Reserve}
		for c, ch := range r.Ranges() {
			m := s.rangeMemory(cfg, ch, inFlight[c], p.Replicas)
			want.Weights += m.Weights
			want.Activations += m.Activations
			want.Logits += m.Logits
			want.InFlight += m.InFlight
		}
		got := e.Ranks[r.Rank]
		if got.Weights != want.Weights || got.Activations != want.Activations || got.Logits != want.Logits ||
			got.Reserve != Reserve || got.InFlight != want.InFlight || got.Stage != r.Stage {
			t.Errorf("rank %d: %+v, want the sum of its chunks %+v", r.Rank, got, want)
		}
	}
}
