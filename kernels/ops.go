package kernels

import "train/ops"

// Launch wrappers, one per ops.Backend op: check the buffers on the host (as
// the CPU backend does: sizes, F32 where ops.Backend wants it, one data type
// per op), pick the kernel's instantiation by the data type, then launch. Block
// sizes: 256 threads for elementwise kernels, 256 per row for row reductions,
// 128 (4 warps, one query row each) for the decoding attention. The training
// attention (GEMMs and row kernels) is in attention.go.

const (
	ewBlock   = 256
	rowBlock  = 256
	attnBlock = 128
	maxHeadD  = 256 // the decoding attention keeps a head in 8 registers per lane

	// sumsqBlocks bounds SumSquares' first pass: at most this many partial
	// sums, one per block, which the second pass adds in one block.
	sumsqBlocks = 1024
)

// Zero sets the first n elements of x (F32, BF16, F16, I32 or U8) to zero.
func (b *Backend) Zero(x ops.Buf, n int) {
	dt := ops.F32
	if x != nil && elemSize(x.DType()) != 0 {
		dt = x.DType()
	}
	p := b.ptr(x, n, dt, "Zero", "b", false)
	if b.err != nil || n == 0 {
		return
	}
	b.run("Zero", func(d *device) error { return zero(d, p, dt, n) })
}

// Copy copies the first n elements of src into dst, both of one type.
func (b *Backend) Copy(dst, src ops.Buf, n int) {
	o, s, bytes, ok := b.copyArgs("Copy", dst, src, n)
	if !ok {
		return
	}
	if hostBuf(src) || hostBuf(dst) {
		b.run("Copy", func(d *device) error { return d.copyAny(o, s, bytes) })
		return
	}
	b.run("Copy", func(d *device) error { return d.copy(o, s, bytes) })
}

// copyArgs checks a copy of n elements of src's type (F32 if it has none)
// and returns the pointers and the byte count; false when there is nothing
// to do (n 0, dst is src) or after a recorded error.
func (b *Backend) copyArgs(op string, dst, src ops.Buf, n int) (o, s uint64, bytes int, ok bool) {
	dt := ops.F32
	if src != nil && elemSize(src.DType()) != 0 {
		dt = src.DType()
	}
	s, o = b.ptr(src, n, dt, op, "src", false), b.ptr(dst, n, dt, op, "dst", false)
	return o, s, elemSize(dt) * n, b.err == nil && n != 0 && s != o
}

// CopyAsync is ops.AsyncCopier's: Copy on a second stream, after the ops
// queued so far, overlapping the ops queued after it until WaitCopy.
func (b *Backend) CopyAsync(dst, src ops.Buf, n int) uint64 {
	o, s, bytes, ok := b.copyArgs("CopyAsync", dst, src, n)
	if !ok {
		return 0
	}
	var ev uint64
	b.run("CopyAsync", func(d *device) error {
		var err error
		ev, err = d.copyAsync(o, s, bytes)
		return err
	})
	return ev
}

// WaitCopy is ops.AsyncCopier's: the ops queued after it wait for the copy.
func (b *Backend) WaitCopy(ticket uint64) {
	if ticket != 0 {
		b.run("WaitCopy", func(d *device) error { return d.waitCopy(ticket) })
	}
}

// Cast converts n elements between F32 and BF16 or F16 (to nearest even); the
// same type copies, and BF16 to F16 is refused (no op needs it).
func (b *Backend) Cast(dst, src ops.Buf, n int) {
	const op = "Cast"
	o, s := b.data(dst, n, op, "dst"), b.data(src, n, op, "src")
	if b.err != nil {
		return
	}
	if dst.DType() == src.DType() {
		b.Copy(dst, src, n)
		return
	}
	if dst.DType() != ops.F32 && src.DType() != ops.F32 {
		b.fail("%s: %v to %v: one side must be f32", op, src.DType(), dst.DType())
		return
	}
	kernel := "cast" + dtSuffix(src.DType()) + "_to" + dtSuffix(dst.DType())
	b.launch1(op, kernel, n, ewBlock, o, s, aL(n))
}

func (b *Backend) EmbeddingForward(out, ids, table ops.Buf, N, C, V int) {
	const op = "EmbeddingForward"
	o, id, t := b.data(out, N*C, op, "out"), b.i(ids, N, op, "ids", false), b.data(table, V*C, op, "table")
	b.same(op, out, table)
	b.launch1(op, kname("embedding_forward", table), N*C, ewBlock, o, id, t, aI(N), aI(C), aI(V), b.ew())
}

