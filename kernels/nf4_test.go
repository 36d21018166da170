package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"train/ops"
	"train/ops/opstest"
)

// The NF4 ops and FillNormal against their ops.CPU twins (ops/nf4.go) on random
// inputs: DequantNF4 and QuantizeNF4 bit for bit, FillNormal within one float32
// ulp (see TestFillNormal). opstest.CheckNF4 holds them to package quant too.

// TestOpsNF4 runs opstest's NF4 checks (package quant's Dequantize,
// DequantizeBF16 and Quantize, ops.FillNormalHost) on the GPU.
func TestOpsNF4(t *testing.T) { opstest.CheckNF4(t, gpu(t)) }

// mk allocates a zeroed buffer that t's cleanup frees (before the backend's
// Close, which gpu registered earlier).
func mk(t testing.TB, be ops.Backend, dt ops.DType, n int) ops.Buf {
	t.Helper()
	x, err := be.Alloc(dt, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Free(x) })
	return x
}

// upF holds v in a new buffer of type dt (F32 or BF16) at element offset off
// of its allocation: a view, to reach the kernels' unaligned paths.
func upF(t testing.TB, be ops.Backend, dt ops.DType, v []float32, off int) ops.Buf {
	t.Helper()
	x := mk(t, be, dt, off+len(v)).Slice(off, len(v))
	if err := be.Upload(x, v); err != nil {
		t.Fatal(err)
	}
	return x
}

// upB is upF for bytes (a U8 buffer).
func upB(t testing.TB, be ops.Backend, v []byte, off int) ops.Buf {
	t.Helper()
	x := mk(t, be, ops.U8, off+len(v)).Slice(off, len(v))
	if err := be.UploadBytes(x, v); err != nil {
		t.Fatal(err)
	}
	return x
}

func downF(t testing.TB, be ops.Backend, x ops.Buf, n int) []float32 {
	t.Helper()
	v := make([]float32, n)
	if err := be.Download(v, x); err != nil {
		t.Fatal(err)
	}
	return v
}

func downB(t testing.TB, be ops.Backend, x ops.Buf, n int) []byte {
	t.Helper()
	v := make([]byte, n)
	if err := be.DownloadBytes(v, x); err != nil {
		t.Fatal(err)
	}
	return v
}

// hostNF4 is an NF4 weight on the host: random codes and scales (not the
// quantization of anything: every bit pattern of the packed bytes occurs).
type hostNF4 struct {
	n, bs, nested int
	packed        []byte
	absmax        []float32 // nil with double quantization
	codes         []byte
	absmax2, cmap []float32
	offset        float32
}

func randomNF4(rng *rand.Rand, n, bs int, dq bool, nested int) *hostNF4 {
	h := &hostNF4{n: n, bs: bs, packed: make([]byte, (n+1)/2)}
	for i := range h.packed {
		h.packed[i] = byte(rng.Uint32())
	}
	blocks := (n + bs - 1) / bs
	if !dq {
		h.absmax = make([]float32, blocks)
		for i := range h.absmax {
			h.absmax[i] = float32(math.Abs(rng.NormFloat64()) * 0.05)
		}
		return h
	}
	h.nested = nested
	h.codes = make([]byte, blocks)
	for i := range h.codes {
		h.codes[i] = byte(rng.Uint32())
	}
	h.absmax2 = make([]float32, (blocks+nested-1)/nested)
	for i := range h.absmax2 {
		h.absmax2[i] = float32(rng.Float64() * 0.1)
	}
	h.cmap = make([]float32, 256)
	for i := range h.cmap {
		h.cmap[i] = float32(2*rng.Float64() - 1)
	}
	h.offset = float32(rng.Float64() * 0.03)
	return h
}

// on uploads h to be; off > 0 puts every buffer at that element offset of its
// allocation (unaligned views).
func (h *hostNF4) on(t testing.TB, be ops.Backend, off int) ops.NF4 {
	t.Helper()
	w := ops.NF4{N: h.n, BlockSize: h.bs, Packed: upB(t, be, h.packed, off)}
	if h.absmax != nil {
		w.Absmax = upF(t, be, ops.F32, h.absmax, off)
		return w
	}
	w.Codes, w.Absmax2, w.Map = upB(t, be, h.codes, off), upF(t, be, ops.F32, h.absmax2, off), upF(t, be, ops.F32, h.cmap, off)
	w.NestedBlock, w.Offset = h.nested, h.offset
	return w
}

