package collective

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests below run ranks as separate OS processes: the test binary
// re-executes itself with COLLECTIVE_TEST_CHILD naming what to do, and the
// rank in the launcher-style environment.

func TestMain(m *testing.M) {
	if mode := os.Getenv("COLLECTIVE_TEST_CHILD"); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(runTests(m))
}

// runTests runs the tests with HOME in a temporary folder, which the rank
// processes inherit: jobs without a token make their per-user secret there,
// not in the home of whoever runs the tests.
func runTests(m *testing.M) int {
	home, err := os.MkdirTemp("", "collective-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(home)
	os.Setenv("HOME", home)
	return m.Run()
}

// child is one rank's process. Exit status: 0 ok, 3 a collective failed
// (the error is the last line of stderr), 4 setup failed.
func child(mode string) int {
	cfg, err := FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		return 4
	}
	c, err := Connect(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		return 4
	}
	switch mode {
	case "selftest":
		checks, err := SelfTest(c, raceEnabled)
		if err != nil {
			fmt.Fprintln(os.Stderr, "selftest:", err)
			return 3
		}
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "close:", err)
			return 3
		}
		fmt.Printf("rank %d ok %d checks\n", cfg.Rank, checks)
		return 0
	case "loop":
		// All-reduce until something fails; say "ready" after the first one.
		buf := make(F32, 1<<16)
		for i := 0; ; i++ {
			if err := c.AllReduce(buf, Sum); err != nil {
				fmt.Fprintln(os.Stderr, "all-reduce:", err)
				return 3
			}
			if i == 0 {
				fmt.Println("ready")
			}
		}
	}
	fmt.Fprintln(os.Stderr, "unknown mode", mode)
	return 4
}

type proc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	ready  chan struct{}
	done   chan struct{}
	err    error // from Wait
}

// startProcs starts n ranks of this test binary in the given mode, with a
// job id and temporary directory of their own.
func startProcs(t *testing.T, n int, mode string, extraEnv ...string) []*proc {
	t.Helper()
	dir := t.TempDir()
	job := fmt.Sprintf("proc-%d-%d", os.Getpid(), jobCounter.Add(1))
	ps := make([]*proc, n)
	for r := range ps {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			"COLLECTIVE_TEST_CHILD="+mode,
			"RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(n), "LOCAL_RANK="+strconv.Itoa(r),
			"TRAIN_JOB_ID="+job, "TMPDIR="+dir,
		)
		cmd.Env = append(cmd.Env, extraEnv...)
		p := &proc{cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
		cmd.Stderr = &p.stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			var once sync.Once
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if sc.Text() == "ready" {
					once.Do(func() { close(p.ready) })
				}
			}
			io.Copy(io.Discard, out)
			p.err = cmd.Wait()
			close(p.done)
		}()
		ps[r] = p
	}
	t.Cleanup(func() {
		for _, p := range ps {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return ps
}

// wait waits for p to exit, failing the test if it takes longer than guard.
func (p *proc) wait(t *testing.T, guard time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(guard):
		t.Fatalf("process %v still running after %v (hang)\nstderr:\n%s", p.cmd.Env[len(p.cmd.Env)-1], guard, p.stderr.String())
	}
}

func TestProcessesSelfTest(t *testing.T) {
	n := 4
	if raceEnabled {
		n = 3
	}
	ps := startProcs(t, n, "selftest")
	for r, p := range ps {
		p.wait(t, 2*time.Minute)
		if p.err != nil {
			t.Errorf("rank %d: %v\n%s", r, p.err, p.stderr.String())
		}
	}
}

// TestProcessKilled kills (or stops) one rank in the middle of all-reducing:
// every other rank must exit non-zero, naming it, instead of hanging.
func TestProcessKilled(t *testing.T) {
	cases := []struct {
		name   string
		victim int
		sig    syscall.Signal
	}{
		{"kill rank 2", 2, syscall.SIGKILL},
		{"kill rank 0", 0, syscall.SIGKILL},
		{"stop rank 1", 1, syscall.SIGSTOP}, // hung, not dead: the heartbeat timeout finds it
	}
	const timeout = 3 * time.Second
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := 4
			ps := startProcs(t, n, "loop", "TRAIN_COMM_TIMEOUT="+timeout.String())
			for r, p := range ps {
				select {
				case <-p.ready:
				case <-p.done:
					t.Fatalf("rank %d exited early: %v\n%s", r, p.err, p.stderr.String())
				case <-time.After(time.Minute):
					t.Fatalf("rank %d never got going\n%s", r, p.stderr.String())
				}
			}
			if err := ps[tc.victim].cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("rank %d (host", tc.victim)
			for r, p := range ps {
				if r == tc.victim {
					continue
				}
				p.wait(t, 10*timeout+20*time.Second) // a failure guard, not a speed requirement
				ee, ok := p.err.(*exec.ExitError)
				if !ok || ee.ExitCode() != 3 {
					t.Errorf("rank %d: exit %v, want status 3\n%s", r, p.err, p.stderr.String())
					continue
				}
				if msg := p.stderr.String(); !strings.Contains(msg, want) {
					t.Errorf("rank %d's error does not name %q:\n%s", r, strings.TrimSpace(want), msg)
				} else {
					t.Logf("rank %d: %s", r, strings.TrimSpace(msg))
				}
			}
			if tc.sig == syscall.SIGSTOP {
				ps[tc.victim].cmd.Process.Kill()
			}
		})
	}
}
