package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"train/ops"
)

// gemmAttn and flashAttn are the Backend with its training attention pinned to
// one implementation (AttentionForward and AttentionBackward otherwise choose
// by data type and head dim).
type gemmAttn struct{ *Backend }

func (g gemmAttn) AttentionForward(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	g.AttentionForwardGEMM(out, lse, q, k, v, seg, B, T, H, KVH, D)
}

func (g gemmAttn) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	g.AttentionBackwardGEMM(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
}

type flashAttn struct{ *Backend }

// cudnnAttn pins AttentionForward and AttentionBackward to cuDNN
// (TRAIN_ATTENTION=cudnn: an error where it cannot take the call); calls
// without segments only.
type cudnnAttn struct{ *Backend }

func (c cudnnAttn) AttentionForward(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	c.attnPick = "cudnn"
	defer func() { c.attnPick = "auto" }()
	c.Backend.AttentionForward(out, lse, q, k, v, seg, B, T, H, KVH, D)
}

func (c cudnnAttn) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	c.attnPick = "cudnn"
	defer func() { c.attnPick = "auto" }()
	c.Backend.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
}

func (f flashAttn) AttentionForward(out, lse, q, k, v, seg ops.Buf, B, T, H, KVH, D int) {
	f.AttentionForwardFlash(out, lse, q, k, v, seg, B, T, H, KVH, D)
}

func (f flashAttn) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, seg ops.Buf, B, T, H, KVH, D int) {
	f.AttentionBackwardFlash(dq, dk, dv, dout, q, k, v, out, lse, seg, B, T, H, KVH, D)
}

// attnProblem is one training attention's inputs, held on the host: q, k, v,
// dout, and the initial dq, dk, dv (the backward overwrites them). For BF16 runs
// the values are rounded to bfloat16 first, so every backend sees the same
// numbers.
type attnProblem struct {
	B, T, H, KVH, D int
	seg             []int32 // nil: no segments
	vals            map[string][]float32
}

func newAttnProblem(rng *rand.Rand, dt ops.DType, B, T, H, KVH, D, segLen int) *attnProblem {
	pr := &attnProblem{B: B, T: T, H: H, KVH: KVH, D: D, vals: map[string][]float32{}}
	N := B * T
	for name, n := range map[string]int{"q": N * H * D, "k": N * KVH * D, "v": N * KVH * D, "dout": N * H * D,
		"dq": N * H * D, "dk": N * KVH * D, "dv": N * KVH * D} {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(2*rng.Float64() - 1)
			if dt == ops.BF16 {
				v[i] = ops.RoundBF16(v[i])
			}
		}
		pr.vals[name] = v
	}
	if segLen > 0 {
		pr.seg = make([]int32, N)
		for i := range pr.seg {
			pr.seg[i] = int32(i / segLen) // crossing the batch rows' boundaries
		}
	}
	return pr
}

