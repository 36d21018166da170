package collective

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"train/internal/testcheck"
)

// logBuf collects what the ranks log (safe after the test has ended).
type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) logf(rank int) func(string, ...any) {
	return func(format string, args ...any) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, fmt.Sprintf("rank %d: ", rank)+fmt.Sprintf(format, args...))
	}
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

var jobCounter atomic.Int64

// world is a job of n ranks run as goroutines of this test over loopback.
type world struct {
	comms     []Comm
	log       *logBuf
	expectErr bool // the job is meant to fail: Close errors are expected
}

// startWorld connects n ranks through the single-host rendezvous file.
func startWorld(t testing.TB, n int, mod func(*Config)) *world {
	t.Helper()
	dir := t.TempDir()
	job := fmt.Sprintf("test-%d-%d", time.Now().UnixNano(), jobCounter.Add(1))
	w := &world{comms: make([]Comm, n), log: &logBuf{}}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := Config{Rank: r, Size: n, JobID: job, RendezvousDir: dir, Timeout: 10 * time.Second, Logf: w.log.logf(r)}
			if mod != nil {
				mod(&cfg)
			}
			w.comms[r], errs[r] = Connect(context.Background(), cfg)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v\nlog:\n%s", r, err, w.log)
		}
	}
	t.Cleanup(func() { w.close(t) })
	return w
}

func (w *world) close(t testing.TB) {
	errs := w.each(func(c Comm) error {
		if c == nil {
			return nil
		}
		return c.Close()
	})
	for r, err := range errs {
		if err != nil && !w.expectErr {
			t.Errorf("close rank %d: %v", r, err)
		}
	}
}

// each runs f on every rank at once and returns the errors by rank.
func (w *world) each(f func(c Comm) error) []error {
	errs := make([]error, len(w.comms))
	var wg sync.WaitGroup
	for r, c := range w.comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(c)
		}()
	}
	wg.Wait()
	return errs
}

// run is each, failing the test on any error.
func (w *world) run(t testing.TB, f func(c Comm) error) {
	t.Helper()
	for r, err := range w.each(f) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// intVal is an integer-valued element: sums of a few are exact in float32
// (and, for |v| <= 8 and up to 16 ranks, in bf16).
func intVal(rank, i int) int { return (rank*31+i*7)%17 - 8 }

func groupSizes() []int {
	if raceEnabled {
		return []int{1, 2, 3, 4}
	}
	return []int{1, 2, 3, 4, 5}
}

func lengths(n int) []int {
	ls := []int{0, 1, n - 1, n + 1, 2*n + 1, 7919}
	if !raceEnabled {
		ls = append(ls, 1_000_003)
	}
	return ls
}

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort(t testing.TB) string { return strconv.Itoa(testcheck.FreePort(t)) }
