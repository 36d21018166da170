package shard

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"train/model"
)

// Memory estimates: what one rank must hold on its device, counted tensor by
// tensor from the shapes, in one place (llm.c plans all its memory in one
// function; this is that plan as arithmetic). The counts follow the model
// package: what model.layerActs saves for backward, bf16 weights on a GPU,
// fp32 master weights, gradients and AdamW moments for what is trained.
//
// Per rank, with n_w the parameters of its part of the model (HostBytes/4:
// its layers, plus the embedding on the first stage and the final norm and
// lm_head on the last; with tied embeddings both ends hold the matrix), n_a
// its LoRA parameters (Σ over layers and targets of r*(in+out)), D replicas:
//
//	weights      lora, full: 2*n_w (bf16)
//	             qlora: each linear model.NF4LinearBytes(n) (NF4, double-
//	             quantized scales), the rest 2 per weight; the bf16
//	             workspace the largest linear is dequantized into counts as
//	             activations (scratch)
//	master       full: 4*n_w (fp32)        lora, qlora: 4*n_a
//	grads        full: 4*n_w (fp32)        lora, qlora: 4*n_a
//	optimizer    AdamW m and v: 8*n_w (full) or 8*n_a, divided by D with ZeRO-1
//	activations  see activationBytes: what backward needs, for every micro-batch
//	             forwarded but not yet backwarded (up to P - stage under 1F1B),
//	             plus one layer's backward scratch and the stage's send/receive
//	             buffers
//	logits       last stage: one chunk of logits, model.HeadChunkElems values
//	             at most in the compute type (the head and loss run a chunk of
//	             tokens at a time; the gradient overwrites them), plus the final
//	             norm's saved output and the per-token losses
//	reserve      1 GiB: CUDA context, cuBLAS workspace, allocator slack
//
// Full fine-tuning comes to 18 bytes per parameter before activations (2 + 4
// + 4 + 8); Llama 3.1 8B needs about 135 GiB, so it never fits one 80 GiB GPU.

// GiB is 2^30 bytes.
const GiB = int64(1) << 30

// Reserve is what a rank needs besides the model's tensors: the CUDA context
// and libraries, cuBLAS workspace and the allocator's slack.
const Reserve = 1 * GiB

// Methods are the fine-tuning methods Estimate knows, in the order train plan
// prints them.
var Methods = []string{"lora", "qlora", "full"}

// Setup is what, besides the plan, decides a rank's memory.
type Setup struct {
	Method     string // "lora", "qlora" or "full"
	MicroBatch int    // B: sequences per micro-batch
	SeqLen     int    // T: tokens per sequence
	// MicroBatches is M, micro-batches per step per replica (grad_accum). It
	// bounds the micro-batches in flight on a stage (min(P-stage, M)); 0 means
	// at least P, the worst case.
	MicroBatches int
	LoRARank     int      // r, for lora and qlora
	LoRATargets  []string // projections with adapters; nil means all seven
	Zero1        bool     // optimizer state split across the D replicas
	Checkpoint   bool     // activation checkpointing
	Offload      bool     // with Checkpoint, the layer inputs in host memory (model.Options.Offload)
	// KeepAttention, with Checkpoint, keeps every layer's attention output
	// and lse (model.Options.KeepAttention).
	KeepAttention bool
	// KeepActivations keeps every in-flight micro-batch's activations
	// instead of recomputing them from the stage input (parallel.keep_activations).
	KeepActivations bool
	// ActBytes is the size of one activation element: 2 (bf16, the GPU) when 0;
	// 4 for fp32 on a CPU.
	ActBytes int
}