// dequant runs DequantNF4 on be into a NaN-poisoned buffer of type dt at
// element offset outOff, and returns what it wrote.
func (h *hostNF4) dequant(t testing.TB, be ops.Backend, dt ops.DType, inOff, outOff int) []float32 {
	t.Helper()
	w := h.on(t, be, inOff)
	out := upF(t, be, dt, nans(h.n), outOff)
	be.DequantNF4(out, w)
	return downF(t, be, out, h.n)
}

// firstDiff is the first index where got and want differ in bits (NaNs of any
// payload are equal, sameBits), or -1.
func firstDiff(got, want []float32) int {
	for i := range want {
		if !sameBits(got[i], want[i]) {
			return i
		}
	}
	return -1
}

// TestDequantNF4 holds DequantNF4 to ops.CPU bit for bit: F32 and BF16 out,
// with and without double quantization, sizes that are odd or not a multiple
// of a block (or of 256 blocks), blocks of 2 to 12 weights (which a thread's
// chunk of 4 or 8 weights crosses) and of 4096, block and nested sizes that
// are powers of two (shifts) and not (divisions), aligned and unaligned
// buffers (the kernel's vector and scalar paths), and absmaxes of 0,
// subnormal, huge, Inf and NaN.
func TestDequantNF4(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	rng := rand.New(rand.NewPCG(21, 22))
	type tc struct{ n, bs, nested int }
	var cases []tc
	for _, n := range []int{1, 2, 3, 7, 8, 9, 15, 63, 64, 65, 127, 130, 64*256 + 65, 3*64*256 + 7, 100_001, 1<<20 + 5} {
		cases = append(cases, tc{n, 64, 256})
	}
	for _, n := range []int{1, 5, 17, 1001, 12_347} {
		cases = append(cases, tc{n, 2, 3}, tc{n, 4, 7}, tc{n, 6, 5}, tc{n, 12, 256}, tc{n, 4096, 256}, tc{n, 128, 1})
	}
	for _, c := range cases {
		for _, dq := range []bool{false, true} {
			h := randomNF4(rng, c.n, c.bs, dq, c.nested)
			if !dq && len(h.absmax) >= 8 {
				copy(h.absmax, []float32{0, 1e-40, 3e38, float32(math.Inf(1)), float32(math.NaN()), math.SmallestNonzeroFloat32})
			}
			for _, dt := range []ops.DType{ops.F32, ops.BF16} {
				want := h.dequant(t, cpu, dt, 0, 0)
				for _, off := range [][2]int{{0, 0}, {1, 3}, {3, 1}} {
					name := fmt.Sprintf("n=%d/bs=%d/double=%v/%v/offsets=%v", c.n, c.bs, dq, dt, off)
					got := h.dequant(t, be, dt, off[0], off[1])
					if i := firstDiff(got, want); i >= 0 {
						t.Fatalf("%s: weight %d (block %d) is %g (%#08x), ops.CPU's %g (%#08x)", name, i, i/c.bs,
							got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
					}
				}
			}
		}
	}
}

// TestQuantizeNF4 holds QuantizeNF4 to ops.CPU bit for bit (packed codes and
// absmaxes): odd sizes, blocks of 2 to 4096, an all-zero block (codes 0), a
// block holding NaN, one holding Inf, subnormals, negative zeros, values on
// and beside the thresholds, and unaligned views.
func TestQuantizeNF4(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	rng := rand.New(rand.NewPCG(23, 24))
	for _, c := range []struct{ n, bs int }{
		{1, 64}, {2, 64}, {3, 64}, {63, 64}, {64, 64}, {65, 64}, {129, 64}, {64*256 + 65, 64}, {100_001, 64},
		{1<<20 + 3, 64}, {7, 2}, {1001, 2}, {1001, 6}, {12_347, 256}, {12_347, 4096}, {4096 * 3, 4096}, {50_001, 1000},
	} {
		x := make([]float32, c.n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 0.02)
		}
		special := func(b int, f func(v []float32)) {
			if lo := b * c.bs; lo < c.n {
				f(x[lo:min(c.n, lo+c.bs)])
			}
		}
		if c.n > 3*c.bs {
			special(1, func(v []float32) { clear(v) }) // all zero
			special(2, func(v []float32) { v[len(v)/2] = float32(math.NaN()) })
			special(3, func(v []float32) { v[0] = float32(math.Inf(-1)) })
		}
		if c.n > 7*c.bs {
			special(4, func(v []float32) {
				for i := range v {
					v[i] = float32(rng.NormFloat64()) * 1e-40 // subnormal
				}
			})
			special(5, func(v []float32) {
				for i := range v {
					v[i] = float32(math.Copysign(0, -1))
				}
				v[len(v)-1] = 1
			})
			special(6, func(v []float32) { // normalized values on the thresholds
				v[0] = 1
				for i := 1; i < len(v); i++ {
					v[i] = ops.NF4Thresholds[i%15]
				}
			})
			special(7, func(v []float32) { // and one float32 ulp beside them
				v[0] = -1
				for i := 1; i < len(v); i++ {
					th := ops.NF4Thresholds[i%15]
					v[i] = math.Nextafter32(th, float32(math.Inf(2*(i%2)-1)))
				}
			})
		}
		blocks := (c.n + c.bs - 1) / c.bs
		run := func(be ops.Backend, off int) ([]byte, []float32) {
			xs := upF(t, be, ops.F32, x, off)
			packed := mk(t, be, ops.U8, off+(c.n+1)/2).Slice(off, (c.n+1)/2)
			absmax := mk(t, be, ops.F32, off+blocks).Slice(off, blocks)
			be.QuantizeNF4(packed, absmax, xs, c.n, c.bs)
			return downB(t, be, packed, (c.n+1)/2), downF(t, be, absmax, blocks)
		}
		wantP, wantA := run(cpu, 0)
		for _, off := range []int{0, 1} {
			gotP, gotA := run(be, off)
			if i := firstDiff(gotA, wantA); i >= 0 {
				t.Fatalf("n=%d bs=%d offset %d: absmax %d is %g, ops.CPU's %g", c.n, c.bs, off, i, gotA[i], wantA[i])
			}
			for i := range wantP {
				if gotP[i] != wantP[i] {
					t.Fatalf("n=%d bs=%d offset %d: packed byte %d (block %d) is %#02x, ops.CPU's %#02x", c.n, c.bs, off,
						i, 2*i/c.bs, gotP[i], wantP[i])
				}
			}
		}
	}
}