// run uploads the problem to be with data buffers of type dt, fills out and lse
// with NaN (a value the GEMMs or kernels fail to write shows), runs
// AttentionForward then AttentionBackward, and downloads out, lse, dq, dk, dv.
func (pr *attnProblem) run(t *testing.T, be ops.Backend, dt ops.DType) map[string][]float64 {
	t.Helper()
	res, err := pr.compute(be, dt)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// compute is run returning its error (for goroutines other than the test's).
func (pr *attnProblem) compute(be ops.Backend, dt ops.DType) (map[string][]float64, error) {
	var bufs []ops.Buf
	defer func() {
		for _, x := range bufs {
			be.Free(x)
		}
	}()
	var err error
	put := func(dt ops.DType, v []float32) ops.Buf {
		x, e := be.Alloc(dt, len(v))
		if e == nil {
			bufs = append(bufs, x)
			e = be.Upload(x, v)
		}
		if err == nil {
			err = e
		}
		return x
	}
	B, T, H, KVH, D := pr.B, pr.T, pr.H, pr.KVH, pr.D
	in := map[string]ops.Buf{}
	for name, v := range pr.vals {
		in[name] = put(dt, v)
	}
	out, lse := put(dt, nans(B*T*H*D)), put(ops.F32, nans(B*H*T))
	var seg ops.Buf
	if pr.seg != nil && err == nil {
		if seg, err = be.Alloc(ops.I32, len(pr.seg)); err == nil {
			bufs = append(bufs, seg)
			err = be.UploadInt(seg, pr.seg)
		}
	}
	if err != nil {
		return nil, err
	}
	be.AttentionForward(out, lse, in["q"], in["k"], in["v"], seg, B, T, H, KVH, D)
	be.AttentionBackward(in["dq"], in["dk"], in["dv"], in["dout"], in["q"], in["k"], in["v"], out, lse, seg, B, T, H, KVH, D)
	res := map[string][]float64{}
	for name, x := range map[string]ops.Buf{"out": out, "lse": lse, "dq": in["dq"], "dk": in["dk"], "dv": in["dv"]} {
		v := make([]float64, x.Len())
		if err := be.Download64(v, x); err != nil {
			return nil, err
		}
		res[name] = v
	}
	return res, nil
}

// compareAttn fails t where an output of got differs from want by more than
// tol (relative L2; NaN fails).
func compareAttn(t *testing.T, what string, got, want map[string][]float64, tol float64) {
	t.Helper()
	for _, name := range []string{"out", "lse", "dq", "dk", "dv"} {
		if rel := relL2(got[name], want[name]); !(rel <= tol) {
			t.Errorf("%s %s: relative L2 error %.3g > %.3g", what, name, rel, tol)
		}
	}
}

// TestAttentionGEMM holds the GEMM attention (pinned: bf16 at D 64 and 128
// would take flash attention) to the float64 CPU reference at
// shapes larger and odder than opstest's: T 300 (a partial last tile), D 128
// and 64, GQA 4:1, no GQA, one token, with and without segments, in float32
// (1e-5) and mixed precision (bf16 data, 2e-2).
func TestAttentionGEMM(t *testing.T) {
	for _, c := range []struct {
		dt  ops.DType
		tol float64
	}{{ops.F32, 1e-5}, {ops.BF16, 2e-2}} {
		t.Run(c.dt.String(), func(t *testing.T) {
			be, ref := gpu(t), ops.NewCPU64()
			rng := rand.New(rand.NewPCG(13, 14))
			for _, s := range []struct{ B, T, H, KVH, D int }{
				{2, 300, 8, 2, 128}, {2, 300, 8, 2, 64}, {3, 77, 4, 4, 40}, {1, 1, 2, 1, 64},
			} {
				for _, segLen := range []int{0, 37} {
					pr := newAttnProblem(rng, c.dt, s.B, s.T, s.H, s.KVH, s.D, segLen)
					what := fmt.Sprintf("B %d T %d H %d KVH %d D %d seg %d", s.B, s.T, s.H, s.KVH, s.D, segLen)
					compareAttn(t, what, pr.run(t, gemmAttn{be}, c.dt), pr.run(t, ref, ops.F32), c.tol)
				}
			}
		})
	}
}

// TestAttentionChunks: a workspace limit small enough to cut T = 300 into
// chunks of 64 query rows gives the results of one chunk (up to the GEMMs'
// summation order), the same bits twice (deterministic), and passes the
// reference.
func TestAttentionChunks(t *testing.T) {
	B, T, H, KVH, D := 2, 300, 8, 2, 64
	for _, c := range []struct {
		dt  ops.DType
		tol float64
	}{{ops.F32, 1e-5}, {ops.BF16, 2e-2}} {
		t.Run(c.dt.String(), func(t *testing.T) {
			b := gpu(t)
			be := gemmAttn{b}
			if rows := planAttention(T, KVH, D, c.dt, attnWorkspaceLimit).rows; rows != T {
				t.Fatalf("default plan: %d rows per chunk, want all %d", rows, T)
			}
			perRow := int64(KVH) * int64(roundUp(T, attnAlign)) * int64(8+2*elemSize(c.dt))
			limit := 100 * perRow
			if rows := planAttention(T, KVH, D, c.dt, limit).rows; rows != 64 {
				t.Fatalf("small plan: %d rows per chunk, want 64", rows)
			}
			for _, segLen := range []int{0, 37} {
				pr := newAttnProblem(rand.New(rand.NewPCG(15, uint64(segLen))), c.dt, B, T, H, KVH, D, segLen)
				b.attnLimit = 0
				one := pr.run(t, be, c.dt)
				b.attnLimit = limit
				chunked, again := pr.run(t, be, c.dt), pr.run(t, be, c.dt)
				what := fmt.Sprintf("seg %d: 5 chunks vs 1", segLen)
				compareAttn(t, what, chunked, one, c.tol/10)
				compareAttn(t, fmt.Sprintf("seg %d: reference", segLen), chunked, pr.run(t, ops.NewCPU64(), ops.F32), c.tol)
				for name, v := range chunked {
					for i := range v {
						if math.Float64bits(v[i]) != math.Float64bits(again[name][i]) {
							t.Errorf("seg %d: %s[%d] is %v, then %v: not deterministic", segLen, name, i, v[i], again[name][i])
							break
						}
					}
				}
			}
		})
	}
}

// flashCase is one shape of TestAttentionFlash; acc: the gradients start at
// random values (checks that the backward overwrites them), else at zero.
type flashCase struct {
	B, T, H, KVH, D, segLen int
	acc                     bool
}

func (c flashCase) String() string {
	s := fmt.Sprintf("B %d T %d H %d KVH %d D %d seg %d", c.B, c.T, c.H, c.KVH, c.D, c.segLen)
	if c.acc {
		s += " acc"
	}
	return s
}

// flashCases: T in {1, 17, 128, 1000, 4096} x D in {64, 128} x GQA ratio in
// {1, 4, 8} x without and with segments (about 2T/5 long: the second starts
// mid-tile and crosses into the next batch row), plus short segments (37
// tokens: several per tile) and nonzero gradients to overwrite. Two batch
// rows and two key/value heads up to T 1000; one row of one key/value head
// (ratio 1: two) at 4096, where the CPU reference dominates the test's time.
func flashCases() []flashCase {
	var cs []flashCase
	for _, T := range []int{1, 17, 128, 1000, 4096} {
		for _, D := range []int{64, 128} {
			for _, r := range []int{1, 4, 8} {
				B, KVH := 2, 2
				if T == 4096 {
					B = 1
					if r > 1 {
						KVH = 1
					}
				}
				for _, segLen := range []int{0, 2*T/5 + 3} {
					cs = append(cs, flashCase{B: B, T: T, H: r * KVH, KVH: KVH, D: D, segLen: segLen})
				}
			}
			if T == 128 || T == 1000 {
				cs = append(cs, flashCase{B: 2, T: T, H: 8, KVH: 2, D: D, segLen: 37},
					flashCase{B: 2, T: T, H: 8, KVH: 2, D: D, segLen: 37, acc: true})
			}
		}
	}
	return cs
}

// newFlashProblem is newAttnProblem with q three times larger (peaked rows:
// the online softmax's rescaling matters) and the gradients zero unless c.acc.
func newFlashProblem(rng *rand.Rand, c flashCase) *attnProblem {
	pr := newAttnProblem(rng, ops.BF16, c.B, c.T, c.H, c.KVH, c.D, c.segLen)
	for i, x := range pr.vals["q"] {
		pr.vals["q"][i] = ops.RoundBF16(3 * x)
	}
	if !c.acc {
		for _, name := range []string{"dq", "dk", "dv"} {
			clear(pr.vals[name])
		}
	}
	return pr
}

// worstElement is max |got-want| over max |want| (NaN if got has one): a
// wrong row or tile that relative L2 over a large tensor would dilute.
func worstElement(got, want []float64) float64 {
	var d, m float64
	for i := range want {
		if math.IsNaN(got[i]) {
			return math.NaN()
		}
		d, m = max(d, math.Abs(got[i]-want[i])), max(m, math.Abs(want[i]))
	}
	return d / max(m, 1e-300)
}

// maxAbs is the largest |x| (NaN if x has one).
func maxAbs(x []float64) float64 {
	var m float64
	for _, v := range x {
		if math.IsNaN(v) {
			return v
		}
		m = max(m, math.Abs(v))
	}
	return m
}

// TestAttentionFlash holds the flash kernels (pinned) to the float64 CPU
// reference on fresh random bf16 and f16 inputs (out and lse poisoned with NaN):
// relative L2 within 1e-2 for out, lse, dq, dk and dv, and no element off by
// more than 5e-2 of the tensor's largest. The first case also runs twice:
// the same bits (deterministic). The references run concurrently on the CPU
// ahead of the GPU.
func TestAttentionFlash(t *testing.T) {
	be := gpu(t)
	cases := flashCases()
	probs, refs := cpuReferences(t, cases, 21)
	fb := flashAttn{be}
	for i, c := range cases {
		r := <-refs[i]
		if r.err != nil {
			t.Fatalf("%v: CPU reference: %v", c, r.err)
		}
		for _, dt := range []ops.DType{ops.BF16, ops.F16} {
			checkFlash(t, fb, probs[i], c, dt, r.vals, i == 0)
		}
	}
}

// attnRef is one case's float64 CPU reference, or why it failed.
type attnRef struct {
	vals map[string][]float64
	err  error
}

// cpuReferences makes each case's problem (random seed seed+i) and computes
// its float64 CPU reference concurrently, the largest (last) first, while
// the GPU works through the cases in order; refs[i] delivers case i's. The
// goroutines end before the test does.
func cpuReferences(t *testing.T, cases []flashCase, seed uint64) ([]*attnProblem, []chan attnRef) {
	probs := make([]*attnProblem, len(cases))
	refs := make([]chan attnRef, len(cases))
	for i, c := range cases {
		probs[i] = newFlashProblem(rand.New(rand.NewPCG(seed+uint64(i), uint64(c.T))), c)
		refs[i] = make(chan attnRef, 1)
	}
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	for i := len(cases) - 1; i >= 0; i-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			vals, err := probs[i].compute(ops.NewCPU64(), ops.F32)
			refs[i] <- attnRef{vals, err}
		}()
	}
	return probs, refs
}

