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
	t.Logf("%s (driver %d from %s, cuBLAS %d from %s and %s), %.1f of %.1f GiB free", in.Name, in.Driver, in.LibCUDA,
		in.CUBLAS, in.CUBLASL, in.CUBLASLt, float64(in.FreeMem)/(1<<30), float64(in.Total)/(1<<30))
	return be
}

// TestOps holds every op to the float64 CPU reference (ops/opstest): in
// float32 at 1e-5, and in mixed precision (bf16 or f16 data, f32 statistics
// and parameter gradients) at 1e-2. Each mode gets its own backend, so
// that an error recorded in one does not stop the other.
func TestOps(t *testing.T) {
	t.Run("f32", func(t *testing.T) { opstest.Check(t, gpu(t), 1e-5) })
	t.Run("bf16", func(t *testing.T) { opstest.CheckBF16(t, gpu(t), 1e-2) })
	t.Run("f16", func(t *testing.T) { opstest.CheckF16(t, gpu(t), 1e-2) })
}

// pair runs the same ops on the GPU and on the float64 reference. Data buffers
// are of type dt on the GPU; the reference holds F32 copies of the same
// (rounded) values and computes in float64.
type pair struct {
	t   *testing.T
	gpu *Backend
	ref ops.Backend
	rng *rand.Rand
	dt  ops.DType
}

type twin struct {
	g, r ops.Buf
	n    int
}