// ulps is the distance between a and b in float32 steps (ordered through
// zero), NaNs aside.
func ulps(a, b float32) int64 {
	ord := func(f float32) int64 {
		i := int64(int32(math.Float32bits(f)))
		if i < 0 {
			i = math.MinInt32 - i
		}
		return i
	}
	d := ord(a) - ord(b)
	if d < 0 {
		d = -d
	}
	return d
}

// ulpDiffs checks got, FillNormal's values in type dt, against want, its
// twin's (ops.CPU's FillNormal, or ops.FillNormalHost for a piece): every value
// within one float32 ulp (for BF16 one bfloat16 ulp, 2^16 float32 ulps: a
// float32 ulp can move a value across a bfloat16 rounding point), and it
// returns how many differ at all.
func ulpDiffs(t *testing.T, what string, got, want []float32, dt ops.DType) int {
	t.Helper()
	lim := int64(1)
	if dt == ops.BF16 {
		lim = 1 << 16
	}
	off := 0
	for i := range want {
		if math.Float32bits(got[i]) == math.Float32bits(want[i]) {
			continue
		}
		off++
		if d := ulps(got[i], want[i]); got[i] != got[i] || want[i] != want[i] || d > lim {
			t.Fatalf("%s: value %d is %g (%#08x), the host's %g (%#08x): %d float32 ulps apart", what, i, got[i],
				math.Float32bits(got[i]), want[i], math.Float32bits(want[i]), d)
		}
	}
	return off
}

// TestFillNormal holds FillNormal to ops.CPU's (ops.FillNormalHost). CUDA's
// double log and sincos are not Go's (math.Log, math.Sincos) and may differ
// from them in the last double bit, so after the rounding to float32 a rare
// value may be one float32 ulp away (one bfloat16 ulp for BF16 out). The test
// allows exactly that: every value within one ulp, and at least 99.99% of
// them bitwise equal. Keys near 2^64 wrap as Go's uint64 counters do; the out
// buffers are unaligned views poisoned with NaN.
func TestFillNormal(t *testing.T) {
	be, cpu := gpu(t), ops.NewCPU()
	for _, dt := range []ops.DType{ops.F32, ops.BF16} {
		total, off := 0, 0
		for _, n := range []int{1, 2, 3, 255, 1_000_003} {
			for _, key := range []uint64{0, 0x1234_5678_9abc_def0, math.MaxUint64 - 4} {
				for _, std := range []float64{0.02, 1} {
					outG, outC := upF(t, be, dt, nans(n), 1), mk(t, cpu, dt, n)
					be.FillNormal(outG, n, key, std)
					cpu.FillNormal(outC, n, key, std)
					what := fmt.Sprintf("%v n=%d key=%#x std=%g", dt, n, key, std)
					off += ulpDiffs(t, what, downF(t, be, outG, n), downF(t, cpu, outC, n), dt)
					total += n
				}
			}
		}
		t.Logf("%v: %d of %d values differ from ops.CPU's (by one ulp)", dt, off, total)
		if off*10_000 > total {
			t.Errorf("%v: %d of %d values differ from ops.CPU's, more than 1 in 10,000", dt, off, total)
		}
	}
}

