// Package shard decides how a training run is spread over its ranks, as pure
// functions of the model, the world size and the run's shape. Nothing here opens
// a socket or touches a device: like etcd-io/raft's state machine, it produces
// data (a Plan, per-rank action lists, memory estimates) that an executor — the
// trainer, over the collectives — carries out, and that a person or a test can
// print and check.
//
// The model of the package:
//
//   - A Plan splits the world of N ranks into P pipeline stages times D = N/P
//     data-parallel replicas. Rank r is stage r%P of replica r/P, so one
//     replica's stages are adjacent ranks (on one host when hosts hold whole
//     replicas, where the point-to-point traffic between stages is heaviest).
//   - The decoder layers go to stages in contiguous ranges chosen by cost: the
//     first stage also runs the embedding, the last the final norm, lm_head and
//     loss; the split minimises the cost of the slowest stage exactly, among
//     the splits whose every stage fits a memory budget when one is given.
//   - Schedule gives each stage its ordered list of Actions for one optimizer
//     step with the 1F1B (one-forward-one-backward) schedule, and Plan.Actions
//     the same list with peers named as world ranks.
//   - Estimate (memory.go) says how many bytes each rank needs for a method
//     (LoRA, QLoRA, full) and, when a plan does not fit, Suggest says what would.
package shard

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"train/model"
)

// Plan is the split of a world of ranks into pipeline stages and data-parallel
// replicas, and of the model's layers into stages. Build one with New; it is
// immutable afterwards and safe to share.
type Plan struct {
	World    int `json:"world"`    // N, the number of ranks
	Stages   int `json:"stages"`   // P, pipeline stages per replica
	Replicas int `json:"replicas"` // D = N/P, data-parallel replicas
	Layers   int `json:"layers"`   // decoder layers of the model
	SeqLen   int `json:"seq_len"`  // T the costs were estimated at

	// Chunks is V, the layer ranges of each stage (interleaved 1F1B); 1
	// without interleaving.
	Chunks int `json:"chunks"`

	// StageInfo holds, per stage, its layers and estimated cost; with V
	// chunks, per virtual stage v = chunk*P + stage (P*V entries).
	StageInfo []Stage `json:"stage_info"`
	// Ranks holds, per world rank, where it sits in the grid.
	Ranks []Rank `json:"ranks"`
}

// Stage is one pipeline stage: the layers [Lo,Hi) it runs and what it costs.
type Stage struct {
	Stage int   `json:"stage"`
	Lo    int   `json:"lo"`
	Hi    int   `json:"hi"`
	Embed bool  `json:"embed"` // runs the token embedding (stage 0)
	Head  bool  `json:"head"`  // runs final norm, lm_head and loss (stage P-1)
	Cost  int64 `json:"cost"`  // estimated FLOPs per token of one micro-batch's work (see StepCosts)
}

// Rank is one rank's place in the plan. Pipeline and DataParallel are the
// groups the executor talks over: Pipeline[s] is the rank of stage s of this
// rank's replica (Send/Recv of activations and their gradients); DataParallel[d]
// is the rank of this rank's stage in replica d (gradient reduction, ZeRO-1).
type Rank struct {
	Rank         int   `json:"rank"`
	Stage        int   `json:"stage"`
	Replica      int   `json:"replica"`
	Lo           int   `json:"lo"` // layers [Lo,Hi), as model.Options wants them
	Hi           int   `json:"hi"`
	Embed        bool  `json:"embed"`
	Head         bool  `json:"head"`
	Pipeline     []int `json:"pipeline"`      // ranks of this replica, in stage order
	DataParallel []int `json:"data_parallel"` // ranks of this stage, in replica order
	// Chunks are the rank's V layer ranges in chunk order when the plan
	// interleaves (V > 1); Lo, Hi and Embed are then chunk 0's and Head the
	// last chunk's. Nil otherwise: Ranges gives the one range.
	Chunks []Chunk `json:"chunks,omitempty"`
}

// Chunk is one contiguous layer range a rank runs: one of its virtual stages.
type Chunk struct {
	Lo    int  `json:"lo"` // layers [Lo,Hi)
	Hi    int  `json:"hi"`
	Embed bool `json:"embed"` // the first virtual stage: the token embedding
	Head  bool `json:"head"`  // the last: final norm, lm_head and loss
}

