package model

import (
	"errors"
	"fmt"

	"train/ops"
)

// Decoder generates with a Model one token at a time, keeping every layer's keys
// (after RoPE) and values in a cache, so a new token costs one position of work
// instead of a rerun of the whole sequence (which Forward would do).
//
// The memory is planned once, in NewDecoder: the caches [maxLen, KVH*D] per
// layer, and scratch for a chunk of at most decodeChunk tokens. A prompt longer
// than a chunk runs chunk by chunk (each chunk attends to the cache filled so
// far), so the scratch does not grow with the context length.
//
// Decoding is inference: LoRA dropout never applies, whatever SetTraining says,
// and no activation is saved for a backward. The Decoder reads the model's
// weights on the backend, so a model being trained is seen as it is now; it
// uses none of the model's activation buffers, so Forward and a Decoder may
// alternate on one Model (not run concurrently). Use: NewDecoder, Append the
// prompt, then Append each chosen token; Reset starts a new sequence.
type Decoder struct {
	m      *Model
	maxLen int // cache capacity in tokens (positions 0..maxLen-1)
	chunk  int // most tokens per pass: rows of the scratch buffers
	n      int // tokens in the cache

	fbuf, sbuf, ibuf ops.Buf   // compute type, F32 statistics, ints
	k, v             []ops.Buf // per layer [maxLen, KV]

	// Scratch for a chunk of up to chunk tokens.
	x        ops.Buf // residual stream [chunk, C]
	ln, mid  ops.Buf // [chunk, C]
	rstd     ops.Buf // [chunk]
	q, att   ops.Buf // [chunk, Q]
	gate, up ops.Buf // [chunk, I]
	act      ops.Buf // [chunk, I]
	h        ops.Buf // LoRA branch [chunk, r]
	xf       ops.Buf // final norm of the last token [C]
	logitBuf ops.Buf // [V]
	ids, pos ops.Buf // [chunk] int32

	logits []float32 // host copy of the last logits [V]
}

// decodeChunk bounds the tokens of one decoder pass: a long prompt runs in chunks
// of this many, which keeps the scratch small for large models (an 8B model's
// MLP scratch is 3 x 512 x 14336 floats) while a prompt still runs as matmuls.
const decodeChunk = 512

// NewDecoder plans a cache for sequences of up to maxLen tokens on the whole
// model m (a pipeline stage cannot generate alone). maxLen may not exceed the
// model's max_position_embeddings.
func NewDecoder(m *Model, maxLen int) (*Decoder, error) {
	if m == nil {
		return nil, errors.New("model: decoder: no model")
	}
	if !m.first || !m.last {
		return nil, fmt.Errorf("model: decoder needs every layer; this model runs layers [%d,%d) of %d", m.lo, m.hi, m.cfg.NumLayers)
	}
	c := &m.cfg
	if maxLen <= 0 {
		return nil, fmt.Errorf("model: decoder length %d must be positive", maxLen)
	}
	if c.MaxPositions > 0 && maxLen > c.MaxPositions {
		return nil, fmt.Errorf("model: decoder length %d exceeds the model's max_position_embeddings %d", maxLen, c.MaxPositions)
	}
	C, Q, KV, I, V := c.HiddenSize, c.QDim(), c.KVDim(), c.IntermediateSize, c.VocabSize
	L := c.NumLayers
	if int64(maxLen)*int64(KV)*int64(2*L) > 1<<40 {
		return nil, fmt.Errorf("model: a cache of %d tokens is too large for this model", maxLen)
	}
	d := &Decoder{m: m, maxLen: maxLen, chunk: min(maxLen, decodeChunk)}
	d.k, d.v = make([]ops.Buf, L), make([]ops.Buf, L)
	var fp, sp, ip ops.Plan
	for l := range L {
		fp.Add(&d.k[l], maxLen*KV)
		fp.Add(&d.v[l], maxLen*KV)
	}
	ch := d.chunk
	fp.Add(&d.x, ch*C)
	fp.Add(&d.ln, ch*C)
	fp.Add(&d.mid, ch*C)
	sp.Add(&d.rstd, ch)
	fp.Add(&d.q, ch*Q)
	fp.Add(&d.att, ch*Q)
	fp.Add(&d.gate, ch*I)
	fp.Add(&d.up, ch*I)
	fp.Add(&d.act, ch*I)
	if m.lora != nil {
		fp.Add(&d.h, ch*m.lora.Rank)
	}
	fp.Add(&d.xf, C)
	fp.Add(&d.logitBuf, V)
	ip.Add(&d.ids, ch)
	ip.Add(&d.pos, ch)
	var err error
	if d.fbuf, err = fp.Alloc(m.be, m.compute); err != nil {
		return nil, fmt.Errorf("model: decoder cache for %d tokens: %w", maxLen, err)
	}
	if d.sbuf, err = sp.Alloc(m.be, ops.F32); err != nil {
		m.be.Free(d.fbuf)
		return nil, fmt.Errorf("model: decoder cache for %d tokens: %w", maxLen, err)
	}
	if d.ibuf, err = ip.Alloc(m.be, ops.I32); err != nil {
		m.be.Free(d.fbuf)
		m.be.Free(d.sbuf)
		return nil, fmt.Errorf("model: decoder cache for %d tokens: %w", maxLen, err)
	}
	if err := m.ensureRope(maxLen); err != nil {
		d.Close()
		return nil, err
	}
	d.logits = make([]float32, V)
	return d, nil
}

