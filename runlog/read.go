// Package runlog reads the per-rank logs a training run writes and turns them
// into what a person needs when a run misbehaves: which rank failed first and
// why, which rank is slow and where its time goes, which ranks stopped logging,
// how fast the run went over time, and what it checkpointed.
//
// Every rank appends log/slog JSON records, one object per line, to
// RUN/logs/rank-NNNNN.jsonl: a "start" record per session (a resumed run
// appends another), "step" records with the step's time split into compute,
// communication (comm_s) and waiting on pipeline neighbours (bubble_s),
// "checkpoint" records, warnings, and a final "finished" or ERROR "failed"
// record. A RankLog takes those bytes through Write, as they come, so the same
// code reads a finished run and follows a live one. Summarize is a pure
// function of the parsed logs; the file system stays in Dir, which Follow polls
// to watch a live run, and in PlotRun, which draws a run's curves into a file.
//
// Logs come from processes that may be killed at any moment: a last line cut
// short is noted as truncated and malformed lines are counted, never fatal.
package runlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Record is one parsed log line.
type Record struct {
	Rank   int            `json:"rank"`
	Line   int            `json:"line"` // 1-based line number in the rank's file
	Time   time.Time      `json:"time"`
	Level  string         `json:"level"`
	Msg    string         `json:"msg"`
	Fields map[string]any `json:"fields,omitempty"` // every other key of the line
}

// String is the record as a compact line a person can read:
// "20:54:00.078 INFO checkpoint step=6 dir=...".
func (r Record) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5s %s", r.Time.Format("15:04:05.000"), r.Level, r.Msg)
	keys := make([]string, 0, len(r.Fields))
	for k := range r.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := r.Fields[k]
		if f, ok := v.(float64); ok {
			v = strconv.FormatFloat(f, 'g', 6, 64)
		}
		s := fmt.Sprint(v)
		if strings.ContainsAny(s, " \t\"") {
			s = strconv.Quote(s)
		}
		fmt.Fprintf(&b, " %s=%s", k, s)
	}
	return b.String()
}

// Step is one "step" record: the step's global loss and learning rate, and how
// long this rank took, split by where the time went.
type Step struct {
	Step     int       `json:"step"`
	Time     time.Time `json:"time"`
	Loss     float64   `json:"loss"`
	LR       float64   `json:"lr"`
	GradNorm float64   `json:"grad_norm"`
	Tokens   float64   `json:"tokens"` // tokens of the whole step (every replica)
	StepS    float64   `json:"step_s"`
	ComputeS float64   `json:"compute_s"`
	BubbleS  float64   `json:"bubble_s"` // waiting on neighbouring pipeline stages
	CommS    float64   `json:"comm_s"`   // collectives, waiting on other ranks included
	RSSBytes float64   `json:"rss_bytes"`
	// GPUPeakBytes is the most GPU memory in use seen so far (0 on the CPU);
	// GPUUtil NVML's share of time a kernel ran, -1 when not logged.
	GPUPeakBytes float64 `json:"gpu_peak_bytes,omitempty"`
	GPUUtil      float64 `json:"gpu_util_pct"`
	// Warmup marks the first step of a session, which pays for start-up.
	Warmup bool `json:"warmup,omitempty"`
}

// Work is the time the rank spent on its own (not waiting on others): in
// synchronous training every rank's step time is alike because the fast ones
// wait for the slow one, so this, not the step time, tells the slow one apart.
func (s Step) Work() float64 { return math.Max(0, s.StepS-s.CommS-s.BubbleS) }

// Checkpoint is one "checkpoint" record (rank 0 writes them).
type Checkpoint struct {
	Rank    int       `json:"rank"`
	Step    int       `json:"step"`
	Time    time.Time `json:"time"`
	Dir     string    `json:"dir"`
	Seconds float64   `json:"seconds"`
}

// Failure is the first error of a rank's latest session, with the records
// that came just before it, or, for a rank that was lost, the end of its log.
type Failure struct {
	Rank     int       `json:"rank"`
	Host     string    `json:"host,omitempty"`
	Time     time.Time `json:"time"`
	LastStep int       `json:"last_step"` // the last step the rank logged before failing
	Error    string    `json:"error"`
	Context  []Record  `json:"context"` // the records before the error, oldest first
	// Lost is set for a rank whose log ends without a finished or failed
	// record (killed, out of memory, its node gone) while the job failed
	// around it: Time is then its last record's, and Context its last records.
	Lost bool `json:"lost,omitempty"`
	// CausedBy is the rank this failure follows from, when the error names
	// another rank (the collectives name the lost or failing one): a
	// consequence, listed after the causes. Nil for a cause.
	CausedBy *int `json:"caused_by,omitempty"`
}

// maxContext is how many records before an error a RankLog keeps.
const maxContext = 20

// maxMalformedLines is how many malformed line numbers a RankLog remembers.
const maxMalformedLines = 5

