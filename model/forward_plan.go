package model

import (
	"fmt"
	"math"

	"train/ops"
)

// actPlan is every activation and scratch buffer for one batch shape, carved
// from one allocation of the compute type, one of F32 statistics and one of
// ints (llm.c's memory plan).
// Shapes: N = B*T tokens, C hidden, Q = heads*head_dim, KV = kv_heads*head_dim,
// I intermediate, V vocabulary, r LoRA rank.
type actPlan struct {
	B, T, N int
	// The micro-batch whose activations these are: whether Backward may run,
	// its dropout seed, and whether it has segments.
	state   modelState
	seed    uint64
	segUsed bool

	fbuf ops.Buf // compute type: activations and their gradients
	sbuf ops.Buf // F32: rstd, lse, losses
	ibuf ops.Buf

	ids, targets, pos, seg ops.Buf // [N] int32

	// resid[i] is the input of layer lo+i, and resid[hi-lo] the stage output.
	// With offload the inputs of layers after the first are views of host,
	// and the layers read and write work instead.
	resid []ops.Buf // [N, C] each
	host  ops.Buf   // host memory holding resid[1:hi-lo] (Options.Offload), or nil
	work  [2]ops.Buf
	// pending is the ticket of the copy into or out of work[k] not yet
	// waited for (ops.AsyncCopier).
	pending [2]uint64
	// layers holds the saved activations of every layer, or with
	// checkpointing one set reused by each layer's recomputation.
	layers []*layerActs
	// keptAtt and keptLSE are every layer's attention output and lse under
	// checkpointing with Options.KeepAttention (layer points the set at them).
	keptAtt, keptLSE []ops.Buf

	xf, rstdF ops.Buf // final norm output [N, C] and its rstd [N]
	logits    ops.Buf // [chunk, V]: one chunk of tokens' logits; dlogits in place during backward
	chunk     int     // tokens per chunk of the head and loss
	losses    ops.Buf // [N]

	// Backward scratch, shared by all layers.
	dresid      ops.Buf // [N, C] gradient of the residual stream
	dln         ops.Buf // [N, C] gradient of a norm's output
	datt, dq    ops.Buf // [N, Q]
	dk, dv      ops.Buf // [N, KV]
	dact, dgate ops.Buf // [N, I]
	dup         ops.Buf // [N, I]
	dh          ops.Buf // [N, r] LoRA: gradient of x·Aᵀ
	xd, dxd     ops.Buf // [N, max in] LoRA dropout: dropped input and its gradient
}

// layerActs is what one layer's forward saves for its backward.
type layerActs struct {
	ln1, rstd1 ops.Buf             // input_layernorm output [N, C], rstd [N]
	q, k, v    ops.Buf             // after RoPE (q, k): [N, Q], [N, KV], [N, KV]
	att, lse   ops.Buf             // attention output [N, Q]; log-sum-exp [B, H, T]
	mid        ops.Buf             // residual after attention [N, C]
	ln2, rstd2 ops.Buf             // post_attention_layernorm output [N, C], rstd [N]
	gate, up   ops.Buf             // [N, I]
	act        ops.Buf             // silu(gate)*up [N, I]
	h          [numLinears]ops.Buf // LoRA: dropout(x)·Aᵀ [N, r]
}