// Len is the number of tokens in the cache: the position the next token takes.
func (d *Decoder) Len() int { return d.n }

// MaxLen is the most tokens the cache holds.
func (d *Decoder) MaxLen() int { return d.maxLen }

// Reset empties the cache for a new sequence, keeping its memory.
func (d *Decoder) Reset() { d.n = 0 }

// Close frees the decoder's device memory.
func (d *Decoder) Close() {
	for _, b := range []ops.Buf{d.fbuf, d.sbuf, d.ibuf} {
		if b != nil {
			d.m.be.Free(b)
		}
	}
	d.fbuf, d.sbuf, d.ibuf = nil, nil, nil
}

// Append runs ids at the next positions (Len() onwards), adds their keys and
// values to the cache, and returns the logits [V] that follow the last of them:
// the distribution of the token after ids. The slice is the decoder's own and
// is overwritten by the next Append. On error the cache is left as it was
// before the call.
func (d *Decoder) Append(ids []int) ([]float32, error) {
	if d.fbuf == nil {
		return nil, errors.New("model: decoder is closed")
	}
	if len(ids) == 0 {
		return nil, errors.New("model: decoder: no tokens to append")
	}
	if d.n+len(ids) > d.maxLen {
		return nil, fmt.Errorf("model: decoder: %d tokens after %d exceed its length %d", len(ids), d.n, d.maxLen)
	}
	V := d.m.cfg.VocabSize
	for i, id := range ids {
		if id < 0 || id >= V {
			return nil, fmt.Errorf("model: decoder: token %d (%d of %d) outside the vocabulary [0,%d)", id, i, len(ids), V)
		}
	}
	n0 := d.n
	for len(ids) > 0 {
		k := min(len(ids), d.chunk)
		if err := d.run(ids[:k], k == len(ids)); err != nil {
			d.n = n0
			return nil, err
		}
		ids = ids[k:]
	}
	if err := d.m.be.Download(d.logits, d.logitBuf); err != nil {
		d.n = n0
		return nil, fmt.Errorf("model: decoder: %w", err)
	}
	return d.logits, nil
}

