package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"train/ops"
)

// attnProblem is one training attention's inputs, held on the host: q, k, v,
// dout, and the initial dq, dk, dv (the backward adds to them). For BF16 runs
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
	var bufs []ops.Buf
	defer func() {
		for _, x := range bufs {
			be.Free(x)
		}
	}()
	put := func(dt ops.DType, v []float32) ops.Buf {
		x, err := be.Alloc(dt, len(v))
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, x)
		if err := be.Upload(x, v); err != nil {
			t.Fatal(err)
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
	if pr.seg != nil {
		x, err := be.Alloc(ops.I32, len(pr.seg))
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, x)
		if err := be.UploadInt(x, pr.seg); err != nil {
			t.Fatal(err)
		}
		seg = x
	}
	be.AttentionForward(out, lse, in["q"], in["k"], in["v"], seg, B, T, H, KVH, D)
	be.AttentionBackward(in["dq"], in["dk"], in["dv"], in["dout"], in["q"], in["k"], in["v"], lse, seg, B, T, H, KVH, D)
	res := map[string][]float64{}
	for name, x := range map[string]ops.Buf{"out": out, "lse": lse, "dq": in["dq"], "dk": in["dk"], "dv": in["dv"]} {
		v := make([]float64, x.Len())
		if err := be.Download64(v, x); err != nil {
			t.Fatal(err)
		}
		res[name] = v
	}
	return res
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

// TestAttentionGEMM holds the GEMM attention to the float64 CPU reference at
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
					compareAttn(t, what, pr.run(t, be, c.dt), pr.run(t, ref, ops.F32), c.tol)
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
			be := gpu(t)
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
				be.attnLimit = 0
				one := pr.run(t, be, c.dt)
				be.attnLimit = limit
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

// TestAttentionTiming logs the attention's speed at the Llama-3.1-70B shape
// (H 64, KVH 8, D 128), batch 1, bf16, T 2048 and 8192: ms per call and
// TFLOP/s counting the causal half (forward 4·T²/2·D·H, backward 2.5 times
// that). It asserts nothing about time. Skipped with -short.
func TestAttentionTiming(t *testing.T) {
	if testing.Short() {
		t.Skip("timing skipped in -short mode")
	}
	be := gpu(t)
	B, H, KVH, D := 1, 64, 8, 128
	rng := rand.New(rand.NewPCG(17, 18))
	for _, T := range []int{2048, 8192} {
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
			}
			return x
		}
		q, k, v, dout := alloc(ops.BF16, N*H*D, true), alloc(ops.BF16, N*KVH*D, true), alloc(ops.BF16, N*KVH*D, true),
			alloc(ops.BF16, N*H*D, true)
		out, lse := alloc(ops.BF16, N*H*D, false), alloc(ops.F32, B*H*T, false)
		dq, dk, dv := alloc(ops.BF16, N*H*D, false), alloc(ops.BF16, N*KVH*D, false), alloc(ops.BF16, N*KVH*D, false)
		fwd := func() { be.AttentionForward(out, lse, q, k, v, nil, B, T, H, KVH, D) }
		bwd := func() { be.AttentionBackward(dq, dk, dv, dout, q, k, v, lse, nil, B, T, H, KVH, D) }
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
		timeIt(func() { fwd(); bwd() }, 1) // warm up: workspace, cuBLAS heuristics
		tf, tb := timeIt(fwd, 5), timeIt(bwd, 5)
		flops := 4 * float64(T) * float64(T) / 2 * float64(D) * float64(H) * float64(B)
		pl := planAttention(T, KVH, D, ops.BF16, attnWorkspaceLimit)
		t.Logf("attention bf16 B %d T %d H %d KVH %d D %d: forward %.2f ms (%.0f TFLOP/s), backward %.2f ms (%.0f TFLOP/s); "+
			"%d rows per chunk, %d chunks, workspace %.0f MiB", B, T, H, KVH, D,
			ms(tf), flops/tf.Seconds()/1e12, ms(tb), 2.5*flops/tb.Seconds()/1e12,
			pl.rows, (T+pl.rows-1)/pl.rows, float64(pl.bytes)/(1<<20))
		for _, x := range bufs {
			be.Free(x)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
