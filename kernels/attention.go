package kernels

import (
	"math"

	"train/ops"
)

// Training attention as cuBLAS GEMMs ("math" attention, as PyTorch's SDPA
// without flash), so that its FLOPs run on the tensor cores; the kernels of
// attention.cu only do the row work between the GEMMs (mask, softmax, dS). It
// serves float32 data and head dims other than 64 and 128; bf16 at those head
// dims takes flash attention (flash_attention.go), and AttentionForwardGEMM /
// AttentionBackwardGEMM stay callable for tests and benchmarks.
//
// Per batch row b, chunk of query rows [t0,t1) and group index g (query head
// h = kvh*rep + g reads key/value head kvh, rep = H/KVH), one strided-batched
// GEMM covers the KVH heads kvh (batch item kvh: q, out, dout and dq move by
// rep*D, k, v, dk and dv by D, the score matrices by one matrix). Nk = t1:
// causal rows [t0,t1) see keys [0,t1) only, so early chunks skip most of the
// masked half.
//
//	forward:  S = Q·Kᵀ (float)  ->  attention_softmax: lse, P (data type)  ->  out = P·V
//	backward: S = Q·Kᵀ, dP = dout·Vᵀ (float)  ->  attention_softmax_backward: P, dS =
//	          P∘(dP - rowsum(P∘dP))*scale (data type)  ->  dq += dS·K, dk += dSᵀ·Q, dv += Pᵀ·dout
//
// The GEMMs compute in float32 (cublasSgemmStridedBatched without TF32 for
// F32 data; cublasGemmStridedBatchedEx, bf16 in, float32 compute, for BF16).
// dk and dv sum over chunks and groups by beta = 1 in a fixed order: in F32
// straight into dk and dv, in BF16 into a float accumulator of the batch row
// that attention_add_acc adds into dk, dv once (one rounding, like ops.CPU).
// Everything is in launch order on one stream: deterministic.
//
// The workspace (S, dP float; P, dS of the data type; the bf16 accumulators) is
// one device buffer of the Backend, grown on demand and freed by Close; see
// planAttention for its size.

const (
	// attnWorkspaceLimit bounds the score matrices (S, dP, P, dS of one
	// chunk), whatever T: the query rows per chunk shrink as T grows. 256 MiB
	// holds 320 rows of the 70B shape (KVH 8) at T = 8192 in bf16.
	attnWorkspaceLimit = 256 << 20
	// attnMaxRows caps a chunk's query rows even when memory allows more: with
	// n chunks the GEMMs compute (1+1/n)/2 of the full T×T scores instead of
	// all of them (T = 2048: 4 chunks, 62.5%).
	attnMaxRows = 512
	// attnAlign: chunks start at multiples of this many rows and the score
	// matrices' leading dimension is a multiple of it (aligned rows for the
	// tensor cores; 128 bytes of bf16).
	attnAlign    = 64
	attnRowBlock = 256 // threads of the row kernels, one block per score row
)

// attnPlan cuts one attention shape into chunks of query rows and places its
// buffers in the workspace.
type attnPlan struct {
	rows  int   // query rows per chunk (the last chunk may have fewer)
	s, dp int64 // byte offsets of S and dP: KVH × rows × roundUp(T, attnAlign) floats each
	p, ds int64 // P and dS: the same in the data type
	acc   int64 // bf16 backward: dk then dv accumulators of one batch row, T×KVH×D floats each
	bytes int64 // the whole workspace
}

// planAttention sizes the chunks so that S, dP, P and dS fit limit bytes (one
// row at least, whatever limit says), at most attnMaxRows rows, rounded down
// to a multiple of attnAlign when they do not cover T. Forward and backward
// use one plan (forward needs only S and P).
func planAttention(T, KVH, D int, dt ops.DType, limit int64) attnPlan {
	e := int64(elemSize(dt))
	ld := int64(roundUp(T, attnAlign))
	perRow := int64(KVH) * ld * (4 + 4 + 2*e)
	rows := T
	if r := min(limit/perRow, attnMaxRows); r < int64(T) {
		rows = int(max(r, 1))
		if rows >= attnAlign {
			rows -= rows % attnAlign
		}
	}
	mat := int64(KVH) * int64(rows) * ld // elements of one score matrix set
	var p attnPlan
	p.rows = rows
	p.dp = p.s + alignBytes(4*mat)
	p.p = p.dp + alignBytes(4*mat)
	p.ds = p.p + alignBytes(e*mat)
	p.acc = p.ds + alignBytes(e*mat)
	p.bytes = p.acc
	if dt.IsHalf() {
		p.bytes += 2 * 4 * int64(T) * int64(KVH) * int64(D)
	}
	return p
}

