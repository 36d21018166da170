package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

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

// syntheticLogs are rank logs of a run where ranks 0-2 train three steps, then
// rank 2 fails with an out-of-memory error and ranks 0 and 1 fail after it
// because their peer is gone: per file, the lines before the failures (head)
// and the failure lines (tail).
func syntheticLogs() (head, tail map[string][]byte) {
	head, tail = map[string][]byte{}, map[string][]byte{}
	t0 := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	for r := 0; r < 3; r++ {
		var b bytes.Buffer
		line := func(sec float64, level, msg string, kv ...any) {
			m := map[string]any{"time": t0.Add(time.Duration(sec * 1e9)).Format(time.RFC3339Nano), "level": level, "msg": msg, "rank": r}
			for i := 0; i+1 < len(kv); i += 2 {
				m[kv[i].(string)] = kv[i+1]
			}
			j, _ := json.Marshal(m)
			b.Write(append(j, '\n'))
		}
		line(0, "INFO", "start", "host", "h", "world", 3, "stage", 0, "replica", r, "device", "cpu-f32", "model", "random:tiny", "method", "lora")
		for s := 1; s <= 3; s++ {
			line(float64(s), "INFO", "step", "step", s, "loss", 4.0, "lr", 1e-3, "tokens", 512, "step_s", 1.0, "compute_s", 0.8, "comm_s", 0.2, "bubble_s", 0.0)
		}
		name := fmt.Sprintf("rank-%05d.jsonl", r)
		head[name] = bytes.Clone(b.Bytes())
		b.Reset()
		if r == 2 {
			line(3.2, "ERROR", "failed", "error", "step 4: ops: out of memory allocating 2 GiB")
		} else {
			line(4.5-float64(r)/10, "ERROR", "failed", "error", "step 4: collective: recv from rank 2: EOF")
		}
		tail[name] = bytes.Clone(b.Bytes())
	}
	return head, tail
}

