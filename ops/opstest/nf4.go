package opstest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"train/ops"
	"train/quant"
)

// CheckNF4 holds be's 4-bit and random-weight ops to their host definitions,
// bit for bit: DequantNF4 to package quant's Dequantize and DequantizeBF16
// (with and without double quantization), QuantizeNF4 to quant.Quantize's
// codes and absmaxes, and FillNormal to ops.FillNormalHost (allowing a value
// one float32 ulp away, as Backend.FillNormal does, in at most 1 of 10,000).
// The sizes include odd ones and ones that are not a multiple of a block.
func CheckNF4(t *testing.T, be ops.Backend) {
	rng := rand.New(rand.NewPCG(7, 11))
	sizes := []int{1, 63, 64, 130, 64*256 + 65, 3*64*256 + 7, 100_001}
	for _, n := range sizes {
		w := make([]float32, n)
		for i := range w {
			w[i] = float32(rng.NormFloat64() * 0.02)
		}
		if n > 200 {
			clear(w[64:128]) // an all-zero block
		}
		for _, dq := range []bool{false, true} {
			t.Run(fmt.Sprintf("n=%d/double=%v", n, dq), func(t *testing.T) {
				q, err := quant.Quantize("w", w, nil, quant.Options{DoubleQuant: dq})
				if err != nil {
					t.Fatal(err)
				}
				dev := UploadNF4(t, be, q)
				want := make([]float32, n)
				if err := q.Dequantize(want); err != nil {
					t.Fatal(err)
				}
				wantBF := make([]uint16, n)
				if err := q.DequantizeBF16(wantBF); err != nil {
					t.Fatal(err)
				}
				for _, dt := range []ops.DType{ops.F32, ops.BF16, ops.F16} {
					out := alloc(t, be, dt, n)
					be.DequantNF4(out, dev)
					got := make([]float32, n)
					if err := be.Download(got, out); err != nil {
						t.Fatal(err)
					}
					for i := range got {
						ref := want[i]
						switch dt {
						case ops.BF16:
							ref = math.Float32frombits(uint32(wantBF[i]) << 16)
						case ops.F16:
							ref = ops.RoundF16(want[i])
						}
						if math.Float32bits(got[i]) != math.Float32bits(ref) {
							t.Fatalf("DequantNF4 into %v: weight %d is %v, want %v", dt, i, got[i], ref)
						}
					}
				}
				if dq {
					return
				}
				x := alloc(t, be, ops.F32, n)
				if err := be.Upload(x, w); err != nil {
					t.Fatal(err)
				}
				packed, absmax := alloc(t, be, ops.U8, (n+1)/2), alloc(t, be, ops.F32, q.Blocks())
				be.QuantizeNF4(packed, absmax, x, n, q.BlockSize)
				gotP := make([]byte, len(q.Packed))
				if err := be.DownloadBytes(gotP, packed); err != nil {
					t.Fatal(err)
				}
				gotA := make([]float32, q.Blocks())
				if err := be.Download(gotA, absmax); err != nil {
					t.Fatal(err)
				}
				for i := range gotP {
					if gotP[i] != q.Packed[i] {
						t.Fatalf("QuantizeNF4: byte %d is %#02x, want %#02x", i, gotP[i], q.Packed[i])
					}
				}
				for i := range gotA {
					if math.Float32bits(gotA[i]) != math.Float32bits(q.Absmax[i]) {
						t.Fatalf("QuantizeNF4: absmax %d is %v, want %v", i, gotA[i], q.Absmax[i])
					}
				}
			})
		}
	}
	t.Run("FillNormal", func(t *testing.T) {
		const n, key, std = 200_003, 0x1234_5678_9abc_def0, 0.02
		want := make([]float32, n)
		ops.FillNormalHost(want, key, 0, std)
		for _, dt := range []ops.DType{ops.F32, ops.BF16, ops.F16} {
			out := alloc(t, be, dt, n)
			be.FillNormal(out, n, key, std)
			got := make([]float32, n)
			if err := be.Download(got, out); err != nil {
				t.Fatal(err)
			}
			off := 0
			for i := range got {
				ref := ops.RoundAs(dt, want[i])
				if got[i] == ref {
					continue
				}
				off++
				if d := int64(math.Float32bits(got[i])) - int64(math.Float32bits(ref)); d > 1<<16 || d < -(1<<16) || (dt == ops.F32 && d*d > 1) {
					t.Fatalf("FillNormal into %v: value %d is %v, want %v", dt, i, got[i], ref)
				}
			}
			if off > n/10_000 {
				t.Fatalf("FillNormal into %v: %d of %d values differ from the host's by an ulp", dt, off, n)
			}
		}
	})
}

// UploadNF4 copies a host NF4 tensor to be, as the model holds a frozen 4-bit
// weight.
func UploadNF4(t testing.TB, be ops.Backend, q *quant.NF4) ops.NF4 {
	t.Helper()
	w := ops.NF4{N: q.Len(), BlockSize: q.BlockSize, Packed: alloc(t, be, ops.U8, len(q.Packed))}
	if err := be.UploadBytes(w.Packed, q.Packed); err != nil {
		t.Fatal(err)
	}
	if q.Nested == nil {
		w.Absmax = alloc(t, be, ops.F32, len(q.Absmax))
		if err := be.Upload(w.Absmax, q.Absmax); err != nil {
			t.Fatal(err)
		}
		return w
	}
	nq := q.Nested
	w.NestedBlock, w.Offset = nq.BlockSize, nq.Offset
	w.Codes = alloc(t, be, ops.U8, len(nq.Codes))
	w.Absmax2 = alloc(t, be, ops.F32, len(nq.Absmax))
	w.Map = alloc(t, be, ops.F32, 256)
	for _, err := range []error{be.UploadBytes(w.Codes, nq.Codes), be.Upload(w.Absmax2, nq.Absmax), be.Upload(w.Map, nq.Map[:])} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func alloc(t testing.TB, be ops.Backend, dt ops.DType, n int) ops.Buf {
	t.Helper()
	b, err := be.Alloc(dt, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