// EmbeddingBackward accumulates into an F32 dtable (a parameter gradient)
// from dout of either type.
func (b *Backend) EmbeddingBackward(dtable, dout, ids ops.Buf, N, C, V int) {
	const op = "EmbeddingBackward"
	dt, do, id := b.f(dtable, V*C, op, "dtable"), b.data(dout, N*C, op, "dout"), b.i(ids, N, op, "ids", false)
	if N == 0 {
		return
	}
	b.launch1(op, kname("embedding_backward", dout), C, ewBlock, dt, do, id, aI(N), aI(C), aI(V), b.ew())
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
	o, r, xv, wv := b.data(out, N*C, op, "out"), b.f(rstd, N, op, "rstd"), b.data(x, N*C, op, "x"), b.data(w, C, op, "w")
	b.same(op, out, x, w)
	b.rows(op, kname("rmsnorm_forward", x), N, o, r, xv, wv, aI(N), aI(C), aF(eps))
}

func (b *Backend) RMSNormBackward(dx, dw, dout, x, w, rstd ops.Buf, N, C int) {
	const op = "RMSNormBackward"
	dxv := b.data(dx, N*C, op, "dx")
	dwv := b.ptr(dw, C, ops.F32, op, "dw", true)
	do, xv, wv, r := b.data(dout, N*C, op, "dout"), b.data(x, N*C, op, "x"), b.data(w, C, op, "w"), b.f(rstd, N, op, "rstd")
	b.same(op, dx, dout, x, w)
	if dw != nil && N > 0 { // dw first: it reads dout, which dx may alias
		b.launch1(op, kname("rmsnorm_backward_dw", x), C, ewBlock, dwv, do, xv, r, aI(N), aI(C))
	}
	b.rows(op, kname("rmsnorm_backward_dx", x), N, dxv, do, xv, wv, r, aI(N), aI(C))
}

// matmul checks the operands and calls cuBLAS: cublasSgemm for F32 a and b,
// cublasGemmEx for BF16 and F16 ones (out F32 or their type). Row-major out[M,N] is
// column-major outᵀ[N,M] = op(b)·op(a) in cuBLAS's terms, so cuBLAS's A is our
// b (transposed when transA, leading dimension lda) and its B our a (transB,
// ldb); see the three callers.
func (b *Backend) matmul(op string, out, a, bm ops.Buf, M, N, K int, alpha, beta float32,
	transA, transB bool, lda, ldb int) {
	av, bv := b.data(a, M*K, op, "a"), b.data(bm, N*K, op, "b")
	b.same(op, a, bm)
	var o uint64
	if b.err == nil {
		if out != nil && out.DType() != ops.F32 && out.DType() != a.DType() {
			b.fail("%s: out is %v, want f32 or %v like a and b", op, out.DType(), a.DType())
		}
		o = b.data(out, M*N, op, "out")
	}
	if b.err != nil || M == 0 || N == 0 {
		return
	}
	ot := out.DType()
	if K == 0 { // out = beta*out; cuBLAS wants lda >= 1
		if beta == 0 {
			b.run(op, func(d *device) error { return zero(d, o, ot, M*N) })
		} else {
			b.launch1(op, kname("scale", out), M*N, ewBlock, o, aF(beta), aL(M*N))
		}
		return
	}
	if ab := a.DType(); ab.IsHalf() {
		b.run(op, func(d *device) error {
			return d.gemmEx(transA, transB, N, M, K, alpha, bv, lda, av, ldb, ab, beta, o, ot, N)
		})
		return
	}
	b.run(op, func(d *device) error { return d.sgemm(transA, transB, N, M, K, alpha, bv, lda, av, ldb, beta, o, N) })
}

// MatmulNT: out[M,N] = alpha a[M,K]·b[N,K]ᵀ + beta out; column-major
// outᵀ[N,M] = op_T(b as K×N) · (a as K×M).
func (b *Backend) MatmulNT(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulNT", out, a, bm, M, N, K, alpha, beta, true, false, K, K)
}

// MatmulNN: out[M,N] = alpha a[M,K]·b[K,N] + beta out; column-major
// outᵀ[N,M] = (b as N×K) · (a as K×M).
func (b *Backend) MatmulNN(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulNN", out, a, bm, M, N, K, alpha, beta, false, false, N, K)
}

// MatmulTN: out[M,N] = alpha a[K,M]ᵀ·b[K,N] + beta out; column-major
// outᵀ[N,M] = (b as N×K) · (a as M×K)ᵀ.
func (b *Backend) MatmulTN(out, a, bm ops.Buf, M, N, K int, alpha, beta float32) {
	b.matmul("MatmulTN", out, a, bm, M, N, K, alpha, beta, false, true, N, M)
}