// run pushes one chunk of T tokens through every layer at positions n..n+T-1,
// and when last is set the final norm and the head of its last token into
// logitBuf. Per layer, as layerForward but with k and v written straight into
// the cache, attention over the cache, and the residual updated in place:
//
//	ln = norm(x);  q, k[n:n+T], v[n:n+T] = ln·Wᵀ;  rope(q), rope(k[n:n+T])
//	mid = x + attend(q, k[:n+T], v[:n+T])·Woᵀ
//	x = mid + down(silu(gate(norm(mid))) * up(norm(mid)))
func (d *Decoder) run(ids []int, last bool) error {
	m, be, c := d.m, d.m.be, &d.m.cfg
	T, n := len(ids), d.n
	C, I, KV, V := c.HiddenSize, c.IntermediateSize, c.KVDim(), c.VocabSize
	H, KVH, D := c.NumHeads, c.NumKVHeads, c.HeadDim
	eps := float32(c.RMSNormEps)
	ids32, pos := make([]int32, T), make([]int32, T)
	for i, id := range ids {
		ids32[i], pos[i] = int32(id), int32(n+i)
	}
	if err := be.UploadInt(d.ids, ids32); err != nil {
		return fmt.Errorf("model: decoder: %w", err)
	}
	if err := be.UploadInt(d.pos, pos); err != nil {
		return fmt.Errorf("model: decoder: %w", err)
	}
	be.EmbeddingForward(d.x, d.ids, m.embed.W, T, C, V)
	for l := range c.NumLayers {
		sl := m.layers[l]
		kNew, vNew := d.k[l].Slice(n*KV, T*KV), d.v[l].Slice(n*KV, T*KV)
		be.RMSNormForward(d.ln, d.rstd, d.x, sl.attnNorm.W, T, C, eps)
		d.linear(l, linQ, d.q, d.ln, T)
		d.linear(l, linK, kNew, d.ln, T)
		d.linear(l, linV, vNew, d.ln, T)
		be.RopeForward(d.q, d.q, m.ropeCos, m.ropeSin, d.pos, T, H, D, m.ropeP)
		be.RopeForward(kNew, kNew, m.ropeCos, m.ropeSin, d.pos, T, KVH, D, m.ropeP)
		be.AttentionDecode(d.att, d.q, d.k[l], d.v[l], 1, T, n+T, d.maxLen, H, KVH, D)
		d.linear(l, linO, d.mid, d.att, T)
		be.Add(d.mid, d.x, d.mid, T*C)
		be.RMSNormForward(d.ln, d.rstd, d.mid, sl.mlpNorm.W, T, C, eps)
		d.linear(l, linGate, d.gate, d.ln, T)
		d.linear(l, linUp, d.up, d.ln, T)
		be.SwiGLUForward(d.act, d.gate, d.up, T*I)
		d.linear(l, linDown, d.ln, d.act, T) // ln is free again: the MLP output
		be.Add(d.x, d.mid, d.ln, T*C)
	}
	if last {
		be.RMSNormForward(d.xf, d.rstd, d.x.Slice((T-1)*C, C), m.finalNorm.W, 1, C, eps)
		be.MatmulNT(d.logitBuf, d.xf, m.head.W, 1, V, C, 1, 0)
	}
	if err := be.Sync(); err != nil {
		return fmt.Errorf("model: decoder at position %d: %w", n, err)
	}
	d.n = n + T
	return nil
}

// linear: y[T,out] = x[T,in]·Wᵀ (+ scale·(x·Aᵀ)·Bᵀ where projection j of layer
// l is adapted), linearForward without dropout and over the decoder's buffers.
func (d *Decoder) linear(l, j int, y, x ops.Buf, T int) {
	m, be := d.m, d.m.be
	sl := m.layers[l]
	out, in := m.cfg.LinearShape(Linears[j])
	be.MatmulNT(y, x, m.weight(l, j), T, out, in, 1, 0)
	if lp := sl.lora[j]; lp != nil {
		r := m.lora.Rank
		be.MatmulNT(d.h, x, lp.A.W, T, r, in, 1, 0)
		be.MatmulNT(y, d.h, lp.B.W, T, out, r, m.loraScale, 1)
	}
}
