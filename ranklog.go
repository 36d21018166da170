package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
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

// heapBytes is the Go heap in use: the host memory the run holds on purpose.
func heapBytes() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
