// Package opstest checks any ops.Backend against the float64 CPU reference: every
// op, forward and backward, on random inputs, compared by relative L2 error. A
// new device (the CUDA backend) passes when Check passes for it; the float32 CPU
// backend is checked the same way in this package's test.
package opstest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"train/ops"
)

// twin is one logical buffer held on the backend under test and on the reference.
type twin struct {
	got, ref ops.Buf
	n        int
}

type harness struct {
	t       testing.TB
	be, ref ops.Backend
	rng     *rand.Rand
	tol     float64
	dt      ops.DType // the data buffers' type on be; the reference holds float64
}

// Check runs every op on be and on ops.NewCPU64 with the same inputs and fails t
// where an output's relative L2 error exceeds tol (1e-5 suits float32).
func Check(t *testing.T, be ops.Backend, tol float64) { check(t, be, ops.F32, tol) }

// CheckBF16 is Check in mixed precision: the data buffers (activations,
// weights, their gradients) are BF16 on be, the statistics, rope tables,
// parameter gradients and optimizer state F32, as ops.Backend defines. The
// reference computes in float64 from the same bfloat16-rounded inputs, so the
// error measured is be's own (1e-2 suits bfloat16 storage).
func CheckBF16(t *testing.T, be ops.Backend, tol float64) { check(t, be, ops.BF16, tol) }

// CheckF16 is CheckBF16 with F16 data buffers (half precision: 1e-2 suits it
// too, with room to spare).
func CheckF16(t *testing.T, be ops.Backend, tol float64) { check(t, be, ops.F16, tol) }

func check(t *testing.T, be ops.Backend, dt ops.DType, tol float64) {
	h := &harness{t: t, be: be, ref: ops.NewCPU64(), rng: rand.New(rand.NewPCG(1, 2)), tol: tol, dt: dt}
	t.Run("Embedding", h.embedding)
	t.Run("RMSNorm", h.rmsnorm)
	t.Run("Matmul", h.matmul)
	t.Run("Rope", h.rope)
	t.Run("Attention", h.attention)
	t.Run("AttentionDecode", h.attentionDecode)
	t.Run("SwiGLU", h.swiglu)
	t.Run("CrossEntropy", h.crossEntropy)
	t.Run("Elementwise", h.elementwise)
	t.Run("Optimizer", h.optimizer)
}

func (h *harness) alloc(dt ops.DType, n int) twin {
	h.t.Helper()
	g, err := h.be.Alloc(dt, n)
	if err != nil {
		h.t.Fatal(err)
	}
	refType := dt
	if dt.IsHalf() {
		refType = ops.F32 // the float64 reference keeps full precision
	}
	r, err := h.ref.Alloc(refType, n)
	if err != nil {
		h.t.Fatal(err)
	}
	return twin{g, r, n}
}

// rand returns a data buffer of values uniform in [-scale, scale).
func (h *harness) rand(n int, scale float64) twin { return h.setAs(h.dt, h.uniform(n, scale)) }

// randF32 is rand for a buffer that is F32 in every mode.
func (h *harness) randF32(n int, scale float64) twin { return h.setAs(ops.F32, h.uniform(n, scale)) }

func (h *harness) uniform(n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * (2*h.rng.Float64() - 1))
	}
	return v
}

// setAs returns a buffer of type dt on be holding v; the reference holds v
// rounded as be stores it.
func (h *harness) setAs(dt ops.DType, v []float32) twin {
	h.t.Helper()
	if dt.IsHalf() {
		r := make([]float32, len(v))
		for i, x := range v {
			r[i] = ops.RoundAs(dt, x)
		}
		v = r
	}
	x := h.alloc(dt, len(v))
	if err := h.be.Upload(x.got, v); err != nil {
		h.t.Fatal(err)
	}
	if err := h.ref.Upload(x.ref, v); err != nil {
		h.t.Fatal(err)
	}
	return x
}