// Ranges are the layer ranges r runs, in chunk order: one without interleaving.
func (r Rank) Ranges() []Chunk {
	if len(r.Chunks) > 0 {
		return r.Chunks
	}
	return []Chunk{{Lo: r.Lo, Hi: r.Hi, Embed: r.Embed, Head: r.Head}}
}

// Layers is the number of decoder layers r runs, over all its chunks.
func (r Rank) Layers() int {
	n := 0
	for _, c := range r.Ranges() {
		n += c.Hi - c.Lo
	}
	return n
}

// RangeString writes r's layers as [lo,hi), chunks joined by "+".
func (r Rank) RangeString() string {
	var parts []string
	for _, c := range r.Ranges() {
		parts = append(parts, fmt.Sprintf("[%d,%d)", c.Lo, c.Hi))
	}
	return strings.Join(parts, "+")
}

// Prev is the rank of the previous stage of r's replica, or -1 on the first stage.
func (r Rank) Prev() int {
	if r.Stage == 0 {
		return -1
	}
	return r.Pipeline[r.Stage-1]
}

// Next is the rank of the next stage of r's replica, or -1 on the last stage.
func (r Rank) Next() int {
	if r.Stage == len(r.Pipeline)-1 {
		return -1
	}
	return r.Pipeline[r.Stage+1]
}

// RankOf is the world rank of stage s in replica d: d*P + s.
func (p *Plan) RankOf(stage, replica int) int { return replica*p.Stages + stage }

// Costs are the estimated FLOPs per token of the parts of a model, the unit
// Split balances.
type Costs struct {
	Layer []int64 // per decoder layer
	// LastLayer is a decoder layer's cost on the last stage, when it differs
	// (StepCosts: the last stage recomputes nothing); nil means Layer.
	LastLayer []int64
	Embed     int64 // the embedding lookup (first stage)
	Head      int64 // final norm + lm_head + loss (last stage)
}

// ModelCosts estimates forward FLOPs per token at sequence length seqLen:
//
//	layer = 2 * (weights of the seven projections)      one multiply-add per weight
//	      + 4 * T * QDim                                 scores QK^T and weights*V, T keys each
//	      + 10 * C                                       two RMSNorms, residual adds, rope (small)
//	embed = C                                            a row copy
//	head  = 2 * V * C + 4*C + 5*V                        lm_head, final norm, softmax/loss
//
// The attention term counts all T keys (no causal halving), as the peer's
// TFLOP/s in DESIGN.md does; it is the same for every layer, so it only
// matters against the head's cost.
func ModelCosts(cfg *model.Config, seqLen int) Costs {
	C := int64(cfg.HiddenSize)
	var lin int64
	for _, s := range model.Linears {
		out, in := cfg.LinearShape(s)
		lin += int64(out) * int64(in)
	}
	layer := 2*lin + 4*int64(seqLen)*int64(cfg.QDim()) + 10*C
	c := Costs{Layer: make([]int64, cfg.NumLayers), Embed: C, Head: 2*int64(cfg.VocabSize)*C + 4*C + 5*int64(cfg.VocabSize)}
	for i := range c.Layer {
		c.Layer[i] = layer
	}
	return c
}

// StepCosts are a micro-batch's costs per token as the trainer runs it: a
// forward, the backward (twice the forward when the weights train, about once
// when only LoRA adapters do: the frozen weights get no gradient), and, with
// recompute, on every stage but the last a second forward, since such a stage
// keeps one micro-batch's activations and recomputes the others' from their
// saved input.
func StepCosts(cfg *model.Config, seqLen int, method string, recompute bool) Costs {
	f := ModelCosts(cfg, seqLen)
	b := int64(2)
	if method == "lora" || method == "qlora" {
		b = 1
	}
	c := Costs{Layer: make([]int64, len(f.Layer)), LastLayer: make([]int64, len(f.Layer)),
		Embed: 2 * f.Embed, Head: (1 + b) * f.Head}
	extra := int64(1)
	if !recompute {
		extra = 0
	}
	for i, x := range f.Layer {
		c.Layer[i], c.LastLayer[i] = (1+extra+b)*x, (1+b)*x
	}
	return c
}

