package ops

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The op tests run the float64 backend through the Backend interface and check
// each backward against central finite differences of the forward, with the
// objective L = sum(r * out) for a fixed random r (so dout = r).

func vals(b Buf) []float64 { return b.(*cpuBuf[float64]).f }
func ints(b Buf) []int32   { return b.(*cpuBuf[float64]).i }

func randBuf(t *testing.T, be *CPU[float64], rng *rand.Rand, n int, scale float64) Buf {
	t.Helper()
	b, err := be.Alloc(F32, n)
	if err != nil {
		t.Fatal(err)
	}
	for i := range vals(b) {
		vals(b)[i] = scale * (2*rng.Float64() - 1)
	}
	return b
}

func zeros(t *testing.T, be Backend, n int) Buf {
	t.Helper()
	b, err := be.Alloc(F32, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func intBuf(t *testing.T, be Backend, v []int32) Buf {
	t.Helper()
	b, err := be.Alloc(I32, len(v))
	if err != nil {
		t.Fatal(err)
	}
	if err := be.UploadInt(b, v); err != nil {
		t.Fatal(err)
	}
	return b
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// fdCheck compares grad (the analytic dL/din) with central differences of L,
// perturbing every element of in. L must recompute the forward.
func fdCheck(t *testing.T, be *CPU[float64], name string, in Buf, grad []float64, L func() float64) {
	t.Helper()
	x := vals(in)
	const h = 1e-5
	worst := 0.0
	for i := range x {
		old := x[i]
		x[i] = old + h
		lp := L()
		x[i] = old - h
		lm := L()
		x[i] = old
		num := (lp - lm) / (2 * h)
		err := math.Abs(num-grad[i]) / math.Max(1, math.Abs(num))
		worst = max(worst, err)
		if err > 1e-6 {
			t.Errorf("%s[%d]: analytic %.10g, numeric %.10g", name, i, grad[i], num)
			return
		}
	}
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d coordinates, worst relative error %.2g", name, len(x), worst)
}

func TestEmbeddingGrad(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(1, 2))
	N, C, V := 5, 3, 4
	table := randBuf(t, be, rng, V*C, 1)
	ids := intBuf(t, be, []int32{2, 0, 2, 3, 2})
	out, r := zeros(t, be, N*C), randBuf(t, be, rng, N*C, 1)
	L := func() float64 { be.EmbeddingForward(out, ids, table, N, C, V); return dot(vals(out), vals(r)) }
	dt := zeros(t, be, V*C)
	be.EmbeddingBackward(dt, r, ids, N, C, V)
	fdCheck(t, be, "dtable", table, vals(dt), L)
}

func TestRMSNormGrad(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(1, 3))
	N, C := 3, 7
	x, w, r := randBuf(t, be, rng, N*C, 2), randBuf(t, be, rng, C, 1), randBuf(t, be, rng, N*C, 1)
	out, rstd := zeros(t, be, N*C), zeros(t, be, N)
	L := func() float64 { be.RMSNormForward(out, rstd, x, w, N, C, 1e-5); return dot(vals(out), vals(r)) }
	L()
	for n := 0; n < N; n++ { // rstd against its definition
		var ss float64
		for _, v := range vals(x)[n*C : (n+1)*C] {
			ss += v * v
		}
		if want := 1 / math.Sqrt(ss/float64(C)+1e-5); math.Abs(vals(rstd)[n]-want) > 1e-12 {
			t.Fatalf("rstd[%d] = %v, want %v", n, vals(rstd)[n], want)
		}
	}
	dx, dw := randBuf(t, be, rng, N*C, 1), zeros(t, be, C)
	base := append([]float64(nil), vals(dx)...) // backward adds: start from non-zero
	be.RMSNormBackward(dx, dw, r, x, w, rstd, N, C)
	for i := range base {
		vals(dx)[i] -= base[i]
	}
	fdCheck(t, be, "dx", x, vals(dx), L)
	fdCheck(t, be, "dw", w, vals(dw), L)
}

// naive reference matmul with explicit transposes.
func naiveMatmul(a, b []float64, M, N, K int, ta, tb bool) []float64 {
	out := make([]float64, M*N)
	for i := 0; i < M; i++ {
		for j := 0; j < N; j++ {
			var s float64
			for k := 0; k < K; k++ {
				av, bv := a[i*K+k], b[k*N+j]
				if ta {
					av = a[k*M+i]
				}
				if tb {
					bv = b[j*K+k]
				}
				s += av * bv
			}
			out[i*N+j] = s
		}
	}
	return out
}

func TestMatmul(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 5))
	for _, dims := range [][3]int{{1, 1, 1}, {3, 5, 7}, {9, 6, 4}, {37, 41, 43}} {
		M, N, K := dims[0], dims[1], dims[2]
		for _, layout := range []string{"NT", "NN", "TN"} {
			be := NewCPU64()
			a, b := randBuf(t, be, rng, M*K, 1), randBuf(t, be, rng, N*K, 1)
			out := randBuf(t, be, rng, M*N, 1)
			old := append([]float64(nil), vals(out)...)
			var want []float64
			switch layout {
			case "NT":
				be.MatmulNT(out, a, b, M, N, K, 0.5, 2)
				want = naiveMatmul(vals(a), vals(b), M, N, K, false, true)
			case "NN":
				be.MatmulNN(out, a, b, M, N, K, 0.5, 2)
				want = naiveMatmul(vals(a), vals(b), M, N, K, false, false)
			case "TN":
				be.MatmulTN(out, a, b, M, N, K, 0.5, 2)
				want = naiveMatmul(vals(a), vals(b), M, N, K, true, false)
			}
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			for i := range want {
				if w := 0.5*want[i] + 2*old[i]; math.Abs(vals(out)[i]-w) > 1e-12 {
					t.Fatalf("%s %v: out[%d] = %v, want %v", layout, dims, i, vals(out)[i], w)
				}
			}
		}
	}
}

