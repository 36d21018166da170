package model

import (
	"math"
	"strings"
	"testing"

	"train/ops"
)

// TestHeadChunksEqualWhole: the head and loss run over the tokens in chunks
// (here 3 tokens, a count that does not divide the batch's 2 x 19) give the
// loss, the logits and every gradient of the whole batch at once, within float32
// rounding (the head's gradient sums the chunks in another order), with tied
// and untied heads, masked labels, full fine-tuning and LoRA.
func TestHeadChunksEqualWhole(t *testing.T) {
	for _, tied := range []bool{true, false} {
		cfg := ltConfig(tied)
		w := ltWeights(cfg, 11)
		b := ltBatch(cfg, 2, 19, 12)
		lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4, Targets: Linears}, 13)
		if err != nil {
			t.Fatal(err)
		}
		ltGiveB(lora)
		for _, c := range []struct {
			name string
			lora *LoRA
		}{{"full", nil}, {"lora", lora}} {
			name := c.name + map[bool]string{true: "-tied", false: "-untied"}[tied]
			t.Run(name, func(t *testing.T) {
				whole := ltModel(t, ops.NewCPU(), w, Options{LoRA: c.lora})
				chunked := ltModel(t, ops.NewCPU(), w, Options{LoRA: c.lora, HeadChunk: 3})
				if whole.acts != nil || chunked.acts != nil {
					t.Fatal("a plan before the first Forward")
				}
				for _, m := range []*Model{whole, chunked} {
					if err := m.Plan(b.B, b.T); err != nil {
						t.Fatal(err)
					}
				}
				if whole.acts.chunk != b.B*b.T || chunked.acts.chunk != 3 {
					t.Fatalf("chunks of %d and %d tokens, want %d and 3", whole.acts.chunk, chunked.acts.chunk, b.B*b.T)
				}
				if _, _, err := chunked.Forward(b); err != nil {
					t.Fatal(err)
				}
				if _, _, err := whole.Forward(b); err != nil {
					t.Fatal(err)
				}
				lw, err := whole.Logits()
				if err != nil {
					t.Fatal(err)
				}
				lc, err := chunked.Logits()
				if err != nil {
					t.Fatal(err)
				}
				if rel := ltRelL2(lc, lw); !(rel <= 1e-7) {
					t.Errorf("logits: relative L2 difference %.2g", rel)
				}
				lossW, nW, gW := ltStep(t, whole, b)
				lossC, nC, gC := ltStep(t, chunked, b)
				if nW != nC || math.Abs(lossC-lossW) > 1e-6*math.Abs(lossW) {
					t.Errorf("loss %v over %d labels chunked, %v over %d whole", lossC, nC, lossW, nW)
				}
				if len(gC) != len(gW) || len(gW) == 0 {
					t.Fatalf("%d gradients chunked, %d whole", len(gC), len(gW))
				}
				for n, g := range gW {
					if rel := ltRelL2(gC[n], g); !(rel <= 1e-5) {
						t.Errorf("%s: relative L2 difference %.2g", n, rel)
					}
				}
			})
		}
	}
}

// TestPlanTokenLimit: a batch may hold buffers of more than 2^31 values (the
// kernels index in 64 bits), but not more than 2^31-1 tokens, which the
// kernels take as 32-bit dimensions; the refusal comes before any allocation.
func TestPlanTokenLimit(t *testing.T) {
	cfg := ltConfig(true)
	m := ltModel(t, ops.NewCPU(), ltWeights(cfg, 1), Options{})
	if err := m.Plan(1<<16, 1<<15+1); err == nil || !strings.Contains(err.Error(), "more than 2^31 tokens") {
		t.Fatalf("a batch of 2^31 + 2^16 tokens: %v, want the token limit", err)
	}
}