// bufAs returns a buffer of type dt on the GPU holding v, and the reference's
// copy of what the GPU stores (v rounded to bfloat16 for BF16).
func (p *pair) bufAs(dt ops.DType, v []float32) twin {
	p.t.Helper()
	g, err := p.gpu.Alloc(dt, len(v))
	if err != nil {
		p.t.Fatal(err)
	}
	if dt == ops.BF16 {
		r := make([]float32, len(v))
		for i, x := range v {
			r[i] = ops.RoundBF16(x)
		}
		v = r
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

func (p *pair) buf(v []float32) twin { return p.bufAs(p.dt, v) }

func (p *pair) uniform(n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(scale * (2*p.rng.Float64() - 1))
	}
	return v
}

// rand is a data buffer of values uniform in [-scale, scale); randF32 one that
// is F32 in every mode (a parameter gradient).
func (p *pair) rand(n int, scale float64) twin    { return p.buf(p.uniform(n, scale)) }
func (p *pair) randF32(n int, scale float64) twin { return p.bufAs(ops.F32, p.uniform(n, scale)) }

// poison is an output data buffer filled with NaN: an element a kernel fails
// to write shows up in the comparison. poisonF32 is one that is F32 in every
// mode (a statistic).
func (p *pair) poison(n int) twin    { return p.bufAs(p.dt, nans(n)) }
func (p *pair) poisonF32(n int) twin { return p.bufAs(ops.F32, nans(n)) }

func nans(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return v
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
	if rel := relL2(got, ref); !(rel <= tol) { // NaN fails
		p.t.Errorf("%s: relative L2 error %.3g > %.3g", name, rel, tol)
	}
}

// relL2 is |got-ref| / |ref| in the L2 norm; NaN anywhere gives NaN.
func relL2(got, ref []float64) float64 {
	var d, n float64
	for i := range got {
		d += (got[i] - ref[i]) * (got[i] - ref[i])
		n += ref[i] * ref[i]
	}
	return math.Sqrt(d / math.Max(n, 1e-300))
}

// TestShapes covers what opstest's small shapes do not: heads wider than a
// warp (D 72, 128: several elements per lane, a partial last one), rows wider
// than a block (RMSNorm C 1031, cross-entropy V 3001), odd sizes and poisoned
// outputs, in float32 (1e-5) and in mixed precision (bf16 data, 1e-2).
func TestShapes(t *testing.T) {
	for _, c := range []struct {
		dt  ops.DType
		tol float64
	}{{ops.F32, 1e-5}, {ops.BF16, 1e-2}} {
		t.Run(c.dt.String(), func(t *testing.T) {
			p := &pair{t: t, gpu: gpu(t), ref: ops.NewCPU64(), rng: rand.New(rand.NewPCG(5, 6)), dt: c.dt}
			testShapes(p, c.tol)
		})
	}
}

func testShapes(p *pair, tol float64) {
	for _, D := range []int{72, 128} {
		B, T, H, KVH := 2, 67, 8, 2
		N := B * T
		segs := make([]int32, N)
		for i := range segs {
			segs[i] = int32(i / 23)
		}
		seg := p.ints(segs)
		q, k, v, dout := p.rand(N*H*D, 1), p.rand(N*KVH*D, 1), p.rand(N*KVH*D, 1), p.rand(N*H*D, 1)
		out, lse := p.poison(N*H*D), p.poisonF32(B*H*T)
		dq, dk, dv := p.rand(N*H*D, 1), p.rand(N*KVH*D, 1), p.rand(N*KVH*D, 1)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.AttentionForward(b(out), b(lse), b(q), b(k), b(v), b(seg), B, T, H, KVH, D)
			be.AttentionBackward(b(dq), b(dk), b(dv), b(dout), b(q), b(k), b(v), b(out), b(lse), b(seg), B, T, H, KVH, D)
		})
		for name, x := range map[string]twin{"out": out, "lse": lse, "dq": dq, "dk": dk, "dv": dv} {
			p.compare(fmt.Sprintf("attention D %d %s", D, name), x, tol)
		}
		S, Tq, Tk := 80, 5, 70
		kc, vc := p.rand(B*S*KVH*D, 1), p.rand(B*S*KVH*D, 1)
		qd, od := p.rand(B*Tq*H*D, 1), p.poison(B*Tq*H*D)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.AttentionDecode(b(od), b(qd), b(kc), b(vc), B, Tq, Tk, S, H, KVH, D)
		})
		p.compare("decode", od, tol)
	}
	{
		N, C := 5, 1031
		x, w, dout := p.rand(N*C, 3), p.rand(C, 1), p.rand(N*C, 1)
		out, rstd, dx, dw := p.poison(N*C), p.poisonF32(N), p.rand(N*C, 1), p.randF32(C, 1)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.RMSNormForward(b(out), b(rstd), b(x), b(w), N, C, 1e-5)
			be.RMSNormBackward(b(dx), b(dw), b(dout), b(x), b(w), b(rstd), N, C)
		})
		for name, x := range map[string]twin{"rmsnorm out": out, "rstd": rstd, "dx": dx, "dw": dw} {
			p.compare(name, x, tol)
		}
	}
	{
		N, V := 7, 3001
		logits := p.rand(N*V, 8)
		targets := p.ints([]int32{3000, ops.IgnoreIndex, 0, 17, 2999, 1500, ops.IgnoreIndex})
		losses, d := p.poisonF32(N), p.poison(N*V)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.CrossEntropyForward(b(losses), b(logits), b(targets), N, V)
			be.CrossEntropyBackward(b(d), b(logits), b(targets), N, V, 0.01)
		})
		p.compare("losses", losses, tol)
		p.compare("dlogits", d, tol)
	}
	{
		M, N, K := 300, 257, 513
		a, bt, out := p.rand(M*K, 1), p.rand(N*K, 1), p.poison(M*N)
		at, bn, dw := p.rand(K*M, 1), p.rand(K*N, 1), p.poisonF32(M*N)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.MatmulNT(b(out), b(a), b(bt), M, N, K, 1, 0)
			be.MatmulTN(b(dw), b(at), b(bn), M, N, K, 1, 0) // a weight gradient: f32 out
		})
		p.compare("matmul NT beta 0 over NaN", out, tol)
		p.compare("matmul TN into f32 over NaN", dw, tol)
	}
	{
		n := 100003 // odd: a partial last block, an odd count of 2-byte elements
		gate, up, dout := p.rand(n, 4), p.rand(n, 1), p.rand(n, 1)
		out, dgate, dup := p.poison(n), p.rand(n, 1), p.rand(n, 1)
		sum, drop := p.poison(n), p.poison(n)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.SwiGLUForward(b(out), b(gate), b(up), n)
			be.SwiGLUBackward(b(dgate), b(dup), b(dout), b(gate), b(up), n)
			be.Add(b(sum), b(gate), b(up), n)
			be.Scale(b(sum), 0.75, n)
			be.Dropout(b(drop), b(up), n, 0.25, 77)
		})
		for name, x := range map[string]twin{"swiglu out": out, "dgate": dgate, "dup": dup, "add+scale": sum, "dropout": drop} {
			p.compare(name, x, tol)
		}
	}
	{
		N, C, V := 13, 77, 31
		ids := make([]int32, N)
		for i := range ids {
			ids[i] = int32(p.rng.IntN(V))
		}
		id := p.ints(ids)
		table, dout := p.rand(V*C, 1), p.rand(N*C, 1)
		out, dtable := p.poison(N*C), p.randF32(V*C, 1)
		p.run(func(be ops.Backend, b func(twin) ops.Buf) {
			be.EmbeddingForward(b(out), b(id), b(table), N, C, V)
			be.EmbeddingBackward(b(dtable), b(dout), b(id), N, C, V)
		})
		p.compare("embedding out", out, tol)
		p.compare("dtable", dtable, tol)
	}
}

