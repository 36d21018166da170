package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/ckpt"
)

// TestLossScalerFP16: fp16 training on the CPU's half-precision twin, two
// data-parallel ranks (under mpirun when there is one), loss scale window 2.
// Rank 1 alone reports an overflow at step 3: every rank skips exactly that
// step (no loss, no update; both rank logs record it), the scale halves from
// 2^17 (doubled after steps 1-2) to 2^16 and grows again after two clean
// steps; the checkpoint after step 4 records the scale, and a run resumed
// from it gives the uninterrupted run's losses bit for bit.
func TestLossScalerFP16(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	writeStories(t, data, 32, 13)
	common := fmt.Sprintf("-model %s -data %s -device cpu -precision fp16 -method lora -steps 8 -lr 5e-3 -batch 1 -seq 64 -lora-rank 4 -grad-accum 2 -loss-scale-window 2 -ckpt-every 4 -log-every 100 -timeout 120",
		storiesDir, data)
	t.Setenv("TRAIN_DEBUG_GRAD_OVERFLOW", "3:1")
	straight := filepath.Join(dir, "straight")
	launchRanks(t, 2, strings.Fields(common+" -run "+straight))

	scales := map[int]float64{}
	losses := map[int]float64{}
	skipped := map[int]bool{}
	for _, m := range readMetrics(t, straight) {
		s := int(m["step"])
		if v, ok := m["loss_scale"]; ok {
			scales[s] = v
		}
		if v, ok := m["loss"]; ok {
			losses[s] = v
		}
		if m["overflow_skipped"] == 1 {
			skipped[s] = true
		}
	}
	want := map[int]float64{1: 65536, 2: 131072, 3: 65536, 4: 65536, 5: 131072, 6: 131072, 7: 262144, 8: 262144}
	for s := 1; s <= 8; s++ {
		if scales[s] != want[s] {
			t.Errorf("step %d: loss scale %v, want %v", s, scales[s], want[s])
		}
		if _, ok := losses[s]; ok == (s == 3) {
			t.Errorf("step %d: loss recorded %v, skipped %v: only step 3 is skipped", s, ok, skipped[s])
		}
		if skipped[s] != (s == 3) {
			t.Errorf("step %d: overflow_skipped %v", s, skipped[s])
		}
	}
	for rank := 0; rank < 2; rank++ {
		if got := overflowSkips(t, straight, rank); len(got) != 1 || got[0] != 3 {
			t.Errorf("rank %d log: overflow skips at steps %v, want [3]", rank, got)
		}
	}

	t.Setenv("TRAIN_DEBUG_GRAD_OVERFLOW", "")
	resumed := filepath.Join(dir, "resumed")
	launchRanks(t, 2, strings.Fields(common+" -run "+resumed+" -resume "+ckpt.StepDir(straight, 4)))
	got := stepLosses(t, resumed)
	for s := 5; s <= 8; s++ {
		if math.Float64bits(got[s]) != math.Float64bits(losses[s]) {
			t.Errorf("step %d: loss %.17g resumed, %.17g straight", s, got[s], losses[s])
		}
	}
}

// overflowSkips is the steps rank's log records as skipped for an fp16
// gradient overflow.
func overflowSkips(t *testing.T, run string, rank int) []int {
	t.Helper()
	f, err := os.Open(filepath.Join(run, "logs", fmt.Sprintf("rank-%05d.jsonl", rank)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []int
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			Msg  string `json:"msg"`
			Step int    `json:"step"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "step skipped: fp16 gradient overflow" {
			steps = append(steps, rec.Step)
		}
	}
	return steps
}
