package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"train/ops"
	"train/ops/opstest"
)

// gpu opens GPU 0 or skips: CI machines have no GPU. The skip message carries
// New's error, which must say what is missing.
func gpu(t *testing.T) *Backend {
	t.Helper()
	be, err := New()
	if err != nil {
		if !strings.HasPrefix(err.Error(), "device cuda: no usable NVIDIA GPU: ") {
			t.Fatalf("New's error %q does not start with the documented prefix", err)
		}
		t.Skipf("no GPU here: %v", err)
	}
	t.Cleanup(func() {
		if err := be.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	in, err := be.Info()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (driver %d, cuBLAS %d from %s), %.1f of %.1f GiB free", in.Name, in.Driver, in.CUBLAS, in.CUBLASL,
		float64(in.FreeMem)/(1<<30), float64(in.Total)/(1<<30))
	return be
}

// TestOps holds every op to the float64 CPU reference (ops/opstest).
func TestOps(t *testing.T) { opstest.Check(t, gpu(t), 1e-5) }

// pair runs the same ops on the GPU and on the float64 reference.
type pair struct {
	t   *testing.T
	gpu *Backend
	ref ops.Backend
	rng *rand.Rand
}

type twin struct {
	g, r ops.Buf
	n    int
}

func (p *pair) buf(v []float32) twin {
	p.t.Helper()
	g, err := p.gpu.Alloc(ops.F32, len(v))
	if err != nil {
		p.t.Fatal(err)
	}
	r, _ := p.ref.Alloc(ops.F32, len(v))
	if err := p.gpu.Upload(g, v); err != nil {
		p.t.Fatal(err)
	}
	if err := p.ref.Upload(r, v); err != nil {
		p.t.Fatal(err)
	}
	return twin{g, r, len(v)}
}

func (p *pair) rand(n int, scale float64) twin {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * (2*p.rng.Float64() - 1))
	}
	return p.buf(v)
}

// poison is an output buffer filled with NaN: an element a kernel fails to
// write shows up in the comparison.
func (p *pair) poison(n int) twin {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return p.buf(v)
}

func (p *pair) ints(v []int32) twin {
	p.t.Helper()
	g, err := p.gpu.Alloc(ops.I32, len(v))
	if err != nil {
		p.t.Fatal(err)
	}
	r, _ := p.ref.Alloc(ops.I32, len(v))
	if err := p.gpu.UploadInt(g, v); err != nil {
		p.t.Fatal(err)
	}
	if err := p.ref.UploadInt(r, v); err != nil {
		p.t.Fatal(err)
	}
	return twin{g, r, len(v)}
}

func (p *pair) run(f func(be ops.Backend, b func(twin) ops.Buf)) {
	f(p.gpu, func(x twin) ops.Buf { return x.g })
	f(p.ref, func(x twin) ops.Buf { return x.r })
}

func (p *pair) compare(name string, x twin, tol float64) {
	p.t.Helper()
	got, ref := make([]float64, x.n), make([]float64, x.n)
	if err := p.gpu.Download64(got, x.g); err != nil {
		p.t.Fatal(err)
	}
	if err := p.ref.Download64(ref, x.r); err != nil {
		p.t.Fatal(err)
	}
	var d, n float64
	for i := range got {
		d += (got[i] - ref[i]) * (got[i] - ref[i])
		n += ref[i] * ref[i]
	}
	rel := math.Sqrt(d / math.Max(n, 1e-300))
	if !(rel <= tol) { // NaN fails
		p.t.Errorf("%s: relative L2 error %.3g > %.3g", name, rel, tol)
	}
}

