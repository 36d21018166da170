package quant

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"train/internal/testcheck"
	"train/ops"
)

// normalWeights are bf16-rounded N(0, std^2) weights, like a checkpoint's.
func normalWeights(r *rand.Rand, n int, std float64) []float32 {
	w := make([]float32, n)
	for i := range w {
		w[i] = ops.RoundBF16(float32(r.NormFloat64() * std))
	}
	return w
}

func TestNF4IndexMatchesReference(t *testing.T) {
	var xs []float32
	for _, th := range nf4Thresholds {
		xs = append(xs, th, math.Nextafter32(th, -2), math.Nextafter32(th, 2))
	}
	xs = append(xs, NF4Code[:]...)
	xs = append(xs, 0, float32(math.Copysign(0, -1)), -1.5, 1.5, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)))
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		xs = append(xs, float32(r.Float64()*2.2-1.1))
	}
	for _, x := range xs {
		if got, want := nf4Index(x), nf4IndexRef(x); got != want {
			t.Fatalf("nf4Index(%v) = %d, the reference %d", x, got, want)
		}
	}
	if nf4Index(float32(math.NaN())) != 0 {
		t.Error("NaN must take code 0, as bitsandbytes' kernel gives it")
	}
	for i, th := range nf4Thresholds {
		if nf4Index(th) != byte(i) || nf4Index(math.Nextafter32(th, 2)) != byte(i+1) {
			t.Errorf("threshold %d (%v): a value on it must take code %d, one ulp above %d", i, th, i, i+1)
		}
	}
}

// TestThresholds pins what the thresholds are: each a float32 nearest to the
// exact midpoint of its two codes; where the midpoint is a float32 tie, the
// neighbour the CUDA literal picks, which at four thresholds is not the
// round-to-even one that float32(float64 midpoint) would give.
func TestThresholds(t *testing.T) {
	// Bit patterns nvrtc gave for the kernel's literals where they are not the
	// round-to-even neighbour (measured on the GPU test machine).
	notEven := map[int]uint32{0: 0xbf591cd9, 8: 0x3df64863, 12: 0x3f006d03, 14: 0x3f5c89d9}
	for i, th := range nf4Thresholds {
		mid := (float64(NF4Code[i]) + float64(NF4Code[i+1])) / 2
		even := float32(mid) // round to nearest, ties to even
		below, above := math.Nextafter32(even, -2), even
		if float64(even) < mid {
			below, above = even, math.Nextafter32(even, 2)
		}
		if float64(below) > mid || float64(above) < mid {
			below, above = even, even // mid is a float32 itself
		}
		tie := mid-float64(below) == float64(above)-mid && below != above
		switch bits, listed := notEven[i]; {
		case listed && (!tie || math.Float32bits(th) != bits || th == even):
			t.Errorf("threshold %d = %#x: want the CUDA literal %#x, the odd neighbour of the tie %v", i, math.Float32bits(th), bits, mid)
		case !listed && th != even:
			t.Errorf("threshold %d = %v, want the float32 nearest the midpoint, %v", i, th, even)
		}
	}
}

// ref64 is the float64 reference quantizer, written from the definition: per
// block, absmax = max |w|, x = w / absmax in float64, and the code is the
// nearest code-book entry (ties to the lower). It returns codes, one per weight,
// and the x values.
func ref64(w []float32, bs int) (codes []byte, xs []float64, absmax []float64) {
	for b := 0; b*bs < len(w); b++ {
		blk := w[b*bs : min(len(w), (b+1)*bs)]
		m := 0.0
		for _, v := range blk {
			m = math.Max(m, math.Abs(float64(v)))
		}
		absmax = append(absmax, m)
		for _, v := range blk {
			x := float64(v) / m
			if m == 0 {
				x = math.NaN()
			}
			best, bestD := byte(0), math.Inf(1)
			for k, c := range NF4Code {
				if d := math.Abs(x - float64(c)); d < bestD {
					best, bestD = byte(k), d
				}
			}
			codes = append(codes, best)
			xs = append(xs, x)
		}
	}
	return codes, xs, absmax
}

func codeAt(packed []byte, i int) byte {
	if i%2 == 0 {
		return packed[i/2] >> 4
	}
	return packed[i/2] & 15
}

// nearMidpoint reports whether x is within tol of a midpoint between codes,
// where float32 rounding (of 1/absmax, of w x inv, of the thresholds) may
// legitimately pick the other neighbour.
func nearMidpoint(x, tol float64) bool {
	for k := 0; k+1 < len(NF4Code); k++ {
		if math.Abs(x-(float64(NF4Code[k])+float64(NF4Code[k+1]))/2) <= tol {
			return true
		}
	}
	return false
}

