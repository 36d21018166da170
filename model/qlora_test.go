package model

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"train/ops"
	"train/quant"
)

// dequantizedWeights returns w with every projection replaced by what NF4
// gives back for it under opt: the base a QLoRA model computes with.
func dequantizedWeights(t *testing.T, w *Weights, opt quant.Options) *Weights {
	t.Helper()
	out := *w
	out.Layers = nil
	for i, l := range w.Layers {
		c := *l
		for _, s := range Linears {
			out, in := w.Config.LinearShape(s)
			q, err := quant.Quantize(LayerTensorName(i, s), *l.Linear(s), []int{out, in}, opt)
			if err != nil {
				t.Fatal(err)
			}
			v := make([]float32, q.Len())
			if err := q.Dequantize(v); err != nil {
				t.Fatal(err)
			}
			*c.Linear(s) = v
		}
		out.Layers = append(out.Layers, &c)
	}
	return &out
}

// TestQLoRAEqualsLoRAOnDequantizedBase: a QLoRA step (4-bit base weights,
// quantized at upload, dequantized before each use) gives bitwise the loss
// and adapter gradients of a LoRA step over the dequantized weights, in
// float32 and in bfloat16, with and without double quantization and with
// checkpointing; so the 4-bit path changes what the base holds and nothing
// else. Its 4-bit weights read back as the dequantized values.
func TestQLoRAEqualsLoRAOnDequantizedBase(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 21)
	b := ltBatch(cfg, 2, 11, 22)
	lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4}, 23)
	if err != nil {
		t.Fatal(err)
	}
	ltGiveB(lora)
	for _, dq := range []bool{false, true} {
		for _, compute := range []ops.DType{ops.F32, ops.BF16} {
			for _, ckpt := range []bool{false, true} {
				opt := quant.Options{BlockSize: 32, DoubleQuant: dq}
				name := map[bool]string{false: "absmax", true: "double"}[dq] + "-" + compute.String() + map[bool]string{false: "", true: "-ckpt"}[ckpt]
				t.Run(name, func(t *testing.T) {
					deq := dequantizedWeights(t, w, opt)
					q := ltModel(t, ops.NewCPU(), w, Options{LoRA: lora, NF4: &opt, Compute: compute, Checkpoint: ckpt})
					ref := ltModel(t, ops.NewCPU(), deq, Options{LoRA: lora, Compute: compute, Checkpoint: ckpt})
					q.SetTraining(true)
					ref.SetTraining(true)
					lq, nq, gq := ltStep(t, q, b)
					lr, nr, gr := ltStep(t, ref, b)
					if lq != lr || nq != nr {
						t.Fatalf("loss %v over %d labels, LoRA on the dequantized base %v over %d", lq, nq, lr, nr)
					}
					for n, g := range gr {
						if !slices.Equal(gq[n], g) {
							t.Fatalf("gradient of %s differs", n)
						}
					}
					name := LayerTensorName(1, "down_proj")
					got, err := q.Value(name)
					if err != nil {
						t.Fatal(err)
					}
					want := *deq.Layers[1].Linear("down_proj")
					for i := range want {
						if compute == ops.BF16 {
							want[i] = ops.RoundBF16(want[i])
						}
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%s reads back other values than its dequantization", name)
					}
					if p := q.Param(name); p.NF4 == nil || p.Value != nil || p.Grad != nil {
						t.Fatalf("%s is not held as a frozen 4-bit weight", name)
					}
				})
			}
		}
	}
}

// TestQLoRARefusals: 4-bit base weights need an adapter and a bitsandbytes
// block size; a non-finite weight is refused by name.
func TestQLoRARefusals(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 1)
	if _, err := NewModel(ops.NewCPU(), w, Options{NF4: &quant.Options{}}); err == nil || !strings.Contains(err.Error(), "need a LoRA adapter") {
		t.Errorf("NF4 without LoRA: %v", err)
	}
	lora, _ := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4}, 1)
	if _, err := NewModel(ops.NewCPU(), w, Options{LoRA: lora, NF4: &quant.Options{BlockSize: 48}}); err == nil || !strings.Contains(err.Error(), "block size 48") {
		t.Errorf("block size 48: %v", err)
	}
	bad := ltWeights(cfg, 1)
	bad.Layers[1].Up[5] = float32(math.Inf(1))
	if _, err := NewModel(ops.NewCPU(), bad, Options{LoRA: lora, NF4: &quant.Options{}}); err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.up_proj.weight holds +Inf at weight 5") {
		t.Errorf("an infinite weight: %v", err)
	}
}