// TestNF4Large exercises the 64-bit indexing of FillNormal, QuantizeNF4 and
// DequantNF4 on a tensor of 2^31 + 2^17 + 3 weights (odd): element, byte and
// bf16/f32 byte offsets past 2^31 and 2^32. It draws x on the GPU
// (FillNormal), quantizes it there, dequantizes into F32 and BF16, and checks
// windows around every power-of-two boundary and at the end against ops.CPU
// run on the window alone: the whole tensor never crosses to the host. About
// 18 GiB of GPU memory; skipped with -short.
func TestNF4Large(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the 2^31-weight NF4 test")
	}
	be, cpu := gpu(t), ops.NewCPU()
	const n, bs, nested, key, std = 1<<31 + 1<<17 + 3, 64, 256, 0xfeed_beef_0123_4567, 0.02
	in, err := be.Info()
	if err != nil {
		t.Fatal(err)
	}
	if in.FreeMem < 20<<30 {
		t.Skipf("%.1f GiB free, the test needs 18", float64(in.FreeMem)/(1<<30))
	}
	blocks := (n + bs - 1) / bs
	const win = 2 * bs * nested // windows start at multiples of bs*nested: whole absmax2 groups
	var starts []int
	for _, p := range []int{0, 1 << 28, 1 << 29, 1 << 30, 1 << 31} {
		starts = append(starts, max(0, p-win/2))
	}
	starts = append(starts, (n-win)/(bs*nested)*(bs*nested))
	window := func(s int) (lo, hi int) { return s, min(n, s+win+bs*nested) }

	t0 := time.Now()
	x, packed, absmax := mk(t, be, ops.F32, n), mk(t, be, ops.U8, (n+1)/2), mk(t, be, ops.F32, blocks)
	be.FillNormal(x, n, key, std)
	be.QuantizeNF4(packed, absmax, x, n, bs)
	if err := be.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("FillNormal and QuantizeNF4 of %d weights: %v", n, time.Since(t0))
	w := ops.NF4{N: n, BlockSize: bs, Packed: packed, Absmax: absmax}

	// The double-quantized form: random codes, absmax2 and map (uploaded:
	// 32 MiB), sharing packed.
	rng := rand.New(rand.NewPCG(25, 26))
	hq := randomNF4(rng, 2, bs, true, nested) // map and offset
	codes := make([]byte, blocks)
	for i := range codes {
		codes[i] = byte(rng.Uint32())
	}
	am2 := make([]float32, (blocks+nested-1)/nested)
	for i := range am2 {
		am2[i] = float32(rng.Float64() * 0.1)
	}
	wq := ops.NF4{N: n, BlockSize: bs, Packed: packed, Codes: upB(t, be, codes, 0), Absmax2: upF(t, be, ops.F32, am2, 0),
		Map: upF(t, be, ops.F32, hq.cmap, 0), NestedBlock: nested, Offset: hq.offset}

	// The host's twin of each window: x's values (downloaded), FillNormalHost,
	// ops.CPU's QuantizeNF4 of them and its DequantNF4.
	type ref struct {
		lo, hi int
		packed []byte
		absmax []float32
		q      *hostNF4 // the window's double-quantized weight
	}
	var refs []ref
	for _, s := range starts {
		lo, hi := window(s)
		m := hi - lo
		xs := downF(t, be, x.Slice(lo, m), m)
		want := make([]float32, m)
		ops.FillNormalHost(want, key, lo, std)
		if d := ulpDiffs(t, fmt.Sprintf("FillNormal [%d,%d)", lo, hi), xs, want, ops.F32); d*10_000 > m {
			t.Errorf("FillNormal [%d,%d): %d values differ from the host's", lo, hi, d)
		}
		cx, cp, ca := upF(t, cpu, ops.F32, xs, 0), mk(t, cpu, ops.U8, (m+1)/2), mk(t, cpu, ops.F32, (m+bs-1)/bs)
		cpu.QuantizeNF4(cp, ca, cx, m, bs)
		r := ref{lo: lo, hi: hi, packed: downB(t, cpu, cp, (m+1)/2), absmax: downF(t, cpu, ca, (m+bs-1)/bs)}
		gp := downB(t, be, packed.Slice(lo/2, (m+1)/2), (m+1)/2)
		ga := downF(t, be, absmax.Slice(lo/bs, len(r.absmax)), len(r.absmax))
		if !slices.Equal(gp, r.packed) || firstDiff(ga, r.absmax) >= 0 {
			t.Fatalf("QuantizeNF4 [%d,%d): the codes or absmaxes differ from ops.CPU's", lo, hi)
		}
		b0 := lo / bs
		r.q = &hostNF4{n: m, bs: bs, nested: nested, packed: r.packed, codes: codes[b0 : b0+len(r.absmax)],
			absmax2: am2[b0/nested : (b0+len(r.absmax)+nested-1)/nested], cmap: hq.cmap, offset: hq.offset}
		refs = append(refs, r)
	}
	be.Free(x) // 8 GiB; mk's cleanup frees it again, which is harmless
	for _, dt := range []ops.DType{ops.BF16, ops.F32} {
		for _, dq := range []bool{false, true} {
			out := mk(t, be, dt, n)
			t0 := time.Now()
			if dq {
				be.DequantNF4(out, wq)
			} else {
				be.DequantNF4(out, w)
			}
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			t.Logf("DequantNF4 of %d weights into %v (double %v): %v", n, dt, dq, time.Since(t0))
			for _, r := range refs {
				m := r.hi - r.lo
				h := &hostNF4{n: m, bs: bs, packed: r.packed, absmax: r.absmax}
				if dq {
					h = r.q
				}
				want := h.dequant(t, cpu, dt, 0, 0)
				got := downF(t, be, out.Slice(r.lo, m), m)
				if i := firstDiff(got, want); i >= 0 {
					t.Fatalf("DequantNF4 into %v (double %v): weight %d is %g, ops.CPU's %g", dt, dq, r.lo+i, got[i], want[i])
				}
			}
			be.Free(out) // the next one needs the room
		}
	}
}