// RankLog is what one rank's log says. Its zero value (with Rank set) is ready
// to take bytes through Write; Flush ends the input.
type RankLog struct {
	Rank int `json:"rank"`
	// Start is the latest "start" record, Sessions how many there were (a
	// resumed run appends one per resumption).
	Start    *Record `json:"start,omitempty"`
	Sessions int     `json:"sessions"`
	Steps    []Step  `json:"steps"`
	// Events are every record other than steps, in order: starts, warnings,
	// errors, checkpoints, the end.
	Events      []Record     `json:"events"`
	Checkpoints []Checkpoint `json:"checkpoints"`
	// End is "finished" or "failed" when the latest session ended with such a
	// record, and empty while it runs or after it was killed.
	End     string   `json:"end"`
	Failure *Failure `json:"failure,omitempty"`
	First   time.Time
	Last    time.Time // the time of the newest record
	Records int
	// Malformed counts lines that are not a log record; MalformedLines holds
	// the first few line numbers. Truncated is set when the last line was cut
	// short (the rank was killed mid-write).
	Malformed      int   `json:"malformed"`
	MalformedLines []int `json:"malformed_lines,omitempty"`
	Truncated      bool  `json:"truncated"`

	lines   int
	partial []byte
	recent  []Record // the last records, context for a failure
	warmup  bool     // the next step is the first of a session
}

// Write takes the next bytes of the log: complete lines are parsed, and a
// trailing incomplete line waits for the rest. It never fails.
func (l *RankLog) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.partial = append(l.partial, p...)
			break
		}
		line := p[:i]
		if len(l.partial) > 0 {
			line = append(l.partial, line...)
			l.partial = nil
		}
		l.line(line, false)
		p = p[i+1:]
	}
	return n, nil
}

// Flush ends the input: a pending incomplete line is taken as the last one,
// and noted as truncated unless it parses.
func (l *RankLog) Flush() {
	if len(l.partial) > 0 {
		l.line(l.partial, true)
		l.partial = nil
	}
}

// Host is the host the rank last started on ("" before a start record).
func (l *RankLog) Host() string { return l.startString("host") }

func (l *RankLog) startString(key string) string {
	if l.Start == nil {
		return ""
	}
	if s, ok := l.Start.Fields[key].(string); ok {
		return s
	}
	return ""
}

func (l *RankLog) startInt(key string) (int, bool) {
	if l.Start == nil {
		return 0, false
	}
	f, ok := l.Start.Fields[key].(float64)
	return int(f), ok
}

// LastStep is the newest step the rank logged (0 before any).
func (l *RankLog) LastStep() int {
	if len(l.Steps) == 0 {
		return 0
	}
	return l.Steps[len(l.Steps)-1].Step
}

func (l *RankLog) line(line []byte, last bool) {
	l.lines++
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	rec, ok := parseRecord(line)
	if !ok {
		if last {
			l.Truncated = true
		} else {
			l.Malformed++
			if len(l.MalformedLines) < maxMalformedLines {
				l.MalformedLines = append(l.MalformedLines, l.lines)
			}
		}
		return
	}
	rec.Rank, rec.Line = l.Rank, l.lines
	l.add(rec)
}

// parseRecord decodes one line leniently: any JSON object with a "msg" string
// is a record; a field of an unexpected type is kept as it is.
func parseRecord(line []byte) (Record, bool) {
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return Record{}, false
	}
	msg, ok := m["msg"].(string)
	if !ok {
		return Record{}, false
	}
	rec := Record{Msg: msg}
	rec.Level, _ = m["level"].(string)
	if s, ok := m["time"].(string); ok {
		rec.Time, _ = time.Parse(time.RFC3339Nano, s)
	}
	for _, k := range []string{"msg", "level", "time", "rank"} {
		delete(m, k)
	}
	if len(m) > 0 {
		rec.Fields = m
	}
	return rec, true
}

func num(m map[string]any, key string) float64 {
	f, _ := m[key].(float64)
	return f
}

// numOr is num with a value for a missing key.
func numOr(m map[string]any, key string, missing float64) float64 {
	if f, ok := m[key].(float64); ok {
		return f
	}
	return missing
}

