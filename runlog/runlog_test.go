package runlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// logWriter writes slog-shaped JSON lines for one synthetic rank.
type logWriter struct {
	rank int
	buf  bytes.Buffer
}

func (w *logWriter) rec(sec float64, level, msg string, kv ...any) {
	m := map[string]any{"time": t0.Add(time.Duration(sec * float64(time.Second))).Format(time.RFC3339Nano),
		"level": level, "msg": msg, "rank": w.rank}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	w.buf.Write(append(b, '\n'))
}

func (w *logWriter) start(sec float64, world int) {
	w.rec(sec, "INFO", "start", "host", fmt.Sprintf("node%d", w.rank/2), "pid", 100+w.rank, "world", world,
		"stage", 0, "replica", w.rank, "device", "cpu-f32", "model", "random:tiny", "method", "full")
}

// step logs a step that took compute+comm+bubble+other seconds, ending at sec.
func (w *logWriter) step(sec float64, step int, compute, comm, bubble, other float64) {
	w.rec(sec, "INFO", "step", "step", step, "loss", 5.0-0.1*float64(step), "lr", 1e-3, "grad_norm", 1.0, "tokens", 1024,
		"step_s", compute+comm+bubble+other, "compute_s", compute, "comm_s", comm, "bubble_s", bubble, "rss_bytes", 30<<20)
}

