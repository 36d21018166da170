package kernels

import "train/ops"

// Launch wrappers, one per ops.Backend op: check the buffers on the host (as
// the CPU backend does), then launch. Block sizes: 256 threads for elementwise
// kernels, 256 per row for row reductions, 128 (4 warps, one query row each)
// for attention.

const (
	ewBlock   = 256
	rowBlock  = 256
	attnBlock = 128
	maxHeadD  = 256 // attention keeps a head in 8 registers per lane
)

// Zero sets the first n elements of x (F32 or I32) to zero.
func (b *Backend) Zero(x ops.Buf, n int) {
	dt := ops.F32
	if x != nil && x.DType() == ops.I32 {
		dt = ops.I32
	}
	p := b.ptr(x, n, dt, "Zero", "b", false)
	if b.err != nil || n == 0 {
		return
	}
	b.run("Zero", func(d *device) error { return d.memset32(p, 0, n) })
}

// Copy copies the first n elements of src into dst (both F32 or both I32).
func (b *Backend) Copy(dst, src ops.Buf, n int) {
	dt := ops.F32
	if src != nil && src.DType() == ops.I32 {
		dt = ops.I32
	}
	s, o := b.ptr(src, n, dt, "Copy", "src", false), b.ptr(dst, n, dt, "Copy", "dst", false)
	if b.err != nil || n == 0 || s == o {
		return
	}
	b.run("Copy", func(d *device) error { return d.copy(o, s, 4*n) })
}

func (b *Backend) EmbeddingForward(out, ids, table ops.Buf, N, C, V int) {
	const op = "EmbeddingForward"
	o, id, t := b.f(out, N*C, op, "out"), b.i(ids, N, op, "ids", false), b.f(table, V*C, op, "table")
	b.launch1(op, "embedding_forward", N*C, ewBlock, o, id, t, aI(N), aI(C), aI(V), b.ew())
}

func (b *Backend) EmbeddingBackward(dtable, dout, ids ops.Buf, N, C, V int) {
	const op = "EmbeddingBackward"
	dt, do, id := b.f(dtable, V*C, op, "dtable"), b.f(dout, N*C, op, "dout"), b.i(ids, N, op, "ids", false)
	if N == 0 {
		return
	}
	b.launch1(op, "embedding_backward", C, ewBlock, dt, do, id, aI(N), aI(C), aI(V), b.ew())
}

// rows launches kernel with one block of rowBlock threads per row.
func (b *Backend) rows(op, kernel string, rows int, args ...uint64) {
	if rows <= 0 || b.err != nil {
		return
	}
	b.run(op, func(d *device) error { return d.launch(kernel, [3]int{rows, 1, 1}, [3]int{rowBlock, 1, 1}, args) })
}

func (b *Backend) RMSNormForward(out, rstd, x, w ops.Buf, N, C int, eps float32) {
	const op = "RMSNormForward"
	o, r, xv, wv := b.f(out, N*C, op, "out"), b.f(rstd, N, op, "rstd"), b.f(x, N*C, op, "x"), b.f(w, C, op, "w")
	b.rows(op, "rmsnorm_forward", N, o, r, xv, wv, aI(N), aI(C), aF(eps))
}

func (b *Backend) RMSNormBackward(dx, dw, dout, x, w, rstd ops.Buf, N, C int) {
	const op = "RMSNormBackward"
	dxv := b.f(dx, N*C, op, "dx")
	dwv := b.ptr(dw, C, ops.F32, op, "dw", true)
	do, xv, wv, r := b.f(dout, N*C, op, "dout"), b.f(x, N*C, op, "x"), b.f(w, C, op, "w"), b.f(rstd, N, op, "rstd")
	if dw != nil && N > 0 { // dw first: it reads dout, which dx may alias
		b.launch1(op, "rmsnorm_backward_dw", C, ewBlock, dwv, do, xv, r, aI(N), aI(C))
	}
	b.rows(op, "rmsnorm_backward_dx", N, dxv, do, xv, wv, r, aI(N), aI(C))
}

// matmul checks the operands and calls cuBLAS. Row-major out[M,N] is
// column-major outᵀ[N,M], so each layout becomes outᵀ = op(b)ᵀ-ish · op(a) with
// the operands swapped (see the three callers).
func (b *Backend) matmul(op string, out, a, bm ops.Buf, M, N, K int, alpha, beta float32,
	gemm func(d *device, o, a, b uint64) error) {
	o, av, bv := b.f(out, M*N, op, "out"), b.f(a, M*K, op, "a"), b.f(bm, N*K, op, "b")
	if b.err != nil || M == 0 || N == 0 {
		return
	}
	if K == 0 { // out = beta*out; cuBLAS wants lda >= 1
		if beta == 0 {
			b.run(op, func(d *device) error { return d.memset32(o, 0, M*N) })
		} else {
			b.launch1(op, "scale", M*N, ewBlock, o, aF(beta), aL(M*N))
		}
		return
	}
	b.run(op, func(d *device) error { return gemm(d, o, av, bv) })
}