// TestMatmulBetaZeroIgnoresOut: beta == 0 overwrites, even NaN.
func TestMatmulBetaZeroIgnoresOut(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(4, 6))
	a, b, out := randBuf(t, be, rng, 6, 1), randBuf(t, be, rng, 6, 1), zeros(t, be, 4)
	for i := range vals(out) {
		vals(out)[i] = math.NaN()
	}
	be.MatmulNT(out, a, b, 2, 2, 3, 1, 0)
	for i, v := range vals(out) {
		if math.IsNaN(v) {
			t.Fatalf("out[%d] is NaN", i)
		}
	}
}

// TestMatmulDeterministic: the float32 kernels give bitwise the same result
// with 1 and many goroutines.
func TestMatmulDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	M, N, K := 67, 45, 129
	a, b := make([]float32, M*K), make([]float32, N*K)
	for i := range a {
		a[i] = rng.Float32() - 0.5
	}
	for i := range b {
		b[i] = rng.Float32() - 0.5
	}
	run := func(workers int) [3][]float32 {
		be := NewCPU()
		be.SetWorkers(workers)
		ab, _ := be.Alloc(F32, len(a))
		bb, _ := be.Alloc(F32, len(b))
		be.Upload(ab, a)
		be.Upload(bb, b)
		var res [3][]float32
		for i := range res {
			ob, _ := be.Alloc(F32, M*N)
			switch i {
			case 0:
				be.MatmulNT(ob, ab, bb, M, N, K, 1, 0)
			case 1:
				be.MatmulNN(ob, ab, bb, M, N, K, 1, 0)
			case 2:
				be.MatmulTN(ob, ab, bb, M, N, K, 1, 0)
			}
			res[i] = make([]float32, M*N)
			if err := be.Download(res[i], ob); err != nil {
				t.Fatal(err)
			}
		}
		return res
	}
	one, many := run(1), run(5)
	for l := range one {
		for i := range one[l] {
			if one[l][i] != many[l][i] {
				t.Fatalf("layout %d element %d: %v with 1 worker, %v with 5", l, i, one[l][i], many[l][i])
			}
		}
	}
}