func (b *Backend) RopeForward(out, x, cos, sin, pos ops.Buf, N, H, D, P int) {
	b.rope(out, x, cos, sin, pos, N, H, D, P, false, "RopeForward")
}

func (b *Backend) RopeBackward(dx, dout, cos, sin, pos ops.Buf, N, H, D, P int) {
	b.rope(dx, dout, cos, sin, pos, N, H, D, P, true, "RopeBackward")
}

// rope: out and x of the data type, the tables F32.
func (b *Backend) rope(out, x, cos, sin, pos ops.Buf, N, H, D, P int, inverse bool, op string) {
	if D%2 != 0 {
		b.fail("%s: head dim %d is odd", op, D)
		return
	}
	o, xv := b.data(out, N*H*D, op, "out"), b.data(x, N*H*D, op, "x")
	cv, sv, pv := b.f(cos, P*D/2, op, "cos"), b.f(sin, P*D/2, op, "sin"), b.i(pos, N, op, "pos", false)
	b.same(op, out, x)
	b.launch1(op, kname("rope", x), N*H*D/2, ewBlock, o, xv, cv, sv, pv, aI(N), aI(H), aI(D), aI(P), aB(inverse), b.ew())
}

// attnDims checks the head counts and D > 0; maxD > 0 also bounds D (a
// kernel's limit).
func (b *Backend) attnDims(op string, H, KVH, D, maxD int) bool {
	if H <= 0 || KVH <= 0 || H%KVH != 0 {
		b.fail("%s: %d heads not a multiple of %d key/value heads", op, H, KVH)
		return false
	}
	if D <= 0 {
		b.fail("%s: head dim %d, want > 0", op, D)
		return false
	}
	if maxD > 0 && D > maxD {
		b.fail("%s: head dim %d outside (0,%d] (this kernel's limit)", op, D, maxD)
		return false
	}
	return true
}

// warps launches kernel with one warp per item, attnBlock threads per block.
func (b *Backend) warps(op, kernel string, items int, args ...uint64) {
	b.launch1(op, kernel, items*32, attnBlock, args...)
}

func (b *Backend) AttentionDecode(out, q, kCache, vCache ops.Buf, B, Tq, Tk, S, H, KVH, D int) {
	const op = "AttentionDecode"
	if !b.attnDims(op, H, KVH, D, maxHeadD) {
		return
	}
	if B <= 0 || Tq < 1 || Tq > Tk || Tk > S {
		b.fail("%s: need B, D > 0 and 1 <= Tq <= Tk <= S (have B %d, D %d, Tq %d, Tk %d, S %d)", op, B, D, Tq, Tk, S)
		return
	}
	o, qv := b.data(out, B*Tq*H*D, op, "out"), b.data(q, B*Tq*H*D, op, "q")
	kv, vv := b.data(kCache, B*S*KVH*D, op, "kCache"), b.data(vCache, B*S*KVH*D, op, "vCache")
	b.same(op, out, q, kCache, vCache)
	b.warps(op, kname("attention_forward", q), B*H*Tq, o, 0, qv, kv, vv, 0, aI(B), aI(Tq), aI(Tk), aI(S), aI(H), aI(KVH), aI(D))
}

// scratchFor returns a device buffer of at least bytes bytes for SumSquares'
// partial sums, reused across calls and grown when too small; it is outside
// the caller's memory plan.
func (b *Backend) scratchFor(op string, bytes int) uint64 {
	return b.grow(op, &b.scratch, &b.scratchB, int64(bytes))
}

// grow returns *p, a device buffer of *size bytes owned by the Backend (freed
// by Close), after replacing it by one of bytes bytes when it is smaller:
// sync, free, alloc, so pending work is done with the old one.
func (b *Backend) grow(op string, p *uint64, size *int64, bytes int64) uint64 {
	if bytes <= *size || b.err != nil {
		return *p
	}
	b.run(op, func(d *device) error {
		if err := d.sync(); err != nil {
			return err
		}
		if *p != 0 {
			if err := d.free(*p); err != nil {
				return err
			}
			*p, *size = 0, 0
		}
		q, err := d.alloc(int(bytes))
		if err != nil {
			return err
		}
		*p, *size = q, bytes
		return nil
	})
	return *p
}

func (b *Backend) SwiGLUForward(out, gate, up ops.Buf, n int) {
	const op = "SwiGLUForward"
	o, g, u := b.data(out, n, op, "out"), b.data(gate, n, op, "gate"), b.data(up, n, op, "up")
	b.same(op, out, gate, up)
	b.launch1(op, kname("swiglu_forward", gate), n, ewBlock, o, g, u, aL(n))
}