func (l *RankLog) add(rec Record) {
	l.Records++
	if l.First.IsZero() || (!rec.Time.IsZero() && rec.Time.Before(l.First)) {
		l.First = rec.Time
	}
	if rec.Time.After(l.Last) {
		l.Last = rec.Time
	}
	switch {
	case rec.Msg == "step" && rec.Level != "ERROR":
		f := rec.Fields
		l.Steps = append(l.Steps, Step{Step: int(num(f, "step")), Time: rec.Time, Loss: num(f, "loss"), LR: num(f, "lr"),
			GradNorm: num(f, "grad_norm"), Tokens: num(f, "tokens"), StepS: num(f, "step_s"), ComputeS: num(f, "compute_s"),
			BubbleS: num(f, "bubble_s"), CommS: num(f, "comm_s"), RSSBytes: num(f, "rss_bytes"),
			GPUPeakBytes: num(f, "gpu_peak_bytes"), GPUUtil: numOr(f, "gpu_util_pct", -1), Warmup: l.warmup})
		l.warmup = false
	case rec.Msg == "start":
		// A new session (a resumption) starts afresh: how the last one ended is history.
		r := rec
		l.Start, l.End, l.Failure, l.warmup = &r, "", nil, true
		l.Sessions++
		l.Events = append(l.Events, rec)
	default:
		l.Events = append(l.Events, rec)
		switch {
		case rec.Msg == "checkpoint":
			s, _ := rec.Fields["dir"].(string)
			l.Checkpoints = append(l.Checkpoints, Checkpoint{Rank: l.Rank, Step: int(num(rec.Fields, "step")), Time: rec.Time,
				Dir: s, Seconds: num(rec.Fields, "seconds")})
		case rec.Msg == "finished":
			l.End = "finished"
		}
		if rec.Level == "ERROR" {
			if rec.Msg == "failed" {
				l.End = "failed"
			}
			if l.Failure == nil {
				msg := rec.Msg
				if e, ok := rec.Fields["error"].(string); ok {
					msg = e
					if rec.Msg != "failed" {
						msg = rec.Msg + ": " + e
					}
				}
				l.Failure = &Failure{Rank: l.Rank, Host: l.Host(), Time: rec.Time, LastStep: l.LastStep(), Error: msg,
					Context: append([]Record(nil), l.recent...)}
			}
		}
	}
	l.recent = append(l.recent, rec)
	if len(l.recent) > maxContext {
		l.recent = l.recent[len(l.recent)-maxContext:]
	}
}

// ReadRankLog parses a whole log of the given rank.
func ReadRankLog(r io.Reader, rank int) (*RankLog, error) {
	l := &RankLog{Rank: rank}
	if _, err := io.Copy(l, r); err != nil {
		return l, fmt.Errorf("rank %d log: %w", rank, err)
	}
	l.Flush()
	return l, nil
}

// Dir reads the rank logs of a run directory incrementally: each Poll reads
// what the ranks appended since the last one, and picks up new rank files.
type Dir struct {
	Path    string
	logs    map[int]*RankLog
	offsets map[int]int64
}

// NewDir returns a Dir for the run directory run (the logs are in run/logs).
func NewDir(run string) *Dir {
	return &Dir{Path: run, logs: map[int]*RankLog{}, offsets: map[int]int64{}}
}

// rankOfFile is the rank in a file name like rank-00003.jsonl.
func rankOfFile(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "rank-")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, ".jsonl")
	if !ok {
		return 0, false
	}
	r, err := strconv.Atoi(s)
	return r, err == nil && r >= 0
}

// Poll reads what every rank file gained since the last call. It reports
// whether anything new came; a missing logs folder is not an error (a run
// that has not started yet has none).
func (d *Dir) Poll() (bool, error) {
	dir := filepath.Join(d.Path, "logs")
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("run logs: %w", err)
	}
	changed := false
	for _, e := range entries {
		rank, ok := rankOfFile(e.Name())
		if !ok || e.IsDir() {
			continue
		}
		n, err := d.readFrom(filepath.Join(dir, e.Name()), rank)
		if err != nil {
			return changed, err
		}
		changed = changed || n > 0
	}
	return changed, nil
}

func (d *Dir) readFrom(path string, rank int) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("run logs: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("run logs: %w", err)
	}
	l := d.logs[rank]
	if l == nil || st.Size() < d.offsets[rank] {
		// New, or rewritten from the start: read it all again.
		l = &RankLog{Rank: rank}
		d.logs[rank], d.offsets[rank] = l, 0
	}
	if _, err := f.Seek(d.offsets[rank], io.SeekStart); err != nil {
		return 0, fmt.Errorf("run logs: %s: %w", path, err)
	}
	n, err := io.Copy(l, f)
	d.offsets[rank] += n
	if err != nil {
		return n, fmt.Errorf("run logs: %s: %w", path, err)
	}
	return n, nil
}

// Flush ends every rank's input (see RankLog.Flush): call it once the run is
// over, so that a last line cut short counts as truncated.
func (d *Dir) Flush() {
	for _, l := range d.logs {
		l.Flush()
	}
}

// Logs are the rank logs read so far, by rank.
func (d *Dir) Logs() []*RankLog {
	out := make([]*RankLog, 0, len(d.logs))
	for _, l := range d.logs {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out
}

// ReadRun reads every rank log of a finished (or dead) run.
func ReadRun(run string) ([]*RankLog, error) {
	d := NewDir(run)
	if _, err := d.Poll(); err != nil {
		return nil, err
	}
	d.Flush()
	logs := d.Logs()
	if len(logs) == 0 {
		return nil, fmt.Errorf("%s: no rank logs (logs/rank-NNNNN.jsonl): not a run directory, or the run has not started", run)
	}
	return logs, nil
}