// ropeTables returns cos/sin tables [P, D/2] for arbitrary angles.
func ropeTables(t *testing.T, be *CPU[float64], rng *rand.Rand, P, D int) (Buf, Buf) {
	cos, sin := zeros(t, be, P*D/2), zeros(t, be, P*D/2)
	for i := range vals(cos) {
		a := 6 * rng.Float64()
		vals(cos)[i], vals(sin)[i] = math.Cos(a), math.Sin(a)
	}
	return cos, sin
}

func TestRopeGrad(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(9, 10))
	N, H, D, P := 4, 3, 6, 5
	cos, sin := ropeTables(t, be, rng, P, D)
	pos := intBuf(t, be, []int32{0, 3, 4, 3})
	x, r, out := randBuf(t, be, rng, N*H*D, 1), randBuf(t, be, rng, N*H*D, 1), zeros(t, be, N*H*D)
	L := func() float64 { be.RopeForward(out, x, cos, sin, pos, N, H, D, P); return dot(vals(out), vals(r)) }
	L()
	// Hand-check one pair: row 1 (position 3), head 2, i = 1.
	half, p, base := D/2, 3, (1*H+2)*D
	c, s := vals(cos)[p*half+1], vals(sin)[p*half+1]
	x1, x2 := vals(x)[base+1], vals(x)[base+1+half]
	if got, want := vals(out)[base+1], x1*c-x2*s; math.Abs(got-want) > 1e-15 {
		t.Fatalf("rotate_half pairing: out = %v, want %v", got, want)
	}
	dx := zeros(t, be, N*H*D)
	be.RopeBackward(dx, r, cos, sin, pos, N, H, D, P)
	fdCheck(t, be, "dx", x, vals(dx), L)
	// In place: backward of forward is the identity.
	y := append([]float64(nil), vals(x)...)
	be.RopeForward(x, x, cos, sin, pos, N, H, D, P)
	be.RopeBackward(x, x, cos, sin, pos, N, H, D, P)
	for i := range y {
		if math.Abs(y[i]-vals(x)[i]) > 1e-14 {
			t.Fatalf("in-place rotation and its inverse: %v, want %v", vals(x)[i], y[i])
		}
	}
}

// naiveAttention builds every score, mask and softmax explicitly.
func naiveAttention(q, k, v []float64, seg []int32, B, T, H, KVH, D int) []float64 {
	out := make([]float64, B*T*H*D)
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			kh := h / (H / KVH)
			for t := 0; t < T; t++ {
				sc := make([]float64, T)
				m := math.Inf(-1)
				for s := 0; s < T; s++ {
					sc[s] = math.Inf(-1)
					if s > t || (seg != nil && seg[b*T+s] != seg[b*T+t]) {
						continue
					}
					var d float64
					for i := 0; i < D; i++ {
						d += q[((b*T+t)*H+h)*D+i] * k[((b*T+s)*KVH+kh)*D+i]
					}
					sc[s] = d / math.Sqrt(float64(D))
					m = max(m, sc[s])
				}
				var sum float64
				for s := range sc {
					sc[s] = math.Exp(sc[s] - m)
					sum += sc[s]
				}
				for s := range sc {
					for i := 0; i < D; i++ {
						out[((b*T+t)*H+h)*D+i] += sc[s] / sum * v[((b*T+s)*KVH+kh)*D+i]
					}
				}
			}
		}
	}
	return out
}