// AttentionWorkspaceBytes is the device memory that AttentionForward and
// AttentionBackward keep beside the caller's buffers for B rows of T tokens,
// for memory plans: where flash attention applies (AttentionKernel) the
// larger of its delta (B×H×T floats) and cuDNN's backward workspace (which
// may take the call instead), else the GEMM attention's plan (B does not
// matter there: rows run one after another).
func AttentionWorkspaceBytes(B, T, H, KVH, D int, dt ops.DType) int64 {
	if B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || D <= 0 {
		return 0
	}
	if AttentionKernel(dt, D) == "flash" {
		return max(flashWorkspaceBytes(B, T, H), cudnnWorkspaceBytes(B, T, H, KVH, D))
	}
	return planAttention(T, KVH, D, dt, attnWorkspaceLimit).bytes
}

func roundUp(n, m int) int { return (n + m - 1) / m * m }

// alignBytes rounds a buffer size up to 256 bytes, so every buffer of the
// workspace starts aligned.
func alignBytes(n int64) int64 { return (n + 255) &^ 255 }

// attn is one attention call: its shape, data type, plan and workspace.
type attn struct {
	B, T, H, KVH, D, rep int
	dt                   ops.DType
	e                    int // bytes per element of dt
	scale                float32
	plan                 attnPlan
	ws                   uint64 // workspace
	seg                  uint64 // 0: no segments
}

// newAttn plans the call and grows the workspace; nil after a recorded error.
func (b *Backend) newAttn(op string, dt ops.DType, seg uint64, B, T, H, KVH, D int) *attn {
	limit := b.attnLimit
	if limit == 0 {
		limit = attnWorkspaceLimit
	}
	a := &attn{B: B, T: T, H: H, KVH: KVH, D: D, rep: H / KVH, dt: dt, e: elemSize(dt),
		scale: float32(1 / math.Sqrt(float64(D))), plan: planAttention(T, KVH, D, dt, limit), seg: seg}
	a.ws = b.grow(op, &b.attnWS, &b.attnWSB, a.plan.bytes)
	if b.err != nil {
		return nil
	}
	return a
}

// rm is a row-major operand of a batched matmul: the first element of batch
// item 0, the element type, the row stride (leading dimension) and the
// distance between batch items, in elements.
type rm struct {
	p          uint64
	dt         ops.DType
	ld, stride int
}

// bmm runs, for each key/value head as one batch item, out[M,N] = alpha
// op(a)·op(b) + beta out on row-major matrices, K the inner dimension; ta: a is
// stored [K,M] and used transposed; tb: b is stored [N,K] and used transposed.
//
// cuBLAS is column-major and reads a row-major X (row stride ld) as Xᵀ with
// leading dimension ld. Row-major out = op(a)·op(b) is column-major outᵀ =
// op(b)ᵀ·op(a)ᵀ, so cuBLAS's A is b (transposed iff tb), its B is a
// (transposed iff ta), m = N and n = M: the mapping of matmul in ops.go, with
// each operand's own leading dimension and batch stride.
func (a *attn) bmm(d *device, ta, tb bool, M, N, K int, alpha float32, x, y rm, beta float32, out rm) error {
	return d.gemmBatched(tb, ta, N, M, K, alpha, y.p, y.ld, y.stride, x.p, x.ld, x.stride, x.dt,
		beta, out.p, out.ld, out.stride, out.dt, a.KVH)
}

// chunk is the view of one (batch row, rows [t0,t1), group g) step.
type chunk struct {
	b, t0, rows, nk, ld, g int
}

// q is the chunk's rows of a [B*T, H*D] buffer (q, out, dout, dq) for the heads
// h = kvh*rep + g: row t0 of batch row b, head g for kvh 0, then rep*D per kvh.
func (a *attn) q(x uint64, c chunk) rm {
	off := ((c.b*a.T+c.t0)*a.H + c.g) * a.D
	return rm{x + uint64(a.e*off), a.dt, a.H * a.D, a.rep * a.D}
}

// kv is batch row b's keys [0, T) of a [B*T, KVH*D] buffer (k, v, dk, dv of
// type dt): head kvh at kvh*D.
func (a *attn) kv(x uint64, b int) rm {
	return rm{x + uint64(a.e*b*a.T*a.KVH*a.D), a.dt, a.KVH * a.D, a.D}
}

// scores is a [rows, nk] matrix per kv head in the workspace at byte offset
// off, of type dt (F32 for S and dP), leading dimension c.ld.
func (a *attn) scores(off int64, dt ops.DType, c chunk) rm {
	return rm{a.ws + uint64(off), dt, c.ld, c.rows * c.ld}
}