// Memory is one rank's estimated device memory, in bytes, by kind.
type Memory struct {
	Rank        int   `json:"rank"`
	Stage       int   `json:"stage"`
	InFlight    int   `json:"in_flight"` // micro-batches of activations held at once
	Weights     int64 `json:"weights"`
	Master      int64 `json:"master"`
	Grads       int64 `json:"grads"`
	Optimizer   int64 `json:"optimizer"`
	Activations int64 `json:"activations"`
	Logits      int64 `json:"logits"`
	Reserve     int64 `json:"reserve"`
	// OffloadHost is the host memory the offloaded layer inputs take
	// (Setup.Offload), apart from the device's Total.
	OffloadHost int64 `json:"offload_host"`
}

// Total is the sum of every kind.
func (m Memory) Total() int64 {
	return m.Weights + m.Master + m.Grads + m.Optimizer + m.Activations + m.Logits + m.Reserve
}

// Estimate is the memory every rank of a plan needs for one setup.
type Estimate struct {
	Plan  *Plan
	Setup Setup
	Ranks []Memory // indexed by rank
}

// Peak is the rank that needs the most (the first such rank).
func (e *Estimate) Peak() Memory {
	var best Memory
	for i, m := range e.Ranks {
		if i == 0 || m.Total() > best.Total() {
			best = m
		}
	}
	return best
}

// Fits reports whether every rank fits in budget bytes.
func (e *Estimate) Fits(budget int64) bool { return e.Peak().Total() <= budget }

// validate checks s and fills its defaults, returning the LoRA targets.
func (s *Setup) validate() error {
	if !slices.Contains(Methods, s.Method) {
		return fmt.Errorf("memory: method %q; valid: %s", s.Method, strings.Join(Methods, ", "))
	}
	if s.MicroBatch < 1 || s.SeqLen < 1 {
		return fmt.Errorf("memory: micro-batch %d and sequence length %d must be positive", s.MicroBatch, s.SeqLen)
	}
	if s.MicroBatches < 0 {
		return fmt.Errorf("memory: %d micro-batches per step must not be negative", s.MicroBatches)
	}
	if s.ActBytes == 0 {
		s.ActBytes = 2
	}
	if s.Method == "full" {
		return nil
	}
	if s.LoRARank < 1 {
		return fmt.Errorf("memory: LoRA rank %d must be at least 1", s.LoRARank)
	}
	for _, t := range s.LoRATargets {
		if !slices.Contains(model.Linears, t) {
			return fmt.Errorf("memory: LoRA target %q is not a projection; valid: %s", t, strings.Join(model.Linears, ", "))
		}
	}
	return nil
}

// EstimateMemory estimates every rank of p for cfg and s (see the formulas at
// the top of this file).
func EstimateMemory(cfg *model.Config, p *Plan, s Setup) (*Estimate, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	if p.Layers != cfg.NumLayers {
		return nil, fmt.Errorf("memory: plan has %d layers, model %d", p.Layers, cfg.NumLayers)
	}
	e := &Estimate{Plan: p, Setup: s}
	for _, r := range p.Ranks {
		m := s.rankMemory(cfg, p, r)
		m.Rank = r.Rank
		e.Ranks = append(e.Ranks, m)
	}
	return e, nil
}

// stageMemory is the memory of a rank running layers [lo,hi) as stage stage
// of stages (the first runs the embedding, the last the head), with replicas
// data-parallel replicas; s is validated.
func (s Setup) stageMemory(cfg *model.Config, lo, hi, stage, stages, replicas int) Memory {
	inFlight := stages - stage
	if s.MicroBatches > 0 {
		inFlight = min(inFlight, s.MicroBatches)
	}
	m := s.rangeMemory(cfg, Chunk{Lo: lo, Hi: hi, Embed: stage == 0, Head: stage == stages-1}, inFlight, replicas)
	m.Stage = stage
	return m
}

