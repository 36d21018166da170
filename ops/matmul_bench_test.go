package ops

import (
	"fmt"
	"testing"
)

// BenchmarkMatmul reports GFLOP/s of the three layouts on a Llama-like shape
// (tokens x hidden x hidden).
func BenchmarkMatmul(b *testing.B) {
	const M, N, K = 512, 256, 256
	be := NewCPU()
	x, _ := be.Alloc(F32, M*K)
	w, _ := be.Alloc(F32, N*K)
	o, _ := be.Alloc(F32, M*N)
	for i := range x.(*cpuBuf[float32]).f {
		x.(*cpuBuf[float32]).f[i] = float32(i%7) * 0.1
	}
	for i := range w.(*cpuBuf[float32]).f {
		w.(*cpuBuf[float32]).f[i] = float32(i%5) * 0.1
	}
	for _, layout := range []string{"NT", "NN", "TN"} {
		b.Run(fmt.Sprintf("%s-%dx%dx%d", layout, M, N, K), func(b *testing.B) {
			for b.Loop() {
				switch layout {
				case "NT":
					be.MatmulNT(o, x, w, M, N, K, 1, 0)
				case "NN":
					be.MatmulNN(o, x, w, M, N, K, 1, 0)
				case "TN":
					be.MatmulTN(w, o, x, N, K, M, 1, 0) // dW[N,K] = dyᵀ[M,N]·x[M,K]
				}
			}
			b.ReportMetric(2*M*N*K*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