// Workload is what a split balances besides the model and the world.
type Workload struct {
	SeqLen int    // tokens per sequence (the attention's cost); 0 means 2048
	Method string // "full", "lora" or "qlora" (the backward's cost); "" means "full"
	// Budget, when positive, is the device memory of a rank: the split is the
	// fastest whose every stage fits it by EstimateMemory's formulas for
	// Setup (its Method and SeqLen are this Workload's), or the fastest of all
	// when none fits.
	Budget int64
	// Setup is used with Budget; its KeepActivations also says whether stages
	// recompute (the costs).
	Setup Setup
	// Chunks is V, the layer ranges each rank holds for interleaved 1F1B
	// (virtual stages); 0 or 1 is one contiguous range per stage.
	Chunks int
}

// New plans a world of world ranks as stages pipeline stages for cfg, with the
// layers split by full fine-tuning's StepCosts at sequence length seqLen (0
// means 2048). NewFor takes the method and a memory budget.
func New(cfg *model.Config, world, stages, seqLen int) (*Plan, error) {
	return NewFor(cfg, world, stages, Workload{SeqLen: seqLen})
}

// NewFor plans a world of world ranks as stages pipeline stages for cfg and w.
func NewFor(cfg *model.Config, world, stages int, w Workload) (*Plan, error) {
	seqLen := w.SeqLen
	if seqLen <= 0 {
		seqLen = 2048
	}
	method := w.Method
	if method == "" {
		method = "full"
	}
	switch {
	case world < 1:
		return nil, fmt.Errorf("plan: world size %d must be at least 1", world)
	case stages < 1:
		return nil, fmt.Errorf("plan: pipeline stages %d must be at least 1", stages)
	case world%stages != 0:
		return nil, fmt.Errorf("plan: world size %d is not a multiple of the %d pipeline stages (data-parallel replicas = world/stages must be whole)", world, stages)
	case stages > cfg.NumLayers:
		return nil, fmt.Errorf("plan: %d pipeline stages for a model of %d layers; every stage needs at least one layer", stages, cfg.NumLayers)
	}
	V := max(w.Chunks, 1)
	switch {
	case V > 1 && stages < 2:
		return nil, fmt.Errorf("plan: %d chunks per stage (interleaved 1F1B) needs at least 2 pipeline stages", V)
	case stages*V > cfg.NumLayers:
		return nil, fmt.Errorf("plan: %d pipeline stages x %d chunks = %d virtual stages for a model of %d layers; every chunk needs at least one layer", stages, V, stages*V, cfg.NumLayers)
	}
	if V > 1 && w.Budget > 0 {
		w.Budget /= int64(V) // each chunk's share of a rank's memory
	}
	bounds, costs, err := splitFor(cfg, world, stages*V, seqLen, method, w)
	if err != nil {
		return nil, err
	}
	p := &Plan{World: world, Stages: stages, Replicas: world / stages, Layers: cfg.NumLayers, SeqLen: seqLen, Chunks: V}
	for v := 0; v < stages*V; v++ {
		p.StageInfo = append(p.StageInfo, Stage{
			Stage: v, Lo: bounds[v], Hi: bounds[v+1], Embed: v == 0, Head: v == stages*V-1,
			Cost: costs.stage(bounds[v], bounds[v+1], v == 0, v == stages*V-1),
		})
	}
	for r := 0; r < world; r++ {
		s, d := r%stages, r/stages
		st := p.StageInfo[s]
		rk := Rank{Rank: r, Stage: s, Replica: d, Lo: st.Lo, Hi: st.Hi, Embed: st.Embed, Head: st.Head}
		if V > 1 {
			for c := range V {
				vs := p.StageInfo[c*stages+s]
				rk.Chunks = append(rk.Chunks, Chunk{Lo: vs.Lo, Hi: vs.Hi, Embed: vs.Embed, Head: vs.Head})
			}
			rk.Head = rk.Chunks[V-1].Head
		}
		for i := 0; i < stages; i++ {
			rk.Pipeline = append(rk.Pipeline, p.RankOf(i, d))
		}
		for i := 0; i < p.Replicas; i++ {
			rk.DataParallel = append(rk.DataParallel, p.RankOf(s, i))
		}
		p.Ranks = append(p.Ranks, rk)
	}
	return p, nil
}