// Plan allocates the current slot's activations for batches of B sequences of
// T tokens, unless it already has that shape. Forward calls it; call it
// yourself to reach StageInput/StageGrad before the first Forward, or to
// allocate every slot up front.
func (m *Model) Plan(B, T int) error {
	if B <= 0 || T <= 0 {
		return fmt.Errorf("model: batch shape [%d, %d] must be positive", B, T)
	}
	if p := m.acts; p != nil && p.B == B && p.T == T {
		return nil
	}
	c := &m.cfg
	N, C, Q, KV, I, V := B*T, c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize, c.VocabSize
	// Kernels take the dimensions as 32-bit ints but index elements in 64
	// bits, so a buffer may hold more than 2^31 values (70B: [N, 28672] past
	// 74,898 tokens); the token count itself must fit an int32.
	if N > math.MaxInt32 {
		return fmt.Errorf("model: batch [%d, %d] has more than 2^31 tokens", B, T)
	}
	m.freePlan(m.acts)
	m.acts, m.slots[m.cur] = nil, nil
	p := &actPlan{B: B, T: T, N: N}
	var fp, sp, ip ops.Plan
	for _, b := range []*ops.Buf{&p.ids, &p.targets, &p.pos, &p.seg} {
		ip.Add(b, N)
	}
	L := m.hi - m.lo
	p.resid = make([]ops.Buf, L+1)
	offload := m.offload && L > 1
	for i := range p.resid {
		if !offload || i == 0 || i == L {
			fp.Add(&p.resid[i], N*C)
		}
	}
	if offload {
		fp.Add(&p.work[0], N*C)
		fp.Add(&p.work[1], N*C)
	}
	sets := m.hi - m.lo
	if m.checkpoint {
		sets = 1
	}
	r := 0
	if m.lora != nil {
		r = m.lora.Rank
	}
	for range sets {
		a := &layerActs{}
		fp.Add(&a.ln1, N*C)
		sp.Add(&a.rstd1, N)
		fp.Add(&a.q, N*Q)
		fp.Add(&a.k, N*KV)
		fp.Add(&a.v, N*KV)
		if !m.keepAttn {
			fp.Add(&a.att, N*Q)
			sp.Add(&a.lse, B*c.NumHeads*T)
		}
		fp.Add(&a.mid, N*C)
		fp.Add(&a.ln2, N*C)
		sp.Add(&a.rstd2, N)
		fp.Add(&a.gate, N*I)
		fp.Add(&a.up, N*I)
		fp.Add(&a.act, N*I)
		for j := range a.h {
			if m.adapted(j) {
				fp.Add(&a.h[j], N*r)
			}
		}
		p.layers = append(p.layers, a)
	}
	if m.keepAttn {
		p.keptAtt, p.keptLSE = make([]ops.Buf, L), make([]ops.Buf, L)
		for i := range L {
			fp.Add(&p.keptAtt[i], N*Q)
			sp.Add(&p.keptLSE[i], B*c.NumHeads*T)
		}
	}
	if m.last {
		fp.Add(&p.xf, N*C)
		sp.Add(&p.rstdF, N)
		p.chunk = min(N, headChunk(m.headChunk, V))
		fp.Add(&p.logits, p.chunk*V)
		sp.Add(&p.losses, N)
	}
	fp.Add(&p.dresid, N*C)
	fp.Add(&p.dln, N*C)
	fp.Add(&p.datt, N*Q)
	fp.Add(&p.dq, N*Q)
	fp.Add(&p.dk, N*KV)
	fp.Add(&p.dv, N*KV)
	fp.Add(&p.dact, N*I)
	fp.Add(&p.dgate, N*I)
	fp.Add(&p.dup, N*I)
	if m.lora != nil {
		fp.Add(&p.dh, N*r)
		if m.lora.Dropout > 0 {
			fp.Add(&p.xd, N*max(C, Q, I))
			fp.Add(&p.dxd, N*max(C, Q, I))
		}
	}
	var err error
	if p.fbuf, err = fp.Alloc(m.be, m.compute); err != nil {
		return fmt.Errorf("model: activations for batch [%d, %d]: %w", B, T, err)
	}
	if p.sbuf, err = sp.Alloc(m.be, ops.F32); err != nil {
		m.be.Free(p.fbuf)
		return fmt.Errorf("model: activations for batch [%d, %d]: %w", B, T, err)
	}
	if p.ibuf, err = ip.Alloc(m.be, ops.I32); err != nil {
		m.be.Free(p.fbuf)
		m.be.Free(p.sbuf)
		return fmt.Errorf("model: activations for batch [%d, %d]: %w", B, T, err)
	}
	if offload {
		if p.host, err = m.be.AllocHost(m.compute, (L-1)*N*C); err != nil {
			m.freePlan(p)
			return fmt.Errorf("model: host memory for %d offloaded layer inputs of batch [%d, %d]: %w", L-1, B, T, err)
		}
		for i := 1; i < L; i++ {
			p.resid[i] = p.host.Slice((i-1)*N*C, N*C)
		}
	}
	m.acts, m.slots[m.cur] = p, p
	return nil
}