// MatmulNT: out[M,N] = alpha a[M,K]·b[N,K]ᵀ + beta out; column-major
// outᵀ[N,M] = bᵀ... = op_T(b as K×N)ᵀ · (a as K×M).
func (b *Backend) MatmulNT(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulNT", out, a, bm, M, N, K, alpha, beta, func(d *device, o, a, bv uint64) error {
		return d.sgemm(true, false, N, M, K, alpha, bv, K, a, K, beta, o, N)
	})
}

// MatmulNN: out[M,N] = alpha a[M,K]·b[K,N] + beta out; column-major
// outᵀ[N,M] = (b as N×K) · (a as K×M).
func (b *Backend) MatmulNN(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulNN", out, a, bm, M, N, K, alpha, beta, func(d *device, o, a, bv uint64) error {
		return d.sgemm(false, false, N, M, K, alpha, bv, N, a, K, beta, o, N)
	})
}

// MatmulTN: out[M,N] = alpha a[K,M]ᵀ·b[K,N] + beta out; column-major
// outᵀ[N,M] = (b as N×K) · (a as M×K)ᵀ.
func (b *Backend) MatmulTN(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulTN", out, a, bm, M, N, K, alpha, beta, func(d *device, o, a, bv uint64) error {
		return d.sgemm(false, true, N, M, K, alpha, bv, N, a, M, beta, o, N)
	})
}

func (b *Backend) RopeForward(out, x, cos, sin, pos ops.Buf, N, H, D, P int) {
	b.rope(out, x, cos, sin, pos, N, H, D, P, false, "RopeForward")
}

func (b *Backend) RopeBackward(dx, dout, cos, sin, pos ops.Buf, N, H, D, P int) {
	b.rope(dx, dout, cos, sin, pos, N, H, D, P, true, "RopeBackward")
}

func (b *Backend) rope(out, x, cos, sin, pos ops.Buf, N, H, D, P int, inverse bool, op string) {
	if D%2 != 0 {
		b.fail("%s: head dim %d is odd", op, D)
		return
	}
	o, xv := b.f(out, N*H*D, op, "out"), b.f(x, N*H*D, op, "x")
	cv, sv, pv := b.f(cos, P*D/2, op, "cos"), b.f(sin, P*D/2, op, "sin"), b.i(pos, N, op, "pos", false)
	b.launch1(op, "rope", N*H*D/2, ewBlock, o, xv, cv, sv, pv, aI(N), aI(H), aI(D), aI(P), aB(inverse), b.ew())
}

func (b *Backend) attnDims(op string, H, KVH, D int) bool {
	if H <= 0 || KVH <= 0 || H%KVH != 0 {
		b.fail("%s: %d heads not a multiple of %d key/value heads", op, H, KVH)
		return false
	}
	if D <= 0 || D > maxHeadD {
		b.fail("%s: head dim %d outside (0,%d] (this kernel's limit)", op, D, maxHeadD)
		return false
	}
	return true
}

// warps launches kernel with one warp per item, attnBlock threads per block.
func (b *Backend) warps(op, kernel string, items int, args ...uint64) {
	b.launch1(op, kernel, items*32, attnBlock, args...)
}

func (b *Backend) AttentionForward(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	const op = "AttentionForward"
	if !b.attnDims(op, H, KVH, D) {
		return
	}
	N := B * T
	o, l := b.f(out, N*H*D, op, "out"), b.f(lse, B*H*T, op, "lse")
	qv, kv, vv := b.f(q, N*H*D, op, "q"), b.f(k, N*KVH*D, op, "k"), b.f(v, N*KVH*D, op, "v")
	sg := b.i(seg, N, op, "seg", true)
	b.warps(op, "attention_forward", B*H*T, o, l, qv, kv, vv, sg, aI(B), aI(T), aI(T), aI(T), aI(H), aI(KVH), aI(D))
}

func (b *Backend) AttentionDecode(out, q, kCache, vCache ops.Buf, B, Tq, Tk, S, H, KVH, D int) {
	const op = "AttentionDecode"
	if !b.attnDims(op, H, KVH, D) {
		return
	}
	if B <= 0 || Tq < 1 || Tq > Tk || Tk > S {
		b.fail("%s: need B, D > 0 and 1 <= Tq <= Tk <= S (have B %d, D %d, Tq %d, Tk %d, S %d)", op, B, D, Tq, Tk, S)
		return
	}
	o, qv := b.f(out, B*Tq*H*D, op, "out"), b.f(q, B*Tq*H*D, op, "q")
	kv, vv := b.f(kCache, B*S*KVH*D, op, "kCache"), b.f(vCache, B*S*KVH*D, op, "vCache")
	b.warps(op, "attention_forward", B*H*Tq, o, 0, qv, kv, vv, 0, aI(B), aI(Tq), aI(Tk), aI(S), aI(H), aI(KVH), aI(D))
}