func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up ops.Buf, n int) {
	const op = "SwiGLUBackward"
	dg, du := b.data(dgate, n, op, "dgate"), b.data(dup, n, op, "dup")
	do, g, u := b.data(dout, n, op, "dout"), b.data(gate, n, op, "gate"), b.data(up, n, op, "up")
	b.same(op, dgate, dup, dout, gate, up)
	b.launch1(op, kname("swiglu_backward", gate), n, ewBlock, dg, du, do, g, u, aL(n))
}

// CrossEntropyForward writes F32 losses from logits of either type.
func (b *Backend) CrossEntropyForward(losses, logits, targets ops.Buf, N, V int) {
	const op = "CrossEntropyForward"
	l, lg, tg := b.f(losses, N, op, "losses"), b.data(logits, N*V, op, "logits"), b.i(targets, N, op, "targets", false)
	b.rows(op, kname("crossentropy_forward", logits), N, l, lg, tg, aI(N), aI(V), b.ew())
}

func (b *Backend) CrossEntropyBackward(dlogits, logits, targets ops.Buf, N, V int, scale float32) {
	const op = "CrossEntropyBackward"
	d, lg, tg := b.data(dlogits, N*V, op, "dlogits"), b.data(logits, N*V, op, "logits"), b.i(targets, N, op, "targets", false)
	b.same(op, dlogits, logits)
	b.rows(op, kname("crossentropy_backward", logits), N, d, lg, tg, aI(N), aI(V), aF(scale), b.ew())
}

func (b *Backend) Add(out, a, c ops.Buf, n int) {
	const op = "Add"
	o, x, y := b.data(out, n, op, "out"), b.data(a, n, op, "a"), b.data(c, n, op, "b")
	b.same(op, out, a, c)
	b.launch1(op, kname("add", a), n, ewBlock, o, x, y, aL(n))
}

func (b *Backend) Scale(x ops.Buf, s float32, n int) {
	v := b.data(x, n, "Scale", "x")
	b.launch1("Scale", kname("scale", x), n, ewBlock, v, aF(s), aL(n))
}

// Dropout uses ops.DropoutKeep's generator (splitmix64 of seed and index, 24
// bits against p), so the masks match the CPU's bit for bit.
func (b *Backend) Dropout(out, x ops.Buf, n int, p float32, seed uint64) {
	const op = "Dropout"
	o, v := b.data(out, n, op, "out"), b.data(x, n, op, "x")
	b.same(op, out, x)
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
	b.launch1(op, kname("dropout", x), n, ewBlock, o, v, aL(n), aD(pd), aF(scale), seed)
}

// SumSquares: out[0] += sum of x^2 in float64, in two launches with a fixed
// order: one partial sum per block into the scratch (the grid depends on n
// only), then one block adds the partials and out[0].
func (b *Backend) SumSquares(out, x ops.Buf, n int) {
	const op = "SumSquares"
	o, xv := b.f(out, 1, op, "out"), b.data(x, n, op, "x")
	if b.err != nil || n == 0 {
		return
	}
	blocks := min((n+ewBlock-1)/ewBlock, sumsqBlocks)
	partial := b.scratchFor(op, 8*blocks)
	if b.err != nil {
		return
	}
	b.run(op, func(d *device) error {
		if err := d.launch(kname("sumsq_partial", x), [3]int{blocks, 1, 1}, [3]int{ewBlock, 1, 1},
			[]uint64{partial, xv, aL(n)}); err != nil {
			return err
		}
		return d.launch("sumsq_final", [3]int{1, 1, 1}, [3]int{ewBlock, 1, 1}, []uint64{o, partial, aI(blocks)})
	})
}

// AdamW updates the F32 value, m and v from the F32 grad (ops.AdamWStep), and
// writes the new value into work (F32, BF16 or F16) unless work is nil.
func (b *Backend) AdamW(value, grad, m, v, work ops.Buf, n int, s ops.AdamWStep) {
	const op = "AdamW"
	pv, g, mv, vv := b.f(value, n, op, "value"), b.f(grad, n, op, "grad"), b.f(m, n, op, "m"), b.f(v, n, op, "v")
	var wv uint64
	if work != nil {
		wv = b.data(work, n, op, "work")
	}
	b.launch1(op, kname("adamw", work), n, ewBlock, pv, g, mv, vv, wv, aL(n),
		aF(s.B1), aF(s.B2), aF(s.Decay), aF(s.GradScale), aD(s.StepSize), aD(s.SqrtBC2), aD(s.Eps))
}

// hostBuf reports whether x lies in page-locked host memory (AllocHost).
func hostBuf(x ops.Buf) bool {
	d, ok := x.(*buf)
	return ok && d.host
}
