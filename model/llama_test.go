package model

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"

	"train/ops"
)

// ltConfig is a tiny Llama with GQA (4 heads, 2 KV heads), head_dim 16 (so
// q_proj is wider than hidden) and llama3 rope scaling whose
// original_max_position_embeddings 32 is below the test sequences' length; its
// eight frequencies span all three llama3 bands (kept, smoothed, divided).
func ltConfig(tied bool) Config {
	return Config{
		Architecture: "LlamaForCausalLM", ModelType: "llama",
		HiddenSize: 32, IntermediateSize: 48, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, HeadDim: 16,
		VocabSize: 40, MaxPositions: 128, RMSNormEps: 1e-5, TieEmbeddings: tied, HiddenAct: "silu",
		BOSTokenID: 1, EOSTokenIDs: []int{2},
		Rope: Rope{Theta: 10000, Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 32},
	}
}

// ltQuant rounds to a multiple of 2^-12, so that w ± 2^-10 is exact in float32
// and finite differences perturb by exactly h.
func ltQuant(v float64) float32 { return float32(math.Round(v*4096) / 4096) }

func ltRand(rng *rand.Rand, n int, center, spread float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = ltQuant(center + spread*(2*rng.Float64()-1))
	}
	return v
}

// ltWeights fills every tensor of cfg from a seeded generator; the norms are
// near 1 but not 1.
func ltWeights(cfg Config, seed uint64) *Weights {
	rng := rand.New(rand.NewPCG(seed, 99))
	h := cfg.HiddenSize
	w := &Weights{Config: cfg, Embed: ltRand(rng, cfg.VocabSize*h, 0, 1)}
	for range cfg.NumLayers {
		l := &Layer{AttnNorm: ltRand(rng, h, 1, 0.3), MLPNorm: ltRand(rng, h, 1, 0.3)}
		for _, s := range Linears {
			out, in := cfg.LinearShape(s)
			*l.Linear(s) = ltRand(rng, out*in, 0, 1.5/math.Sqrt(float64(in)))
		}
		w.Layers = append(w.Layers, l)
	}
	w.FinalNorm = ltRand(rng, h, 1, 0.3)
	if !cfg.TieEmbeddings {
		w.LMHead = ltRand(rng, cfg.VocabSize*h, 0, 0.5)
	}
	return w
}

// ltBatch is B rows of T random tokens, labels = ids except -100 spans.
func ltBatch(cfg Config, B, T int, seed uint64) *Batch {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := &Batch{B: B, T: T, IDs: make([]int32, B*T), Labels: make([]int32, B*T)}
	for i := range b.IDs {
		b.IDs[i] = int32(rng.IntN(cfg.VocabSize))
		b.Labels[i] = b.IDs[i]
	}
	for i := 0; i < 5 && i < T; i++ { // a masked prompt in row 0
		b.Labels[i] = -100
	}
	if B > 1 { // and a masked span inside row 1
		for i := T + T/3; i < T+T/2; i++ {
			b.Labels[i] = -100
		}
	}
	return b
}