// zeros is a zeroed data buffer; zerosF32 one that is F32 in every mode.
func (h *harness) zeros(n int) twin    { return h.alloc(h.dt, n) }
func (h *harness) zerosF32(n int) twin { return h.alloc(ops.F32, n) }

func (h *harness) ints(v []int32) twin {
	h.t.Helper()
	x := h.alloc(ops.I32, len(v))
	if err := h.be.UploadInt(x.got, v); err != nil {
		h.t.Fatal(err)
	}
	if err := h.ref.UploadInt(x.ref, v); err != nil {
		h.t.Fatal(err)
	}
	return x
}

// run launches f on both backends, f picking each twin's side with b.
func (h *harness) run(f func(be ops.Backend, b func(twin) ops.Buf)) {
	f(h.be, func(x twin) ops.Buf { return x.got })
	f(h.ref, func(x twin) ops.Buf { return x.ref })
}

func (h *harness) download(x twin) (got, ref []float64) {
	h.t.Helper()
	got, ref = make([]float64, x.n), make([]float64, x.n)
	if err := h.be.Download64(got, x.got); err != nil {
		h.t.Fatal(err)
	}
	if err := h.ref.Download64(ref, x.ref); err != nil {
		h.t.Fatal(err)
	}
	return got, ref
}

// compare fails when an output differs from the reference by more than tol.
func (h *harness) compare(name string, x twin) {
	h.t.Helper()
	got, ref := h.download(x)
	var d, n float64
	for i := range got {
		d += (got[i] - ref[i]) * (got[i] - ref[i])
		n += ref[i] * ref[i]
	}
	rel := math.Sqrt(d / math.Max(n, 1e-300))
	if n == 0 {
		rel = math.Sqrt(d)
	}
	if !(rel <= h.tol) {
		h.t.Errorf("%s: relative L2 error %.3g > %.3g", name, rel, h.tol)
	}
}

func (h *harness) embedding(t *testing.T) {
	N, C, V := 9, 12, 7
	table, dout := h.rand(V*C, 1), h.rand(N*C, 1)
	ids := h.ints([]int32{3, 0, 6, 3, 3, 1, 2, 5, 0})
	out, dtable := h.zeros(N*C), h.randF32(V*C, 1) // backward adds into dtable
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.EmbeddingForward(b(out), b(ids), b(table), N, C, V)
		be.EmbeddingBackward(b(dtable), b(dout), b(ids), N, C, V)
	})
	h.compare("out", out)
	h.compare("dtable", dtable)
}

func (h *harness) rmsnorm(t *testing.T) {
	N, C := 7, 96
	x, w, dout := h.rand(N*C, 3), h.rand(C, 1), h.rand(N*C, 1)
	out, rstd := h.zeros(N*C), h.zerosF32(N)
	dx, dw := h.rand(N*C, 1), h.randF32(C, 1)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.RMSNormForward(b(out), b(rstd), b(x), b(w), N, C, 1e-5)
		be.RMSNormBackward(b(dx), b(dw), b(dout), b(x), b(w), b(rstd), N, C)
	})
	for name, x := range map[string]twin{"out": out, "rstd": rstd, "dx": dx, "dw": dw} {
		h.compare(name, x)
	}
}

func (h *harness) matmul(t *testing.T) {
	M, N, K := 37, 29, 70
	a, bt, bn, at := h.rand(M*K, 1), h.rand(N*K, 1), h.rand(K*N, 1), h.rand(K*M, 1)
	nt, nn, tn := h.rand(M*N, 1), h.rand(M*N, 1), h.rand(M*N, 1)
	nt0 := h.zeros(M * N)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.MatmulNT(b(nt), b(a), b(bt), M, N, K, 0.5, 1)
		be.MatmulNT(b(nt0), b(a), b(bt), M, N, K, 1, 0)
		be.MatmulNN(b(nn), b(a), b(bn), M, N, K, 1, 1)
		be.MatmulTN(b(tn), b(at), b(bn), M, N, K, 2, 0.25)
	})
	for name, x := range map[string]twin{"NT": nt, "NT beta 0": nt0, "NN": nn, "TN": tn} {
		h.compare(name, x)
	}
}