// TestBF16Buffers: views of BF16 buffers are offset by 2 bytes an element;
// Zero, Copy, Upload and Download work at odd offsets and counts; Upload
// rounds to nearest even and Download widens exactly.
func TestBF16Buffers(t *testing.T) {
	be := gpu(t)
	x, err := be.Alloc(ops.BF16, 9)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Free(x)
	src := []float32{1, 2, 3, 4, 5, 6, 7, 8, 1 + 1.0/256} // 1+2^-8 is a tie: rounds to even, 1
	if err := be.Upload(x, src); err != nil {
		t.Fatal(err)
	}
	be.Zero(x.Slice(1, 3), 3)                // 1 0 0 0 5 6 7 8 1
	be.Copy(x.Slice(5, 3), x.Slice(0, 3), 3) // 1 0 0 0 5 1 0 0 1
	got := make([]float32, 7)
	if err := be.Download(got, x.Slice(2, 7)); err != nil {
		t.Fatal(err)
	}
	want := []float32{0, 0, 5, 1, 0, 0, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("bf16 view [2:9] = %v, want %v", got, want)
		}
	}
}

// TestCast: F32 -> BF16 -> F32 on the GPU matches ops.CPU bit for bit, ties,
// subnormals, infinities and NaN included; the same type copies.
func TestCast(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	v := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 1 + 1.0/256, 1 + 3.0/256, 1 + 1.0/256 + 1.0/65536,
		3.3895314e38, math.MaxFloat32, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		1e-40, -1e-39, math.SmallestNonzeroFloat32, 1.17549435e-38, 65504, 0.1, -0.3333333}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000 {
		v = append(v, float32(rng.NormFloat64()*math.Pow(10, float64(rng.IntN(20)-10))))
	}
	n := len(v)
	run := func(be ops.Backend) (bf, back, same []float32) {
		src, _ := be.Alloc(ops.F32, n)
		h, _ := be.Alloc(ops.BF16, n)
		f, _ := be.Alloc(ops.F32, n)
		f2, _ := be.Alloc(ops.F32, n)
		if err := be.Upload(src, v); err != nil {
			t.Fatal(err)
		}
		be.Cast(h, src, n)
		be.Cast(f, h, n)
		be.Cast(f2, src, n)
		bf, back, same = make([]float32, n), make([]float32, n), make([]float32, n)
		for _, d := range []struct {
			dst []float32
			src ops.Buf
		}{{bf, h}, {back, f}, {same, f2}} {
			if err := be.Download(d.dst, d.src); err != nil {
				t.Fatal(err)
			}
		}
		return bf, back, same
	}
	gb, gback, gsame := run(be)
	cb, cback, _ := run(cpu)
	for i := range v {
		if !sameBits(gb[i], cb[i]) || !sameBits(gback[i], cback[i]) || !sameBits(gsame[i], v[i]) {
			t.Errorf("cast of %g (%#08x): gpu bf16 %g back %g same %g, cpu bf16 %g back %g", v[i], math.Float32bits(v[i]),
				gb[i], gback[i], gsame[i], cb[i], cback[i])
		}
	}
}

