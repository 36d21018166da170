package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"train/model"
	"train/shard"
)

// runPlan prints how a run would be spread over its ranks and what each rank
// needs in device memory, for LoRA, QLoRA and full fine-tuning, and for those
// that do not fit the budget, what would. It needs neither the weights nor a
// GPU, so a user can size a job before asking for the machines. It fails
// (exit status 1) when the -method asked for does not fit, so a script can
// gate a job on it.
func runPlan(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("plan", `train plan -model DIR|random:NAME -np N [-pp P] [-pp-chunks V] [-gpu-mem 80GiB] [-seq T] [-batch B]
           [-method lora|qlora|full] [-zero1] [-activation-checkpointing]

Print the parallel plan for N ranks (P pipeline stages x N/P data-parallel replicas,
layers given to stages by the estimated cost of -method's work, among the splits
whose stages fit -gpu-mem, as train does) and each stage's estimated device memory
(weights, master weights, gradients, optimizer state, activations, logits) for
LoRA, QLoRA and full fine-tuning; say which fit -gpu-mem and, for those that do
not, what would. Exits non-zero when -method does not fit.
Random architectures: random:`+strings.Join(model.RandomModelNames(), ", random:"), stderr)
	modelFlag := fs.String("model", "", "model directory, or random:NAME")
	np := fs.Int("np", 1, "world size: number of ranks (GPUs)")
	pp := fs.Int("pp", 1, "pipeline stages; data-parallel replicas = np/pp")
	chunks := fs.Int("pp-chunks", 1, "interleaved 1F1B: layer ranges per pipeline stage (virtual stages)")
	gpuMem := fs.String("gpu-mem", "80GiB", "device memory per rank (80GiB, 80GB, 141GiB, ...)")
	seq := fs.Int("seq", 2048, "sequence length T in tokens")
	batch := fs.Int("batch", 1, "micro-batch size B in sequences")
	accum := fs.Int("grad-accum", 0, "micro-batches per step per replica (M); 0 assumes at least the stages (the most in flight)")
	method := fs.String("method", "lora", "method to check and to show in detail: lora, qlora or full")
	rank := fs.Int("lora-rank", 16, "LoRA rank r (all seven projections get adapters)")
	zero1 := fs.Bool("zero1", false, "partition optimizer state across the data-parallel replicas")
	ckpt := fs.Bool("activation-checkpointing", false, "keep only each layer's input; recompute in backward")
	offload := fs.Bool("offload-activations", false, "with -activation-checkpointing, keep those layer inputs in host memory (counted apart)")
	keepAttn := fs.Bool("keep-attention", false, "with -activation-checkpointing, keep each layer's attention output (no attention recompute)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelFlag == "" {
		return usagef("-model is required (a Hugging Face model directory or random:NAME)")
	}
	budget, err := parseByteSize(*gpuMem)
	if err != nil {
		return usagef("-gpu-mem: %v", err)
	}
	switch {
	case *np < 1:
		return usagef("-np %d: need at least one rank", *np)
	case *pp < 1:
		return usagef("-pp %d: need at least one stage", *pp)
	case *chunks < 1:
		return usagef("-pp-chunks %d: need at least one", *chunks)
	case *seq < 1 || *batch < 1:
		return usagef("-seq %d and -batch %d must be positive", *seq, *batch)
	case *accum < 0:
		return usagef("-grad-accum %d must not be negative", *accum)
	case *rank < 1:
		return usagef("-lora-rank %d must be at least 1", *rank)
	case *offload && !*ckpt:
		return usagef("-offload-activations needs -activation-checkpointing")
	case *keepAttn && !*ckpt:
		return usagef("-keep-attention needs -activation-checkpointing")
	}
	found := false
	for _, m := range shard.Methods {
		found = found || m == *method
	}
	if !found {
		return usagef("-method %q; valid: %s", *method, strings.Join(shard.Methods, ", "))
	}
	cfg, err := model.SourceConfig(*modelFlag)
	if err != nil {
		return err
	}
	setupAt := func(m string, T int) shard.Setup {
		return shard.Setup{Method: m, MicroBatch: *batch, SeqLen: T, MicroBatches: *accum,
			LoRARank: *rank, Zero1: *zero1, Checkpoint: *ckpt, Offload: *offload, KeepAttention: *keepAttn}
	}
	setup := func(m string) shard.Setup { return setupAt(m, *seq) }
	// The split balances -method's costs, among the splits that fit -gpu-mem.
	plan, err := shard.NewFor(&cfg, *np, *pp, shard.Workload{SeqLen: *seq, Method: *method, Budget: budget, Setup: setup(*method), Chunks: *chunks})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "model %s: %d layers, %.2fB parameters\n", *modelFlag, cfg.NumLayers, float64(cfg.ParamCount())/1e9)
	fmt.Fprint(stdout, plan)
	ests := map[string]*shard.Estimate{}
	for _, m := range shard.Methods {
		if ests[m], err = shard.EstimateMemory(&cfg, plan, setup(m)); err != nil {
			return err
		}
	}
	var opts []string
	if *zero1 {
		opts = append(opts, "ZeRO-1")
	}
	if *ckpt {
		opts = append(opts, "activation checkpointing")
	}
	if *keepAttn {
		opts = append(opts, "attention outputs kept")
	}
	if *offload {
		opts = append(opts, "layer inputs offloaded to host memory")
	}
	if len(opts) == 0 {
		opts = append(opts, "no ZeRO-1, no activation checkpointing")
	}
	fmt.Fprintf(stdout, "\nmemory per rank at micro-batch %d x %d tokens, LoRA r=%d, %s; budget %s (estimates: see shard/memory.go)\n",
		*batch, *seq, *rank, strings.Join(opts, ", "), shard.FormatBytes(budget))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tlayers\tlora\tqlora\tfull\t")
	for st := range plan.Stages {
		r := plan.RankOf(st, 0)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t\n", st, plan.Ranks[r].RangeString(),
			shard.FormatBytes(ests["lora"].Ranks[r].Total()), shard.FormatBytes(ests["qlora"].Ranks[r].Total()),
			shard.FormatBytes(ests["full"].Ranks[r].Total()))
	}
	tw.Flush()

	fmt.Fprintln(stdout)
	for _, m := range shard.Methods {
		e := ests[m]
		peak := e.Peak()
		if e.Fits(budget) {
			fmt.Fprintf(stdout, "%-5s fits: the largest rank (stage %d) needs %s of %s\n", m, peak.Stage, shard.FormatBytes(peak.Total()), shard.FormatBytes(budget))
			continue
		}
		fmt.Fprintf(stdout, "%-5s does not fit: stage %d needs %s of %s\n", m, peak.Stage, shard.FormatBytes(peak.Total()), shard.FormatBytes(budget))
		sugg, err := shard.Suggest(&cfg, e, budget)
		if err != nil {
			return err
		}
		if len(sugg) == 0 {
			fmt.Fprintf(stdout, "      nothing tried fits (more stages or GPUs, smaller micro-batch, checkpointing, ZeRO-1, QLoRA)\n")
		}
		for _, s := range sugg {
			fmt.Fprintf(stdout, "      would fit with %s (%d rank%s, largest %s)\n", s.Change, s.World, map[bool]string{true: "", false: "s"}[s.World == 1], shard.FormatBytes(s.Estimate.Peak().Total()))
		}
	}

	fmt.Fprintf(stdout, "\nlargest sequence that fits this layout at micro-batch %d:", *batch)
	for i, m := range shard.Methods {
		sep := ","
		if i == 0 {
			sep = ""
		}
		T := largestSeq(&cfg, plan, budget, func(T int) shard.Setup { return setupAt(m, T) })
		if T == 0 {
			fmt.Fprintf(stdout, "%s %s none", sep, m)
		} else {
			fmt.Fprintf(stdout, "%s %s %d tokens", sep, m, T)
		}
	}
	fmt.Fprintln(stdout)
	if *offload {
		var most int64
		for _, r := range ests[*method].Ranks {
			most = max(most, r.OffloadHost)
		}
		fmt.Fprintf(stdout, "host memory for the offloaded layer inputs: %s on the largest stage's rank (not in the table)\n", shard.FormatBytes(most))
	}

	fmt.Fprintf(stdout, "\n%s breakdown per rank (every replica of a stage alike):\n", *method)
	fmt.Fprint(stdout, ests[*method])
	if !ests[*method].Fits(budget) {
		return fmt.Errorf("%s does not fit %s per rank with this plan", *method, shard.FormatBytes(budget))
	}
	return nil
}

// parseByteSize reads a size such as 80GiB (binary), 80GB (decimal), 1.5TiB
// or a plain byte count. Units are case-insensitive; a bare G is refused as
// ambiguous rather than guessed.
func parseByteSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{ // longest first, so "GiB" is not read as "B"
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}, {"b", 1},
	}
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: want a positive number with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)", s)
	}
	return int64(v * mult), nil
}

// largestSeq is the longest sequence (to a multiple of 256 past 256 tokens,
// up to 4M) whose estimate fits budget on every rank of plan, or 0 when not
// even one token does: the estimates grow with T, so a bisection finds it.
func largestSeq(cfg *model.Config, plan *shard.Plan, budget int64, setup func(T int) shard.Setup) int {
	fits := func(T int) bool {
		e, err := shard.EstimateMemory(cfg, plan, setup(T))
		return err == nil && e.Fits(budget)
	}
	lo, hi := 0, 1<<22 // fits(lo) (or lo is 0), !fits(hi) unless hi fits
	if fits(hi) {
		return hi
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if fits(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	if lo > 256 {
		lo -= lo % 256
	}
	return lo
}