// checkFlash runs one flash case in data type dt against the reference want;
// twice when deterministic, comparing the bits.
func checkFlash(t *testing.T, fb ops.Backend, pr *attnProblem, c flashCase, dt ops.DType, want map[string][]float64, deterministic bool) {
	got := pr.run(t, fb, dt)
	if deterministic {
		if name, j, a, b := differs(got, pr.run(t, fb, dt)); name != "" {
			t.Errorf("%v %v: %s[%d] is %v, then %v: not deterministic", c, dt, name, j, a, b)
		}
	}
	errs := ""
	for _, name := range []string{"out", "lse", "dq", "dk", "dv"} {
		if c.T == 1 && (name == "dq" || name == "dk") {
			// One key per row: softmax's gradient is zero; the flash
			// backward's is rounding (its delta is dout·out, as FA2's).
			if m, bar := maxAbs(got[name]), 1e-2*maxAbs(want["dv"]); !(m <= bar) {
				t.Errorf("%v %s: largest element %.3g, want ~0 (at most 1e-2 of dv's largest: %.3g)", c, name, m, bar)
			}
			continue
		}
		rel, el := relL2(got[name], want[name]), worstElement(got[name], want[name])
		if !(rel <= 1e-2) || !(el <= 5e-2) {
			t.Errorf("%v %v %s: relative L2 error %.3g (bar 1e-2), worst element %.3g of the largest (bar 5e-2)",
				c, dt, name, rel, el)
		}
		errs += fmt.Sprintf(" %s %.1e", name, rel)
	}
	t.Logf("%v %v: error%s", c, dt, errs)
}

