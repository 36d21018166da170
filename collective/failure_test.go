package collective

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStranger connects strangers to a rank's port while the job runs: they
// are refused and logged, and the job goes on.
func TestStranger(t *testing.T) {
	n := 3
	w := startWorld(t, n, func(c *Config) { c.Timeout = 2 * time.Second })
	addr := w.comms[1].(*tcpComm).s.ln.Addr().String()

	badToken := make([]byte, 32)
	rand.Read(badToken)
	strangers := []func(c net.Conn) error{
		// Garbage.
		func(c net.Conn) error { _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); return err },
		// Silence: the handshake times out.
		func(c net.Conn) error { return nil },
		// A well-formed client without the token.
		func(c net.Conn) error {
			return clientHandshake(c, badToken, hello{world: uint32(n), from: 0, to: 1, kind: kindRing, comm: worldID})
		},
		// The right token (another job's ranks would not have it) but the wrong world size.
		func(c net.Conn) error {
			tok := w.comms[0].(*tcpComm).s.token
			return clientHandshake(c, tok, hello{world: uint32(n + 1), from: 0, to: 1, kind: kindRing, comm: worldID})
		},
	}
	for i, s := range strangers {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		err = s(c)
		if i >= 2 && err == nil {
			t.Errorf("stranger %d: handshake succeeded", i)
		}
		// The rank closes the connection on us.
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
			t.Errorf("stranger %d: %v", i, err)
		}
		c.Close()
	}
	w.run(t, func(c Comm) error { return c.AllReduce(make(F32, 1000), Sum) })
	if got := strings.Count(w.log.String(), "refused connection"); got != len(strangers) {
		t.Errorf("%d refusals logged, want %d:\n%s", got, len(strangers), w.log)
	}
}

// TestLostRank simulates a rank crashing (its sockets close without a
// goodbye) in goroutine form: the others fail naming it, and no goroutine is
// left behind.
func TestLostRank(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		n := 4
		w := startWorld(t, n, func(c *Config) { c.Timeout = 2 * time.Second; c.ChunkBytes = 4096 })
		w.expectErr = true
		victim := 2
		errs := w.each(func(c Comm) error {
			buf := make(F32, 1<<14)
			for i := 0; ; i++ {
				if c.Rank() == victim && i == 20 {
					c.(*tcpComm).s.teardown()
					return nil
				}
				if err := c.AllReduce(buf, Sum); err != nil {
					return err
				}
			}
		})
		for r, err := range errs {
			if r == victim {
				continue
			}
			var re *RankError
			if !errors.As(err, &re) || re.Rank != victim {
				t.Errorf("rank %d: %v, want an error naming rank %d", r, err, victim)
			}
		}
		w.close(t)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, g, buf[:runtime.Stack(buf, true)])
	}
}

// TestAbort: a rank that gives up takes the job down with its reason.
func TestAbort(t *testing.T) {
	w := startWorld(t, 3, func(c *Config) { c.Timeout = 2 * time.Second })
	w.expectErr = true
	errs := w.each(func(c Comm) error {
		if c.Rank() == 1 {
			c.Abort(errors.New("out of memory"))
			return nil
		}
		return c.AllReduce(make(F32, 10), Sum)
	})
	for _, r := range []int{0, 2} {
		var re *RankError
		if !errors.As(errs[r], &re) || re.Rank != 1 || !strings.Contains(re.Reason, "out of memory") {
			t.Errorf("rank %d: %v", r, errs[r])
		}
	}
}

// TestNoLeak: an orderly job leaves no goroutine behind.
func TestNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	w := startWorld(t, 3, nil)
	w.run(t, func(c Comm) error {
		sub, err := c.Split(c.Rank()%2, 0)
		if err != nil {
			return err
		}
		if err := errors.Join(c.AllReduce(make(F32, 100), Sum), sub.Barrier()); err != nil {
			return err
		}
		if c.Rank() == 0 {
			return c.Send(F32{1}, 1)
		}
		if c.Rank() == 1 {
			return c.Recv(F32{1}, 0)
		}
		return nil
	})
	w.close(t)
	w.comms = nil
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after:\n%s", before, g, buf[:runtime.Stack(buf, true)])
	}
}

// TestDroppedConnection cuts one ring link between two live ranks: every rank
// fails with the same verdict, naming one end of the link.
func TestDroppedConnection(t *testing.T) {
	n := 4
	w := startWorld(t, n, func(c *Config) { c.Timeout = 3 * time.Second; c.ChunkBytes = 4096 })
	w.expectErr = true
	errs := w.each(func(c Comm) error {
		buf := make(F32, 1<<12)
		for i := 0; ; i++ {
			if c.Rank() == 1 && i == 10 {
				c.(*tcpComm).next.Close()
			}
			if err := c.AllReduce(buf, Sum); err != nil {
				return err
			}
		}
	})
	verdict := -1
	for r, err := range errs {
		var re *RankError
		if !errors.As(err, &re) || (re.Rank != 1 && re.Rank != 2) {
			t.Fatalf("rank %d: %v, want an error naming rank 1 or 2", r, err)
		}
		if verdict >= 0 && re.Rank != verdict {
			t.Errorf("rank %d blames rank %d, another rank blames %d", r, re.Rank, verdict)
		}
		verdict = re.Rank
		t.Logf("rank %d: %v", r, err)
	}
}

// TestMissingRank: a rank that never starts makes the others fail, naming it,
// within the timeout instead of waiting forever.
func TestMissingRank(t *testing.T) {
	dir := t.TempDir()
	n := 4
	errs := make([]error, n-1)
	done := make(chan int, n-1)
	for r := 0; r < n-1; r++ {
		go func() {
			cfg := Config{Rank: r, Size: n, JobID: "missing", RendezvousDir: dir, Timeout: time.Second, Logf: func(string, ...any) {}}
			c, err := Connect(context.Background(), cfg)
			if err == nil {
				c.Close()
			}
			errs[r] = err
			done <- r
		}()
	}
	for range n - 1 {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Connect hangs with a rank missing")
		}
	}
	for r, err := range errs {
		if err == nil {
			t.Errorf("rank %d connected to a world with a rank missing", r)
		}
	}
	if !strings.Contains(errs[0].Error(), "rank(s) 3 did not register") {
		t.Errorf("rank 0: %v", errs[0])
	}
}

// TestStaleRendezvousFile: the file names an address that is not this job's
// rank 0 (left over from an earlier job, the port reused by something that
// accepts and says nothing). The ranks retry until rank 0 has rewritten it.
func TestStaleRendezvousFile(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	dir := t.TempDir()
	job := "stale-job"
	if err := publish(rendezvousFile(dir, job), ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	w := &world{comms: make([]Comm, 3), log: &logBuf{}}
	errs := w.each(func(Comm) error { return nil }) // sized
	var wg sync.WaitGroup
	for r := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r == 0 {
				time.Sleep(200 * time.Millisecond) // the others find the stale file first
			}
			cfg := Config{Rank: r, Size: 3, JobID: job, RendezvousDir: dir, Timeout: 8 * time.Second, Logf: w.log.logf(r)}
			w.comms[r], errs[r] = Connect(context.Background(), cfg)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	t.Cleanup(func() { w.close(t) })
	w.run(t, func(c Comm) error { return c.AllReduce(make(F32, 3), Sum) })
}
