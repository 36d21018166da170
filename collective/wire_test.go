package collective

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
)

func TestFrames(t *testing.T) {
	peers := []peer{{"127.0.0.1:1", "a"}, {"10.0.0.2:29500", "node-b"}}
	var wire []byte
	wire = appendFrame(wire, msgTable, encodeTable(peers))
	wire = appendFrame(wire, msgHeartbeat, nil)
	wire = appendFrame(wire, msgAbort, encodeAbort(&RankError{Rank: 1, Host: "node-b", Addr: "x", Reason: "lost"}))
	r := bytes.NewReader(wire)
	typ, p, buf, err := readFrame(r, nil)
	if err != nil || typ != msgTable {
		t.Fatalf("frame 1: %d %v", typ, err)
	}
	got, err := decodeTable(p, 2)
	if err != nil || len(got) != 2 || got[1] != peers[1] {
		t.Fatalf("table: %v %v", got, err)
	}
	if _, err := decodeTable(p, 3); err == nil {
		t.Error("table for the wrong world size accepted")
	}
	if typ, p, buf, err = readFrame(r, buf); err != nil || typ != msgHeartbeat || len(p) != 0 {
		t.Fatalf("frame 2: %d %v", typ, err)
	}
	if typ, p, _, err = readFrame(r, buf); err != nil || typ != msgAbort {
		t.Fatalf("frame 3: %d %v", typ, err)
	}
	e, err := decodeAbort(p, 2)
	if err != nil || e.Rank != 1 || e.Reason != "lost" || e.Host != "node-b" {
		t.Fatalf("abort: %+v %v", e, err)
	}
	if _, _, _, err := readFrame(r, nil); err != io.EOF {
		t.Errorf("after the last frame: %v", err)
	}
	// Lengths out of range are refused before anything is allocated.
	for _, b := range [][]byte{{0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff}, {1, 0, 0x10, 0}} {
		if _, _, _, err := readFrame(bytes.NewReader(b), nil); err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("%x: %v", b, err)
		}
	}
	if _, _, _, err := readFrame(bytes.NewReader([]byte{5, 0, 0, 0, 1}), nil); err != io.ErrUnexpectedEOF {
		t.Errorf("truncated frame: %v", err)
	}
}

// FuzzControl feeds arbitrary bytes to the frame reader and every decoder:
// they must return errors, never panic or allocate beyond the bounds.
func FuzzControl(f *testing.F) {
	f.Add(appendFrame(nil, msgTable, encodeTable([]peer{{"a:1", "h"}, {"b:2", "i"}})))
	f.Add(appendFrame(nil, msgAbort, encodeAbort(&RankError{Rank: 1, Reason: "x"})))
	f.Add(appendFrame(nil, msgReport, encodeReport(1, "y")))
	f.Add(appendFrame(nil, msgRegister, encodeRegister(peer{"c:3", "j"})))
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		var buf []byte
		for {
			_, p, nb, err := readFrame(r, buf)
			if err != nil {
				break
			}
			buf = nb
			if len(p) > maxFrame {
				t.Fatalf("payload of %d bytes", len(p))
			}
			decodeTable(p, 2)
			decodeAbort(p, 2)
			decodeReport(p, 2)
			decodeRegister(p)
		}
		if len(b) >= hdrLen {
			parseHeader(b[:hdrLen])
		}
		if len(b) >= c1Len {
			parseC1(b[:c1Len], 4, 1)
		}
	})
}

func TestHeader(t *testing.T) {
	h := header{kind: opBroadcast, dtype: uint8(BFloat16), seq: 7, count: 1 << 40, root: 3}
	var b [hdrLen]byte
	h.put(&b)
	got, err := parseHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("%v %v", got, err)
	}
	b[0] ^= 1
	if _, err := parseHeader(b[:]); err == nil {
		t.Error("corrupt magic accepted")
	}
	if s := h.String(); !strings.Contains(s, "broadcast #7") || !strings.Contains(s, "root 3") {
		t.Errorf("String: %s", s)
	}
}

func TestHandshake(t *testing.T) {
	token := []byte("secret")
	run := func(clientToken []byte, h hello, world, self uint32) (error, error) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		cerr := make(chan error, 1)
		go func() {
			err := clientHandshake(a, clientToken, h)
			a.Close()
			cerr <- err
		}()
		_, serr := serverHandshake(b, token, world, self)
		b.Close()
		return <-cerr, serr
	}
	good := hello{world: 4, from: 2, to: 1, kind: kindRing, comm: 9}
	if c, s := run(token, good, 4, 1); c != nil || s != nil {
		t.Fatalf("good handshake: client %v, server %v", c, s)
	}
	bad := []struct {
		name  string
		token []byte
		h     hello
	}{
		{"wrong token", []byte("guess"), good},
		{"wrong world size", token, hello{world: 5, from: 2, to: 1, kind: kindRing}},
		{"wrong target", token, hello{world: 4, from: 2, to: 3, kind: kindRing}},
		{"impossible rank", token, hello{world: 4, from: 9, to: 1, kind: kindRing}},
		{"self", token, hello{world: 4, from: 1, to: 1, kind: kindRing}},
		{"bad kind", token, hello{world: 4, from: 2, to: 1, kind: 77}},
		{"rendezvous with rank 1", token, hello{world: 4, from: 2, to: 1, kind: kindRendezvous}},
	}
	for _, b := range bad {
		c, s := run(b.token, b.h, 4, 1)
		if c == nil || s == nil {
			t.Errorf("%s: client %v, server %v", b.name, c, s)
		}
	}
}
