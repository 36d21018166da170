package model

import "train/ops"

// One decoder layer, forward and backward side by side, as transformers'
// LlamaDecoderLayer computes it:
//
//	ln1 = input_layernorm(x)
//	q, k, v = ln1·Wqᵀ, ln1·Wkᵀ, ln1·Wvᵀ;  q, k = rope(q), rope(k)
//	mid = x + attention(q, k, v)·Woᵀ
//	ln2 = post_attention_layernorm(mid)
//	out = mid + (silu(ln2·Wgateᵀ) * ln2·Wupᵀ)·Wdownᵀ
//
// Each projection may carry a LoRA branch (linearForward).

// layerForward runs layer l from x into out, saving into a. With recompute it
// is checkpointing's second run: everything backward needs is rebuilt (bitwise
// as the first time, the ops being deterministic) but the down projection's
// output, which backward does not read, and with KeepAttention the attention,
// whose output and lse a still holds from the first run.
func (m *Model) layerForward(l int, a *layerActs, x, out ops.Buf, recompute bool) {
	be, c, p := m.be, &m.cfg, m.acts
	sl := m.layers[l-m.lo]
	N, C, I := p.N, c.HiddenSize, c.IntermediateSize
	eps := float32(c.RMSNormEps)
	be.RMSNormForward(a.ln1, a.rstd1, x, sl.attnNorm.W, N, C, eps)
	m.linearForward(l, linQ, a.q, a.ln1, a.h[linQ])
	m.linearForward(l, linK, a.k, a.ln1, a.h[linK])
	m.linearForward(l, linV, a.v, a.ln1, a.h[linV])
	be.RopeForward(a.q, a.q, m.ropeCos, m.ropeSin, p.pos, N, c.NumHeads, c.HeadDim, m.ropeP)
	be.RopeForward(a.k, a.k, m.ropeCos, m.ropeSin, p.pos, N, c.NumKVHeads, c.HeadDim, m.ropeP)
	if !recompute || !m.keepAttn {
		be.AttentionForward(a.att, a.lse, a.q, a.k, a.v, m.segBuf(), p.B, p.T, c.NumHeads, c.NumKVHeads, c.HeadDim)
	}
	m.linearForward(l, linO, a.mid, a.att, a.h[linO])
	be.Add(a.mid, x, a.mid, N*C)
	be.RMSNormForward(a.ln2, a.rstd2, a.mid, sl.mlpNorm.W, N, C, eps)
	m.linearForward(l, linGate, a.gate, a.ln2, a.h[linGate])
	m.linearForward(l, linUp, a.up, a.ln2, a.h[linUp])
	be.SwiGLUForward(a.act, a.gate, a.up, N*I)
	if recompute {
		m.linearForward(l, linDown, nil, a.act, a.h[linDown]) // only the LoRA branch's saved h
		return
	}
	m.linearForward(l, linDown, out, a.act, a.h[linDown])
	be.Add(out, a.mid, out, N*C)
}

// layerBackward turns p.dresid from the gradient of layer l's output into the
// gradient of its input x, adding weight (or LoRA) gradients on the way.
func (m *Model) layerBackward(l int, a *layerActs, x ops.Buf) {
	be, c, p := m.be, &m.cfg, m.acts
	sl := m.layers[l-m.lo]
	N, C, I := p.N, c.HiddenSize, c.IntermediateSize
	d := p.dresid
	// MLP: out = mid + down(act); d flows to mid unchanged and through down.
	m.linearBackward(l, linDown, p.dact, d, a.act, a.h[linDown], false)
	be.Zero(p.dgate, N*I)
	be.Zero(p.dup, N*I)
	be.SwiGLUBackward(p.dgate, p.dup, p.dact, a.gate, a.up, N*I)
	m.linearBackward(l, linGate, p.dln, p.dgate, a.ln2, a.h[linGate], false)
	m.linearBackward(l, linUp, p.dln, p.dup, a.ln2, a.h[linUp], true)
	be.RMSNormBackward(d, sl.mlpNorm.Grad, p.dln, a.mid, sl.mlpNorm.W, a.rstd2, N, C) // d is now d(mid)
	// Attention: mid = x + o(att).
	m.linearBackward(l, linO, p.datt, d, a.att, a.h[linO], false)
	be.AttentionBackward(p.dq, p.dk, p.dv, p.datt, a.q, a.k, a.v, a.att, a.lse, m.segBuf(), p.B, p.T, c.NumHeads, c.NumKVHeads, c.HeadDim)
	be.RopeBackward(p.dq, p.dq, m.ropeCos, m.ropeSin, p.pos, N, c.NumHeads, c.HeadDim, m.ropeP)
	be.RopeBackward(p.dk, p.dk, m.ropeCos, m.ropeSin, p.pos, N, c.NumKVHeads, c.HeadDim, m.ropeP)
	m.linearBackward(l, linQ, p.dln, p.dq, a.ln1, a.h[linQ], false)
	m.linearBackward(l, linK, p.dln, p.dk, a.ln1, a.h[linK], true)
	m.linearBackward(l, linV, p.dln, p.dv, a.ln1, a.h[linV], true)
	be.RMSNormBackward(d, sl.attnNorm.Grad, p.dln, x, sl.attnNorm.W, a.rstd1, N, C) // d is now d(x)
}