func (h *harness) rope(t *testing.T) {
	N, H, D, P := 6, 3, 16, 9
	cosv, sinv := make([]float32, P*D/2), make([]float32, P*D/2)
	for i := range cosv {
		a := 6 * h.rng.Float64()
		cosv[i], sinv[i] = float32(math.Cos(a)), float32(math.Sin(a))
	}
	cos, sin := h.setAs(ops.F32, cosv), h.setAs(ops.F32, sinv)
	pos := h.ints([]int32{0, 1, 8, 2, 0, 5})
	x, dout := h.rand(N*H*D, 1), h.rand(N*H*D, 1)
	out, dx := h.zeros(N*H*D), h.zeros(N*H*D)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.RopeForward(b(out), b(x), b(cos), b(sin), b(pos), N, H, D, P)
		be.RopeBackward(b(dx), b(dout), b(cos), b(sin), b(pos), N, H, D, P)
		be.RopeForward(b(x), b(x), b(cos), b(sin), b(pos), N, H, D, P) // in place
	})
	h.compare("out", out)
	h.compare("dx", dx)
	h.compare("in place", x)
}

func (h *harness) attention(t *testing.T) {
	B, T, H, KVH, D := 2, 13, 4, 2, 8
	N := B * T
	segs := make([]int32, N)
	for i := range segs {
		segs[i] = int32(i / 5) // examples of 5 tokens, crossing the row boundary
	}
	for _, withSeg := range []bool{false, true} {
		q, k, v, dout := h.rand(N*H*D, 1), h.rand(N*KVH*D, 1), h.rand(N*KVH*D, 1), h.rand(N*H*D, 1)
		out, lse := h.zeros(N*H*D), h.zerosF32(B*H*T)
		dq, dk, dv := h.rand(N*H*D, 1), h.rand(N*KVH*D, 1), h.rand(N*KVH*D, 1)
		var seg *twin
		if withSeg {
			s := h.ints(segs)
			seg = &s
		}
		h.run(func(be ops.Backend, b func(twin) ops.Buf) {
			var sb ops.Buf
			if seg != nil {
				sb = b(*seg)
			}
			be.AttentionForward(b(out), b(lse), b(q), b(k), b(v), sb, B, T, H, KVH, D)
			be.AttentionBackward(b(dq), b(dk), b(dv), b(dout), b(q), b(k), b(v), b(out), b(lse), sb, B, T, H, KVH, D)
		})
		for name, x := range map[string]twin{"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv} {
			if withSeg {
				name += " (segments)"
			}
			h.compare(name, x)
		}
	}
}

// attentionDecode checks the cache attention of generation: a prefill chunk
// (Tq > 1) and single tokens, with a cache longer than the valid entries.
func (h *harness) attentionDecode(t *testing.T) {
	B, H, KVH, D, S := 2, 4, 2, 8, 16
	kc, vc := h.rand(B*S*KVH*D, 1), h.rand(B*S*KVH*D, 1)
	for _, c := range []struct{ Tq, Tk int }{{9, 9}, {1, 10}, {3, 16}} {
		q, out := h.rand(B*c.Tq*H*D, 1), h.zeros(B*c.Tq*H*D)
		h.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.AttentionDecode(b(out), b(q), b(kc), b(vc), B, c.Tq, c.Tk, S, H, KVH, D)
		})
		h.compare(fmt.Sprintf("out (Tq %d, Tk %d)", c.Tq, c.Tk), out)
	}
}

func (h *harness) swiglu(t *testing.T) {
	n := 300
	g, u, dout := h.rand(n, 6), h.rand(n, 2), h.rand(n, 1)
	out, dg, du := h.zeros(n), h.rand(n, 1), h.rand(n, 1)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.SwiGLUForward(b(out), b(g), b(u), n)
		be.SwiGLUBackward(b(dg), b(du), b(dout), b(g), b(u), n)
	})
	h.compare("out", out)
	h.compare("dgate", dg)
	h.compare("dup", du)
}