func ltModel(t *testing.T, be ops.Backend, w *Weights, opt Options) *Model {
	t.Helper()
	m, err := NewModel(be, w, opt)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// ltStep runs forward and backward with scale 1 (gradients of the loss sum).
func ltStep(t *testing.T, m *Model, b *Batch) (float64, int, map[string][]float32) {
	t.Helper()
	m.ZeroGrads()
	loss, n, err := m.Forward(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Backward(1); err != nil {
		t.Fatal(err)
	}
	g, err := m.Grads()
	if err != nil {
		t.Fatal(err)
	}
	return loss, n, g
}

// ltGradCheck compares analytic gradients of the loss sum with central finite
// differences (h = 2^-10, exact in float32 for the quantised weights) on a few
// coordinates of every named tensor, on the float64 backend.
func ltGradCheck(t *testing.T, m *Model, b *Batch, names []string, coords int) {
	t.Helper()
	_, _, grads := ltStep(t, m, b)
	rng := rand.New(rand.NewPCG(3, 4))
	const h = 1.0 / 1024
	for _, name := range names {
		g, ok := grads[name]
		if !ok {
			t.Fatalf("no gradient for %s (have %d tensors)", name, len(grads))
		}
		w, err := m.Value(name)
		if err != nil {
			t.Fatal(err)
		}
		idx := make([]int, 0, coords)
		if strings.Contains(name, "embed_tokens") { // rows that occur in the batch
			for range coords {
				idx = append(idx, int(b.IDs[rng.IntN(len(b.IDs))])*m.cfg.HiddenSize+rng.IntN(m.cfg.HiddenSize))
			}
		} else {
			for range coords {
				idx = append(idx, rng.IntN(len(w)))
			}
		}
		worst := 0.0
		for _, i := range idx {
			old := w[i]
			eval := func(v float32) float64 {
				w[i] = v
				if err := m.SetValue(name, w); err != nil {
					t.Fatal(err)
				}
				loss, _, err := m.Forward(b)
				if err != nil {
					t.Fatal(err)
				}
				return loss
			}
			num := (eval(old+h) - eval(old-h)) / (2 * h)
			eval(old)
			err := math.Abs(num - float64(g[i]))
			worst = max(worst, err/math.Max(1e-3, math.Abs(num)))
			if err > 2e-5+2e-4*math.Abs(num) {
				t.Errorf("%s[%d]: analytic %.8g, numeric %.8g", name, i, g[i], num)
			}
		}
		t.Logf("%-60s worst relative error %.2g", name, worst)
	}
}

// ltAllNames lists every parameter kind of the model: layer 0 and 1 tensors,
// embedding, final norm and head.
func ltParamNames(m *Model) []string {
	var names []string
	for _, p := range m.Params() {
		if p.Grad != nil {
			names = append(names, p.Name)
		}
	}
	return names
}

func TestLlamaGradFiniteDifferences(t *testing.T) {
	for _, tied := range []bool{false, true} {
		name := "untied"
		if tied {
			name = "tied"
		}
		t.Run(name, func(t *testing.T) {
			cfg := ltConfig(tied)
			m := ltModel(t, ops.NewCPU64(), ltWeights(cfg, 1), Options{})
			b := ltBatch(cfg, 2, 36, 5)
			names := ltParamNames(m)
			if want := 2 + 9*cfg.NumLayers; !tied && len(names) != want+1 || tied && len(names) != want {
				t.Fatalf("%d trainable tensors: %v", len(names), names)
			}
			ltGradCheck(t, m, b, names, 3)
		})
	}
}

// TestLlamaFloat32MatchesFloat64: the float32 model against the float64
// reference backend, with the tolerances the transformers parity asks for.
func TestLlamaFloat32MatchesFloat64(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 2)
	b := ltBatch(cfg, 2, 36, 6)
	l64, n64, g64 := ltStep(t, ltModel(t, ops.NewCPU64(), w, Options{}), b)
	l32, n32, g32 := ltStep(t, ltModel(t, ops.NewCPU(), w, Options{}), b)
	if n32 != n64 {
		t.Fatalf("counts %d and %d", n32, n64)
	}
	if rel := math.Abs(l32-l64) / math.Abs(l64); rel > 1e-5 {
		t.Errorf("loss %v (f32) vs %v (f64): relative error %.2g", l32, l64, rel)
	}
	for name, g := range g64 {
		if rel := ltRelL2(g32[name], g); rel > 1e-4 {
			t.Errorf("%s: relative L2 error %.2g", name, rel)
		}
	}
}

func ltRelL2(a, b []float32) float64 {
	var d, n float64
	for i := range a {
		d += (float64(a[i]) - float64(b[i])) * (float64(a[i]) - float64(b[i]))
		n += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(d / math.Max(n, 1e-300))
}

// TestLlamaLossValue checks the loss and count definitions on the float64
// backend against logits: mean over shifted labels that are not -100.
func TestLlamaLossValue(t *testing.T) {
	cfg := ltConfig(false)
	m := ltModel(t, ops.NewCPU64(), ltWeights(cfg, 3), Options{})
	b := ltBatch(cfg, 2, 12, 8)
	loss, n, err := m.Forward(b)
	if err != nil {
		t.Fatal(err)
	}
	logits, err := m.Logits()
	if err != nil {
		t.Fatal(err)
	}
	V, T := cfg.VocabSize, b.T
	var want float64
	count := 0
	for r := 0; r < b.B; r++ {
		for t := 0; t+1 < T; t++ {
			y := b.Labels[r*T+t+1]
			if y == -100 {
				continue
			}
			row := logits[(r*T+t)*V : (r*T+t+1)*V]
			var s float64
			for _, v := range row {
				s += math.Exp(float64(v))
			}
			want += math.Log(s) - float64(row[y])
			count++
		}
	}
	if n != count || math.Abs(loss-want) > 1e-5*math.Abs(want) {
		t.Fatalf("loss %v over %d, want %v over %d", loss, n, want, count)
	}
}

// TestLlamaCheckpointBitwise: recomputing each layer in backward gives
// bitwise the gradients of keeping every activation, in full fine-tuning and
// with LoRA dropout in training, over two accumulated micro-batches.
func TestLlamaCheckpointBitwise(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 4)
	for _, withLoRA := range []bool{false, true} {
		run := func(checkpoint bool) (float64, map[string][]float32) {
			opt := Options{Checkpoint: checkpoint}
			if withLoRA {
				opt.LoRA = ltLoRA(t, cfg, LoRAConfig{Rank: 4, Alpha: 8, Dropout: 0.2}, true)
			}
			m := ltModel(t, ops.NewCPU(), w, opt)
			m.SetTraining(true)
			m.ZeroGrads()
			var total float64
			for i, seed := range []uint64{11, 12} {
				b := ltBatch(cfg, 2, 20, seed)
				b.Seed = uint64(i + 100)
				loss, _, err := m.Forward(b)
				if err != nil {
					t.Fatal(err)
				}
				total += loss
				if err := m.Backward(0.01); err != nil {
					t.Fatal(err)
				}
			}
			g, err := m.Grads()
			if err != nil {
				t.Fatal(err)
			}
			return total, g
		}
		l0, g0 := run(false)
		l1, g1 := run(true)
		if l0 != l1 {
			t.Errorf("lora=%v: loss %v without checkpointing, %v with", withLoRA, l0, l1)
		}
		if len(g0) != len(g1) || len(g0) == 0 {
			t.Fatalf("lora=%v: %d and %d gradients", withLoRA, len(g0), len(g1))
		}
		for name, g := range g0 {
			for i := range g {
				if math.Float32bits(g[i]) != math.Float32bits(g1[name][i]) {
					t.Fatalf("lora=%v: %s[%d] = %v without checkpointing, %v with", withLoRA, name, i, g[i], g1[name][i])
				}
			}
		}
	}
}

// TestLlamaPackedEqualsSeparate: two examples packed in one row with segment
// ids and restarting positions give the losses, logits and gradients of the
// two run as separate sequences.
func TestLlamaPackedEqualsSeparate(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 5)
	a, c := ltBatch(cfg, 1, 9, 21), ltBatch(cfg, 1, 6, 22)
	m := ltModel(t, ops.NewCPU64(), w, Options{})
	la, na, ga := ltStep(t, m, a)
	lc, nc, gc := ltStep(t, m, c)

	packed := &Batch{B: 1, T: 16}
	packed.IDs = append(append(append([]int32(nil), a.IDs...), c.IDs...), 3)
	packed.Labels = append(append(append([]int32(nil), a.Labels...), c.Labels...), 7)
	packed.Segments = make([]int32, 16)
	packed.Positions = make([]int32, 16)
	for i := range packed.Segments {
		switch {
		case i < 9:
			packed.Positions[i] = int32(i)
		case i < 15:
			packed.Segments[i], packed.Positions[i] = 1, int32(i-9)
		default: // a padding segment of one token
			packed.Segments[i] = 2
		}
	}
	lp, np, gp := ltStep(t, m, packed)
	if np != na+nc || LabelCount(packed) != np || LabelCount(a) != na {
		t.Fatalf("packed count %d, separate %d + %d", np, na, nc)
	}
	if math.Abs(lp-(la+lc)) > 1e-12*math.Abs(lp) {
		t.Fatalf("packed loss %v, separate %v + %v", lp, la, lc)
	}
	for name, g := range gp {
		sum := make([]float32, len(g))
		for i := range sum {
			sum[i] = float32(float64(ga[name][i]) + float64(gc[name][i]))
		}
		if rel := ltRelL2(g, sum); rel > 1e-6 {
			t.Errorf("%s: packed and separate gradients differ, relative L2 %.2g", name, rel)
		}
	}
}

