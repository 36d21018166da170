package ops

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestAttentionDecodeMatchesForward: queries at the last Tq of Tk positions,
// attending to a cache that holds the sequence's k and v (and NaN past Tk, which
// must not be read), give exactly AttentionForward's rows for those positions,
// on both CPU backends.
func TestAttentionDecodeMatchesForward(t *testing.T) {
	for _, be := range []Backend{NewCPU(), NewCPU64()} {
		t.Run(be.Name(), func(t *testing.T) { testAttentionDecode(t, be) })
	}
}

func testAttentionDecode(t *testing.T, be Backend) {
	B, T, H, KVH, D, S := 2, 11, 4, 2, 8, 14
	QW, KW := H*D, KVH*D
	rng := rand.New(rand.NewPCG(3, 4))
	host := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(2*rng.Float64() - 1)
		}
		return v
	}
	upload := func(v []float32) Buf {
		b, err := be.Alloc(F32, len(v))
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Upload(b, v); err != nil {
			t.Fatal(err)
		}
		return b
	}
	download := func(b Buf, n int) []float64 {
		v := make([]float64, n)
		if err := be.Download64(v, b); err != nil {
			t.Fatal(err)
		}
		return v
	}
	qh, kh, vh := host(B*T*QW), host(B*T*KW), host(B*T*KW)
	q, k, v := upload(qh), upload(kh), upload(vh)
	out, lse := zeros(t, be, B*T*QW), zeros(t, be, B*H*T)
	be.AttentionForward(out, lse, q, k, v, nil, B, T, H, KVH, D)
	want := download(out, B*T*QW)

	// The cache: row b's tokens at [b*S, b*S+T), NaN after them.
	kc, vc := make([]float32, B*S*KW), make([]float32, B*S*KW)
	for i := range kc {
		kc[i], vc[i] = float32(math.NaN()), float32(math.NaN())
	}
	for b := 0; b < B; b++ {
		copy(kc[b*S*KW:], kh[b*T*KW:(b+1)*T*KW])
		copy(vc[b*S*KW:], vh[b*T*KW:(b+1)*T*KW])
	}
	kcb, vcb := upload(kc), upload(vc)
	for _, c := range []struct{ Tq, Tk int }{{T, T}, {1, T}, {3, T}, {1, 1}, {2, 7}} {
		qd := make([]float32, B*c.Tq*QW)
		for b := 0; b < B; b++ {
			first := b*T + c.Tk - c.Tq
			copy(qd[b*c.Tq*QW:], qh[first*QW:(first+c.Tq)*QW])
		}
		od := zeros(t, be, len(qd))
		be.AttentionDecode(od, upload(qd), kcb, vcb, B, c.Tq, c.Tk, S, H, KVH, D)
		got := download(od, len(qd))
		for b := 0; b < B; b++ {
			for i := 0; i < c.Tq; i++ {
				row := b*T + c.Tk - c.Tq + i
				for j := 0; j < QW; j++ {
					g, w := got[(b*c.Tq+i)*QW+j], want[row*QW+j]
					if g != w {
						t.Fatalf("Tq %d Tk %d: row %d query %d [%d] = %v, AttentionForward %v", c.Tq, c.Tk, b, i, j, g, w)
					}
				}
			}
		}
	}
}

// TestAttentionDecodeBadDims: impossible shapes are recorded errors, not panics.
func TestAttentionDecodeBadDims(t *testing.T) {
	for _, c := range []struct {
		B, Tq, Tk, S, H, KVH, D int
		want                    string
	}{
		{1, 2, 1, 4, 2, 1, 4, "Tq <= Tk"},
		{1, 1, 5, 4, 2, 1, 4, "Tk <= S"},
		{1, 0, 1, 4, 2, 1, 4, "1 <= Tq"},
		{1, 1, 1, 4, 3, 2, 4, "not a multiple"},
		{1, 1, 1, 64, 2, 1, 4, "kCache has"},
	} {
		be := NewCPU()
		buf := zeros(t, be, 32)
		be.AttentionDecode(buf, buf, buf, buf, c.B, c.Tq, c.Tk, c.S, c.H, c.KVH, c.D)
		if err := be.Sync(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one saying %q", c, err, c.want)
		}
	}
}