// rankMemory is the memory of rank r of p: its stage's, or with chunks the sum
// of its chunks' (each a model of its own: weights, activations and scratch),
// each with the micro-batches the interleaved schedule holds in flight there.
func (s Setup) rankMemory(cfg *model.Config, p *Plan, r Rank) Memory {
	if p.chunks() == 1 {
		return s.stageMemory(cfg, r.Lo, r.Hi, r.Stage, p.Stages, p.Replicas)
	}
	V := p.chunks()
	var inFlight []int
	if M := s.MicroBatches; M > 0 && M%p.Stages == 0 {
		if all, err := InterleavedSchedule(p.Stages, V, M); err == nil {
			inFlight = InFlight(all[r.Stage], V)
		}
	}
	sum := Memory{Stage: r.Stage, Reserve: Reserve}
	for c, ch := range r.Ranges() {
		n := V*p.Stages - (c*p.Stages + r.Stage) // 1F1B over the virtual stages: the most there can be
		if inFlight != nil {
			n = inFlight[c]
		}
		m := s.rangeMemory(cfg, ch, max(n, 1), p.Replicas)
		sum.InFlight += m.InFlight
		sum.Weights += m.Weights
		sum.Master += m.Master
		sum.Grads += m.Grads
		sum.Optimizer += m.Optimizer
		sum.Activations += m.Activations
		sum.Logits += m.Logits
		sum.OffloadHost += m.OffloadHost
	}
	return sum
}

// rangeMemory is the memory of a model running the layers of ch with inFlight
// micro-batches in flight and replicas data-parallel replicas.
func (s Setup) rangeMemory(cfg *model.Config, ch Chunk, inFlight, replicas int) Memory {
	targets := s.LoRATargets
	if targets == nil {
		targets = model.Linears
	}
	D := int64(replicas)
	lo, hi, embed, head := ch.Lo, ch.Hi, ch.Embed, ch.Head
	L := int64(hi - lo)
	nW := cfg.HostBytes(lo, hi, embed, head) / 4
	m := Memory{Reserve: Reserve}
	var trained, dequant int64
	switch s.Method {
	case "full":
		m.Weights = 2 * nW
		trained = nW
	case "lora", "qlora":
		m.Weights = 2 * nW
		if s.Method == "qlora" {
			var lin, nf4, maxLin int64
			for _, name := range model.Linears {
				out, in := cfg.LinearShape(name)
				n := int64(out) * int64(in)
				lin += n
				nf4 += model.NF4LinearBytes(n)
				maxLin = max(maxLin, n)
			}
			m.Weights = 2*(nW-L*lin) + L*nf4
			dequant = 2 * maxLin
		}
		for _, name := range targets {
			out, in := cfg.LinearShape(name)
			trained += L * int64(s.LoRARank) * int64(in+out)
		}
	}
	m.Master, m.Grads = 4*trained, 4*trained
	m.Optimizer = 8 * trained
	if s.Zero1 {
		m.Optimizer = (m.Optimizer + D - 1) / D
	}
	m.InFlight = inFlight
	m.Activations = activationBytes(cfg, s, targets, L, m.InFlight) + dequant
	if s.Offload && s.Checkpoint && L > 1 {
		// Every layer's input but the stage's first, for each set of
		// activations held (one, or each micro-batch in flight when kept).
		sets := int64(1)
		if s.KeepActivations {
			sets = int64(m.InFlight)
		}
		m.OffloadHost = sets * (L - 1) * int64(s.MicroBatch) * int64(s.SeqLen) * int64(s.ActBytes) * int64(cfg.HiddenSize)
	}
	if head {
		N, V := int64(s.MicroBatch)*int64(s.SeqLen), int64(cfg.VocabSize)
		chunk := min(N, max(1, model.HeadChunkElems/V))
		m.Logits = chunk*V*int64(s.ActBytes) + N*(int64(s.ActBytes)*int64(cfg.HiddenSize)+4)
	}
	return m
}