// TestDequantNF4Throughput logs DequantNF4's speed on a 70B MLP matrix
// (8192x28672 = 235M weights, blocks of 64) into BF16, plain and double
// quantized: the median of 3 runs of 20 calls each. Expectation: 235M weights
// write 470 MB of bf16 and read 118 MB of codes (plus 15 MB of absmaxes, or 4
// MB of double-quantized codes): at an H200's ~4 TB/s about 0.15 ms.
func TestDequantNF4Throughput(t *testing.T) {
	be := gpu(t)
	const rows, cols, reps = 8192, 28672, 20
	n := rows * cols
	rng := rand.New(rand.NewPCG(27, 28))
	out := mk(t, be, ops.BF16, n)
	for _, dq := range []bool{false, true} {
		w := randomNF4(rng, n, 64, dq, 256).on(t, be, 0)
		be.DequantNF4(out, w) // warm up: load the kernel
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
		var runs []time.Duration
		for range 3 {
			t0 := time.Now()
			for range reps {
				be.DequantNF4(out, w)
			}
			if err := be.Sync(); err != nil {
				t.Fatal(err)
			}
			runs = append(runs, time.Since(t0)/reps)
		}
		slices.Sort(runs)
		d := runs[1].Seconds()
		written, read := 2*float64(n), float64(n)/2
		t.Logf("DequantNF4 %dx%d into bf16 (double %v): %.3f ms per call (runs %v): %.0f GB/s written, %.0f GB/s read+written",
			rows, cols, dq, 1e3*d, runs, written/d/1e9, (written+read)/d/1e9)
	}
}

