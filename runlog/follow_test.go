package runlog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// failingRun is the log files of a run where ranks 0-2 train three steps, then
// rank 2 fails with an out-of-memory error and ranks 0 and 1 fail after it
// because their peer is gone: per file, the lines before the failures (head)
// and the failure lines (tail).
func failingRun() (head, tail map[string][]byte) {
	head, tail = map[string][]byte{}, map[string][]byte{}
	for r := 0; r < 3; r++ {
		w := &logWriter{rank: r}
		w.rec(0, "INFO", "start", "host", "h", "world", 3, "stage", 0, "replica", r, "device", "cpu-f32", "model", "random:tiny", "method", "lora")
		for s := 1; s <= 3; s++ {
			w.step(float64(s), s, 0.8, 0.2, 0, 0)
		}
		name := fmt.Sprintf("rank-%05d.jsonl", r)
		head[name] = bytes.Clone(w.buf.Bytes())
		w.buf.Reset()
		if r == 2 {
			w.rec(3.2, "ERROR", "failed", "error", "step 4: ops: out of memory allocating 2 GiB")
		} else {
			w.rec(4.5-float64(r)/10, "ERROR", "failed", "error", "step 4: collective: recv from rank 2: EOF")
		}
		tail[name] = bytes.Clone(w.buf.Bytes())
	}
	return head, tail
}

// writeFailingRun writes failingRun's logs into run/logs (with the failures
// when failed) and a metrics.jsonl.
func writeFailingRun(t *testing.T, run string, failed bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(run, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	head, tail := failingRun()
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

// appendFailures appends the failure lines to a run writeFailingRun wrote
// without them, as the ranks would. It runs off the test goroutine, so it
// reports nothing: a failure shows as the follow never ending.
func appendFailures(run string) {
	_, tail := failingRun()
	for name, b := range tail {
		f, err := os.OpenFile(filepath.Join(run, "logs", name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return
		}
		f.Write(b)
		f.Close()
	}
}

// TestFollowEnds: Follow returns once every rank has ended, and when its
// context is cancelled (Ctrl-C) while the ranks still run, leaving no goroutine.
func TestFollowEnds(t *testing.T) {
	before := runtime.NumGoroutine()
	done := t.TempDir()
	writeFailingRun(t, done, true)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Follow(ctx, done, DefaultOptions(), 10*time.Millisecond, false, &out); err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil || !strings.Contains(out.String(), "out of memory") || !strings.Contains(out.String(), "per rank") {
		t.Fatalf("follow of an ended run: ctx %v\n%s", ctx.Err(), out.String())
	}

	live := t.TempDir()
	writeFailingRun(t, live, false)
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel2)
	out.Reset()
	start := time.Now()
	if err := Follow(ctx2, live, DefaultOptions(), 20*time.Millisecond, true, &out); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("follow took %v to end after cancel", time.Since(start))
	}
	// JSON: one object per event (3 starts), then the summary.
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
	if err := Follow(ctx3, live, DefaultOptions(), 20*time.Millisecond, false, &out); err != nil {
		t.Fatal(err)
	}
	if ctx3.Err() != nil || !strings.Contains(out.String(), "out of memory") || !strings.Contains(out.String(), "step 3  loss") {
		t.Errorf("follow did not end with the run, or showed no progress line: %v\n%s", ctx3.Err(), out.String())
	}
	for i := 0; i < 50 && runtime.NumGoroutine() > before; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after follow, %d before", n, before)
	}
}

// TestPlotRun: the curves come from metrics.jsonl, with its eval loss, or
// from the rank logs when there is none; the file is written either way.
func TestPlotRun(t *testing.T) {
	run := t.TempDir()
	writeFailingRun(t, run, true)
	png := filepath.Join(t.TempDir(), "run.png")
	var out bytes.Buffer
	if err := PlotRun(run, png, &out); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("wrote %s: 3 steps, 1 eval points, from %s\n", png, filepath.Join(run, "metrics.jsonl")); out.String() != want {
		t.Errorf("PlotRun wrote %q, want %q", out.String(), want)
	}
	if st, err := os.Stat(png); err != nil || st.Size() == 0 {
		t.Errorf("the plot: %v", err)
	}
	if err := os.Remove(filepath.Join(run, "metrics.jsonl")); err != nil {
		t.Fatal(err)
	}
	svg := filepath.Join(t.TempDir(), "run.svg")
	out.Reset()
	if err := PlotRun(run, svg, &out); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("wrote %s: 3 steps, 0 eval points, from %s\n", svg, filepath.Join(run, "logs")); out.String() != want {
		t.Errorf("PlotRun wrote %q, want %q", out.String(), want)
	}
	if err := PlotRun(t.TempDir(), svg, &out); err == nil || !strings.Contains(err.Error(), "no metrics.jsonl") {
		t.Errorf("a folder without logs: %v", err)
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
	if err := Follow(ctx, run, DefaultOptions(), 20*time.Millisecond, false, &out); err != nil {
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