// differs returns the first output element that differs in bits between two
// runs ("" when none).
func differs(a, b map[string][]float64) (string, int, float64, float64) {
	for _, name := range []string{"out", "lse", "dq", "dk", "dv"} {
		for j, x := range a[name] {
			if math.Float64bits(x) != math.Float64bits(b[name][j]) {
				return name, j, x, b[name][j]
			}
		}
	}
	return "", 0, 0, 0
}

// TestAttentionCudnn holds cuDNN's fused attention to the float64 CPU
// reference as TestAttentionFlash does the flash kernels, on the flash cases
// without segments (cuDNN takes no segment mask; packed rows go to the flash
// kernels), in bf16 and f16. It logs whether two runs give the same bits.
// Skipped where libcudnn.so.9 does not load.
func TestAttentionCudnn(t *testing.T) {
	be := gpu(t)
	if _, _, err := cudnnVersion(); err != nil {
		t.Skipf("no cuDNN: %v", err)
	}
	v, path, _ := cudnnVersion()
	t.Logf("cuDNN %s from %s", cudnnVersionString(v), path)
	var cases []flashCase
	for _, c := range flashCases() {
		if c.segLen == 0 && !c.acc {
			cases = append(cases, c)
		}
	}
	probs, refs := cpuReferences(t, cases, 31)
	cb := cudnnAttn{be}
	for i, c := range cases {
		r := <-refs[i]
		if r.err != nil {
			t.Fatalf("%v: CPU reference: %v", c, r.err)
		}
		want := r.vals
		for _, dt := range []ops.DType{ops.BF16, ops.F16} {
			checkFlash(t, cb, probs[i], c, dt, want, false)
			if i == len(cases)/2 {
				if name, j, a, b := differs(probs[i].run(t, cb, dt), probs[i].run(t, cb, dt)); name != "" {
					t.Logf("%v %v: two runs differ (%s[%d] %v then %v): cuDNN's backward is not deterministic", c, dt, name, j, a, b)
				} else {
					t.Logf("%v %v: two runs give the same bits", c, dt)
				}
			}
		}
	}
}