// activationBytes is a stage's activation memory: L layers, inFlight
// micro-batches of N = B*T tokens. Per token, one layer saves for backward
// (model.layerActs, and the layer input, the previous layer's output):
//
//	x, ln1, mid, ln2            4*C     residual stream and the norms' outputs
//	q, k, v (after rope)        Q + 2*KV
//	att (o_proj's input)        Q
//	gate, up, silu(gate)*up     3*I
//	LoRA x·Aᵀ per target        r each
//
// in ActBytes each, plus fp32 rstd of both norms (2) and the attention's
// log-sum-exp per head (H): no T×T scores (the attention is flash-style).
//
// By default the trainer keeps one micro-batch's activations: before a
// backward on a micro-batch other than its last forward it recomputes that
// forward from the micro-batch's stage input, so each other micro-batch in
// flight holds only its stage input (C). With KeepActivations every micro-batch
// in flight keeps its own set (and its own scratch). Without checkpointing a
// set is all of the above for every layer; with checkpointing each layer's
// input (C) and, once, the layer being recomputed; with Offload the inputs
// live in host memory and the device holds two (Memory.OffloadHost counts the host's); with
// KeepAttention every other layer's att and lse too. Add one layer's backward
// scratch (dresid, dln: 2C; datt, dq: 2Q; dk, dv: 2KV; dact, dgate, dup: 3I)
// and the stage's input, output and input-gradient buffers (3C) per set, and
// the attention backward's float32 workspace: cuDNN's softmax sums, dQ
// accumulator and (grouped-query heads) dK, dV sums over the group, H*(2D+1)
// per token (the flash kernels' delta, H, fits in it).
func activationBytes(cfg *model.Config, s Setup, targets []string, L int64, inFlight int) int64 {
	C, Q, KV, I := int64(cfg.HiddenSize), int64(cfg.QDim()), int64(cfg.KVDim()), int64(cfg.IntermediateSize)
	N, a := int64(s.MicroBatch)*int64(s.SeqLen), int64(s.ActBytes)
	saved := 4*C + 2*Q + 2*KV + 3*I
	if s.Method != "full" {
		saved += int64(s.LoRARank) * int64(len(targets))
	}
	perLayer := N * (a*saved + 4*(2+int64(cfg.NumHeads)))
	scratch := N*a*(2*C+2*Q+2*KV+3*I+3*C) + 4*N*int64(cfg.NumHeads)*int64(2*cfg.HeadDim+1)
	inputs := L // layer inputs on the device per set, with checkpointing
	if s.Offload {
		inputs = min(L, 2) // two device buffers take turns; the rest are on the host
	}
	var kept int64 // with KeepAttention, the other layers' attention outputs and lse
	if s.KeepAttention {
		kept = (L - 1) * N * (a*Q + 4*int64(cfg.NumHeads))
	}
	if s.KeepActivations {
		if s.Checkpoint {
			return int64(inFlight) * (inputs*N*a*C + perLayer + kept + scratch)
		}
		return int64(inFlight) * (L*perLayer + scratch)
	}
	others := int64(max(inFlight-1, 0)) * N * a * C // other micro-batches' stage inputs
	if s.Checkpoint {
		return inputs*N*a*C + perLayer + kept + others + scratch
	}
	return L*perLayer + others + scratch
}