// TestLlamaPipelineStages: two stages [0,1) and [1,2), hidden states and their
// gradient passed by hand, give the single-stage model's loss and gradients;
// a tied embedding's gradient is the sum of its two stages' parts.
func TestLlamaPipelineStages(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := ltConfig(tied)
		w := ltWeights(cfg, 6)
		b := ltBatch(cfg, 2, 10, 31)
		be := ops.NewCPU64()
		lFull, nFull, gFull := ltStep(t, ltModel(t, be, w, Options{}), b)

		s0 := ltModel(t, be, w, Options{Lo: 0, Hi: 1})
		s1 := ltModel(t, be, w, Options{Lo: 1, Hi: 2})
		s0.ZeroGrads()
		s1.ZeroGrads()
		if _, _, err := s0.Forward(b); err != nil {
			t.Fatal(err)
		}
		if err := s1.Plan(b.B, b.T); err != nil {
			t.Fatal(err)
		}
		N := b.B * b.T * cfg.HiddenSize
		hidden := make([]float32, N) // what Send/Recv would carry (float32 on the wire)
		if err := be.Download(hidden, s0.StageOutput()); err != nil {
			t.Fatal(err)
		}
		be.Upload(s1.StageInput(), hidden)
		loss, n, err := s1.Forward(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := s1.Backward(1); err != nil {
			t.Fatal(err)
		}
		be.Download(hidden, s1.StageGrad())
		be.Upload(s0.StageGrad(), hidden)
		if err := s0.Backward(1); err != nil {
			t.Fatal(err)
		}
		if n != nFull || math.Abs(loss-lFull) > 1e-6*lFull {
			t.Fatalf("tied=%v: stages give loss %v over %d, full model %v over %d", tied, loss, n, lFull, nFull)
		}
		g0, _ := s0.Grads()
		g1, _ := s1.Grads()
		for name, want := range gFull {
			got, ok0 := g0[name]
			if g, ok1 := g1[name]; ok1 {
				if ok0 { // tied embedding: both stages hold a part
					for i := range got {
						got[i] += g[i]
					}
				} else {
					got = g
				}
			}
			if got == nil {
				t.Fatalf("tied=%v: no stage has %s", tied, name)
			}
			if rel := ltRelL2(got, want); rel > 1e-6 {
				t.Errorf("tied=%v: %s: relative L2 %.2g", tied, name, rel)
			}
		}
	}
}

