package collective

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJunkConnectionsThrottled: 300 connections that are not the job's (closed
// at once, an HTTP request, zeros) are refused, the first few logged one by
// one and the rest as one count when the session closes, through the
// caller's Logf (which is how a trainer records them in its rank log).
func TestJunkConnectionsThrottled(t *testing.T) {
	w := startWorld(t, 2, nil)
	s := w.comms[0].(*tcpComm).s
	for i := 0; i < 300; i++ {
		c, err := net.Dial("tcp", s.peers[0].addr)
		if err != nil {
			t.Fatal(err)
		}
		switch i % 3 {
		case 1:
			c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		case 2:
			c.Write(make([]byte, c1Len))
		}
		c.Close()
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.refused.mu.Lock()
		n := s.refused.total
		s.refused.mu.Unlock()
		if n == 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 300 junk connections refused after 30 s", n)
		}
	}
	if n := strings.Count(w.log.String(), "refused connection from"); n != refusalBurst {
		t.Errorf("%d refusals logged one by one, want %d:\n%s", n, refusalBurst, w.log)
	}
	w.close(t)
	w.comms = nil // closed
	if log := w.log.String(); !strings.Contains(log, "rank 0: refused 295 more connections in ") || !strings.Contains(log, "; 300 refused in all") {
		t.Errorf("no count of the refusals not logged:\n%s", log)
	}
	// The job itself did not notice.
	if strings.Contains(w.log.String(), "job failed") {
		t.Errorf("junk connections failed the job:\n%s", w.log)
	}
}

// TestRefusalsPerInterval: past the burst, refusals are counted and the
// count is logged once its interval is over; the next interval starts with
// a burst of its own.
func TestRefusalsPerInterval(t *testing.T) {
	var lines []string
	logf := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	var r refusals
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := 0; i < 12; i++ {
		r.note(t0.Add(time.Duration(i)*time.Second), fmt.Sprintf("10.0.0.%d:99: bad authentication", i), logf)
	}
	r.flush(t0.Add(30*time.Second), false, logf)
	if len(lines) != refusalBurst || !strings.HasSuffix(lines[refusalBurst-1], "(more refusals are counted, one line per 1m0s)") {
		t.Fatalf("within the first interval: %q", lines)
	}
	r.flush(t0.Add(61*time.Second), false, logf)
	want := "refused 7 more connections in 1m1s (the latest from 10.0.0.11:99: bad authentication); 12 refused in all"
	if len(lines) != refusalBurst+1 || lines[refusalBurst] != want {
		t.Fatalf("after the interval: %q, want the count %q", lines[refusalBurst:], want)
	}
	r.note(t0.Add(62*time.Second), "10.0.0.12:99: x", logf)
	if len(lines) != refusalBurst+2 || lines[refusalBurst+1] != "refused connection from 10.0.0.12:99: x" {
		t.Errorf("a new interval logs one by one again: %q", lines[refusalBurst+1:])
	}
}

// TestRendezvousFileRemoved: rank 0's rendezvous file lasts only while the
// ranks register, so that no job leaves one in $TMPDIR: not one that ends
// normally, not one that is aborted, not one whose rendezvous fails.
func TestRendezvousFileRemoved(t *testing.T) {
	dir := t.TempDir()
	left := func() []string {
		files, _ := filepath.Glob(filepath.Join(dir, "train-rendezvous-*"))
		return files
	}
	w := startWorld(t, 3, func(c *Config) { c.RendezvousDir = dir })
	if files := left(); len(files) > 0 {
		t.Errorf("rendezvous file still there once every rank joined: %v", files)
	}
	w.expectErr = true
	w.comms[1].Abort(fmt.Errorf("test"))
	if files := left(); len(files) > 0 {
		t.Errorf("rendezvous file left by an aborted job: %v", files)
	}

	_, err := Connect(context.Background(), Config{Rank: 0, Size: 2, JobID: "alone", RendezvousDir: dir, Timeout: 200 * time.Millisecond,
		Logf: func(string, ...any) {}})
	if err == nil {
		t.Fatal("a rendezvous without rank 1 succeeded")
	}
	if files := left(); len(files) > 0 {
		t.Errorf("rendezvous file left by a failed rendezvous: %v", files)
	}
}