// FormatBytes prints n in GiB (or MiB below one GiB), as memory tables want.
func FormatBytes(n int64) string {
	if n < GiB {
		return fmt.Sprintf("%.0f MiB", float64(n)/float64(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/float64(GiB))
}

// String prints the estimate as a table, one line per stage (every replica of
// a stage needs the same).
func (e *Estimate) String() string {
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tranks\tin flight\tweights\tmaster\tgrads\toptimizer\tactivations\tlogits\treserve\ttotal\t")
	for st := 0; st < e.Plan.Stages; st++ {
		m := e.Ranks[e.Plan.RankOf(st, 0)]
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", st, rankList(e.Plan, st), m.InFlight,
			FormatBytes(m.Weights), FormatBytes(m.Master), FormatBytes(m.Grads), FormatBytes(m.Optimizer),
			FormatBytes(m.Activations), FormatBytes(m.Logits), FormatBytes(m.Reserve), FormatBytes(m.Total()))
	}
	tw.Flush()
	return sb.String()
}

// rankList names the ranks of a stage: "1,5" or "1,5,...,29".
func rankList(p *Plan, stage int) string {
	r := p.Ranks[p.RankOf(stage, 0)].DataParallel
	if len(r) > 3 {
		return fmt.Sprintf("%d,%d,...,%d", r[0], r[1], r[len(r)-1])
	}
	s := fmt.Sprint(r)
	return strings.ReplaceAll(s[1:len(s)-1], " ", ",")
}

// Suggestion is a change to a run that makes every rank fit, checked by
// estimating it again.
type Suggestion struct {
	Change   string    // what to do, in flag terms
	World    int       // world size after the change
	Estimate *Estimate // the estimate with the change
}

// Suggest says what would make a setup fit budget bytes per device when e
// does not (nil when it fits). Single changes come first, cheapest in speed
// or quality first: activation checkpointing (recompute, ~1/3 more compute),
// ZeRO-1 (more communication), a smaller micro-batch (more accumulation
// steps, same tokens per step), more pipeline stages in the same world (fewer
// replicas), more stages with more GPUs, then, for full fine-tuning, LoRA, and
// QLoRA (4-bit base weights, a small loss of quality). If no single change is enough, it returns one
// suggestion combining them in that order, or nil if nothing tried fits.
func Suggest(cfg *model.Config, e *Estimate, budget int64) ([]Suggestion, error) {
	if e.Fits(budget) {
		return nil, nil
	}
	type state struct {
		s             Setup
		world, stages int
	}
	// estimate plans st as train would and estimates it. A change that keeps
	// the world and the stages keeps e's plan, so that its numbers are those
	// of e's own table (train plan prints them side by side); other shapes are
	// split anew for st's method, among the splits that fit budget.
	estimate := func(st state) (*Estimate, error) {
		p := e.Plan
		if st.world != p.World || st.stages != p.Stages {
			var err error
			w := Workload{SeqLen: e.Plan.SeqLen, Method: st.s.Method, Budget: budget, Setup: st.s}
			if p, err = NewFor(cfg, st.world, st.stages, w); err != nil {
				return nil, err
			}
		}
		return EstimateMemory(cfg, p, st.s)
	}
	// fits is estimate(st).Fits(budget) without the per-rank tables, which
	// cost O(world x stages) each: the searches below try every stage count.
	fits := func(st state) bool {
		if st.world == e.Plan.World && st.stages == e.Plan.Stages {
			x, err := estimate(st)
			return err == nil && x.Fits(budget)
		}
		s := st.s
		if s.validate() != nil || st.world%st.stages != 0 || st.stages > cfg.NumLayers {
			return false
		}
		b, _, err := splitFor(cfg, st.world, st.stages, e.Plan.SeqLen, s.Method, Workload{Budget: budget, Setup: s})
		if err != nil {
			return false
		}
		for i := 0; i < st.stages; i++ {
			if s.stageMemory(cfg, b[i], b[i+1], i, st.stages, st.world/st.stages).Total() > budget {
				return false
			}
		}
		return true
	}
	// hopeless reports that no plan of two or more stages with at most
	// replicas replicas fits: its last stage, with one layer, the head and
	// one micro-batch in flight, would already need more than budget, and
	// every such plan's last stage holds at least that.
	hopeless := func(st state, replicas int) bool {
		s := st.s
		if s.validate() != nil {
			return true
		}
		L := cfg.NumLayers
		return L < 2 || s.stageMemory(cfg, L-1, L, 1, 2, max(replicas, 1)).Total() > budget
	}
	// Each change returns the changed state and its description, or ok=false
	// when it does not apply.
	type change func(st state) (state, string, bool)
	checkpoint := func(st state) (state, string, bool) {
		if st.s.Checkpoint {
			return st, "", false
		}
		st.s.Checkpoint = true
		return st, "-activation-checkpointing", true
	}
	zero1 := func(st state) (state, string, bool) {
		if st.s.Zero1 || st.world/st.stages < 2 {
			return st, "", false
		}
		st.s.Zero1 = true
		return st, "-zero1", true
	}
	method := func(to string) change {
		return func(st state) (state, string, bool) {
			// lora only replaces full; qlora replaces either.
			if st.s.Method == to || (to == "lora" && st.s.Method != "full") {
				return st, "", false
			}
			st.s.Method = to
			if st.s.LoRARank < 1 {
				st.s.LoRARank = 16
			}
			return st, "-method " + to, true
		}
	}
	// Searches: the largest micro-batch, the fewest stages that fit.
	smallerBatch := func(st state) (state, string, bool) {
		for b := st.s.MicroBatch / 2; b >= 1; b /= 2 {
			t := st
			t.s.MicroBatch = b
			if fits(t) {
				return t, fmt.Sprintf("-batch %d", b), true
			}
			if b == 1 {
				t.s.MicroBatch = 1
				return t, "-batch 1", st.s.MicroBatch > 1
			}
		}
		return st, "", false
	}
	moreStages := func(st state) (state, string, bool) {
		var last state
		found := false
		skip := hopeless(st, st.world/2)
		for P := st.stages + 1; P <= cfg.NumLayers; P++ {
			if st.world%P != 0 {
				continue
			}
			t := st
			t.stages = P
			last, found = t, true
			if !skip && fits(t) {
				return t, fmt.Sprintf("-pp %d", P), true
			}
		}
		return last, fmt.Sprintf("-pp %d", last.stages), found
	}
	sameWorldFits := false // then more GPUs are not worth suggesting
	moreGPUs := func(st state) (state, string, bool) {
		D := st.world / st.stages
		if sameWorldFits || hopeless(st, D) {
			return st, "", false
		}
		for P := st.stages + 1; P <= cfg.NumLayers; P++ {
			t := st
			t.stages, t.world = P, P*D
			if fits(t) {
				return t, fmt.Sprintf("-np %d -pp %d", t.world, P), true
			}
		}
		return st, "", false
	}
	changes := []change{checkpoint, zero1, smallerBatch, moreStages, moreGPUs, method("lora"), method("qlora")}
	start := state{s: e.Setup, world: e.Plan.World, stages: e.Plan.Stages}
	var out []Suggestion
	for _, c := range changes {
		t, desc, ok := c(start)
		if !ok {
			continue
		}
		x, err := estimate(t)
		if err != nil || !x.Fits(budget) {
			continue
		}
		out = append(out, Suggestion{Change: desc, World: t.world, Estimate: x})
		sameWorldFits = sameWorldFits || (t.world == start.world && t.stages != start.stages)
	}
	if len(out) > 0 {
		return out, nil
	}
	// Nothing alone: combine, in the same order, until it fits.
	st := start
	var descs []string
	for _, c := range changes {
		t, desc, ok := c(st)
		if !ok {
			continue
		}
		if _, err := estimate(t); err != nil {
			continue
		}
		st = t
		// A later change to a flag replaces an earlier one (-pp 8, then -np 17 -pp 17).
		descs = slices.DeleteFunc(descs, func(d string) bool { return sharesFlag(d, desc) })
		descs = append(descs, desc)
		if x, _ := estimate(st); x.Fits(budget) {
			return []Suggestion{{Change: strings.Join(descs, " "), World: st.world, Estimate: x}}, nil
		}
	}
	return nil, nil
}

// sharesFlag reports whether two suggestions (flag strings such as "-np 4 -pp 2")
// set a flag in common.
func sharesFlag(a, b string) bool {
	for _, fa := range strings.Fields(a) {
		if !strings.HasPrefix(fa, "-") {
			continue
		}
		for _, fb := range strings.Fields(b) {
			if fa == fb {
				return true
			}
		}
	}
	return false
}