// TestAttentionKernel: the choice between flash and GEMM attention.
func TestAttentionKernel(t *testing.T) {
	for _, c := range []struct {
		dt   ops.DType
		D    int
		want string
	}{{ops.BF16, 128, "flash"}, {ops.BF16, 64, "flash"}, {ops.F16, 128, "flash"}, {ops.BF16, 80, "gemm"}, {ops.F32, 128, "gemm"}} {
		if got := AttentionKernel(c.dt, c.D); got != c.want {
			t.Errorf("AttentionKernel(%v, %d) = %q, want %q", c.dt, c.D, got, c.want)
		}
	}
	if flashTakes(90, ops.BF16, 128, 32, 256, 4096+8) {
		t.Error("flashTakes accepts a buffer that is not 16-byte aligned")
	}
	if flashTakes(75, ops.F16, 128, 32, 256, 4096) || !flashTakes(80, ops.F16, 128, 32, 256, 4096) {
		t.Error("flashTakes should need compute capability 8.0 exactly")
	}
	if got, want := AttentionWorkspaceBytes(2, 8192, 32, 8, 128, ops.BF16), int64(4*2*32*8192*(1+2*128)+1<<20); got != want {
		t.Errorf("flash/cuDNN workspace %d bytes, want %d (cuDNN's softmax_sum, dQ accumulator and its plan's grouped-query sums)", got, want)
	}
	if got, want := AttentionWorkspaceBytes(1, 300, 8, 2, 128, ops.F32), planAttention(300, 2, 128, ops.F32, attnWorkspaceLimit).bytes; got != want {
		t.Errorf("GEMM workspace %d bytes, want the plan's %d", got, want)
	}
}

// attnTiming is one line of TestAttentionTiming: ms per call and TFLOP/s.
type attnTiming struct {
	T                      int
	path                   string
	fwd, bwd, fwdTF, bwdTF float64
}