// writeRankLogs writes the synthetic logs into run/logs (with the failures when
// failed) and a metrics.jsonl.
func writeRankLogs(t *testing.T, run string, failed bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(run, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	head, tail := syntheticLogs()
	for name, b := range head {
		if failed {
			b = append(b, tail[name]...)
		}
		if err := os.WriteFile(filepath.Join(run, "logs", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := `{"step":1,"loss":4.2,"lr":0.001,"tokens_per_s":500}
{"step":2,"loss":4.1,"lr":0.002,"tokens_per_s":510}
{"step":2,"eval_loss":4.3}
{"step":3,"loss":4.0,"lr":0.003,"tokens_per_s":505}
`
	if err := os.WriteFile(filepath.Join(run, "metrics.jsonl"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
}

// appendFailures appends the failure lines to a run writeRankLogs wrote
// without them, as the ranks would. It runs off the test goroutine, so it
// reports nothing: a failure shows as the follow never ending.
func appendFailures(run string) {
	_, tail := syntheticLogs()
	for name, b := range tail {
		f, err := os.OpenFile(filepath.Join(run, "logs", name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return
		}
		f.Write(b)
		f.Close()
	}
}

// TestLogsShowsFirstFailureFirst: the rank that failed first, and its error,
// lead the summary, before its victims and the table.
func TestLogsShowsFirstFailureFirst(t *testing.T) {
	run := t.TempDir()
	writeRankLogs(t, run, true)
	var out, errOut bytes.Buffer
	if err := runLogs([]string{run}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	first := strings.Index(text, "rank 2 on h failed")
	victim := strings.Index(text, "rank 1 on h failed")
	if first < 0 || victim < first || !strings.Contains(text[first:victim], "out of memory allocating 2 GiB") {
		t.Fatalf("rank 2's out-of-memory error should come first:\n%s", text)
	}
	if !strings.HasPrefix(text, "run "+run+": failed") {
		t.Errorf("status line: %q", strings.SplitN(text, "\n", 2)[0])
	}
	// Bad usage is a usage error.
	for _, args := range [][]string{{}, {run, "-straggler", "0.5"}, {run, "other"}, {run, "-follow", "-plot", "x.png"}, {run, "-plot", "x.gif"}} {
		err := runLogs(args, &out, &errOut)
		if _, ok := err.(*usageError); !ok {
			t.Errorf("train logs %q: %v, want a usage error", args, err)
		}
	}
	if err := runLogs([]string{t.TempDir()}, &out, &errOut); err == nil {
		t.Error("a folder without logs: no error")
	}
}

// TestLogsFollowEnds: -follow returns once every rank has ended, and when its
// context is cancelled (Ctrl-C) while the ranks still run, leaving no goroutine.
func TestLogsFollowEnds(t *testing.T) {
	before := runtime.NumGoroutine()
	done := t.TempDir()
	writeRankLogs(t, done, true)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := followLogs(ctx, done, runlog.DefaultOptions(), 10*time.Millisecond, false, &out); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil || !strings.Contains(out.String(), "out of memory") || !strings.Contains(out.String(), "per rank") {
		t.Fatalf("follow of an ended run: ctx %v\n%s", ctx.Err(), out.String())
	}

	live := t.TempDir()
	writeRankLogs(t, live, false)
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel2)
	out.Reset()
	start := time.Now()
	if err := followLogs(ctx2, live, runlog.DefaultOptions(), 20*time.Millisecond, true, &out); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("follow took %v to end after cancel", time.Since(start))
	}
	// -json: one object per event (3 starts), then the summary.
	dec := json.NewDecoder(&out)
	n := 0
	var last map[string]any
	for dec.More() {
		last = nil
		if err := dec.Decode(&last); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 4 || last["status"] == nil {
		t.Errorf("%d JSON objects, last %v; want 3 events and the summary", n, last)
	}
	// Appended lines show up on the next poll, and the run's end ends it.
	ctx3, cancel3 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel3()
	time.AfterFunc(100*time.Millisecond, func() { appendFailures(live) })
	out.Reset()
	if err := followLogs(ctx3, live, runlog.DefaultOptions(), 20*time.Millisecond, false, &out); err != nil {
		t.Fatal(err)
	}
	if ctx3.Err() != nil || !strings.Contains(out.String(), "out of memory") {
		t.Errorf("follow did not end with the run: %v\n%s", ctx3.Err(), out.String())
	}
	for i := 0; i < 50 && runtime.NumGoroutine() > before; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after follow, %d before", n, before)
	}
}

// TestLogsFollowKilledRank: -follow of a run whose rank 3 was SIGKILLed (its
// log just stops) while ranks 0-2 fail naming it ends by itself, once the
// survivors' errors are in, with rank 3 lost as the first failure; it never
// waits for the killed rank's end record, which will not come.
func TestLogsFollowKilledRank(t *testing.T) {
	run := t.TempDir()
	if err := os.MkdirAll(filepath.Join(run, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-10 * time.Second).UTC()
	files := map[int]*os.File{}
	line := func(r int, sec float64, level, msg string, kv ...any) {
		m := map[string]any{"time": t0.Add(time.Duration(sec * 1e9)).Format(time.RFC3339Nano), "level": level, "msg": msg, "rank": r}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		j, _ := json.Marshal(m)
		files[r].Write(append(j, '\n'))
	}
	for r := 0; r < 4; r++ {
		f, err := os.Create(filepath.Join(run, "logs", fmt.Sprintf("rank-%05d.jsonl", r)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[r] = f
		line(r, 0, "INFO", "start", "host", "h", "world", 4, "stage", 0, "replica", r, "device", "cpu-f32", "model", "random:tiny", "method", "full")
		for s := 1; s <= 3; s++ {
			line(r, float64(s), "INFO", "step", "step", s, "loss", 4.0, "lr", 1e-3, "tokens", 512, "step_s", 1.0, "compute_s", 0.8, "comm_s", 0.2)
		}
	}
	// The survivors' errors come while -follow watches.
	time.AfterFunc(100*time.Millisecond, func() {
		for r := 0; r < 3; r++ {
			line(r, 3.5, "ERROR", "failed", "error", "step 4: gradient all-reduce: collective: all-reduce sum of 9 float32 on comm world (rank 0 of 4): "+
				"rank 3 (host h, 127.0.0.1:4000): lost: connection closed (process exited or was killed)")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := followLogs(ctx, run, runlog.DefaultOptions(), 20*time.Millisecond, false, &out); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("-follow still waited for the killed rank after 20 s:\n%s", &out)
	}
	text := out.String()
	lost, victim := strings.Index(text, "  rank 3 on h lost at "), strings.Index(text, "  rank 0 on h failed at ")
	if lost < 0 || victim < lost || !strings.Contains(text, "because of rank 3") {
		t.Errorf("the summary should lead with rank 3 lost, then the others because of it:\n%s", text)
	}
}