// localHalfGap is half the gap between the two codes around x.
func localHalfGap(x float64) float64 {
	for k := 0; k+1 < len(NF4Code); k++ {
		if x <= float64(NF4Code[k+1]) {
			return (float64(NF4Code[k+1]) - float64(NF4Code[k])) / 2
		}
	}
	return 0
}

func maxHalfGap() float64 {
	g := 0.0
	for k := 0; k+1 < len(NF4Code); k++ {
		g = math.Max(g, float64(NF4Code[k+1]-NF4Code[k])/2)
	}
	return g
}

// TestQuantizeAgainstFloat64 holds the float32 quantizer to the float64
// reference on odd sizes, zero blocks and negative-only blocks: codes bit-exact
// wherever the weight is not within float32 rounding of a midpoint, absmax
// exact, and the dequantized error within half the local code-book gap times
// absmax (plus the double-quantization error of the absmax, and bf16 rounding).
func TestQuantizeAgainstFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	cases := map[string][]float32{}
	for _, n := range []int{1, 63, 64, 65, 255, 257, 1000003} {
		cases["n"+strconv.Itoa(n)] = normalWeights(r, n, 0.02)
	}
	zeros := normalWeights(r, 64*5+3, 0.02)
	clear(zeros[64:128])
	clear(zeros[64*5:])
	cases["zero blocks"] = zeros
	neg := normalWeights(r, 64*3+7, 0.05)
	for i := range neg {
		neg[i] = -abs32(neg[i]) - 1e-4
	}
	cases["negative only"] = neg
	cases["one nonzero"] = []float32{0, 0, 0, -0.25, 0}
	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			plain, dq := quantizeBoth(t, name, w)
			codes, xs, absmax := ref64(w, DefaultBlockSize)
			mismatch := 0
			for i := range w {
				got := codeAt(plain.Packed, i)
				if got != codes[i] && !nearMidpoint(xs[i], 1e-6) {
					mismatch++
					if mismatch < 5 {
						t.Errorf("weight %d = %v (x = %.9f): code %d, the float64 reference %d", i, w[i], xs[i], got, codes[i])
					}
				}
			}
			if mismatch > 0 {
				t.Fatalf("%d codes differ from the float64 reference away from any midpoint", mismatch)
			}
			if len(w)%2 == 1 {
				want := byte(7) // the code of the kernel's zero padding
				if absmax[len(absmax)-1] == 0 {
					want = 0
				}
				if got := plain.Packed[len(w)/2] & 15; got != want {
					t.Errorf("odd size: last low nibble %d, want %d", got, want)
				}
			}
			for b, m := range absmax {
				if float64(plain.Absmax[b]) != m {
					t.Fatalf("absmax[%d] = %v, want %v", b, plain.Absmax[b], m)
				}
			}
			// The double-quantization error of each absmax, bounded by half the
			// largest gap of the dynamic map times the block's absmax2.
			dmap := DynamicMap()
			mapHalfGap := 1 + float64(dmap[0]) // from -1 (a block's extreme) to the lowest entry
			for k := 0; k < 255; k++ {
				mapHalfGap = math.Max(mapHalfGap, float64(dmap[k+1]-dmap[k])/2)
			}
			scales := dq.Scales()
			dqErr := make([]float64, len(scales))
			for b := range scales {
				dqErr[b] = math.Abs(float64(scales[b]) - absmax[b])
				a2, off := float64(dq.Nested.Absmax[b/NestedBlockSize]), math.Abs(float64(dq.Nested.Offset))
				// plus the float32 roundings of map x absmax2 and of + offset
				bound := mapHalfGap*a2 + 1.2e-7*(a2+off+absmax[b]) + 1e-12
				if dqErr[b] > bound {
					t.Fatalf("block %d: double-quantized absmax %v vs %v: error %g above %g", b, scales[b], absmax[b], dqErr[b], bound)
				}
			}
			f32, bf, dqbf := dequantizeAll(t, plain, dq)
			for i, v := range w {
				b := i / DefaultBlockSize
				e := localHalfGap(xs[i])*absmax[b]*(1+1e-6) + 1e-12
				if m := absmax[b]; m == 0 {
					e = 0
				}
				if d := math.Abs(float64(f32[i]) - float64(v)); d > e {
					t.Fatalf("weight %d = %v: float32 dequantized %v, error %g above %g", i, v, f32[i], d, e)
				}
				deq := float64(ops.FromBF16(bf[i]))
				if d := math.Abs(deq - float64(v)); d > e+math.Abs(deq)/256 {
					t.Fatalf("weight %d = %v: bf16 dequantized %v, error %g above %g", i, v, deq, d, e+math.Abs(deq)/256)
				}
				deq = float64(ops.FromBF16(dqbf[i]))
				if d := math.Abs(deq - float64(v)); d > e+dqErr[b]+math.Abs(deq)/256 {
					t.Fatalf("weight %d = %v: double-quantized bf16 %v, error %g above %g", i, v, deq, d, e+dqErr[b]+math.Abs(deq)/256)
				}
			}
			if e := maxHalfGap(); e < 0.15 || e > 0.16 {
				t.Errorf("largest half gap %v: the code book changed?", e)
			}
		})
	}
}