// linearForward: y[N,out] = x[N,in]·Wᵀ, plus, when projection j of layer l is
// adapted, scale·(h·Bᵀ) with h = dropout(x)·Aᵀ saved [N, r] — peft's order:
// base result first, then the scaled branch added. y == nil computes only h.
func (m *Model) linearForward(l, j int, y, x, h ops.Buf) {
	be, N := m.be, m.acts.N
	sl := m.layers[l-m.lo]
	out, in := m.cfg.LinearShape(Linears[j])
	if y != nil {
		be.MatmulNT(y, x, m.weight(l, j), N, out, in, 1, 0)
	}
	lp := sl.lora[j]
	if lp == nil {
		return
	}
	r := m.lora.Rank
	be.MatmulNT(h, m.loraInput(l, j, x, in), lp.A.W, N, r, in, 1, 0)
	if y != nil {
		be.MatmulNT(y, h, lp.B.W, N, out, r, m.loraScale, 1)
	}
}

// linearBackward of y = x·Wᵀ (+ LoRA): dx = dy·W (added to dx when acc),
// dW += dyᵀ·x when W trains; for LoRA
//
//	dB += scale·dyᵀ·h,  dh = scale·dy·B,  dA += dhᵀ·dropout(x),  dx += dropout(dh·A).
func (m *Model) linearBackward(l, j int, dx, dy, x, h ops.Buf, acc bool) {
	be, N := m.be, m.acts.N
	sl := m.layers[l-m.lo]
	out, in := m.cfg.LinearShape(Linears[j])
	w := sl.lin[j]
	var beta float32
	if acc {
		beta = 1
	}
	be.MatmulNN(dx, dy, m.weight(l, j), N, in, out, 1, beta)
	if w.Grad != nil {
		be.MatmulTN(w.Grad, dy, x, out, in, N, 1, 1)
	}
	lp := sl.lora[j]
	if lp == nil {
		return
	}
	p, r, s := m.acts, m.lora.Rank, m.loraScale
	be.MatmulTN(lp.B.Grad, dy, h, out, r, N, s, 1)
	be.MatmulNN(p.dh, dy, lp.B.W, N, r, out, s, 0)
	be.MatmulTN(lp.A.Grad, p.dh, m.loraInput(l, j, x, in), r, in, N, 1, 1)
	if !m.dropoutActive() {
		be.MatmulNN(dx, p.dh, lp.A.W, N, in, r, 1, 1)
		return
	}
	be.MatmulNN(p.dxd, p.dh, lp.A.W, N, in, r, 1, 0)
	be.Dropout(p.dxd, p.dxd, N*in, float32(m.lora.Dropout), m.dropoutSeed(l, j))
	be.Add(dx, dx, p.dxd, N*in)
}

// weight is projection j of layer l as the passes read it: its W, or for a
// 4-bit weight (QLoRA) the weight dequantized into the workspace that every
// layer shares, valid until the next call.
func (m *Model) weight(l, j int) ops.Buf {
	p := m.layers[l-m.lo].lin[j]
	if p.NF4 == nil {
		return p.W
	}
	w := m.deq.Slice(0, p.size())
	m.be.DequantNF4(w, *p.NF4)
	return w
}

// loraInput returns the LoRA branch's input: x, or in training with dropout
// dropout(x) written to scratch (recomputed identically in backward).
func (m *Model) loraInput(l, j int, x ops.Buf, in int) ops.Buf {
	if !m.dropoutActive() {
		return x
	}
	m.be.Dropout(m.acts.xd, x, m.acts.N*in, float32(m.lora.Dropout), m.dropoutSeed(l, j))
	return m.acts.xd
}

func (m *Model) dropoutActive() bool {
	return m.training && m.lora != nil && m.lora.Dropout > 0
}

// dropoutSeed gives each (micro-batch, layer, projection) its own mask, as
// peft's separate nn.Dropout modules draw separately. The masks are ours: no
// attempt is made to reproduce torch's random stream.
func (m *Model) dropoutSeed(l, j int) uint64 {
	z := m.acts.seed ^ (uint64(l)*numLinears+uint64(j)+1)*0xd1b54a32d192ed03
	z = (z ^ (z >> 33)) * 0xff51afd7ed558ccd
	z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53
	return z ^ (z >> 33)
}

// segBuf is the segment ids, or nil when the batch has none.
// oneSegmentPerRow reports whether every row of seg [B, T] is one example
// from position 0 followed only by padding (segment -1). Plain causal
// attention then gives every real token the same result as the segment mask:
// a real token sees no padding (it comes later), and what padding sees is
// neither scored nor reaches a scored token's gradient (its gradient is 0). So
// the attention may skip the segment ids, and the fused kernels that take no
// mask (cuDNN's) apply.
func oneSegmentPerRow(seg []int32, B, T int) bool {
	for b := range B {
		row := seg[b*T : (b+1)*T]
		for t := 1; t < T; t++ {
			if row[t] != row[t-1] && row[t] != -1 {
				return false
			}
		}
	}
	return true
}

func (m *Model) segBuf() ops.Buf {
	if m.acts.segUsed {
		return m.acts.seg
	}
	return nil
}