// TestShapes covers what opstest's small shapes do not: heads wider than a
// warp (D 72, 128: several elements per lane, a partial last one), rows wider
// than a block (RMSNorm C 1031, cross-entropy V 3001), and poisoned outputs.
func TestShapes(t *testing.T) {
	p := &pair{t: t, gpu: gpu(t), ref: ops.NewCPU64(), rng: rand.New(rand.NewPCG(5, 6))}
	for _, D := range []int{72, 128} {
		B, T, H, KVH := 2, 67, 8, 2
		N := B * T
		segs := make([]int32, N)
		for i := range segs {
			segs[i] = int32(i / 23)
		}
		seg := p.ints(segs)
		q, k, v, dout := p.rand(N*H*D, 1), p.rand(N*KVH*D, 1), p.rand(N*KVH*D, 1), p.rand(N*H*D, 1)
		out, lse := p.poison(N*H*D), p.poison(B*H*T)
		dq, dk, dv := p.rand(N*H*D, 1), p.rand(N*KVH*D, 1), p.rand(N*KVH*D, 1)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.AttentionForward(b(out), b(lse), b(q), b(k), b(v), b(seg), B, T, H, KVH, D)
			be.AttentionBackward(b(dq), b(dk), b(dv), b(dout), b(q), b(k), b(v), b(lse), b(seg), B, T, H, KVH, D)
		})
		for name, x := range map[string]twin{"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv} {
			p.compare(fmt.Sprintf("attention D %d %s", D, name), x, 1e-5)
		}
		S, Tq, Tk := 80, 5, 70
		kc, vc := p.rand(B*S*KVH*D, 1), p.rand(B*S*KVH*D, 1)
		qd, od := p.rand(B*Tq*H*D, 1), p.poison(B*Tq*H*D)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.AttentionDecode(b(od), b(qd), b(kc), b(vc), B, Tq, Tk, S, H, KVH, D)
		})
		p.compare("decode", od, 1e-5)
	}
	{
		N, C := 5, 1031
		x, w, dout := p.rand(N*C, 3), p.rand(C, 1), p.rand(N*C, 1)
		out, rstd, dx, dw := p.poison(N*C), p.poison(N), p.rand(N*C, 1), p.rand(C, 1)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.RMSNormForward(b(out), b(rstd), b(x), b(w), N, C, 1e-5)
			be.RMSNormBackward(b(dx), b(dw), b(dout), b(x), b(w), b(rstd), N, C)
		})
		for name, x := range map[string]twin{"rmsnorm out": out, "rstd": rstd, "dx": dx, "dw": dw} {
			p.compare(name, x, 1e-5)
		}
	}
	{
		N, V := 7, 3001
		logits := p.rand(N*V, 8)
		targets := p.ints([]int32{3000, ops.IgnoreIndex, 0, 17, 2999, 1500, ops.IgnoreIndex})
		losses, d := p.poison(N), p.poison(N*V)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.CrossEntropyForward(b(losses), b(logits), b(targets), N, V)
			be.CrossEntropyBackward(b(d), b(logits), b(targets), N, V, 0.01)
		})
		p.compare("losses", losses, 1e-5)
		p.compare("dlogits", d, 1e-5)
	}
	{
		M, N, K := 300, 257, 513
		a, bt, out := p.rand(M*K, 1), p.rand(N*K, 1), p.poison(M*N)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) { be.MatmulNT(b(out), b(a), b(bt), M, N, K, 1, 0) })
		p.compare("matmul NT beta 0 over NaN", out, 1e-5)
	}
}

// TestErrors: bad arguments become errors from Sync, never panics, and the
// first one sticks.
func TestErrors(t *testing.T) {
	be := gpu(t)
	table, _ := be.Alloc(ops.F32, 4*3)
	out, _ := be.Alloc(ops.F32, 2*3)
	ids, _ := be.Alloc(ops.I32, 2)
	if err := be.UploadInt(ids, []int32{1, 9}); err != nil {
		t.Fatal(err)
	}
	be.EmbeddingForward(out, ids, table, 2, 3, 4)
	err := be.Sync()
	if err == nil || !strings.Contains(err.Error(), "token id 9 at row 1") {
		t.Fatalf("Sync after a bad token id: %v", err)
	}
	be.Add(out, out, out, 6) // skipped: the first error sticks
	if err2 := be.Sync(); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second Sync: %v, want %v", err2, err)
	}

	be2 := gpu(t)
	small, _ := be2.Alloc(ops.F32, 3)
	be2.Scale(small, 2, 4)
	if err := be2.Sync(); err == nil || !strings.Contains(err.Error(), "Scale: x has 3 elements, need 4") {
		t.Errorf("short buffer: %v", err)
	}
}