func (h *harness) crossEntropy(t *testing.T) {
	N, V := 6, 50
	logits := h.rand(N*V, 5)
	targets := h.ints([]int32{3, ops.IgnoreIndex, 0, 49, 7, ops.IgnoreIndex})
	losses, d := h.zerosF32(N), h.rand(N*V, 1)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.CrossEntropyForward(b(losses), b(logits), b(targets), N, V)
		be.CrossEntropyBackward(b(d), b(logits), b(targets), N, V, 0.125)
		be.CrossEntropyBackward(b(logits), b(logits), b(targets), N, V, 0.125) // in place
	})
	h.compare("losses", losses)
	h.compare("dlogits", d)
	h.compare("dlogits in place", logits)
}

func (h *harness) elementwise(t *testing.T) {
	n := 1000
	a, c := h.rand(n, 1), h.rand(n, 1)
	sum, drop, cp := h.zeros(n), h.zeros(n), h.zeros(n)
	z := h.rand(n, 1)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.Add(b(sum), b(a), b(c), n)
		be.Scale(b(sum), 0.5, n)
		be.Dropout(b(drop), b(a), n, 0.3, 1234)
		be.Copy(b(cp), b(c), n)
		be.Zero(b(z), n/2)
	})
	h.compare("add+scale", sum)
	h.compare("copy", cp)
	h.compare("zero", z)
	got, ref := h.download(drop)
	for i := range got { // the mask must be the same bit for bit
		if (got[i] == 0) != (ref[i] == 0) {
			h.t.Fatalf("dropout mask differs from the reference at %d", i)
		}
	}
	h.compare("dropout", drop)
}

// matmulF32Out checks a matmul writing an F32 out from data-type operands (a
// parameter gradient in mixed precision).
func (h *harness) matmulF32Out(t *testing.T) {
	M, N, K := 19, 33, 41
	at, bn := h.rand(K*M, 1), h.rand(K*N, 1)
	tn := h.randF32(M*N, 1)
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.MatmulTN(b(tn), b(at), b(bn), M, N, K, 1, 1)
	})
	h.compare("TN into f32", tn)
}

// optimizer checks Cast, SumSquares and AdamW (value, grad, m, v F32; the
// compute copy in the data type).
func (h *harness) optimizer(t *testing.T) {
	n := 777
	src := h.randF32(n, 3)
	cast, back := h.zeros(n), h.zerosF32(n)
	value, grad := h.randF32(n, 1), h.randF32(n, 0.1)
	m, v := h.randF32(n, 0.01), h.zerosF32(n)
	for _, x := range []twin{v} { // second moments are non-negative
		vals := h.uniform(n, 1e-4)
		for i := range vals {
			vals[i] = vals[i] * vals[i]
		}
		if err := h.be.Upload(x.got, vals); err != nil {
			t.Fatal(err)
		}
		if err := h.ref.Upload(x.ref, vals); err != nil {
			t.Fatal(err)
		}
	}
	work := h.zeros(n)
	ss := h.randF32(1, 1)
	step := ops.AdamWStep{B1: 0.9, B2: 0.999, Decay: 1 - 1e-3*0.01, GradScale: 0.5,
		StepSize: 1e-3 / (1 - 0.9*0.9), SqrtBC2: math.Sqrt(1 - 0.999*0.999), Eps: 1e-8}
	h.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.Cast(b(cast), b(src), n)
		be.Cast(b(back), b(cast), n)
		be.SumSquares(b(ss), b(grad), n)
		be.AdamW(b(value), b(grad), b(m), b(v), b(work), n, step)
	})
	h.compare("cast", cast)
	h.compare("cast back", back)
	h.compare("sum of squares", ss)
	for name, x := range map[string]twin{"adamw value": value, "adamw m": m, "adamw v": v, "adamw work": work} {
		h.compare(name, x)
	}
	h.matmulF32Out(t)
}