func TestAttentionGrad(t *testing.T) {
	for _, tc := range []struct {
		name string
		seg  []int32
	}{{"causal", nil}, {"segments", []int32{0, 0, 1, 1, 1, 2, 7, 7, 7, 7, 9, 9}}} {
		t.Run(tc.name, func(t *testing.T) {
			be, rng := NewCPU64(), rand.New(rand.NewPCG(11, 12))
			B, T, H, KVH, D := 2, 6, 4, 2, 3
			N := B * T
			q, k, v := randBuf(t, be, rng, N*H*D, 1), randBuf(t, be, rng, N*KVH*D, 1), randBuf(t, be, rng, N*KVH*D, 1)
			r, out, lse := randBuf(t, be, rng, N*H*D, 1), zeros(t, be, N*H*D), zeros(t, be, B*H*T)
			var seg Buf
			if tc.seg != nil {
				seg = intBuf(t, be, tc.seg)
			}
			L := func() float64 {
				be.AttentionForward(out, lse, q, k, v, seg, B, T, H, KVH, D)
				return dot(vals(out), vals(r))
			}
			L()
			want := naiveAttention(vals(q), vals(k), vals(v), tc.seg, B, T, H, KVH, D)
			for i := range want {
				if math.Abs(want[i]-vals(out)[i]) > 1e-12 {
					t.Fatalf("out[%d] = %v, naive %v", i, vals(out)[i], want[i])
				}
			}
			dq, dk, dv := zeros(t, be, N*H*D), zeros(t, be, N*KVH*D), zeros(t, be, N*KVH*D)
			be.AttentionBackward(dq, dk, dv, r, q, k, v, out, lse, seg, B, T, H, KVH, D)
			fdCheck(t, be, "dq", q, vals(dq), L)
			fdCheck(t, be, "dk", k, vals(dk), L)
			fdCheck(t, be, "dv", v, vals(dv), L)
		})
	}
}

func TestSwiGLUGrad(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(13, 14))
	n := 11
	g, u, r, out := randBuf(t, be, rng, n, 4), randBuf(t, be, rng, n, 2), randBuf(t, be, rng, n, 1), zeros(t, be, n)
	L := func() float64 { be.SwiGLUForward(out, g, u, n); return dot(vals(out), vals(r)) }
	dg, du := zeros(t, be, n), zeros(t, be, n)
	be.SwiGLUBackward(dg, du, r, g, u, n)
	fdCheck(t, be, "dgate", g, vals(dg), L)
	fdCheck(t, be, "dup", u, vals(du), L)
}

func TestCrossEntropyGrad(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(15, 16))
	N, V := 5, 7
	logits := randBuf(t, be, rng, N*V, 3)
	targets := intBuf(t, be, []int32{3, IgnoreIndex, 0, 6, IgnoreIndex})
	losses := zeros(t, be, N)
	const scale = 0.37
	L := func() float64 {
		be.CrossEntropyForward(losses, logits, targets, N, V)
		var s float64
		for _, l := range vals(losses) {
			s += l
		}
		return scale * s
	}
	L()
	if vals(losses)[1] != 0 || vals(losses)[4] != 0 {
		t.Fatalf("ignored rows have losses %v", vals(losses))
	}
	row := vals(logits)[2*V : 3*V] // loss of row 2 by definition
	var sum float64
	for _, v := range row {
		sum += math.Exp(v)
	}
	if want := math.Log(sum) - row[0]; math.Abs(vals(losses)[2]-want) > 1e-12 {
		t.Fatalf("loss[2] = %v, want %v", vals(losses)[2], want)
	}
	d := zeros(t, be, N*V)
	be.CrossEntropyBackward(d, logits, targets, N, V, scale)
	fdCheck(t, be, "dlogits", logits, vals(d), L)
	// In place gives the same.
	want := append([]float64(nil), vals(d)...)
	be.CrossEntropyBackward(logits, logits, targets, N, V, scale)
	for i := range want {
		if vals(logits)[i] != want[i] {
			t.Fatalf("in place dlogits[%d] = %v, want %v", i, vals(logits)[i], want[i])
		}
	}
}

func TestDropout(t *testing.T) {
	be := NewCPU64()
	n := 10000
	x, out := zeros(t, be, n), zeros(t, be, n)
	for i := range vals(x) {
		vals(x)[i] = 1
	}
	be.Dropout(out, x, n, 0.25, 42)
	kept := 0
	for _, v := range vals(out) {
		switch v {
		case 0:
		case 1 / 0.75:
			kept++
		default:
			t.Fatalf("dropout output %v", v)
		}
	}
	if frac := float64(kept) / float64(n); math.Abs(frac-0.75) > 0.02 {
		t.Fatalf("kept fraction %v, want about 0.75", frac)
	}
	again := zeros(t, be, n)
	be.Dropout(again, x, n, 0.25, 42)
	other := zeros(t, be, n)
	be.Dropout(other, x, n, 0.25, 43)
	same := 0
	for i := range vals(out) {
		if vals(again)[i] != vals(out)[i] {
			t.Fatal("same seed, different mask")
		}
		if vals(other)[i] == vals(out)[i] {
			same++
		}
	}
	if same == n {
		t.Fatal("different seeds, same mask")
	}
}