// chunks calls f for every step in a fixed order: batch rows, chunks of query
// rows, groups.
func (a *attn) chunks(b int, f func(c chunk) error) error {
	for t0 := 0; t0 < a.T; t0 += a.plan.rows {
		t1 := min(t0+a.plan.rows, a.T)
		for g := 0; g < a.rep; g++ {
			if err := f(chunk{b: b, t0: t0, rows: t1 - t0, nk: t1, ld: roundUp(t1, attnAlign), g: g}); err != nil {
				return err
			}
		}
	}
	return nil
}

// rowKernel launches a row kernel over the chunk's score rows: one block per
// (row, kv head).
func (a *attn) rowKernel(d *device, kernel string, c chunk, args ...uint64) error {
	args = append(args, a.seg, aI(c.b), aI(a.T), aI(a.H), aI(a.rep), aI(c.g), aI(c.t0), aI(c.rows), aI(c.nk),
		aI(c.ld), aF(a.scale))
	return d.launch(kernel+dtSuffix(a.dt), [3]int{c.rows, a.KVH, 1}, [3]int{attnRowBlock, 1, 1}, args)
}

// dtSuffix is the kernel name suffix of data type dt (see TR_KERNEL_FLOATS).
func dtSuffix(dt ops.DType) string {
	switch dt {
	case ops.BF16:
		return "_bf16"
	case ops.F16:
		return "_f16"
	}
	return "_f32"
}

