package shard

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"train/model"
)

func randomConfig(t *testing.T, name string) *model.Config {
	t.Helper()
	c, err := model.RandomConfig(name)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestPlanLayout(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-8b")
	p, err := New(cfg, 8, 4, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if p.Replicas != 2 || len(p.Ranks) != 8 || len(p.StageInfo) != 4 {
		t.Fatalf("plan shape: %+v", p)
	}
	for _, r := range p.Ranks {
		if r.Rank != r.Replica*4+r.Stage || p.RankOf(r.Stage, r.Replica) != r.Rank {
			t.Errorf("rank %d is stage %d replica %d", r.Rank, r.Stage, r.Replica)
		}
		if r.Embed != (r.Stage == 0) || r.Head != (r.Stage == 3) {
			t.Errorf("rank %d: embed %v head %v", r.Rank, r.Embed, r.Head)
		}
		if len(r.Pipeline) != 4 || r.Pipeline[r.Stage] != r.Rank || len(r.DataParallel) != 2 || r.DataParallel[r.Replica] != r.Rank {
			t.Errorf("rank %d groups: pipeline %v data-parallel %v", r.Rank, r.Pipeline, r.DataParallel)
		}
	}
	r5 := p.Ranks[5]
	if fmt.Sprint(r5.Pipeline) != "[4 5 6 7]" || fmt.Sprint(r5.DataParallel) != "[1 5]" || r5.Prev() != 4 || r5.Next() != 6 {
		t.Errorf("rank 5: %+v prev %d next %d", r5, r5.Prev(), r5.Next())
	}
	if p.Ranks[4].Prev() != -1 || p.Ranks[7].Next() != -1 {
		t.Error("pipeline ends have neighbours")
	}
	// Layers are covered once, contiguously, every stage non-empty.
	lo := 0
	for _, s := range p.StageInfo {
		if s.Lo != lo || s.Hi <= s.Lo {
			t.Errorf("stage %d: [%d,%d) after %d", s.Stage, s.Lo, s.Hi, lo)
		}
		lo = s.Hi
	}
	if lo != cfg.NumLayers {
		t.Errorf("layers end at %d, model has %d", lo, cfg.NumLayers)
	}
}

// The last stage pays for lm_head (2*V*C, about 1.2 layers of 70B at T=2048)
// but recomputes nothing (StepCosts: 3 forwards' worth per layer there, 4
// elsewhere in full fine-tuning), so it gets the most layers; among the splits
// as fast as the best, the first stage gets the fewest.
func TestPlanBalances70B(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-70b")
	p, err := New(cfg, 4, 4, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var counts []int
	for _, s := range p.StageInfo {
		counts = append(counts, s.Hi-s.Lo)
	}
	if got := fmt.Sprint(counts); got != "[18 19 19 24]" {
		t.Errorf("70B over 4 stages: layer counts %s\n%s", got, p)
	}
	out := p.String()
	for _, want := range []string{"4 ranks = 4 pipeline stages x 1 data-parallel replica", "[56,80)", "embed", "head", "balance:"} {
		if !strings.Contains(out, want) {
			t.Errorf("String() lacks %q:\n%s", want, out)
		}
	}
	js, err := p.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var back Plan
	if err := json.Unmarshal(js, &back); err != nil || back.String() != out {
		t.Errorf("JSON round trip: %v\n%s", err, js)
	}
}

func TestPlanErrors(t *testing.T) {
	cfg := randomConfig(t, "tiny") // 4 layers
	for _, c := range []struct {
		world, stages int
		want          string
	}{
		{6, 4, "not a multiple"},
		{5, 5, "4 layers"},
		{4, 0, "at least 1"},
		{0, 1, "at least 1"},
	} {
		_, err := New(cfg, c.world, c.stages, 64)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(world %d, stages %d) = %v, want an error containing %q", c.world, c.stages, err, c.want)
		}
	}
	if p, err := New(cfg, 8, 4, 64); err != nil || p.Replicas != 2 {
		t.Errorf("New(8, 4) = %v, %v", p, err)
	}
}

// bruteForce tries every split of L layers into P stages.
func bruteForce(c Costs, P int) int64 {
	L := len(c.Layer)
	best := int64(1) << 62
	var rec func(s, lo int, worst int64)
	rec = func(s, lo int, worst int64) {
		if s == P-1 {
			best = min(best, max(worst, c.stage(lo, L, s == 0, true)))
			return
		}
		for hi := lo + 1; hi <= L-(P-1-s); hi++ {
			rec(s+1, hi, max(worst, c.stage(lo, hi, s == 0, false)))
		}
	}
	rec(0, 0, 0)
	return best
}

func TestSplitIsOptimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := 0; trial < 300; trial++ {
		L := 1 + rng.IntN(10)
		c := Costs{Layer: make([]int64, L), Embed: rng.Int64N(30), Head: rng.Int64N(60)}
		for i := range c.Layer {
			c.Layer[i] = 1 + rng.Int64N(20)
		}
		P := 1 + rng.IntN(L)
		b, err := Split(c, P)
		if err != nil {
			t.Fatal(err)
		}
		var worst int64
		for s := 0; s < P; s++ {
			if b[s+1] <= b[s] {
				t.Fatalf("%+v P=%d: empty stage in %v", c, P, b)
			}
			worst = max(worst, c.stage(b[s], b[s+1], s == 0, s == P-1))
		}
		if b[0] != 0 || b[P] != L {
			t.Fatalf("bounds %v do not cover %d layers", b, L)
		}
		if want := bruteForce(c, P); worst != want {
			t.Errorf("%+v P=%d: split %v has max cost %d, optimum %d", c, P, b, worst, want)
		}
	}
	if _, err := Split(Costs{Layer: []int64{1, 2}}, 3); err == nil {
		t.Error("Split of 2 layers into 3 stages: no error")
	}
}

func TestActionsUseWorldRanks(t *testing.T) {
	cfg := randomConfig(t, "tiny")
	p, err := New(cfg, 4, 2, 64) // replicas {0,1}, {2,3}
	if err != nil {
		t.Fatal(err)
	}
	acts, err := p.Actions(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(acts); got != "[RecvActivation(0)@2 Forward(0) Backward(0) SendGrad(0)@2 RecvActivation(1)@2 Forward(1) Backward(1) SendGrad(1)@2 ReduceGrads OptimizerStep]" {
		t.Errorf("rank 3: %s", got)
	}
	if _, err := p.Actions(4, 2); err == nil {
		t.Error("Actions(4) in a world of 4: no error")
	}
}

// TestPlanMethodAndBudget: LoRA's backward is lighter, so recomputation weighs
// more and the last stage takes more layers than in full fine-tuning; with a
// memory budget the last stage's extra layers must fit, the split stays the
// fastest that fits (checked by brute force), and an impossible budget falls
// back to the fastest split.
func TestPlanMethodAndBudget(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-70b")
	setup := Setup{MicroBatch: 1, LoRARank: 16}
	layers := func(p *Plan) []int {
		var n []int
		for _, st := range p.StageInfo {
			n = append(n, st.Hi-st.Lo)
		}
		return n
	}
	full, err := NewFor(cfg, 4, 4, Workload{SeqLen: 4096, Method: "full"})
	if err != nil {
		t.Fatal(err)
	}
	lora, err := NewFor(cfg, 4, 4, Workload{SeqLen: 4096, Method: "lora"})
	if err != nil {
		t.Fatal(err)
	}
	if lf, ll := layers(full), layers(lora); ll[3] <= lf[3] {
		t.Errorf("last stage: %d layers for LoRA, %d for full fine-tuning; want more for LoRA", ll[3], lf[3])
	}
	memOf := func(p *Plan) int64 {
		s := setup
		s.Method, s.SeqLen = "lora", 4096
		e, err := EstimateMemory(cfg, p, s)
		if err != nil {
			t.Fatal(err)
		}
		return e.Peak().Total()
	}
	budget := memOf(lora) - 1 // the fastest split no longer fits
	fitted, err := NewFor(cfg, 4, 4, Workload{SeqLen: 4096, Method: "lora", Budget: budget, Setup: setup})
	if err != nil {
		t.Fatal(err)
	}
	if m := memOf(fitted); m > budget {
		t.Errorf("split %v needs %s, over the budget %s", layers(fitted), FormatBytes(m), FormatBytes(budget))
	}
	c := StepCosts(cfg, 4096, "lora", true)
	s := setup
	s.Method, s.SeqLen = "lora", 4096
	if err := s.validate(); err != nil {
		t.Fatal(err)
	}
	fits := func(lo, hi, st int) bool { return s.stageMemory(cfg, lo, hi, st, 4, 1).Total() <= budget }
	var worst int64
	for _, st := range fitted.StageInfo {
		worst = max(worst, c.stage(st.Lo, st.Hi, st.Embed, st.Head))
	}
	if want := bruteForceFits(c, 4, fits); worst != want {
		t.Errorf("split %v costs %d at its slowest stage; the best that fits costs %d", layers(fitted), worst, want)
	}
	tiny, err := NewFor(cfg, 4, 4, Workload{SeqLen: 4096, Method: "lora", Budget: 1, Setup: setup})
	if err != nil || fmt.Sprint(layers(tiny)) != fmt.Sprint(layers(lora)) {
		t.Errorf("an impossible budget gave %v, %v; want the fastest split %v", layers(tiny), err, layers(lora))
	}
}

// bruteForceFits is bruteForce over the splits whose stages all fit.
func bruteForceFits(c Costs, P int, fits func(lo, hi, s int) bool) int64 {
	L := len(c.Layer)
	best := int64(1) << 62
	var rec func(s, lo int, worst int64)
	rec = func(s, lo int, worst int64) {
		if s == P-1 {
			if fits(lo, L, s) {
				best = min(best, max(worst, c.stage(lo, L, s == 0, true)))
			}
			return
		}
		for hi := lo + 1; hi <= L-(P-1-s); hi++ {
			if fits(lo, hi, s) {
				rec(s+1, hi, max(worst, c.stage(lo, hi, s == 0, false)))
			}
		}
	}
	rec(0, 0, 0)
	return best
}

// TestKeepActivations: keeping every in-flight micro-batch's activations
// takes more memory on the early stages (up to P sets) and, with nothing
// recomputed, balances the stages evenly apart from the embedding and head.
func TestKeepActivations(t *testing.T) {
	cfg := randomConfig(t, "llama-3.1-70b")
	base := Setup{Method: "lora", MicroBatch: 1, SeqLen: 4096, LoRARank: 16}
	keep := base
	keep.KeepActivations = true
	p, err := NewFor(cfg, 4, 4, Workload{SeqLen: 4096, Method: "lora", Setup: keep})
	if err != nil {
		t.Fatal(err)
	}
	var counts []int
	for _, st := range p.StageInfo {
		counts = append(counts, st.Hi-st.Lo)
	}
	if counts[3] >= counts[1] {
		t.Errorf("keeping activations, layer counts %v: the last stage should not take more than a middle one", counts)
	}
	one, err := EstimateMemory(cfg, p, base)
	if err != nil {
		t.Fatal(err)
	}
	all, err := EstimateMemory(cfg, p, keep)
	if err != nil {
		t.Fatal(err)
	}
	if a, o := all.Ranks[0].Activations, one.Ranks[0].Activations; a < 3*o {
		t.Errorf("stage 0 activations: %s keeping 4 micro-batches, %s keeping one", FormatBytes(a), FormatBytes(o))
	}
	if a, o := all.Ranks[3].Activations, one.Ranks[3].Activations; a != o {
		t.Errorf("last stage activations: %s keeping, %s not (one micro-batch in flight either way)", FormatBytes(a), FormatBytes(o))
	}
}

// splitDP is the dynamic programme over split points that SplitFits replaced
// (O(stages x layers²)), kept as the reference the faster split must agree
// with exactly, boundaries included.
func splitDP(c Costs, stages int, fits func(lo, hi, s int) bool) ([]int, error) {
	L := len(c.Layer)
	if stages < 1 || stages > L {
		return nil, fmt.Errorf("split: %d stages for %d layers", stages, L)
	}
	prefix, prefixLast := make([]int64, L+1), make([]int64, L+1)
	for i, x := range c.Layer {
		last := x
		if c.LastLayer != nil {
			last = c.LastLayer[i]
		}
		prefix[i+1], prefixLast[i+1] = prefix[i]+x, prefixLast[i]+last
	}
	const inf = int64(1) << 62
	cost := func(lo, hi, s int) int64 {
		if fits != nil && !fits(lo, hi, s) {
			return inf
		}
		n := prefix[hi] - prefix[lo]
		if s == stages-1 {
			n = prefixLast[hi] - prefixLast[lo] + c.Head
		}
		if s == 0 {
			n += c.Embed
		}
		return n
	}
	best := make([][]int64, stages)
	for s := range best {
		best[s] = make([]int64, L+1)
		for k := range best[s] {
			best[s][k] = inf
		}
	}
	for k := 1; k <= L; k++ {
		best[0][k] = cost(0, k, 0)
	}
	for s := 1; s < stages; s++ {
		for k := s + 1; k <= L; k++ {
			for j := s; j < k; j++ {
				if m := max(best[s-1][j], cost(j, k, s)); m < best[s][k] {
					best[s][k] = m
				}
			}
		}
	}
	opt := best[stages-1][L]
	if opt >= inf {
		if fits == nil {
			return nil, fmt.Errorf("split: no split")
		}
		return splitDP(c, stages, nil)
	}
	b := make([]int, stages+1)
	b[stages] = L
	for s := stages - 1; s > 0; s-- {
		k := b[s+1]
		for j := s; j < k; j++ {
			if best[s-1][j] <= opt && cost(j, k, s) <= opt {
				b[s] = j
				break
			}
		}
	}
	return b, nil
}

// TestSplitMatchesDP: the greedy-and-bisection split returns exactly the
// boundaries of the dynamic programme it replaced, on random small cases:
// zero and repeated costs (ties), a cheaper last stage, and memory limits of
// the shape SplitFits requires (a most-layers cap per stage, not smaller on a
// later stage but the last).
func TestSplitMatchesDP(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := 0; trial < 3000; trial++ {
		L := 1 + rng.IntN(12)
		c := Costs{Layer: make([]int64, L), Embed: rng.Int64N(40), Head: rng.Int64N(80)}
		for i := range c.Layer {
			c.Layer[i] = rng.Int64N(25) // zeros and ties included
		}
		if rng.IntN(2) == 0 {
			c.LastLayer = make([]int64, L)
			for i, x := range c.Layer {
				c.LastLayer[i] = x * 3 / 4
			}
		}
		P := 1 + rng.IntN(L)
		var fits func(lo, hi, s int) bool
		if rng.IntN(2) == 0 {
			caps := make([]int, P)
			caps[0] = 1 + rng.IntN(L)
			for s := 1; s < P-1; s++ {
				caps[s] = caps[s-1] + rng.IntN(3)
			}
			caps[P-1] = 1 + rng.IntN(L)
			fits = func(lo, hi, s int) bool { return hi-lo <= caps[s] }
		}
		got, err := SplitFits(c, P, fits)
		want, werr := splitDP(c, P, fits)
		if (err == nil) != (werr == nil) || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%+v P=%d (limits %v): split %v, %v; the dynamic programme gives %v, %v", c, P, fits != nil, got, err, want, werr)
		}
	}
}

// TestSplitMatchesDPOnModels: on real shapes and memory budgets (the fits
// NewFor builds from stageMemory) the split is the dynamic programme's.
func TestSplitMatchesDPOnModels(t *testing.T) {
	for _, name := range []string{"llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b"} {
		cfg := randomConfig(t, name)
		for _, P := range []int{1, 2, 3, 4, 8} {
			for _, method := range []string{"lora", "full"} {
				setup := Setup{Method: method, MicroBatch: 1, SeqLen: 4096, LoRARank: 16}
				if err := setup.validate(); err != nil {
					t.Fatal(err)
				}
				c := StepCosts(cfg, 4096, method, true)
				fastest, err := splitDP(c, P, nil)
				if err != nil {
					t.Fatal(err)
				}
				peak := int64(0)
				for s := 0; s < P; s++ {
					peak = max(peak, setup.stageMemory(cfg, fastest[s], fastest[s+1], s, P, 1).Total())
				}
				for _, budget := range []int64{peak, peak - 1, peak * 9 / 10, peak / 2} {
					fits := func(lo, hi, s int) bool { return setup.stageMemory(cfg, lo, hi, s, P, 1).Total() <= budget }
					want, err := splitDP(c, P, fits)
					if err != nil {
						t.Fatal(err)
					}
					got, _, err := splitFor(cfg, P, P, 4096, method, Workload{Budget: budget, Setup: setup})
					if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
						t.Errorf("%s %s P=%d budget %s: split %v, %v; the dynamic programme gives %v", name, method, P, FormatBytes(budget), got, err, want)
					}
				}
			}
		}
	}
}