// TestOpErrors: bad arguments are recorded and returned by Sync, never panics.
func TestOpErrors(t *testing.T) {
	be := NewCPU()
	table, _ := be.Alloc(F32, 4*2)
	out, _ := be.Alloc(F32, 3*2)
	ids, _ := be.Alloc(I32, 3)
	be.UploadInt(ids, []int32{0, 4, 1})
	be.EmbeddingForward(out, ids, table, 3, 2, 4)
	if err := be.Sync(); err == nil {
		t.Fatal("token id 4 of a vocabulary of 4 accepted")
	} else {
		t.Log(err)
	}
	be = NewCPU()
	small, _ := be.Alloc(F32, 3)
	be.MatmulNT(small, small, small, 2, 2, 2, 1, 0)
	if err := be.Sync(); err == nil {
		t.Fatal("short buffer accepted")
	} else {
		t.Log(err)
	}
	be = NewCPU()
	lg, _ := be.Alloc(F32, 6)
	tg, _ := be.Alloc(I32, 2)
	be.UploadInt(tg, []int32{-1, 0})
	be.CrossEntropyForward(small, lg, tg, 2, 3)
	if err := be.Sync(); err == nil {
		t.Fatal("target -1 accepted")
	}
}

// TestAttentionTrailingPadding: rows of one example followed by padding
// (segment -1) give the same attention with the segment ids as without them
// for every real token, and the same gradients bit for bit when the padding's
// dout is zero (as the loss gives it). The model relies on this to drop the
// segment mask for such rows (model.oneSegmentPerRow).
func TestAttentionTrailingPadding(t *testing.T) {
	be, rng := NewCPU64(), rand.New(rand.NewPCG(13, 14))
	B, T, H, KVH, D := 2, 7, 4, 2, 3
	N := B * T
	segs := []int32{0, 0, 0, 0, 0, -1, -1, 5, 5, 5, 5, 5, 5, 5}
	q, k, v := randBuf(t, be, rng, N*H*D, 1), randBuf(t, be, rng, N*KVH*D, 1), randBuf(t, be, rng, N*KVH*D, 1)
	dout := randBuf(t, be, rng, N*H*D, 1)
	for i, s := range segs {
		if s < 0 {
			clear(vals(dout)[i*H*D : (i+1)*H*D])
		}
	}
	run := func(seg Buf) [5][]float64 {
		out, lse := zeros(t, be, N*H*D), zeros(t, be, B*H*T)
		dq, dk, dv := zeros(t, be, N*H*D), zeros(t, be, N*KVH*D), zeros(t, be, N*KVH*D)
		be.AttentionForward(out, lse, q, k, v, seg, B, T, H, KVH, D)
		be.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
		return [5][]float64{vals(out), vals(lse), vals(dq), vals(dk), vals(dv)}
	}
	with, without := run(intBuf(t, be, segs)), run(nil)
	for i, s := range segs {
		for j := i * H * D; s >= 0 && j < (i+1)*H*D; j++ {
			if with[0][j] != without[0][j] {
				t.Fatalf("out[%d] (token %d) = %v with segments, %v without", j, i, with[0][j], without[0][j])
			}
		}
	}
	for n, name := range []string{"dq", "dk", "dv"} {
		for j, x := range with[n+2] {
			if math.Float64bits(x) != math.Float64bits(without[n+2][j]) {
				t.Fatalf("%s[%d] = %v with segments, %v without", name, j, x, without[n+2][j])
			}
		}
	}
}