// TestLazyWeightsEqualEager: the weights LoadSourceStage gives (layers read
// as NewModel uploads them; random weights drawn by the backend) build the
// model that the host-held weights build, bitwise, for a directory and for
// random:tiny, in full fine-tuning, LoRA and QLoRA; the directory's Base is
// the eager load's.
func TestLazyWeightsEqualEager(t *testing.T) {
	cfg, err := RandomConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := testModelDir{cfg: cfg}.write(t)
	b := ltBatch(cfg, 1, 17, 3)
	lora, _ := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4}, 5)
	ltGiveB(lora)
	for _, src := range []string{dir, "random:tiny"} {
		var eager *Weights
		var eagerBase Base
		if IsRandomModel(src) {
			eager, err = RandomWeights(cfg, 9, 0, cfg.NumLayers, true, true, 0)
		} else {
			eager, eagerBase, err = mustOpen(t, dir).LoadWeightsBase(context.Background(), cfg, 0, cfg.NumLayers, true, true)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, opt := range []Options{{}, {LoRA: lora}, {LoRA: lora, NF4: &quant.Options{DoubleQuant: true}}} {
			nf4 := opt.NF4
			lazy, err := LoadSourceStage(context.Background(), src, cfg, 9, 0, cfg.NumLayers, true, true)
			if err != nil {
				t.Fatal(err)
			}
			defer lazy.Close()
			le, _, ge := ltStep(t, ltModel(t, ops.NewCPU(), eager, opt), b)
			ll, _, gl := ltStep(t, ltModel(t, ops.NewCPU(), lazy, opt), b)
			if le != ll {
				t.Errorf("%s (nf4 %v): lazy loss %v, eager %v", src, nf4 != nil, ll, le)
			}
			for n, g := range ge {
				if !slices.Equal(gl[n], g) {
					t.Errorf("%s (nf4 %v): gradient of %s differs", src, nf4 != nil, n)
				}
			}
			if base := lazy.Base(); !IsRandomModel(src) && base.Mismatch(&eagerBase) != "" {
				t.Errorf("%s: lazy base %s", src, base.Mismatch(&eagerBase))
			}
		}
	}
}

func mustOpen(t *testing.T, dir string) *ModelDir {
	t.Helper()
	m, err := OpenModelDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestBnbCheckpointLoads: a bitsandbytes 4-bit checkpoint (double
// quantization, bitsandbytes' serialised layout) loads into a QLoRA model as
// stored, its weights reading back as quant's dequantization of what the file
// holds, and into a LoRA model dequantized on the host, read lazily or held:
// all give the same loss. A QLoRA model planned for another layout refuses it by name.
func TestBnbCheckpointLoads(t *testing.T) {
	cfg, err := RandomConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := writeBnbDir(t, cfg)
	lora, _ := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4}, 5)
	ltGiveB(lora)
	b := ltBatch(cfg, 1, 13, 4)
	load := func() *Weights {
		w, err := LoadSourceStage(context.Background(), dir, cfg, 1, 0, cfg.NumLayers, true, true)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		return w
	}
	q := ltModel(t, ops.NewCPU(), load(), Options{LoRA: lora, NF4: &quant.Options{DoubleQuant: true}})
	plain := ltModel(t, ops.NewCPU(), load(), Options{LoRA: lora})
	name := LayerTensorName(2, "gate_proj")
	stored, err := quant.ReadWeight(mustConfig(t, dir), mustOpen(t, dir).QuantSource(), name)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, stored.Len())
	if err := stored.Dequantize(want); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Model{q, plain} {
		got, err := m.Value(name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s reads back other values than the file's dequantization", name)
		}
	}
	eagerW, _, err := mustOpen(t, dir).LoadWeightsBase(context.Background(), cfg, 0, cfg.NumLayers, true, true)
	if err != nil {
		t.Fatal(err)
	}
	eager := ltModel(t, ops.NewCPU(), eagerW, Options{LoRA: lora}) // the layers held, not read lazily
	lq, _, _ := ltStep(t, q, b)
	lp, _, _ := ltStep(t, plain, b)
	le, _, _ := ltStep(t, eager, b)
	if lq != lp || le != lp {
		t.Errorf("loss %v from the 4-bit weights, %v from their host dequantization (%v from eagerly loaded weights)", lq, lp, le)
	}
	if _, err := NewModel(ops.NewCPU(), load(), Options{LoRA: lora, NF4: &quant.Options{}}); err == nil || !strings.Contains(err.Error(), "the checkpoint's weights must share one layout") {
		t.Errorf("a layout other than the file's: %v", err)
	}
}

func mustConfig(t *testing.T, dir string) *quant.Config {
	t.Helper()
	qc, err := quant.LoadConfig(dir)
	if err != nil || qc == nil {
		t.Fatalf("quantization_config: %v", err)
	}
	return qc
}

// TestRoundTripNF4: a QLoRA base's projections become their NF4 round trip,
// and ones a checkpoint stores in 4 bits become their stored values, not a
// second quantization of them.
func TestRoundTripNF4(t *testing.T) {
	cfg := ltConfig(false)
	w := ltWeights(cfg, 41)
	opt := quant.Options{DoubleQuant: true}
	want := dequantizedWeights(t, w, opt)
	// Layer 1's gate is stored in 4 bits (block size 32, no double
	// quantization: another layout than opt's).
	stored, err := quant.Quantize("gate", w.Layers[1].Gate, nil, quant.Options{BlockSize: 32})
	if err != nil {
		t.Fatal(err)
	}
	storedVals := make([]float32, stored.Len())
	if err := stored.Dequantize(storedVals); err != nil {
		t.Fatal(err)
	}
	w.Layers[1].Gate, w.Layers[1].Quantized = nil, map[string]*quant.NF4{"gate_proj": stored}
	if err := w.RoundTripNF4(opt); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(w.Layers[1].Gate, storedVals) {
		t.Errorf("the stored gate_proj was not dequantized as stored")
	}
	if w.Layers[1].Quantized != nil {
		t.Errorf("the 4-bit weights are still held after the round trip")
	}
	for i := range w.Layers {
		for _, s := range Linears {
			if i == 1 && s == "gate_proj" {
				continue
			}
			if !slices.Equal(*w.Layers[i].Linear(s), *want.Layers[i].Linear(s)) {
				t.Errorf("layer %d %s is not its NF4 round trip", i, s)
			}
		}
	}
}
