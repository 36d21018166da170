package collective

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// recorder passes a connection through, keeping a copy of what the client sent.
type recorder struct {
	net.Conn
	sent bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.sent.Write(p)
	return r.Conn.Write(p)
}

// TestHandshakeReplayRefused records a genuine client's hello to a server, then
// replays the recorded bytes to a server as an eavesdropper would: the server's
// fresh nonce makes the recorded proof worthless, and the connection is refused.
func TestHandshakeReplayRefused(t *testing.T) {
	token := []byte("job secret")
	h := hello{world: 4, from: 1, to: 2, kind: kindRing, comm: 7}

	// 1. A genuine handshake, recorded.
	c, s := net.Pipe()
	rec := &recorder{Conn: c}
	done := make(chan error, 1)
	go func() {
		_, err := serverHandshake(s, token, 4, 2)
		done <- err
	}()
	if err := clientHandshake(rec, token, h); err != nil {
		t.Fatalf("genuine handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("genuine handshake, server side: %v", err)
	}
	c.Close()
	s.Close()
	recorded := rec.sent.Bytes()
	if len(recorded) != c1Len {
		t.Fatalf("recorded %d bytes, want the client hello's %d", len(recorded), c1Len)
	}

	// 2. The replay: read the new server hello, send the old client hello.
	c, s = net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() {
		_, err := serverHandshake(s, token, 4, 2)
		done <- err
		s.Close()
	}()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, s1Len)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(recorded); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("replayed hello: server said %v, want a refusal", err)
	}
	if n, _ := c.Read(make([]byte, macLen)); n == macLen {
		t.Fatal("the server answered a replayed hello with its proof")
	}
}