// splitFor splits cfg's layers into stages for w, whose SeqLen and Method are
// seqLen and method, and returns the boundaries and the costs they balance.
//
// Every decoder layer has the same shape, so a stage's memory depends on how
// many layers it runs, not which: with a budget, each stage's most layers are
// found once, by bisection, and the split compares counts.
func splitFor(cfg *model.Config, world, stages, seqLen int, method string, w Workload) ([]int, Costs, error) {
	costs := StepCosts(cfg, seqLen, method, !w.Setup.KeepActivations)
	var fits func(lo, hi, s int) bool
	if w.Budget > 0 {
		setup := w.Setup
		setup.Method, setup.SeqLen = method, seqLen
		if err := setup.validate(); err != nil {
			return nil, costs, err
		}
		most := make([]int, stages)
		for s := range most {
			lo, hi := 0, cfg.NumLayers+1 // lo layers fit (none always do, as far as the split cares); hi do not
			for hi-lo > 1 {
				mid := (lo + hi) / 2
				if setup.stageMemory(cfg, 0, mid, s, stages, world/stages).Total() <= w.Budget {
					lo = mid
				} else {
					hi = mid
				}
			}
			most[s] = lo
		}
		fits = func(lo, hi, s int) bool { return hi-lo <= most[s] }
	}
	bounds, err := SplitFits(costs, stages, fits)
	return bounds, costs, err
}

// stage is the cost of a stage running layers [lo,hi).
func (c Costs) stage(lo, hi int, embed, head bool) int64 {
	layers := c.Layer
	if head && c.LastLayer != nil {
		layers = c.LastLayer
	}
	var n int64
	for _, x := range layers[lo:hi] {
		n += x
	}
	if embed {
		n += c.Embed
	}
	if head {
		n += c.Head
	}
	return n
}

// Split divides the layers of c into stages contiguous, non-empty ranges and
// returns the stages+1 boundaries: stage s runs layers [b[s], b[s+1]). It
// minimises the cost of the most expensive stage, where stage 0 also pays
// c.Embed and the last stage c.Head, exactly.
//
// Among the splits with the least maximum it picks the one that gives later
// stages as many layers as possible: under 1F1B stage s keeps up to P-s
// micro-batches of activations alive, so the early stages are the ones short
// of memory.
func Split(c Costs, stages int) ([]int, error) { return SplitFits(c, stages, nil) }