// SetSlots makes room for the activations of n micro-batches at once (n >= 1),
// so that a pipeline stage can forward several micro-batches before their
// backwards without recomputing them: UseSlot picks where Forward writes and
// Backward reads. Slots beyond n are freed; slot 0 becomes current.
func (m *Model) SetSlots(n int) error {
	if n < 1 {
		return fmt.Errorf("model: %d activation slots, need at least 1", n)
	}
	for _, p := range m.slots[min(n, len(m.slots)):] {
		m.freePlan(p)
	}
	slots := make([]*actPlan, n)
	copy(slots, m.slots)
	m.slots, m.cur, m.acts = slots, 0, slots[0]
	return nil
}

// Slots is the number of activation slots.
func (m *Model) Slots() int { return len(m.slots) }

// UseSlot makes slot i current: the next Forward overwrites its activations,
// and Backward runs on the micro-batch it holds.
func (m *Model) UseSlot(i int) error {
	if i < 0 || i >= len(m.slots) {
		return fmt.Errorf("model: activation slot %d of %d", i, len(m.slots))
	}
	m.cur, m.acts = i, m.slots[i]
	return nil
}

func (m *Model) freePlan(p *actPlan) {
	if p == nil {
		return
	}
	m.offloadWait(p, 0)
	m.offloadWait(p, 1)
	for _, b := range []ops.Buf{p.fbuf, p.sbuf, p.ibuf, p.host} {
		if b != nil {
			m.be.Free(b)
		}
	}
}

// layerIO is where layer l reads its input and writes its output: resid, or
// with offload (two device buffers taking turns) work, but for the stage's
// own input and output.
func (p *actPlan) layerIO(m *Model, l int) (x, out ops.Buf) {
	i := l - m.lo
	x, out = p.resid[i], p.resid[i+1]
	if p.host == nil {
		return x, out
	}
	if i > 0 {
		x = p.work[i%2]
	}
	if i+1 < len(p.resid)-1 {
		out = p.work[(i+1)%2]
	}
	return x, out
}

// freeActs frees every slot's activations.
func (m *Model) freeActs() {
	for i, p := range m.slots {
		m.freePlan(p)
		m.slots[i] = nil
	}
	m.acts = nil
}

// adapted reports whether projection j carries LoRA in this model.
func (m *Model) adapted(j int) bool {
	if m.lora == nil {
		return false
	}
	for _, l := range m.layers {
		if l.lora[j] != nil {
			return true
		}
	}
	return false
}

// layerActs returns the activations of layer l.
func (p *actPlan) layer(m *Model, l int) *layerActs {
	if m.checkpoint {
		a := p.layers[0]
		if m.keepAttn {
			a.att, a.lse = p.keptAtt[l-m.lo], p.keptLSE[l-m.lo]
		}
		return a
	}
	return p.layers[l-m.lo]
}

// ensureRope makes the rope tables cover positions [0, P).
func (m *Model) ensureRope(P int) error {
	if P <= m.ropeP {
		return nil
	}
	P = max(P, 2*m.ropeP) // grow geometrically
	cos, sin := ropeTables(m.invFreq, P)
	var rp ops.Plan
	var cb, sb ops.Buf
	rp.Add(&cb, len(cos))
	rp.Add(&sb, len(sin))
	buf, err := rp.Alloc(m.be, ops.F32)
	if err != nil {
		return fmt.Errorf("model: rope tables for %d positions: %w", P, err)
	}
	if err := m.be.Upload(cb, cos); err != nil {
		return err
	}
	if err := m.be.Upload(sb, sin); err != nil {
		return err
	}
	if m.ropeBuf != nil {
		m.be.Free(m.ropeBuf)
	}
	m.ropeBuf, m.ropeCos, m.ropeSin, m.ropeP = buf, cb, sb, P
	return nil
}

// offloadCopy copies one layer input (N×C) between work[k] and the host for
// the offload: on the backend's copy stream where it has one
// (ops.AsyncCopier), overlapping the compute queued after it, else in line.
func (m *Model) offloadCopy(p *actPlan, k int, dst, src ops.Buf) {
	n := p.N * m.cfg.HiddenSize
	ac, ok := m.be.(ops.AsyncCopier)
	if !ok {
		m.be.Copy(dst, src, n)
		return
	}
	m.offloadWait(p, k)
	p.pending[k] = ac.CopyAsync(dst, src, n)
}

// offloadWait makes the ops queued next wait for the copy into or out of
// work[k].
func (m *Model) offloadWait(p *actPlan, k int) {
	if p.pending[k] != 0 {
		m.be.(ops.AsyncCopier).WaitCopy(p.pending[k])
		p.pending[k] = 0
	}
}