// AttentionBackward runs two kernels: one warp per query row for dq (and the
// row's delta = sum_s p_s dp_s, kept in the backend's scratch), then one warp
// per key row for dk, dv, so that no two warps write one element.
func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, lse, seg ops.Buf, B, T, H, KVH, D int) {
	const op = "AttentionBackward"
	if !b.attnDims(op, H, KVH, D) {
		return
	}
	N := B * T
	dqv, dkv, dvv := b.f(dq, N*H*D, op, "dq"), b.f(dk, N*KVH*D, op, "dk"), b.f(dv, N*KVH*D, op, "dv")
	do, l := b.f(dout, N*H*D, op, "dout"), b.f(lse, B*H*T, op, "lse")
	qv, kv, vv := b.f(q, N*H*D, op, "q"), b.f(k, N*KVH*D, op, "k"), b.f(v, N*KVH*D, op, "v")
	sg := b.i(seg, N, op, "seg", true)
	if b.err != nil || N == 0 {
		return
	}
	delta := b.scratchFor(op, B*H*T)
	b.warps(op, "attention_backward_dq", B*H*T, dqv, delta, do, qv, kv, vv, l, sg, aI(B), aI(T), aI(H), aI(KVH), aI(D))
	b.warps(op, "attention_backward_dkv", B*KVH*T, dkv, dvv, delta, do, qv, kv, vv, l, sg, aI(B), aI(T), aI(H), aI(KVH), aI(D))
}

// scratchFor returns a device buffer of at least n floats, reused across calls
// and grown (after a sync) when too small. It is the one allocation outside the
// caller's memory plan; a planned workspace is later work.
func (b *Backend) scratchFor(op string, n int) uint64 {
	if n <= b.scratchN || b.err != nil {
		return b.scratch
	}
	b.run(op, func(d *device) error {
		if err := d.sync(); err != nil {
			return err
		}
		if b.scratch != 0 {
			if err := d.free(b.scratch); err != nil {
				return err
			}
			b.scratch, b.scratchN = 0, 0
		}
		p, err := d.alloc(4 * n)
		if err != nil {
			return err
		}
		b.scratch, b.scratchN = p, n
		return nil
	})
	return b.scratch
}

func (b *Backend) SwiGLUForward(out, gate, up ops.Buf, n int) {
	const op = "SwiGLUForward"
	o, g, u := b.f(out, n, op, "out"), b.f(gate, n, op, "gate"), b.f(up, n, op, "up")
	b.launch1(op, "swiglu_forward", n, ewBlock, o, g, u, aL(n))
}

func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up ops.Buf, n int) {
	const op = "SwiGLUBackward"
	dg, du := b.f(dgate, n, op, "dgate"), b.f(dup, n, op, "dup")
	do, g, u := b.f(dout, n, op, "dout"), b.f(gate, n, op, "gate"), b.f(up, n, op, "up")
	b.launch1(op, "swiglu_backward", n, ewBlock, dg, du, do, g, u, aL(n))
}

func (b *Backend) CrossEntropyForward(losses, logits, targets ops.Buf, N, V int) {
	const op = "CrossEntropyForward"
	l, lg, tg := b.f(losses, N, op, "losses"), b.f(logits, N*V, op, "logits"), b.i(targets, N, op, "targets", false)
	b.rows(op, "crossentropy_forward", N, l, lg, tg, aI(N), aI(V), b.ew())
}

func (b *Backend) CrossEntropyBackward(dlogits, logits, targets ops.Buf, N, V int, scale float32) {
	const op = "CrossEntropyBackward"
	d, lg, tg := b.f(dlogits, N*V, op, "dlogits"), b.f(logits, N*V, op, "logits"), b.i(targets, N, op, "targets", false)
	b.rows(op, "crossentropy_backward", N, d, lg, tg, aI(N), aI(V), aF(scale), b.ew())
}

func (b *Backend) Add(out, a, c ops.Buf, n int) {
	const op = "Add"
	o, x, y := b.f(out, n, op, "out"), b.f(a, n, op, "a"), b.f(c, n, op, "b")
	b.launch1(op, "add", n, ewBlock, o, x, y, aL(n))
}

func (b *Backend) Scale(x ops.Buf, s float32, n int) {
	v := b.f(x, n, "Scale", "x")
	b.launch1("Scale", "scale", n, ewBlock, v, aF(s), aL(n))
}

// Dropout uses ops.DropoutKeep's generator (splitmix64 of seed and index, 24
// bits against p), so the masks match the CPU's bit for bit.
func (b *Backend) Dropout(out, x ops.Buf, n int, p float32, seed uint64) {
	const op = "Dropout"
	o, v := b.f(out, n, op, "out"), b.f(x, n, op, "x")
	if b.err != nil {
		return
	}
	if !(p >= 0 && p < 1) {
		b.fail("%s: p = %v, want 0 <= p < 1", op, p)
		return
	}
	if p == 0 {
		b.Copy(out, x, n)
		return
	}
	pd := float64(p)
	scale := float32(1 / (1 - pd))
	b.launch1(op, "dropout", n, ewBlock, o, v, aL(n), aD(pd), aF(scale), seed)
}
