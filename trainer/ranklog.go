package trainer

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// rankLog is one rank's machine-readable log, RUN/logs/rank-NNNNN.jsonl: a JSON
// object per line (log/slog), with start-up facts, one record per step, warnings
// and errors, so that a person or `train logs` can tell later what each rank did.
type rankLog struct {
	*slog.Logger
	f *os.File
}

func openRankLog(runDir string, rank int) (*rankLog, error) {
	dir := filepath.Join(runDir, "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("rank log: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("rank-%05d.jsonl", rank)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("rank log: %w", err)
	}
	l := slog.New(slog.NewJSONHandler(f, nil)).With("rank", rank)
	return &rankLog{Logger: l, f: f}, nil
}

// start records the facts a person needs first when a rank misbehaves.
func (l *rankLog) start(attrs ...any) {
	host, _ := os.Hostname()
	base := []any{"host", host, "pid", os.Getpid(), "go", runtime.Version(), "cpus", runtime.NumCPU(),
		"gomaxprocs", runtime.GOMAXPROCS(0)}
	l.Info("start", append(base, attrs...)...)
}

// close flushes and closes the file; err, when not nil, is recorded first.
func (l *rankLog) close(err error) {
	if err != nil {
		l.Error("failed", "error", err.Error())
	} else {
		l.Info("finished")
	}
	l.f.Close()
}

// debugStepSleep is the delay TRAIN_DEBUG_STEP_SLEEP=RANK:DURATION asks this rank
// to add to every step (e.g. "2:300ms"): a deliberate straggler, for testing that
// `train logs` finds one. Zero when unset or meant for another rank.
func debugStepSleep(rank int) time.Duration {
	v := os.Getenv("TRAIN_DEBUG_STEP_SLEEP")
	r, d, ok := strings.Cut(v, ":")
	if !ok || r != strconv.Itoa(rank) {
		return 0
	}
	dur, err := time.ParseDuration(d)
	if err != nil || dur < 0 {
		return 0
	}
	return dur
}