func (w *logWriter) parse(t *testing.T) *RankLog {
	t.Helper()
	l, err := ReadRankLog(bytes.NewReader(w.buf.Bytes()), w.rank)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// syncRun makes a data-parallel run of n ranks where slow's own work takes
// extra seconds more per step (in where) and the others wait for it in comm.
func syncRun(t *testing.T, n, steps, slow int, extra float64, where string) []*RankLog {
	t.Helper()
	var logs []*RankLog
	for r := 0; r < n; r++ {
		w := &logWriter{rank: r}
		w.start(0, n)
		sec := 0.0
		for s := 1; s <= steps; s++ {
			compute := 0.4 + 0.01*float64((r+s)%3) // a little noise
			comm, other := 0.01, 0.0
			if r == slow {
				switch where {
				case "compute":
					compute += extra
				default:
					other += extra
				}
			} else {
				comm += extra
			}
			sec += 0.45 + extra
			w.step(sec, s, compute, comm, 0, other)
		}
		w.rec(sec+0.1, "INFO", "finished")
		logs = append(logs, w.parse(t))
	}
	return logs
}

func TestStragglerFoundByOwnWork(t *testing.T) {
	for _, where := range []string{"other", "compute"} {
		logs := syncRun(t, 4, 10, 2, 0.3, where)
		s := Summarize("run", logs, DefaultOptions())
		if s.Status != Finished || !s.Done {
			t.Errorf("%s: status %s done %v, want finished", where, s.Status, s.Done)
		}
		if len(s.Stragglers) != 1 || s.Stragglers[0].Rank != 2 {
			t.Fatalf("%s: stragglers %+v, want rank 2 only", where, s.Stragglers)
		}
		x := s.Stragglers[0]
		if x.Where != where || x.Excess < 0.25 || x.Excess > 0.35 {
			t.Errorf("where %q +%.3f s, want %q about +0.3 s", x.Where, x.Excess, where)
		}
		// Step times are alike on every rank: the others wait in comm.
		for _, r := range s.Ranks {
			if r.StepP50 < 0.7 || r.StepP50 > 0.75 {
				t.Errorf("rank %d step p50 %.3f, want about 0.72", r.Rank, r.StepP50)
			}
		}
		var text bytes.Buffer
		if err := s.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(text.String(), "rank 2 on node1: 1.") || !strings.Contains(text.String(), "most extra time in "+where) {
			t.Errorf("text does not name rank 2 and %s:\n%s", where, text.String())
		}
	}
}

func TestNoStragglerInBalancedRun(t *testing.T) {
	for _, n := range []int{2, 3, 8} {
		s := Summarize("run", syncRun(t, n, 10, -1, 0, ""), DefaultOptions())
		if len(s.Stragglers) != 0 {
			t.Errorf("n=%d: stragglers %+v in a balanced run", n, s.Stragglers)
		}
	}
	// A margin under the noise names ranks; a huge one names none.
	s := Summarize("run", syncRun(t, 4, 10, 1, 0.3, "other"), Options{Straggler: 10, Rank: -1})
	if len(s.Stragglers) != 0 {
		t.Errorf("margin 10: stragglers %+v", s.Stragglers)
	}
}

func TestPipelineStragglerInCompute(t *testing.T) {
	// Three stages: stage 1 computes twice as long, its neighbours wait in bubble.
	var logs []*RankLog
	for r := 0; r < 3; r++ {
		w := &logWriter{rank: r}
		w.start(0, 3)
		for s := 1; s <= 8; s++ {
			if r == 1 {
				w.step(float64(s), s, 0.8, 0.01, 0.19, 0)
			} else {
				w.step(float64(s), s, 0.4, 0.01, 0.59, 0)
			}
		}
		logs = append(logs, w.parse(t))
	}
	s := Summarize("run", logs, DefaultOptions())
	if len(s.Stragglers) != 1 || s.Stragglers[0].Rank != 1 || s.Stragglers[0].Where != "compute" {
		t.Fatalf("stragglers %+v, want rank 1 in compute", s.Stragglers)
	}
	if s.Status != Running {
		t.Errorf("status %s, want running (no end records, no Now)", s.Status)
	}
	o := DefaultOptions()
	o.Now = t0.Add(time.Hour)
	if s := Summarize("run", logs, o); s.Status != Stopped || len(s.Silent) != 3 {
		t.Errorf("an hour later: status %s, silent %d; want stopped, 3", s.Status, len(s.Silent))
	}
}

func TestFailedRankFirst(t *testing.T) {
	// Rank 3 fails first (out of memory); the others fail a second later because
	// their peer went away. The summary must lead with rank 3.
	var logs []*RankLog
	for _, r := range []int{0, 1, 2, 3} {
		w := &logWriter{rank: r}
		w.start(0, 4)
		for s := 1; s <= 5; s++ {
			w.step(float64(s), s, 0.5, 0.4, 0, 0)
		}
		if r == 3 {
			w.rec(5.5, "WARN", "near the host's memory limit", "rss_bytes", 1<<30)
			w.rec(5.6, "ERROR", "failed", "error", "step 6: ops: out of memory allocating 4 GiB")
		} else {
			w.rec(6.6-0.1*float64(r), "ERROR", "failed", "error", fmt.Sprintf("step 6: collective: recv from rank %d: connection reset", (r+1)%4))
		}
		logs = append(logs, w.parse(t))
	}
	s := Summarize("run", logs, DefaultOptions())
	if s.Status != Failed || len(s.Failures) != 4 {
		t.Fatalf("status %s, %d failures; want failed, 4", s.Status, len(s.Failures))
	}
	f := s.Failures[0]
	if f.Rank != 3 || !strings.Contains(f.Error, "out of memory") || f.LastStep != 5 {
		t.Fatalf("first failure %+v, want rank 3 out of memory after step 5", f)
	}
	if len(f.Context) != 5 || f.Context[4].Msg != "near the host's memory limit" {
		t.Errorf("context %v, want the 5 records before the error, the warning last", f.Context)
	}
	var text bytes.Buffer
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	i3, i0, itable := strings.Index(out, "rank 3 on node1 failed"), strings.Index(out, "rank 0 on node0 failed"), strings.Index(out, "per rank")
	if i3 < 0 || i0 < 0 || i3 > i0 || i0 > itable {
		t.Errorf("rank 3's failure should come first, before the other failures and the table:\n%s", out)
	}
	// -rank 1 keeps only rank 1's failure.
	o := DefaultOptions()
	o.Rank = 1
	if s := Summarize("run", logs, o); len(s.Failures) != 1 || s.Failures[0].Rank != 1 || len(s.Ranks) != 1 {
		t.Errorf("-rank 1: failures %+v ranks %d", s.Failures, len(s.Ranks))
	}
}

func TestStoppedLoggingAndTruncated(t *testing.T) {
	// Rank 1 is killed mid-write at step 3 (no end record, a cut line); rank 0
	// goes on and fails later when it finds its peer gone.
	w0, w1 := &logWriter{rank: 0}, &logWriter{rank: 1}
	w0.start(0, 2)
	w1.start(0, 2)
	for s := 1; s <= 3; s++ {
		w0.step(float64(s), s, 0.5, 0.1, 0, 0)
		w1.step(float64(s), s, 0.5, 0.1, 0, 0)
	}
	w1.buf.WriteString(`{"time":"2026-01-02T03:04:09Z","level":"INFO","msg":"st`)
	w0.rec(130, "ERROR", "failed", "error", "step 4: collective: timed out waiting for rank 1")
	logs := []*RankLog{w0.parse(t), w1.parse(t)}
	if !logs[1].Truncated || logs[1].Malformed != 0 || logs[1].Records != 4 {
		t.Fatalf("rank 1: truncated %v malformed %d records %d; want true 0 4", logs[1].Truncated, logs[1].Malformed, logs[1].Records)
	}
	s := Summarize("run", logs, DefaultOptions())
	if len(s.Silent) != 1 || s.Silent[0].Rank != 1 || s.Silent[0].LastStep != 3 || s.Silent[0].Behind != 127*time.Second {
		t.Fatalf("silent %+v, want rank 1 after step 3, 127s behind", s.Silent)
	}
	if s.Status != Failed || len(s.Malformed) != 1 || !s.Malformed[0].Truncated {
		t.Errorf("status %s malformed %+v", s.Status, s.Malformed)
	}
}

func TestMalformedLinesAndChunkedWrites(t *testing.T) {
	w := &logWriter{rank: 5}
	w.start(0, 8)
	w.buf.WriteString("not json at all\n")
	w.step(1, 1, 0.5, 0.1, 0, 0)
	w.buf.WriteString("{\"no\":\"msg\"}\n\n")
	w.step(2, 2, 0.5, 0.1, 0, 0)
	w.rec(2.5, "INFO", "checkpoint", "step", 2, "dir", "run/checkpoints/step-00000002", "seconds", 0.25)
	w.rec(3, "INFO", "finished")
	whole := w.parse(t)
	if whole.Malformed != 2 || fmt.Sprint(whole.MalformedLines) != "[2 4]" || whole.Truncated {
		t.Fatalf("malformed %d lines %v truncated %v; want 2 [2 4] false", whole.Malformed, whole.MalformedLines, whole.Truncated)
	}
	if len(whole.Steps) != 2 || whole.End != "finished" || len(whole.Checkpoints) != 1 || !whole.Steps[0].Warmup || whole.Steps[1].Warmup {
		t.Fatalf("parsed %+v", whole)
	}
	// The same bytes in chunks of every size parse alike: what -follow sees.
	data := w.buf.Bytes()
	for size := 1; size < 50; size += 7 {
		l := &RankLog{Rank: 5}
		for i := 0; i < len(data); i += size {
			l.Write(data[i:min(i+size, len(data))])
		}
		l.Flush()
		if l.Records != whole.Records || l.Malformed != whole.Malformed || len(l.Steps) != 2 || l.End != "finished" {
			t.Errorf("chunks of %d: records %d malformed %d steps %d end %q", size, l.Records, l.Malformed, len(l.Steps), l.End)
		}
	}
	s := Summarize("run", []*RankLog{whole}, DefaultOptions())
	if len(s.Missing) != 7 || s.Status != Missing {
		t.Errorf("world 8 with one log: missing %v status %s", s.Missing, s.Status)
	}
	if len(s.Checkpoints) != 1 || s.Checkpoints[0].Step != 2 {
		t.Errorf("checkpoints %+v", s.Checkpoints)
	}
}

func TestResumedRun(t *testing.T) {
	// The first session is killed after step 4 (checkpoint at 3); the second
	// starts from 3, logs 4..6 again and finishes.
	w := &logWriter{rank: 0}
	w.start(0, 1)
	for s := 1; s <= 4; s++ {
		w.step(float64(s), s, 1, 0, 0, 0)
	}
	w.rec(4.5, "ERROR", "failed", "error", "interrupted")
	w.start(10, 1)
	for s := 4; s <= 6; s++ {
		w.step(float64(s+7), s, 0.5, 0, 0, 0)
	}
	w.rec(14, "INFO", "finished")
	l := w.parse(t)
	s := Summarize("run", []*RankLog{l}, Options{Windows: 2, Rank: -1})
	if s.Status != Finished || l.Sessions != 2 || len(s.Failures) != 0 {
		t.Fatalf("status %s sessions %d failures %v", s.Status, l.Sessions, s.Failures)
	}
	// Throughput: steps 1-3 at 1 s, 4-6 at 0.5 s (the resumed 4 replaces the first).
	want := []Window{{FromStep: 1, ToStep: 3, Tokens: 3072, Seconds: 3, TokensPerS: 1024}, {FromStep: 4, ToStep: 6, Tokens: 3072, Seconds: 1.5, TokensPerS: 2048}}
	if len(s.Throughput) != 2 {
		t.Fatalf("throughput %+v", s.Throughput)
	}
	for i, x := range s.Throughput {
		x.Start = time.Time{}
		if x != want[i] {
			t.Errorf("window %d: %+v, want %+v", i, x, want[i])
		}
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct{ p, want float64 }{{0.5, 5}, {0.9, 9}, {1, 10}, {0.01, 1}} {
		if got := percentile(xs, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if median([]float64{3, 1, 2, 10}) != 2.5 || percentile(nil, 0.5) != 0 {
		t.Error("median or empty percentile wrong")
	}
}

func TestDirPollsIncrementally(t *testing.T) {
	run := t.TempDir()
	d := NewDir(run)
	if changed, err := d.Poll(); err != nil || changed {
		t.Fatalf("no logs folder yet: changed %v err %v", changed, err)
	}
	if err := os.MkdirAll(filepath.Join(run, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := &logWriter{rank: 1}
	w.start(0, 2)
	w.step(1, 1, 0.5, 0, 0, 0)
	data := w.buf.Bytes()
	path := filepath.Join(run, "logs", "rank-00001.jsonl")
	half := len(data) - 10
	if err := os.WriteFile(path, data[:half], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Poll(); err != nil {
		t.Fatal(err)
	}
	if l := d.Logs(); len(l) != 1 || l[0].Rank != 1 || len(l[0].Steps) != 0 || l[0].Records != 1 {
		t.Fatalf("after half: %+v", l)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data[half:])
	f.Close()
	if changed, err := d.Poll(); err != nil || !changed {
		t.Fatalf("changed %v err %v", changed, err)
	}
	if l := d.Logs()[0]; len(l.Steps) != 1 || l.Malformed != 0 {
		t.Fatalf("after the rest: steps %d malformed %d", len(l.Steps), l.Malformed)
	}
	if _, err := ReadRun(t.TempDir()); err == nil {
		t.Error("ReadRun of an empty folder: no error")
	}
}

func TestReadMetrics(t *testing.T) {
	in := `{"step":1,"loss":5,"lr":0.001,"tokens_per_s":100}
{"step":2,"loss":4,"lr":0.002,"tokens_per_s":110}
garbage
{"step":2,"eval_loss":4.5}
{"step":2,"loss":3.9,"lr":0.002,"tokens_per_s":120}
{"step":3,"loss":3.5,"lr":0.0`
	s, bad, err := ReadMetrics(strings.NewReader(in))
	if err != nil || bad != 2 {
		t.Fatalf("bad %d err %v, want 2 nil", bad, err)
	}
	if fmt.Sprint(s.Loss) != "[{1 5} {2 3.9}]" || fmt.Sprint(s.EvalLoss) != "[{2 4.5}]" || fmt.Sprint(s.TokensPerS) != "[{1 100} {2 120}]" {
		t.Errorf("series %+v", s)
	}
}

func TestPlotIsNotBlank(t *testing.T) {
	var s Series
	for i := 1; i <= 50; i++ {
		s.Loss = append(s.Loss, Point{i, 5 / float64(i)})
		s.LR = append(s.LR, Point{i, 1e-3 * float64(min(i, 10)) / 10})
		s.TokensPerS = append(s.TokensPerS, Point{i, 1000 + float64(i%7)*50})
		if i%10 == 0 {
			s.EvalLoss = append(s.EvalLoss, Point{i, 5.5 / float64(i)})
		}
	}
	var buf bytes.Buffer
	if err := WritePlot(&buf, s, "png", "test run"); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("the PNG does not decode: %v", err)
	}
	checkNotBlank(t, img)
	var svg bytes.Buffer
	if err := WritePlot(&svg, s, "svg", "test run"); err != nil || !bytes.Contains(svg.Bytes(), []byte("<svg")) {
		t.Errorf("svg: %v, %d bytes", err, svg.Len())
	}
	if err := WritePlot(&buf, Series{}, "png", ""); err == nil {
		t.Error("an empty series plotted without error")
	}
	if err := WritePlot(&buf, s, "gif", ""); err == nil {
		t.Error("gif accepted")
	}
}

// checkNotBlank fails unless the image has several distinct colours, each of
// the curves' among them in some quantity.
func checkNotBlank(t *testing.T, img image.Image) {
	t.Helper()
	colours := map[[4]uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			colours[[4]uint32{r >> 8, g >> 8, bl >> 8, a >> 8}]++
		}
	}
	if len(colours) < 5 {
		t.Fatalf("%d distinct colours: blank", len(colours))
	}
	for _, c := range []struct {
		name string
		rgb  [4]uint32
	}{{"loss blue", [4]uint32{31, 119, 180, 255}}, {"lr green", [4]uint32{44, 160, 44, 255}}, {"tokens/s purple", [4]uint32{148, 103, 189, 255}}} {
		if colours[c.rgb] < 50 {
			t.Errorf("%s: %d pixels; the curve is missing", c.name, colours[c.rgb])
		}
	}
}

// TestGPUColumns: GPU memory and NVML utilisation appear per rank when the
// steps logged them (warm-up left out of the mean), and not on CPU runs.
func TestGPUColumns(t *testing.T) {
	w := &logWriter{rank: 0}
	w.start(0, 1)
	for s, util := range []float64{5, 60, 80} {
		w.rec(float64(s+1), "INFO", "step", "step", s+1, "loss", 3.0, "tokens", 1024, "step_s", 1.0, "compute_s", 1.0,
			"rss_bytes", 30<<20, "gpu_peak_bytes", float64(int64(s+1)<<30), "gpu_util_pct", util)
	}
	s := Summarize("run", []*RankLog{w.parse(t)}, Options{})
	r := s.Ranks[0]
	if r.GPUPeak != 3<<30 || r.GPUUtil != 70 {
		t.Errorf("gpu peak %v, util %v; want 3 GiB and 70 (the warm-up's 5 left out)", r.GPUPeak, r.GPUUtil)
	}
	var out bytes.Buffer
	if err := s.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "gpu util") || !strings.Contains(out.String(), "70%") {
		t.Errorf("no GPU columns:\n%s", out.String())
	}
	cpu := syncRun(t, 2, 3, -1, 0, "compute")
	out.Reset()
	if err := Summarize("run", cpu, Options{}).WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "gpu util") {
		t.Errorf("GPU columns on a CPU run:\n%s", out.String())
	}
}

// killedRun is a 4-rank run in which rank 3 is SIGKILLed after step 5: its
// log just stops; ranks 0-2 fail a moment later with the collectives' error
// naming it (errs gives each survivor's error; "" uses that one).
func killedRun(t *testing.T, errs ...string) []*RankLog {
	t.Helper()
	var logs []*RankLog
	for r := 0; r < 4; r++ {
		w := &logWriter{rank: r}
		w.start(0, 4)
		for s := 1; s <= 5; s++ {
			w.step(float64(s), s, 0.5, 0.4, 0, 0)
		}
		if r < 3 {
			msg := fmt.Sprintf("step 6: gradient all-reduce: collective: all-reduce sum of 46208 float32 on comm world (rank %d of 4): "+
				"rank 3 (host node1, 10.0.0.2:4100): lost: connection closed (process exited or was killed)", r)
			if r < len(errs) && errs[r] != "" {
				msg = errs[r]
			}
			w.rec(5.2+0.01*float64(r), "ERROR", "failed", "error", msg)
		}
		logs = append(logs, w.parse(t))
	}
	return logs
}

// TestKilledRankIsTheFirstFailure: right after the run (Now a few seconds on,
// well inside the stall time), the killed rank is lost, not running: it leads
// the failures with the time of its last record, in the silent ranks too,
// and the survivors' errors naming it are its consequences.
func TestKilledRankIsTheFirstFailure(t *testing.T) {
	o := DefaultOptions()
	o.Now = t0.Add(8 * time.Second)
	s := Summarize("run", killedRun(t), o)
	if s.Status != Failed || !s.Done {
		t.Errorf("status %s done %v, want failed and done", s.Status, s.Done)
	}
	if st := s.Ranks[3].State; st != Lost {
		t.Errorf("rank 3 is %s, want lost", st)
	}
	if len(s.Failures) != 4 {
		t.Fatalf("%d failures, want 4: %+v", len(s.Failures), s.Failures)
	}
	f := s.Failures[0]
	if f.Rank != 3 || !f.Lost || f.CausedBy != nil || !f.Time.Equal(t0.Add(5*time.Second)) || f.LastStep != 5 || len(f.Context) != 5 {
		t.Fatalf("first failure %+v, want rank 3 lost at its last record (step 5), with its last 5 records", f)
	}
	if !strings.Contains(f.Error, "without a finished or failed record") || !strings.Contains(f.Error, "the errors of ranks 0, 1, 2 name it") {
		t.Errorf("rank 3's failure says %q", f.Error)
	}
	for i, f := range s.Failures[1:] {
		if f.Rank != i || f.CausedBy == nil || *f.CausedBy != 3 {
			t.Errorf("failure %d: rank %d caused by %v, want rank %d caused by rank 3", i+1, f.Rank, f.CausedBy, i)
		}
	}
	if len(s.Silent) != 1 || s.Silent[0].Rank != 3 {
		t.Errorf("silent %+v, want rank 3", s.Silent)
	}
	var text bytes.Buffer
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	i3, i0 := strings.Index(out, "  rank 3 on node1 lost at 03:04:10.000 after step 5: its log ends"), strings.Index(out, "  rank 0 on node0 failed at 03:04:10.200 after step 5, because of rank 3: step 6:")
	if i3 < 0 || i0 < i3 {
		t.Errorf("rank 3 lost should lead, then rank 0 because of it:\n%s", out)
	}
	if strings.Count(out, "last records before it") != 1 {
		t.Errorf("the consequences repeat their records:\n%s", out)
	}
}

// TestLostRankNotNamed: when the survivors' errors do not name the rank that
// stopped, it is lost once the run is over (the logs complete, or silent for
// the stall time), and until then not yet: it may still write its end.
func TestLostRankNotNamed(t *testing.T) {
	logs := killedRun(t, "interrupted", "interrupted", "interrupted")
	if s := Summarize("run", logs, DefaultOptions()); s.Ranks[3].State != Lost || s.Failures[0].Rank != 3 || !s.Done {
		t.Errorf("complete logs: rank 3 %s, first failure rank %d, done %v; want lost, 3, true", s.Ranks[3].State, s.Failures[0].Rank, s.Done)
	}
	o := DefaultOptions()
	o.Now = t0.Add(8 * time.Second)
	if s := Summarize("run", logs, o); s.Ranks[3].State != Running || s.Done {
		t.Errorf("3 s after the survivors failed: rank 3 %s, done %v; want running, not done", s.Ranks[3].State, s.Done)
	}
	o.Now = t0.Add(10 * time.Minute)
	if s := Summarize("run", logs, o); s.Ranks[3].State != Lost || !s.Done || s.Failures[0].Rank != 3 {
		t.Errorf("10 minutes on: rank 3 %s, done %v; want lost and done", s.Ranks[3].State, s.Done)
	}
}

// TestStoppedWhileOthersGoOn: a live run where rank 1's log stops while the
// others keep logging steps is not running once it is the stall time behind.
func TestStoppedWhileOthersGoOn(t *testing.T) {
	var logs []*RankLog
	for r := 0; r < 3; r++ {
		w := &logWriter{rank: r}
		w.start(0, 3)
		steps := 100
		if r == 1 {
			steps = 4
		}
		for s := 1; s <= steps; s++ {
			w.step(float64(s), s, 0.9, 0.1, 0, 0)
		}
		logs = append(logs, w.parse(t))
	}
	o := DefaultOptions()
	o.Now = t0.Add(101 * time.Second)
	s := Summarize("run", logs, o)
	if s.Ranks[1].State != Stopped || s.Ranks[0].State != Running || s.Status != Stopped || s.Done {
		t.Errorf("rank 1 %s, rank 0 %s, status %s, done %v; want stopped, running, stopped, not done", s.Ranks[1].State, s.Ranks[0].State, s.Status, s.Done)
	}
	if len(s.Silent) != 1 || s.Silent[0].Rank != 1 || s.Silent[0].Behind != 96*time.Second {
		t.Errorf("silent %+v, want rank 1, 96 s behind", s.Silent)
	}
}

// TestStoppedRankIsTheCause: rank 2 is stopped (SIGSTOP) past the timeout;
// ranks 0, 1 and 3 fail naming it, and rank 2, continued, fails later naming
// rank 0, which it found gone. Rank 2 is the cause, listed first; its blame
// of rank 0 would close a circle and is dropped.
func TestStoppedRankIsTheCause(t *testing.T) {
	var logs []*RankLog
	for r := 0; r < 4; r++ {
		w := &logWriter{rank: r}
		w.start(0, 4)
		for s := 1; s <= 4; s++ {
			w.step(float64(s), s, 0.5, 0.1, 0, 0)
		}
		if r == 2 {
			w.rec(9.7, "ERROR", "failed", "error", "checkpoint: collective: operation on comm world (rank 2 of 4): "+
				"rank 0 (host node0, 10.0.0.1:4100): lost: silent for 5s (no heartbeat; hung, stopped or unreachable)")
		} else {
			w.rec(7.2+0.01*float64(r), "ERROR", "failed", "error", fmt.Sprintf("checkpoint: collective: all-reduce sum of 1 float64 on comm world (rank %d of 4): "+
				"rank 2 (host node1, 10.0.0.2:4100): lost: silent for 5s (no heartbeat; hung, stopped or unreachable)", r))
		}
		logs = append(logs, w.parse(t))
	}
	s := Summarize("run", logs, DefaultOptions())
	if len(s.Failures) != 4 || s.Failures[0].Rank != 2 || s.Failures[0].CausedBy != nil || s.Failures[0].Lost {
		t.Fatalf("failures %+v, want rank 2 first, a cause (failed, not lost)", s.Failures)
	}
	for _, f := range s.Failures[1:] {
		if f.CausedBy == nil || *f.CausedBy != 2 {
			t.Errorf("rank %d caused by %v, want rank 2", f.Rank, f.CausedBy)
		}
	}
}

// TestStepAxis: the step axis labels 5 to 10 round steps for any run length,
// and the shared range leaves a margin, so a lone final eval point is drawn
// inside the frame.
func TestStepAxis(t *testing.T) {
	for _, span := range []float64{3, 20, 100, 999, 5000, 123456} {
		var labels []float64
		for _, tk := range (stepTicks{}).Ticks(1, span) {
			if tk.Label != "" {
				labels = append(labels, tk.Value)
			}
		}
		if min(5, int(span)) > len(labels) || len(labels) > 10 {
			t.Errorf("steps 1..%v: %d labelled ticks %v, want 5 to 10", span, len(labels), labels)
		}
	}
	p := plot.New()
	p.X.Min, p.X.Max = 1, 100
	lo, hi := stepRange([]*plot.Plot{p})
	if !(lo < 1 && hi > 100) {
		t.Errorf("step range [%v, %v] has no margin around [1, 100]", lo, hi)
	}
}
