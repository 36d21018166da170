package main

// Helpers of the fault campaign (fault_test.go): a launcher that can kill,
// stop and resume single rank processes, and tolerant readers of what a killed
// run leaves behind (its last line may be torn).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// faultProc is one process the campaign started: a rank, or mpirun with all of
// its ranks. It runs in its own process group so that a test can signal it
// alone and clean up everything it spawned.
type faultProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   bytes.Buffer // stdout and stderr together
	done  chan struct{}
	err   error     // from Wait, valid after done
	ended time.Time // when Wait returned
}

// lockedWriter serialises the two pipes' writes into one buffer.
type lockedWriter struct{ p *faultProc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// output is what the process printed so far.
func (p *faultProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// exitCode is the process's exit status after done (-1 when a signal ended it).
func (p *faultProc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// wait waits for the process until d has passed; false if it is still running.
func (p *faultProc) wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// killGroup SIGKILLs the process's whole group (it and whatever it started).
func (p *faultProc) killGroup() {
	if p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// startTrain starts `train args...` (the rank binary: a non-race build under
// -race) with extra environment, in its own process group, under ctx: when ctx
// ends the group is killed. The test's cleanup kills it too, so nothing outlives
// the test. With launcher non-empty it runs `launcher... train args...` instead.
func startTrain(t *testing.T, ctx context.Context, launcher []string, args []string, env ...string) *faultProc {
	t.Helper()
	bin, err := rankBinary()
	if err != nil {
		t.Fatal(err)
	}
	env = append(append(os.Environ(), env...), "TRAIN_TEST_CHILD=1", "TRAIN_TEST_ARGS="+strings.Join(args, " "))
	var binArgs []string
	if bin != os.Args[0] {
		binArgs = args
	}
	argv := append(append(append([]string{}, launcher...), bin), binArgs...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &faultProc{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", argv[0], err)
	}
	go func() {
		p.err = cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			p.killGroup()
		case <-p.done:
		}
	}()
	t.Cleanup(func() {
		p.killGroup()
		<-p.done
	})
	return p
}

// startRanks starts np ranks of `train args...` bootstrapped by hand through
// RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT: no launcher watches them, so a rank
// that dies is noticed by the others alone.
func startRanks(t *testing.T, ctx context.Context, np int, args []string, env ...string) []*faultProc {
	t.Helper()
	port := freePort(t)
	job := fmt.Sprintf("fault-%d-%d", os.Getpid(), time.Now().UnixNano())
	procs := make([]*faultProc, np)
	for r := range procs {
		e := append([]string{fmt.Sprintf("RANK=%d", r), fmt.Sprintf("WORLD_SIZE=%d", np),
			"MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port), "TRAIN_JOB_ID=" + job}, env...)
		procs[r] = startTrain(t, ctx, nil, args, e...)
	}
	return procs
}

// startMPI starts np ranks of `train args...` under mpirun, which watches them.
func startMPI(t *testing.T, ctx context.Context, mpirun string, np int, args []string, env ...string) *faultProc {
	t.Helper()
	launcher := []string{mpirun, "--oversubscribe", "-np", fmt.Sprint(np), "-x", "TRAIN_TEST_CHILD", "-x", "TRAIN_TEST_ARGS"}
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		launcher = append(launcher, "-x", name)
	}
	env = append(env, "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
	return startTrain(t, ctx, launcher, args, env...)
}

// waitAll waits for every process until deadline; it reports whether all ended.
func waitAll(procs []*faultProc, deadline time.Time) bool {
	for _, p := range procs {
		if !p.wait(time.Until(deadline)) {
			return false
		}
	}
	return true
}

// jsonLines reads a JSONL file, skipping a torn or otherwise unreadable line
// (a process killed mid-write may leave one at the end).
func jsonLines(path string) []map[string]any {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// lastLosses maps step -> loss from metrics.jsonl; a step logged twice (before a
// crash and again after the resume) keeps its last value.
func lastLosses(run string) map[int]float64 {
	out := map[int]float64{}
	for _, m := range jsonLines(filepath.Join(run, "metrics.jsonl")) {
		step, ok1 := m["step"].(float64)
		loss, ok2 := m["loss"].(float64)
		if ok1 && ok2 {
			out[int(step)] = loss
		}
	}
	return out
}

// maxStep is the highest step metrics.jsonl has logged (0 for none).
func maxStep(run string) int {
	n := 0
	for s := range lastLosses(run) {
		n = max(n, s)
	}
	return n
}

// rankLogPath is a rank's JSONL log in a run directory.
func rankLogPath(run string, rank int) string {
	return filepath.Join(run, "logs", fmt.Sprintf("rank-%05d.jsonl", rank))
}

// rankPID is the pid of the newest process that logged "start" as rank in run
// (how a test finds a rank that mpirun started).
func rankPID(run string, rank int) (int, bool) {
	pid := 0
	for _, m := range jsonLines(rankLogPath(run, rank)) {
		if m["msg"] == "start" {
			if p, ok := m["pid"].(float64); ok {
				pid = int(p)
			}
		}
	}
	return pid, pid > 0
}

// lastRecord is a rank log's last readable record (nil when there is none).
func lastRecord(run string, rank int) map[string]any {
	recs := jsonLines(rankLogPath(run, rank))
	if len(recs) == 0 {
		return nil
	}
	return recs[len(recs)-1]
}

// pollUntil calls cond every few milliseconds until it holds (true) or d
// passes or stop is closed (false).
func pollUntil(d time.Duration, stop <-chan struct{}, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		select {
		case <-stop:
			return cond()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return false
}

// faultScore is one row of the Reliability table, logged by each fault test
// as a line `RELIABILITY|class|trials|survived|lost|note` that
// scripts/reliability.sh collects from `go test -v`.
type faultScore struct {
	class                  string
	trials, survived, lost int
	note                   string
}

func (s faultScore) log(t *testing.T) {
	t.Logf("RELIABILITY|%s|%d|%d|%d|%s", s.class, s.trials, s.survived, s.lost, s.note)
}

// sameLosses compares the losses of steps (from, to] of got with want bitwise;
// it returns the steps that differ or are missing.
func sameLosses(got, want map[int]float64, from, to int) []int {
	var bad []int
	for s := from + 1; s <= to; s++ {
		g, ok := got[s]
		if !ok || g != want[s] {
			bad = append(bad, s)
		}
	}
	return bad
}