// TestBytes: U8 buffers round-trip through UploadBytes and DownloadBytes, and
// views, Zero and Copy address single bytes.
func TestBytes(t *testing.T) {
	be := gpu(t)
	x := mk(t, be, ops.U8, 11)
	src := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	if err := be.UploadBytes(x, src); err != nil {
		t.Fatal(err)
	}
	be.Zero(x.Slice(1, 3), 3)                // 1 0 0 0 5 6 7 8 9 10 11
	be.Copy(x.Slice(7, 3), x.Slice(0, 3), 3) // 1 0 0 0 5 6 7 1 0 0 11
	if err := be.UploadBytes(x.Slice(5, 1), []byte{0xff}); err != nil {
		t.Fatal(err)
	}
	got := downB(t, be, x.Slice(2, 9), 9)
	if want := []byte{0, 0, 5, 0xff, 7, 1, 0, 0, 11}; !slices.Equal(got, want) {
		t.Fatalf("u8 view [2:11] = %v, want %v", got, want)
	}
	if z := downB(t, be, mk(t, be, ops.U8, 5), 5); !slices.Equal(z, make([]byte, 5)) {
		t.Errorf("Alloc(U8) is not zeroed: %v", z)
	}
}

// TestNF4Errors: bad arguments to the byte transfers and the NF4 ops are
// errors (returned, or recorded for Sync), never panics or launches.
func TestNF4Errors(t *testing.T) {
	for _, c := range []struct {
		name, want string
		op         func(be ops.Backend, a func(ops.DType, int) ops.Buf) error
	}{
		{"upload bytes into f32", "upload of bytes into", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			return be.UploadBytes(a(ops.F32, 4), []byte{1})
		}},
		{"upload too many bytes", "upload of 5 bytes into a buffer of 4", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			return be.UploadBytes(a(ops.U8, 4), make([]byte, 5))
		}},
		{"download bytes from bf16", "byte download from", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			return be.DownloadBytes(make([]byte, 1), a(ops.BF16, 4))
		}},
		{"download too many bytes", "download of 5 bytes from a buffer of 4", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			return be.DownloadBytes(make([]byte, 5), a(ops.U8, 4))
		}},
		{"odd block", "DequantNF4: block size 63 must be even", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.F32, 128), ops.NF4{N: 128, BlockSize: 63, Packed: a(ops.U8, 64), Absmax: a(ops.F32, 3)})
			return be.Sync()
		}},
		{"short packed", "DequantNF4: packed has 63 elements, need 64", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.BF16, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.U8, 63), Absmax: a(ops.F32, 2)})
			return be.Sync()
		}},
		{"f32 packed", "DequantNF4: packed is", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.F32, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.F32, 64), Absmax: a(ops.F32, 2)})
			return be.Sync()
		}},
		{"bf16 absmax", "DequantNF4: absmax is", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.F32, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.U8, 64), Absmax: a(ops.BF16, 2)})
			return be.Sync()
		}},
		{"i32 out", "DequantNF4: out is", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.I32, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.U8, 64), Absmax: a(ops.F32, 2)})
			return be.Sync()
		}},
		{"no map", "DequantNF4: neither absmax", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.F32, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.U8, 64), Codes: a(ops.U8, 2),
				Absmax2: a(ops.F32, 1), NestedBlock: 256})
			return be.Sync()
		}},
		{"short absmax2", "DequantNF4: absmax2 has 1 elements, need 2", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.DequantNF4(a(ops.F32, 128), ops.NF4{N: 128, BlockSize: 64, Packed: a(ops.U8, 64), Codes: a(ops.U8, 2),
				Absmax2: a(ops.F32, 1), Map: a(ops.F32, 256), NestedBlock: 1})
			return be.Sync()
		}},
		{"quantize bf16 x", "QuantizeNF4: x is", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.QuantizeNF4(a(ops.U8, 32), a(ops.F32, 1), a(ops.BF16, 64), 64, 64)
			return be.Sync()
		}},
		{"quantize short absmax", "QuantizeNF4: absmax has 1 elements, need 2", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.QuantizeNF4(a(ops.U8, 33), a(ops.F32, 1), a(ops.F32, 65), 65, 64)
			return be.Sync()
		}},
		{"quantize odd block", "QuantizeNF4: 64 values in blocks of 5", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.QuantizeNF4(a(ops.U8, 32), a(ops.F32, 13), a(ops.F32, 64), 64, 5)
			return be.Sync()
		}},
		{"fill i32", "FillNormal: out is", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.FillNormal(a(ops.I32, 4), 4, 1, 1)
			return be.Sync()
		}},
		{"fill short", "FillNormal: out has 4 elements, need 5", func(be ops.Backend, a func(ops.DType, int) ops.Buf) error {
			be.FillNormal(a(ops.F32, 4), 5, 1, 1)
			return be.Sync()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := gpu(t)
			err := c.op(be, func(dt ops.DType, n int) ops.Buf { return mk(t, be, dt, n) })
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v, want an error containing %q", err, c.want)
			}
		})
	}
}