// sameBits: equal bit patterns, or both NaN (NaN payloads may differ).
func sameBits(a, b float32) bool {
	if a != a || b != b {
		return a != a && b != b
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

// TestSumSquares holds SumSquares to ops.CPU (float64 accumulation, float32
// result added to out[0]) for F32 and BF16 x, over a grid-stride size, and
// checks that it is deterministic.
func TestSumSquares(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	rng := rand.New(rand.NewPCG(7, 8))
	for _, dt := range []ops.DType{ops.F32, ops.BF16} {
		for _, n := range []int{1, 255, 257, 1000003} {
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(rng.NormFloat64())
			}
			var res [3]float32
			for i, b := range []ops.Backend{be, cpu, be} {
				x, _ := b.Alloc(dt, n)
				out, _ := b.Alloc(ops.F32, 1)
				if err := b.Upload(x, v); err != nil {
					t.Fatal(err)
				}
				if err := b.Upload(out, []float32{1.5}); err != nil {
					t.Fatal(err)
				}
				b.SumSquares(out, x, n)
				got := make([]float32, 1)
				if err := b.Download(got, out); err != nil {
					t.Fatal(err)
				}
				res[i] = got[0]
			}
			if rel := math.Abs(float64(res[0]-res[1])) / float64(res[1]); !(rel <= 1e-6) {
				t.Errorf("%v n %d: gpu %v, cpu %v (relative %.2g)", dt, n, res[0], res[1], rel)
			}
			if math.Float32bits(res[0]) != math.Float32bits(res[2]) {
				t.Errorf("%v n %d: two runs gave %v and %v", dt, n, res[0], res[2])
			}
		}
	}
}

// TestAdamW runs three AdamW steps on the GPU and on ops.CPU from the same
// state: value, m, v and the compute copy (none, F32, BF16) agree within 1e-6
// relative L2 (the kernel does the CPU's operations in the same order, so they
// are expected to agree bit for bit; the log says how many elements differ).
func TestAdamW(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	rng := rand.New(rand.NewPCG(9, 10))
	n := 10007
	gen := func(scale float64, square bool) []float32 {
		v := make([]float32, n)
		for i := range v {
			x := scale * rng.NormFloat64()
			if square {
				x *= x
			}
			v[i] = float32(x)
		}
		return v
	}
	value, m, v := gen(1, false), gen(0.01, false), gen(0.01, true)
	grads := [][]float32{gen(0.1, false), gen(0.1, false), gen(0.1, false)}
	for _, wt := range []struct {
		name string
		dt   ops.DType
		on   bool
	}{{"no work", ops.F32, false}, {"f32 work", ops.F32, true}, {"bf16 work", ops.BF16, true}} {
		t.Run(wt.name, func(t *testing.T) {
			var res [2][4][]float32 // backend, buffer (value, m, v, work)
			for bi, b := range []ops.Backend{be, cpu} {
				bufs := make([]ops.Buf, 4)
				for i, init := range [][]float32{value, m, v} {
					bufs[i], _ = b.Alloc(ops.F32, n)
					if err := b.Upload(bufs[i], init); err != nil {
						t.Fatal(err)
					}
				}
				if wt.on {
					bufs[3], _ = b.Alloc(wt.dt, n)
				}
				g, _ := b.Alloc(ops.F32, n)
				for s, gv := range grads {
					if err := b.Upload(g, gv); err != nil {
						t.Fatal(err)
					}
					step := float64(s + 1)
					lr, wd := 1e-3, 0.01
					b.AdamW(bufs[0], g, bufs[1], bufs[2], bufs[3], n, ops.AdamWStep{
						B1: 0.9, B2: 0.999, Decay: float32(1 - lr*wd), GradScale: 0.8,
						StepSize: lr / (1 - math.Pow(0.9, step)), SqrtBC2: math.Sqrt(1 - math.Pow(0.999, step)), Eps: 1e-8})
				}
				for i, x := range bufs {
					if x == nil {
						continue
					}
					res[bi][i] = make([]float32, n)
					if err := b.Download(res[bi][i], x); err != nil {
						t.Fatal(err)
					}
				}
			}
			summary := ""
			for i, name := range []string{"value", "m", "v", "work"} {
				got, ref := res[0][i], res[1][i]
				if ref == nil {
					continue
				}
				diff := 0
				g64, r64 := make([]float64, n), make([]float64, n)
				for j := range got {
					if math.Float32bits(got[j]) != math.Float32bits(ref[j]) {
						diff++
					}
					g64[j], r64[j] = float64(got[j]), float64(ref[j])
				}
				rel := relL2(g64, r64)
				summary += fmt.Sprintf(" %s %.2g (%d differ)", name, rel, diff)
				if !(rel <= 1e-6) {
					t.Errorf("%s: relative L2 error %.3g > 1e-6", name, rel)
				}
			}
			t.Logf("AdamW %s vs CPU over %d elements, relative L2:%s", wt.name, n, summary)
		})
	}
}

// TestGemmEx: bf16 a and b through cublasGemmEx into an F32 out keep float32
// accumulation (close to the float64 reference of the same rounded inputs),
// and into a BF16 out lose only the final rounding.
func TestGemmEx(t *testing.T) {
	p := &pair{t: t, gpu: gpu(t), ref: ops.NewCPU64(), rng: rand.New(rand.NewPCG(11, 12)), dt: ops.BF16}
	M, N, K := 129, 65, 1031
	a, bt := p.rand(M*K, 1), p.rand(N*K, 1)
	out32, out16 := p.poisonF32(M*N), p.poison(M*N)
	p.run(func(be ops.Backend, b func(twin) ops.Buf) {
		be.MatmulNT(b(out32), b(a), b(bt), M, N, K, 1, 0)
		be.MatmulNT(b(out16), b(a), b(bt), M, N, K, 1, 0)
	})
	errOf := func(x twin) float64 {
		got, ref := make([]float64, x.n), make([]float64, x.n)
		if err := p.gpu.Download64(got, x.g); err != nil {
			t.Fatal(err)
		}
		if err := p.ref.Download64(ref, x.r); err != nil {
			t.Fatal(err)
		}
		return relL2(got, ref)
	}
	e32, e16 := errOf(out32), errOf(out16)
	t.Logf("relative L2 error: f32 out %.2g, bf16 out %.2g", e32, e16)
	if !(e32 <= 1e-4) || !(e32 < e16/10) {
		t.Errorf("f32 out: relative L2 error %.3g, want <= 1e-4 and well below the bf16 out's %.3g", e32, e16)
	}
	if !(e16 <= 1e-2) {
		t.Errorf("bf16 out: relative L2 error %.3g > 1e-2", e16)
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

// TestTypeErrors: buffers of the wrong float type for an op (ops.Backend's
// "Float types") are recorded errors naming the op, never a launch on
// misread memory.
func TestTypeErrors(t *testing.T) {
	for _, c := range []struct {
		name, want string
		op         func(be ops.Backend, f32, bf16 func(n int) ops.Buf)
	}{
		{"mixed add", "Add: mixed types bf16 and f32", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.Add(bf16(4), f32(4), f32(4), 4)
		}},
		{"bf16 rstd", "RMSNormForward: rstd is", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.RMSNormForward(bf16(6), bf16(2), bf16(6), bf16(3), 2, 3, 1e-5)
		}},
		{"bf16 dtable", "EmbeddingBackward: dtable is", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			ids, _ := be.Alloc(ops.I32, 2)
			be.EmbeddingBackward(bf16(12), bf16(6), ids, 2, 3, 4)
		}},
		{"bf16 out of f32 matmul", "MatmulNT: out is bf16, want f32", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.MatmulNT(bf16(4), f32(4), f32(4), 2, 2, 2, 1, 0)
		}},
		{"mixed matmul", "MatmulNN: mixed types", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.MatmulNN(f32(4), bf16(4), f32(4), 2, 2, 2, 1, 0)
		}},
		{"bf16 adamw state", "AdamW: m is", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.AdamW(f32(3), f32(3), bf16(3), f32(3), bf16(3), 3, ops.AdamWStep{})
		}},
		{"bf16 lse", "AttentionForward: lse is", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.AttentionForward(bf16(8), bf16(2), bf16(8), bf16(8), bf16(8), nil, 1, 2, 1, 1, 4)
		}},
		{"copy across types", "Copy: dst is", func(be ops.Backend, f32, bf16 func(int) ops.Buf) {
			be.Copy(bf16(4), f32(4), 4)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := gpu(t)
			alloc := func(dt ops.DType) func(int) ops.Buf {
				return func(n int) ops.Buf {
					x, err := be.Alloc(dt, n)
					if err != nil {
						t.Fatal(err)
					}
					return x
				}
			}
			c.op(be, alloc(ops.F32), alloc(ops.BF16))
			if err := be.Sync(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Sync: %v, want an error containing %q", err, c.want)
			}
		})
	}
}
