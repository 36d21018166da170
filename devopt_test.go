package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/ckpt"
)

// TestDeviceOptimizer runs the same fine-tune with the optimizer on the host and
// on the device (the CPU backend's AdamW and SumSquares ops, as a GPU runs
// them; the rank log says which ran). Without clipping the update is the same
// arithmetic, so the losses are bitwise equal; the gradient norms, summed in
// another order, agree within 1e-6 (ops' tests check AdamW's clipping scale). A run
// resumed from the device optimizer's checkpoint continues bitwise, so its
// moments were saved and restored.
func TestDeviceOptimizer(t *testing.T) {
	requireStories(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "train.jsonl")
	writeStories(t, data, 48, 5)
	for _, method := range []string{"lora", "full"} {
		t.Run(method, func(t *testing.T) {
			common := []string{"-model", storiesDir, "-data", data, "-method", method, "-steps", "12", "-lr", "5e-3",
				"-batch", "2", "-seq", "64", "-lora-rank", "4", "-ckpt-every", "6", "-log-every", "100", "-max-grad-norm", "0"}
			host, dev, resumed := filepath.Join(dir, method+"-host"), filepath.Join(dir, method+"-dev"), filepath.Join(dir, method+"-resumed")
			t.Setenv(OptimizerEnv, "host")
			runMain(t, append(common, "-run", host)...)
			t.Setenv(OptimizerEnv, "device")
			runMain(t, append(common, "-run", dev)...)
			runMain(t, append(common, "-run", resumed, "-resume", ckpt.StepDir(dev, 6))...)
			lh, ld, lr := stepLosses(t, host), stepLosses(t, dev), stepLosses(t, resumed)
			nh, nd := stepValues(t, host, "grad_norm"), stepValues(t, dev, "grad_norm")
			for s := 1; s <= 12; s++ {
				if ld[s] != lh[s] || ld[s] == 0 {
					t.Errorf("step %d: loss %v with the device optimizer, %v on the host", s, ld[s], lh[s])
				}
				if rel := math.Abs(nd[s]-nh[s]) / nh[s]; !(rel <= 1e-6) {
					t.Errorf("step %d: gradient norm %v with the device optimizer, %v on the host", s, nd[s], nh[s])
				}
				if s > 6 && lr[s] != ld[s] {
					t.Errorf("step %d: loss %v resumed, %v straight", s, lr[s], ld[s])
				}
			}
			for run, want := range map[string]string{host: "host", dev: "device", resumed: "device"} {
				log, err := os.ReadFile(filepath.Join(run, "logs", "rank-00000.jsonl"))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(log), `"optimizer":"`+want+`"`) {
					t.Errorf("%s: the rank log does not say the optimizer ran on the %s", run, want)
				}
			}
		})
	}
}

// stepValues maps step -> the named value from a run's metrics.jsonl.
func stepValues(t *testing.T, run, key string) map[int]float64 {
	t.Helper()
	out := map[int]float64{}
	for _, m := range readMetrics(t, run) {
		if v, ok := m[key]; ok {
			out[int(m["step"])] = v
		}
	}
	return out
}