// TestLlamaAccumulation: two micro-batches scaled by the total count give the
// gradients of one batch holding both.
func TestLlamaAccumulation(t *testing.T) {
	cfg := ltConfig(false)
	m := ltModel(t, ops.NewCPU64(), ltWeights(cfg, 7), Options{})
	both := ltBatch(cfg, 2, 10, 41)
	one := &Batch{B: 1, T: 10, IDs: both.IDs[:10], Labels: both.Labels[:10]}
	two := &Batch{B: 1, T: 10, IDs: both.IDs[10:], Labels: both.Labels[10:]}
	m.ZeroGrads()
	l, n, err := m.Forward(both)
	if err != nil {
		t.Fatal(err)
	}
	m.Backward(float32(1 / float64(n)))
	want, _ := m.Grads()

	m.ZeroGrads()
	_, n1, _ := m.Forward(one)
	_, n2, _ := m.Forward(two) // counts first, as a trainer does
	if n1+n2 != n {
		t.Fatalf("counts %d + %d, want %d", n1, n2, n)
	}
	var sum float64
	for _, mb := range []*Batch{one, two} {
		lm, _, _ := m.Forward(mb)
		sum += lm
		if err := m.Backward(float32(1 / float64(n))); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := m.Grads()
	if math.Abs(sum-l) > 1e-12*l {
		t.Fatalf("loss sums %v and %v", sum, l)
	}
	for name := range want {
		if rel := ltRelL2(got[name], want[name]); rel > 1e-6 {
			t.Errorf("%s: relative L2 %.2g", name, rel)
		}
	}
}

func TestLlamaErrors(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 8)
	m := ltModel(t, ops.NewCPU(), w, Options{})
	good := ltBatch(cfg, 1, 4, 1)
	cases := []struct {
		name string
		edit func(b *Batch)
		want string
	}{
		{"id too large", func(b *Batch) { b.IDs[2] = 40 }, "input_ids[0][2] = 40"},
		{"negative id", func(b *Batch) { b.IDs[0] = -1 }, "outside the vocabulary"},
		{"bad label", func(b *Batch) { b.Labels[1] = -5 }, "labels[0][1] = -5"},
		{"short labels", func(b *Batch) { b.Labels = b.Labels[:3] }, "labels has 3 values"},
		{"bad position", func(b *Batch) { b.Positions = []int32{0, 1, -2, 3} }, "position_ids[0][2]"},
		{"zero T", func(b *Batch) { b.T = 0 }, "must be positive"},
	}
	for _, tc := range cases {
		b := *good
		b.IDs = append([]int32(nil), good.IDs...)
		b.Labels = append([]int32(nil), good.Labels...)
		tc.edit(&b)
		if _, _, err := m.Forward(&b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if err := m.Backward(1); err == nil {
		t.Error("Backward after a failed Forward accepted")
	}
	if _, err := m.Grad("model.layers.9.mlp.up_proj.weight"); err == nil {
		t.Error("unknown tensor accepted")
	}
	w2 := ltWeights(cfg, 8)
	w2.Layers[1].Down = w2.Layers[1].Down[:10]
	if _, err := NewModel(ops.NewCPU(), w2, Options{}); err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.down_proj.weight") {
		t.Errorf("short down_proj: %v", err)
	}
	w2 = ltWeights(cfg, 8)
	w2.LMHead = nil
	if _, err := NewModel(ops.NewCPU(), w2, Options{}); err == nil || !strings.Contains(err.Error(), "lm_head.weight") {
		t.Errorf("missing lm_head: %v", err)
	}
	if _, err := NewModel(ops.NewCPU(), w, Options{Lo: 1, Hi: 5}); err == nil {
		t.Error("layer range beyond the model accepted")
	}
	// A middle stage needs no embedding or head.
	w3 := ltWeights(cfg, 8)
	w3.Embed, w3.LMHead, w3.FinalNorm, w3.Layers[1] = nil, nil, nil, nil
	if _, err := NewModel(ops.NewCPU(), w3, Options{Lo: 0, Hi: 1}); err == nil {
		t.Error("first stage without an embedding accepted")
	}
	w3.Embed = w.Embed
	if _, err := NewModel(ops.NewCPU(), w3, Options{Lo: 0, Hi: 1}); err != nil {
		t.Errorf("first stage: %v", err)
	}
}

// TestRopeInvFreqLlama3 checks the three llama3 bands against the formula.
func TestRopeInvFreqLlama3(t *testing.T) {
	cfg := ltConfig(false)
	inv, err := RopeInvFreq(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	plain := cfg
	plain.Rope.Type = "default"
	base, _ := RopeInvFreq(&plain)
	bands := map[string]int{}
	for i := range inv {
		wl := 2 * math.Pi / float64(base[i])
		switch {
		case wl < 32.0/4:
			bands["kept"]++
			if inv[i] != base[i] {
				t.Errorf("inv_freq[%d] (wavelength %.1f) changed: %v -> %v", i, wl, base[i], inv[i])
			}
		case wl > 32.0/1:
			bands["divided"]++
			if math.Abs(float64(inv[i])-float64(base[i])/8) > 1e-7*float64(base[i]) {
				t.Errorf("inv_freq[%d] = %v, want %v/8", i, inv[i], base[i])
			}
		default:
			bands["smoothed"]++
			s := (32/wl - 1) / (4 - 1)
			want := (1-s)*float64(base[i])/8 + s*float64(base[i])
			if math.Abs(float64(inv[i])-want) > 1e-6*want {
				t.Errorf("inv_freq[%d] = %v, want %v", i, inv[i], want)
			}
		}
	}
	keys := make([]string, 0, len(bands))
	for k := range bands {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(bands) != 3 {
		t.Fatalf("test config covers bands %v, want all three", keys)
	}
	if base[1] != float32(1/math.Pow(10000, 2.0/16)) {
		t.Errorf("default inv_freq[1] = %v", base[1])
	}
}
