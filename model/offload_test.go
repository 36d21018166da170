package model

import (
	"slices"
	"strings"
	"testing"

	"train/ops"
)

// TestOffloadBitwise: with the layer inputs kept in host memory (Offload),
// and with the attention kept instead of recomputed (KeepAttention, with and
// without Offload), a step gives bitwise the loss and gradients of
// checkpointing without them,
// for full fine-tuning and LoRA, a whole model and a middle pipeline stage
// (whose input and output stay on the device), in float32 and bfloat16;
// the host memory shows in Memory as a host part. Offload without
// checkpointing is refused.
func TestOffloadBitwise(t *testing.T) {
	cfg := ltConfig(false)
	cfg.NumLayers = 4
	w := ltWeights(cfg, 31)
	b := ltBatch(cfg, 2, 9, 32)
	lora, err := NewLoRA(&cfg, LoRAConfig{Rank: 2, Alpha: 4, Dropout: 0.1}, 33)
	if err != nil {
		t.Fatal(err)
	}
	ltGiveB(lora)
	for _, c := range []struct {
		name   string
		lo, hi int
		lora   *LoRA
		dt     ops.DType
	}{
		{"full", 0, 0, nil, ops.F32},
		{"lora-bf16", 0, 0, lora, ops.BF16},
		{"stage-lora", 1, 4, lora, ops.F32},
	} {
		t.Run(c.name, func(t *testing.T) {
			opt := Options{Lo: c.lo, Hi: c.hi, LoRA: c.lora, Checkpoint: true, Compute: c.dt}
			ref := ltModel(t, ops.NewCPU(), w, opt)
			opt.Offload = true
			off := ltModel(t, ops.NewCPU(), w, opt)
			opt.KeepAttention = true
			offKeep := ltModel(t, ops.NewCPU(), w, opt)
			opt.Offload = false
			keep := ltModel(t, ops.NewCPU(), w, opt)
			opt.Offload, opt.KeepAttention = true, false
			lazy := &lazyCopies{Backend: ops.NewCPU(), queued: map[uint64]func(){}}
			offLazy := ltModel(t, lazy, w, opt)
			var lr float64
			var gr map[string][]float32
			for i, m := range []*Model{ref, off, offKeep, keep, offLazy} {
				m.SetTraining(true)
				if err := m.Plan(b.B, b.T); err != nil {
					t.Fatal(err)
				}
				if c.lo > 0 { // a middle stage: its input hidden states and output gradient
					h := make([]float32, b.B*b.T*cfg.HiddenSize)
					for j := range h {
						h[j] = ltQuant(float64(j%17)/17 - 0.5)
					}
					if err := m.be.Upload(m.StageInput(), h); err != nil {
						t.Fatal(err)
					}
				}
				m.ZeroGrads()
				loss, _, err := m.Forward(b)
				if err != nil {
					t.Fatal(err)
				}
				if !m.last {
					grad := make([]float32, b.B*b.T*cfg.HiddenSize)
					for j := range grad {
						grad[j] = ltQuant(float64(j%13)/130 - 0.05)
					}
					if err := m.be.Upload(m.StageGrad(), grad); err != nil {
						t.Fatal(err)
					}
				}
				if err := m.Backward(1); err != nil {
					t.Fatal(err)
				}
				grads, err := m.Grads()
				if err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					lr, gr = loss, grads
					continue
				}
				what := []string{"", "offload", "offload and keep-attention", "keep-attention", "offload with late copies"}[i]
				if lr != loss {
					t.Errorf("loss %v with %s, %v without", loss, what, lr)
				}
				for n, v := range gr {
					if !slices.Equal(grads[n], v) {
						t.Errorf("gradient of %s differs with %s", n, what)
					}
				}
			}
			if len(lazy.queued) != 0 || lazy.next < 2 {
				t.Errorf("late copies: %d of %d never waited for", len(lazy.queued), lazy.next)
			}
			var host int64
			for _, p := range off.Memory() {
				if p.Host {
					host += p.Bytes
				}
			}
			L := 4 - c.lo
			if want := int64(L-1) * int64(b.B*b.T*cfg.HiddenSize) * int64(c.dt.Size()); host != want {
				t.Errorf("host memory %d bytes, want %d", host, want)
			}
		})
	}
	if _, err := NewModel(ops.NewCPU(), w, Options{Offload: true}); err == nil || !strings.Contains(err.Error(), "needs activation checkpointing") {
		t.Errorf("offload without checkpointing: %v", err)
	}
}

// lazyCopies is the CPU backend with ops.AsyncCopier's copies made as late as
// the contract allows, at WaitCopy: an offload that read a copy's
// destination, or wrote its source, before waiting for it would compute with
// the wrong values.
type lazyCopies struct {
	ops.Backend
	queued map[uint64]func()
	next   uint64
}

func (l *lazyCopies) CopyAsync(dst, src ops.Buf, n int) uint64 {
	l.next++
	l.queued[l.next] = func() { l.Backend.Copy(dst, src, n) }
	return l.next
}

func (l *lazyCopies) WaitCopy(t uint64) {
	l.queued[t]()
	delete(l.queued, t)
}
