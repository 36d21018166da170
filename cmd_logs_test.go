package main

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/runlog"
)

// TestLogsNamesStraggler trains random:tiny on two data-parallel ranks with
// rank 1 sleeping in every step, and checks that `train logs` names rank 1, and
// only it, as the straggler with its extra time outside compute and comm.
// Step times alone could not tell: rank 0 waits for rank 1 in its all-reduce.
func TestLogsNamesStraggler(t *testing.T) {
	if testing.Short() {
		t.Skip("trains two ranks")
	}
	run := filepath.Join(t.TempDir(), "run")
	// The ranks inherit the environment (a local mpirun passes it on too).
	t.Setenv("TRAIN_DEBUG_STEP_SLEEP", "1:1s")
	launchRanks(t, 2, []string{"-steps", "6", "-run", run, "-log-every", "100"})

	var out, errOut bytes.Buffer
	if err := runLogs([]string{run, "-json"}, &out, &errOut); err != nil {
		t.Fatalf("train logs: %v\n%s", err, errOut.String())
	}
	var s runlog.Summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("-json output: %v\n%s", err, out.String())
	}
	if s.Status != runlog.Finished || !s.Done || s.World != 2 || s.LastStep != 6 || len(s.Ranks) != 2 {
		t.Fatalf("summary: status %s done %v world %d last step %d ranks %d", s.Status, s.Done, s.World, s.LastStep, len(s.Ranks))
	}
	if len(s.Stragglers) != 1 || s.Stragglers[0].Rank != 1 || s.Stragglers[0].Where != "other" {
		t.Fatalf("stragglers %+v, want rank 1 with its extra time in other", s.Stragglers)
	}
	if x := s.Stragglers[0]; x.Other < 0.9 {
		t.Errorf("rank 1 spends %.3f s per step outside compute and comm, want the 1 s sleep", x.Other)
	}
	if len(s.Checkpoints) == 0 || s.Checkpoints[len(s.Checkpoints)-1].Step != 6 {
		t.Errorf("checkpoints %+v, want the final one at step 6", s.Checkpoints)
	}

	out.Reset()
	if err := runLogs([]string{run}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "stragglers") || !strings.Contains(out.String(), "  rank 1 on ") {
		t.Errorf("the text summary does not name rank 1:\n%s", out.String())
	}
	out.Reset()
	if err := runLogs([]string{"-rank", "0", run}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "  rank 1 on ") {
		t.Errorf("-rank 0 shows rank 1:\n%s", out.String())
	}

	// The picture of the same run.
	pngPath := filepath.Join(t.TempDir(), "run.png")
	out.Reset()
	if err := runLogs([]string{run, "-plot", pngPath}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "6 steps, 1 eval points") {
		t.Errorf("plot: %s", out.String())
	}
	checkPNG(t, pngPath)
}

// checkPNG fails unless path is a PNG that decodes and is not blank: many
// distinct colours, and the curves' colours among them.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s does not decode: %v", path, err)
	}
	colours := map[uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[r>>8<<16|g>>8<<8|bl>>8]++
		}
	}
	if len(colours) < 10 {
		t.Fatalf("%s: %d distinct colours: blank", path, len(colours))
	}
	blue := uint32(31<<16 | 119<<8 | 180)
	if colours[blue] < 50 || colours[0xffffff] < b.Dx()*b.Dy()/4 {
		t.Errorf("%s: %d loss-blue and %d white pixels", path, colours[blue], colours[0xffffff])
	}
}

// TestLogsUsage: bad flags and arguments are usage errors, found before any
// log is read; a folder without logs is an error.
func TestLogsUsage(t *testing.T) {
	run := t.TempDir()
	var out, errOut bytes.Buffer
	for _, args := range [][]string{{}, {run, "-straggler", "0.5"}, {run, "other"}, {run, "-follow", "-plot", "x.png"}, {run, "-plot", "x.gif"}} {
		err := runLogs(args, &out, &errOut)
		if _, ok := err.(*usageError); !ok {
			t.Errorf("train logs %q: %v, want a usage error", args, err)
		}
	}
	if err := runLogs([]string{run}, &out, &errOut); err == nil {
		t.Error("a folder without logs: no error")
	}
}