// SplitFits is Split among the splits where fits(lo, hi, s) holds for every
// stage s running layers [lo,hi); when no split passes, or fits is nil, it is
// Split.
//
// fits must be monotone, as memory is: a stage that fits still fits with
// fewer layers, and layers that fit on a stage other than the last also fit
// on any later stage but the last (a later stage has fewer micro-batches in
// flight and no embedding). The split is then exact.
//
// How: whether some split keeps every stage within a maximum X is decided
// greedily in O(layers), from the last stage back, each stage taking as many
// layers as fit within X (and leaving one for each earlier stage); an
// exchange argument shows the greedy fails only when no split works, and that
// at the least feasible X it is the split described above. A binary search
// over X finds that least X: O(layers * 63) in all, against the
// O(stages * layers²) of a dynamic programme over split points, which
// shard.Suggest, trying every stage count of a 1024-layer model, could not
// afford.
func SplitFits(c Costs, stages int, fits func(lo, hi, s int) bool) ([]int, error) {
	L := len(c.Layer)
	if stages < 1 || stages > L {
		return nil, fmt.Errorf("split: %d stages for %d layers; need 1 <= stages <= layers", stages, L)
	}
	if c.LastLayer != nil && len(c.LastLayer) != L {
		return nil, fmt.Errorf("split: %d last-stage layer costs for %d layers", len(c.LastLayer), L)
	}
	prefix, prefixLast := make([]int64, L+1), make([]int64, L+1)
	for i, x := range c.Layer {
		last := x
		if c.LastLayer != nil {
			last = c.LastLayer[i]
		}
		if x < 0 || last < 0 {
			return nil, fmt.Errorf("split: layer %d has negative cost %d", i, min(x, last))
		}
		prefix[i+1], prefixLast[i+1] = prefix[i]+x, prefixLast[i]+last
	}
	if c.Embed < 0 || c.Head < 0 {
		return nil, fmt.Errorf("split: negative embedding or head cost (%d, %d)", c.Embed, c.Head)
	}
	cost := func(lo, hi, s int) int64 {
		n := prefix[hi] - prefix[lo]
		if s == stages-1 {
			n = prefixLast[hi] - prefixLast[lo] + c.Head
		}
		if s == 0 {
			n += c.Embed
		}
		return n
	}
	// within reports whether stage s may run [lo,hi) when no stage may cost more than x.
	within := func(lo, hi, s int, x int64) bool {
		return cost(lo, hi, s) <= x && (fits == nil || fits(lo, hi, s))
	}
	// greedy fills b with the split described above when every stage can stay
	// within x, and reports whether it could.
	b := make([]int, stages+1)
	greedy := func(x int64) bool {
		b[0], b[stages] = 0, L
		for s := stages - 1; s > 0; s-- {
			hi := b[s+1]
			lo := hi - 1
			if !within(lo, hi, s, x) {
				return false
			}
			for lo > s && within(lo-1, hi, s, x) {
				lo--
			}
			b[s] = lo
		}
		return within(0, b[1], 0, x)
	}
	// No stage costs more than every layer plus the embedding and the head.
	hi := max(prefix[L], prefixLast[L]) + c.Embed + c.Head
	if !greedy(hi) {
		if fits == nil {
			return nil, fmt.Errorf("split: no split of %d layers into %d stages", L, stages)
		}
		return SplitFits(c, stages, nil) // nothing fits: the fastest, and the memory check will speak
	}
	lo := int64(-1) // greedy(lo) fails: costs are not negative, so no split stays below 0
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if greedy(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	greedy(hi)
	return b, nil
}

// String prints the plan as a table, one line per rank, as the trainer writes
// it to RUN/plan.txt. The cost share is the stage's fraction of one replica's
// estimated FLOPs; a balanced plan has every share near 1/P.
func (p *Plan) String() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "plan: %d rank%s = %d pipeline stage%s x %d data-parallel replica%s, %d layers, costs at seq %d (rank = replica*%d + stage)\n",
		p.World, plural(p.World), p.Stages, plural(p.Stages), p.Replicas, plural(p.Replicas), p.Layers, p.SeqLen, p.Stages)
	if p.chunks() > 1 {
		fmt.Fprintf(&sb, "interleaved 1F1B: %d chunks per stage, %d virtual stages; chunk c of stage s is virtual stage c*%d + s\n", p.Chunks, p.Stages*p.Chunks, p.Stages)
	}
	// A stage's cost is its chunks'; the slowest stage sets the pace.
	costs := make([]int64, p.Stages)
	for v, s := range p.StageInfo {
		costs[v%p.Stages] += s.Cost
	}
	var total, most int64
	for _, c := range costs {
		total += c
		most = max(most, c)
	}
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "rank\tstage\treplica\tlayers\tcount\tparts\tcost share\t")
	for _, r := range p.Ranks {
		cost := costs[r.Stage]
		var parts []string
		if r.Embed {
			parts = append(parts, "embed")
		}
		if r.Head {
			parts = append(parts, "head")
		}
		if len(parts) == 0 {
			parts = append(parts, "-")
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%s\t%.1f%%\t\n", r.Rank, r.Stage, r.Replica, r.RangeString(), r.Layers(),
			strings.Join(parts, "+"), 100*float64(cost)/float64(total))
	}
	tw.Flush()
	if total > 0 {
		// The slowest stage sets the pace: the rest wait for it.
		fmt.Fprintf(&sb, "balance: slowest stage %.1f%% of a replica's work (ideal %.1f%%)\n",
			100*float64(most)/float64(total), 100/float64(p.Stages))
	}
	return sb.String()
}

// chunks is V, at least 1 (plans decoded from JSON written before chunks say 0).
func (p *Plan) chunks() int { return max(p.Chunks, 1) }

// JSON is the plan as indented JSON, for tools and the run directory.
func (p *Plan) JSON() ([]byte, error) { return json.MarshalIndent(p, "", "  ") }

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