// forward: for each step, S = Q·Kᵀ; lse and P by attention_softmax; out = P·V
// (beta 0: out's old contents are never read).
func (a *attn) forward(d *device, out, lse, q, k, v uint64) error {
	D, pl := a.D, a.plan
	for b := 0; b < a.B; b++ {
		err := a.chunks(b, func(c chunk) error {
			S, P := a.scores(pl.s, ops.F32, c), a.scores(pl.p, a.dt, c)
			if err := a.bmm(d, false, true, c.rows, c.nk, D, 1, a.q(q, c), a.kv(k, b), 0, S); err != nil {
				return err
			}
			if err := a.rowKernel(d, "attention_softmax", c, P.p, lse, S.p); err != nil {
				return err
			}
			return a.bmm(d, false, false, c.rows, D, c.nk, 1, P, a.kv(v, b), 0, a.q(out, c))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// backward: for each step, S = Q·Kᵀ and dP = dout·Vᵀ; P and dS by
// attention_softmax_backward; dq += dS·K, dk += dSᵀ·Q, dv += Pᵀ·dout. F32 adds
// into dk and dv directly; BF16 and F16 into the float accumulators of the batch row
// (zeroed first), added into dk and dv after the row's last step.
func (a *attn) backward(d *device, dq, dk, dv, dout, q, k, v, lse uint64) error {
	D, pl := a.D, a.plan
	n := a.T * a.KVH * D // one batch row of dk or dv
	accK, accV := a.ws+uint64(pl.acc), a.ws+uint64(pl.acc)+uint64(4*n)
	for b := 0; b < a.B; b++ {
		gk, gv := a.kv(dk, b), a.kv(dv, b)
		if a.dt.IsHalf() {
			gk, gv = rm{accK, ops.F32, a.KVH * D, D}, rm{accV, ops.F32, a.KVH * D, D}
			if err := d.memset32(accK, 0, 2*n); err != nil {
				return err
			}
		}
		err := a.chunks(b, func(c chunk) error {
			S, dP := a.scores(pl.s, ops.F32, c), a.scores(pl.dp, ops.F32, c)
			P, dS := a.scores(pl.p, a.dt, c), a.scores(pl.ds, a.dt, c)
			qc, doc := a.q(q, c), a.q(dout, c)
			if err := a.bmm(d, false, true, c.rows, c.nk, D, 1, qc, a.kv(k, b), 0, S); err != nil {
				return err
			}
			if err := a.bmm(d, false, true, c.rows, c.nk, D, 1, doc, a.kv(v, b), 0, dP); err != nil {
				return err
			}
			if err := a.rowKernel(d, "attention_softmax_backward", c, P.p, dS.p, S.p, dP.p, lse); err != nil {
				return err
			}
			if err := a.bmm(d, false, false, c.rows, D, c.nk, 1, dS, a.kv(k, b), 1, a.q(dq, c)); err != nil {
				return err
			}
			if err := a.bmm(d, true, false, c.nk, D, c.rows, 1, dS, qc, 1, gk); err != nil {
				return err
			}
			return a.bmm(d, true, false, c.nk, D, c.rows, 1, P, doc, 1, gv)
		})
		if err != nil {
			return err
		}
		if a.dt.IsHalf() {
			grid := [3]int{(n + ewBlock - 1) / ewBlock, 1, 1}
			for _, x := range [][2]uint64{{a.kv(dk, b).p, accK}, {a.kv(dv, b).p, accV}} {
				if err := d.launch("attention_add_acc"+dtSuffix(a.dt), grid, [3]int{ewBlock, 1, 1}, []uint64{x[0], x[1], aL(n)}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// attnShape checks a training attention's dimensions; D has no limit here.
func (b *Backend) attnShape(op string, B, T, H, KVH, D int) bool {
	if B < 0 || T < 0 {
		b.fail("%s: B %d and T %d, want >= 0", op, B, T)
		return false
	}
	return b.attnDims(op, H, KVH, D, 0)
}

// attnPtrs are a training attention call's device pointers (0 for a nil seg).
type attnPtrs struct {
	out, lse, q, k, v, seg uint64
	dq, dk, dv, dout       uint64 // backward
}

// attnForwardArgs checks AttentionForward's arguments as ops.CPU does (sizes,
// f32 lse, one data type) and returns the pointers; false after a recorded
// error or when there is nothing to do (B*T == 0).
func (b *Backend) attnForwardArgs(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) (attnPtrs, bool) {
	const op = "AttentionForward"
	var p attnPtrs
	if !b.attnShape(op, B, T, H, KVH, D) {
		return p, false
	}
	N := B * T
	p.out, p.lse = b.data(out, N*H*D, op, "out"), b.f(lse, B*H*T, op, "lse")
	p.q, p.k, p.v = b.data(q, N*H*D, op, "q"), b.data(k, N*KVH*D, op, "k"), b.data(v, N*KVH*D, op, "v")
	p.seg = b.i(seg, N, op, "seg", true)
	b.same(op, out, q, k, v)
	return p, b.err == nil && N > 0
}

// attnBackwardArgs is attnForwardArgs for AttentionBackward.
func (b *Backend) attnBackwardArgs(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) (attnPtrs, bool) {
	const op = "AttentionBackward"
	var p attnPtrs
	if !b.attnShape(op, B, T, H, KVH, D) {
		return p, false
	}
	N := B * T
	p.dq, p.dk, p.dv = b.data(dq, N*H*D, op, "dq"), b.data(dk, N*KVH*D, op, "dk"), b.data(dv, N*KVH*D, op, "dv")
	p.dout, p.lse = b.data(dout, N*H*D, op, "dout"), b.f(lse, B*H*T, op, "lse")
	p.q, p.k, p.v = b.data(q, N*H*D, op, "q"), b.data(k, N*KVH*D, op, "k"), b.data(v, N*KVH*D, op, "v")
	p.out = b.data(out, N*H*D, op, "out")
	p.seg = b.i(seg, N, op, "seg", true)
	b.same(op, dq, dk, dv, dout, q, k, v, out)
	return p, b.err == nil && N > 0
}

// zeroGrads zeroes dq, dk and dv for the kernels that add into them (flash,
// GEMM): AttentionBackward overwrites.
func (b *Backend) zeroGrads(dq, dk, dv ops.Buf, B, T, H, KVH, D int) {
	b.Zero(dq, B*T*H*D)
	b.Zero(dk, B*T*KVH*D)
	b.Zero(dv, B*T*KVH*D)
}

// AttentionForwardGEMM is AttentionForward (ops.Backend) by the GEMM
// attention, for any data type and head dim; see the top of this file for how.
func (b *Backend) AttentionForwardGEMM(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	p, ok := b.attnForwardArgs(out, lse, q, k, v, seg, B, T, H, KVH, D)
	if !ok {
		return
	}
	a := b.newAttn("AttentionForward", q.DType(), p.seg, B, T, H, KVH, D)
	if a == nil {
		return
	}
	b.run("AttentionForward", func(d *device) error { return a.forward(d, p.out, p.lse, p.q, p.k, p.v) })
}

// AttentionBackwardGEMM is AttentionBackward (ops.Backend) by the GEMM
// attention: dq, dk, dv = the gradients; see the top of this file for how.
func (b *Backend) AttentionBackwardGEMM(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	p, ok := b.attnBackwardArgs(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
	if !ok {
		return
	}
	a := b.newAttn("AttentionBackward", q.DType(), p.seg, B, T, H, KVH, D)
	if a == nil {
		return
	}
	b.zeroGrads(dq, dk, dv, B, T, H, KVH, D)
	b.run("AttentionBackward", func(d *device) error {
		return a.backward(d, p.dq, p.dk, p.dv, p.dout, p.q, p.k, p.v, p.lse)
	})
}