// TestZeroBlock pins bitsandbytes' behaviour on a block of zeros: absmax 0,
// every code 0 (0 x 1/0 is NaN), every weight back as -0.
func TestZeroBlock(t *testing.T) {
	w := make([]float32, 64+3)
	w[64], w[66] = 0.5, -0.25
	q, err := Quantize("z", w, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if q.Absmax[0] != 0 {
		t.Fatalf("absmax %v", q.Absmax[0])
	}
	for j := range 32 {
		if q.Packed[j] != 0 {
			t.Fatalf("byte %d of a zero block = %#x, want 0", j, q.Packed[j])
		}
	}
	bf := make([]uint16, len(w))
	must(t, q.DequantizeBF16(bf))
	for i := range 64 {
		if bf[i] != 0x8000 {
			t.Fatalf("weight %d of a zero block dequantized to %#04x, want -0 (0x8000)", i, bf[i])
		}
	}
	if got := []float32{ops.FromBF16(bf[64]), ops.FromBF16(bf[65]), ops.FromBF16(bf[66])}; got[0] != 0.5 || got[1] != 0 || got[2] != ops.RoundBF16(NF4Code[2]*0.5) {
		t.Errorf("the partial block after it: %v", got)
	}
	// A tensor of zeros only, double quantized: the one absmax equals the offset.
	q, err = Quantize("z", make([]float32, 100), nil, Options{DoubleQuant: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range q.Scales() {
		if s != 0 {
			t.Fatalf("scales of zeros: %v", q.Scales())
		}
	}
}

func TestQuantizeRefusesNonFinite(t *testing.T) {
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
		w := make([]float32, 200)
		w[130] = bad
		_, err := Quantize("model.layers.3.mlp.up_proj.weight", w, []int{2, 100}, Options{})
		testcheck.ErrorContains(t, err, "quantize model.layers.3.mlp.up_proj.weight: block 2 (weights 128..191) holds "+ftoa(bad)+" at weight 130: NF4 needs finite weights")
	}
}

func ftoa(f float32) string {
	switch {
	case math.IsNaN(float64(f)):
		return "NaN"
	case f > 0:
		return "+Inf"
	}
	return "-Inf"
}

func TestQuantizeArguments(t *testing.T) {
	w := make([]float32, 12)
	_, err := Quantize("w", w, []int{3, 5}, Options{})
	testcheck.ErrorContains(t, err, "quantize w: shape [3 5] holds 15 weights, got 12")
	_, err = Quantize("w", w, []int{-1, 5}, Options{})
	testcheck.ErrorContains(t, err, "quantize w: shape [-1 5] has a negative dimension")
	for _, bs := range []int{16, 48, 8192} {
		_, err = Quantize("w", w, nil, Options{BlockSize: bs})
		testcheck.ErrorContains(t, err, "is not one of bitsandbytes'")
	}
	q, err := Quantize("w", w, []int{3, 4}, Options{})
	if err != nil || q.BlockSize != 64 || len(q.Packed) != 6 || len(q.Absmax) != 1 {
		t.Fatalf("zero options: %+v, %v", q, err)
	}
	testcheck.ErrorContains(t, q.Dequantize(make([]float32, 11)), "dequantize: destination holds 11 weights, the tensor 12")
	q, err = Quantize("empty", nil, nil, Options{DoubleQuant: true})
	if err != nil || q.Len() != 0 || q.Validate() != nil {
		t.Fatalf("empty tensor: %+v, %v", q, err)
	}
}

// TestDequantizeFastMatchesReference holds the per-block lookup-table
// dequantizers to the one-weight-at-a-time reference, bit for bit, for several
// block sizes, odd sizes, and with double quantization.
func TestDequantizeFastMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, bs := range []int{32, 64, 128, 4096} {
		for _, n := range []int{1, 31, 4097, 70001} {
			for _, dq := range []bool{false, true} {
				w := normalWeights(r, n, 0.03)
				q, err := Quantize("w", w, nil, Options{BlockSize: bs, DoubleQuant: dq})
				if err != nil {
					t.Fatal(err)
				}
				must(t, q.Validate())
				ref := q.dequantizeRef()
				f32 := make([]float32, n)
				bf := make([]uint16, n)
				must(t, q.Dequantize(f32))
				must(t, q.DequantizeBF16(bf))
				for i := range ref {
					if math.Float32bits(f32[i]) != math.Float32bits(ref[i]) || bf[i] != ops.ToBF16(ref[i]) {
						t.Fatalf("bs %d n %d dq %v: weight %d: %v / %#04x, reference %v", bs, n, dq, i, f32[i], bf[i], ref[i])
					}
				}
			}
		}
	}
}

func TestDynamicMap(t *testing.T) {
	m := DynamicMap()
	if m[127] != 0 || m[255] != 1 || m[0] != -0.99296874 {
		t.Errorf("map[0], [127], [255] = %v, %v, %v", m[0], m[127], m[255])
	}
	for k := 0; k < 255; k++ {
		if !(m[k] < m[k+1]) {
			t.Fatalf("map not strictly increasing at %d: %v %v", k, m[k], m[k+1])
		}
	}
	for k := 0; k < 127; k++ {
		if m[126-k] != -m[128+k] {
			t.Fatalf("map not symmetric: map[%d] = %v, map[%d] = %v", 126-k, m[126-k], 128+k, m[128+k])
		}
	}
	if m[128] != 5.5000004e-07 { // 1e-6 x (0.1 + 1) / 2
		t.Errorf("smallest positive entry %v", m[128])
	}
}

// TestQuantize8AgainstNearest holds bitsandbytes' search to the nearest map
// entry in float64, away from midpoints.
func TestQuantize8AgainstNearest(t *testing.T) {
	m := DynamicMap()
	r := rand.New(rand.NewPCG(7, 8))
	for range 200000 {
		x := float32(r.Float64()*2 - 1)
		if r.IntN(4) == 0 {
			x *= float32(math.Pow(10, -float64(r.IntN(7))))
		}
		got := quantize8(x, &m)
		best, bestD, secondD := 0, math.Inf(1), math.Inf(1)
		for k, c := range m {
			d := math.Abs(float64(x) - float64(c))
			if d < bestD {
				best, secondD, bestD = k, bestD, d
			} else if d < secondD {
				secondD = d
			}
		}
		if int(got) != best && secondD-bestD > 1e-7*math.Abs(float64(x))+1e-12 {
			t.Fatalf("quantize8(%v) = %d (%v), nearest %d (%v)", x, got, m[got], best, m[best])
		}
	}
	if quantize8(float32(math.NaN()), &m) != 0 {
		t.Error("NaN must take code 0")
	}
	if quantize8(1, &m) != 255 || quantize8(-1, &m) != 0 || quantize8(0, &m) != 127 {
		t.Error("the ends and zero")
	}
}

func TestMeanF32(t *testing.T) {
	if meanF32(nil) != 0 || meanF32([]float32{3}) != 3 {
		t.Error("trivial means")
	}
	// Order does not matter, and large and small values do not lose each other.
	v := []float32{1e8, 1, -1e8, 1, 3}
	if got := meanF32(v); got != 1 {
		t.Errorf("mean %v, want 1", got)
	}
}

func BenchmarkQuantize(b *testing.B) {
	w := normalWeights(rand.New(rand.NewPCG(1, 1)), 4096*4096, 0.02)
	b.SetBytes(int64(len(w)) * 2)
	for b.Loop() {
		if _, err := Quantize("w", w, nil, Options{DoubleQuant: true}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDequantizeBF16(b *testing.B) {
	w := normalWeights(rand.New(rand.NewPCG(1, 1)), 4096*4096, 0.02)
	q, _ := Quantize("w", w, nil, Options{DoubleQuant: true})
	dst := make([]uint16, len(w))
	b.SetBytes(int64(len(w)) * 2)
	for b.Loop() {
		q.DequantizeBF16(dst)
	}
}

// quantizeBoth quantizes w as bitsandbytes does with and without double quantization.
func quantizeBoth(t testing.TB, name string, w []float32) (plain, dq *NF4) {
	t.Helper()
	plain, err := Quantize(name, w, nil, Options{})
	must(t, err)
	dq, err = Quantize(name, w, nil, Options{DoubleQuant: true})
	must(t, err)
	return plain, dq
}

// dequantizeAll dequantizes plain to float32 and bf16, and dq to bf16.
func dequantizeAll(t testing.TB, plain, dq *NF4) (f32 []float32, bf, dqbf []uint16) {
	t.Helper()
	f32, bf, dqbf = make([]float32, plain.Len()), make([]uint16, plain.Len()), make([]uint16, dq.Len())
	must(t, plain.Dequantize(f32))
	must(t, plain.DequantizeBF16(bf))
	must(t, dq.DequantizeBF16(dqbf))
	return f32, bf, dqbf
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