// both is forward+backward TFLOP/s: 3.5 forward units over the two times.
func both(r attnTiming) float64 { return 3.5 * r.fwdTF * r.fwd / (r.fwd + r.bwd) }

// TestAttentionTiming logs the speed of the flash and the GEMM attention at the
// Llama-3.1-8B shape (H 32, KVH 8, D 128), batch 1, bf16, T 2048, 8192 and
// 32768: ms per call and TFLOP/s of causal work (forward 4·T²/2·D·H, backward
// 2.5 times that). It asserts nothing about time. Skipped with -short.
func TestAttentionTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing skipped in -short mode")
	}
	be := gpu(t)
	B, H, KVH, D := 1, 32, 8, 128
	rng := rand.New(rand.NewPCG(17, 18))
	var rows []attnTiming
	for _, T := range []int{2048, 8192, 32768} {
		N := B * T
		var bufs []ops.Buf
		alloc := func(dt ops.DType, n int, random bool) ops.Buf {
			x, err := be.Alloc(dt, n)
			if err != nil {
				t.Fatal(err)
			}
			bufs = append(bufs, x)
			if random {
				v := make([]float32, n)
				for i := range v {
					v[i] = float32(2*rng.Float64() - 1)
				}
				if err := be.Upload(x, v); err != nil {
					t.Fatal(err)
				}
			} else {
				be.Zero(x, n)
			}
			return x
		}
		q, k, v, dout := alloc(ops.BF16, N*H*D, true), alloc(ops.BF16, N*KVH*D, true), alloc(ops.BF16, N*KVH*D, true),
			alloc(ops.BF16, N*H*D, true)
		out, lse := alloc(ops.BF16, N*H*D, false), alloc(ops.F32, B*H*T, false)
		dq, dk, dv := alloc(ops.BF16, N*H*D, false), alloc(ops.BF16, N*KVH*D, false), alloc(ops.BF16, N*KVH*D, false)
		timeIt := func(f func(), reps int) time.Duration {
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for range reps {
				f()
			}
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			return time.Since(start) / time.Duration(reps)
		}
		flops := 4 * float64(T) * float64(T) / 2 * float64(D) * float64(H) * float64(B)
		reps := max(2, 16*8192*8192/(T*T))
		paths := []string{"flash", "gemm"}
		if _, _, err := cudnnVersion(); err == nil {
			paths = append(paths, "cudnn")
		}
		for _, path := range paths {
			var a ops.Backend = flashAttn{be}
			switch path {
			case "gemm":
				a = gemmAttn{be}
			case "cudnn":
				a = cudnnAttn{be}
			}
			fwd := func() { a.AttentionForward(out, lse, q, k, v, nil, B, T, H, KVH, D) }
			bwd := func() { a.AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, nil, B, T, H, KVH, D) }
			timeIt(func() { fwd(); bwd() }, 1) // warm up: workspace, module functions, cuBLAS heuristics
			tf, tb := timeIt(fwd, reps), timeIt(bwd, reps)
			r := attnTiming{T, path, ms(tf), ms(tb), flops / tf.Seconds() / 1e12, 2.5 * flops / tb.Seconds() / 1e12}
			rows = append(rows, r)
			t.Logf("attention %s bf16 B %d T %d H %d KVH %d D %d: forward %.2f ms (%.0f TFLOP/s), backward %.2f ms "+
				"(%.0f TFLOP/s), forward+backward %.0f TFLOP/s", path, B, T, H, KVH, D, r.fwd, r.fwdTF, r.bwd, r.bwdTF,
				both(r))
		}
		for _, x := range bufs {
			be.Free(x)
		}
	}
	t.Logf("attention bf16, H %d KVH %d D %d, TFLOP/s of causal work (forward, backward, forward+backward):", H, KVH, D)
	for _, r := range rows {
		t.Logf("  T %5d  %-5s %4.0f %4.0f %4.0f", r.T, r.path, r.fwdTF, r.bwdTF, both(r))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
