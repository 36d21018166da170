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
