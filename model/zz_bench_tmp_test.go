package model

import (
	"testing"
	"time"

	"train/ops"
)

func TestTmpBench(t *testing.T) {
	cfg := ltConfig(false)
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim, cfg.VocabSize, cfg.NumLayers = 256, 704, 8, 4, 32, 2048, 4
	cfg.MaxPositions = 1024
	w := ltWeights(cfg, 1)
	for _, ck := range []bool{false, true} {
		m := ltModel(t, ops.NewCPU(), w, Options{Checkpoint: ck})
		b := ltBatch(cfg, 2, 512, 1)
		m.Forward(b)
		m.Backward(1)
		t0 := time.Now()
		m.Forward(b)
		t1 := time.Now()
		m.Backward(1)
		t2 := time.Now()
		params := float64(cfg.NumLayers*(4*256*256/1+3*256*704) + 2048*256)
		flops := 6 * params * float64(b.B*b.T)
		t.Logf("ck=%v fwd %v bwd %v  ~%.2f GFLOP/s (matmul flops only)", ck, t1.Sub(t0), t2.Sub(t1), flops/t2.Sub(t0).Seconds()/1e9)
	}
}
