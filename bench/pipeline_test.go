package bench

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"train/collective"
)

// TestPipelineTwoRanks runs the pipeline benchmark as two ranks of one
// process (one stage each): rank 0 prints a row per M, both ranks share one
// run directory (a checkpoint is committed from both ranks' shards), and
// rank 1 prints nothing.
func TestPipelineTwoRanks(t *testing.T) {
	t.Setenv("TRAIN_JOB_ID", fmt.Sprintf("bench-pipeline-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	t.Setenv("TRAIN_SECRET_FILE", filepath.Join(t.TempDir(), "job-secret"))
	opts := PipelineOptions{Model: "random:tiny", Micro: []int{1, 2}, Steps: 2, Seq: 16, Batch: 1, Chunks: 2}
	var wg sync.WaitGroup
	outs := make([]bytes.Buffer, 2)
	errs := make([]error, 2)
	for r := range outs {
		fs := flag.NewFlagSet("bench pipeline", flag.ContinueOnError)
		cf := collective.AddFlags(fs)
		if err := fs.Parse([]string{"-rank", fmt.Sprint(r), "-world-size", "2", "-comm-timeout", "60s"}); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = Pipeline(cf, opts, &outs[r])
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	out := outs[0].String()
	if !strings.Contains(out, "P=2 stages") || !strings.Contains(out, "theory (P-1)/(M+P-1)") || !strings.Contains(out, "V=2 theory (P-1)/(VM+P-1)") {
		t.Errorf("rank 0's output lacks the header:\n%s", out)
	}
	// M=2 is a multiple of P: interleaved 1F1B ran, with the theory's
	// (P-1)/(VM+P-1) = 1/5 and the simulation beside it; M=1 is not.
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "1" && (len(f) != 8 || f[4] != "-"):
			t.Errorf("M=1 row: %q, want 1F1B's numbers and dashes for interleaving", line)
		case len(f) > 0 && f[0] == "2" && (len(f) != 8 || f[4] != "0.200" || f[7] != "0.200"):
			t.Errorf("M=2 row: %q, want 1F1B's numbers, then 0.200 and the simulated bubble", line)
		}
	}
	for _, row := range []string{"\n  1  ", "\n  2  "} {
		if !strings.Contains(out, row) {
			t.Errorf("rank 0's output lacks the row %q:\n%s", strings.TrimSpace(row), out)
		}
	}
	if outs[1].Len() != 0 {
		t.Errorf("rank 1 printed:\n%s", outs[1].String())
	}
}
