package collective

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Wire formats. Everything is little-endian (encoding/binary), every length
// read from the network is checked against a bound before it is used, and
// every connection starts with the authenticated handshake below.
//
// Handshake (the dialing rank is the client):
//
//	server -> client  S1: "TRNs" version:u32 nonceS:[32]
//	client -> server  C1: "TRNc" version:u32 world:u32 from:u32 to:u32 kind:u8 pad:[3] comm:u64 nonceC:[32] mac:[32]
//	server -> client  S2: mac:[32]
//
// C1.mac = HMAC-SHA256(token, "train/collective/v1 client" | S1 | C1 without mac)
// S2.mac = HMAC-SHA256(token, "train/collective/v1 server" | S1 | C1)
//
// so each side proves knowledge of the job token bound to fresh nonces, the
// world size and both ranks. A server refuses (closes) a client whose world
// size, target rank or mac is wrong; a client refuses a server whose reply is.
//
// Data connections then carry, per operation, a 32-byte operation header
// followed by the raw elements (sizes known to both sides from the header,
// which the receiver checks against its own call). The control connection
// between each rank and rank 0 carries frames: length:u32 type:u8 payload.

const (
	protoVersion = 1
	s1Len        = 40
	c1Len        = 96
	c1MacOff     = 64
	macLen       = 32

	hdrLen   = 32
	hdrMagic = 0x4c4c4f43 // "COLL"

	maxFrame  = 1 << 20 // largest control frame accepted
	maxName   = 255     // host names and addresses
	maxReason = 2048    // failure reasons
	maxWorld  = 1 << 16 // largest world size accepted
)

// Connection kinds, named in the handshake.
const (
	kindRendezvous = 1 // a rank registering with rank 0; becomes its control connection
	kindRing       = 2 // ring link of a communicator: from -> to = next
	kindP2P        = 3 // point-to-point link of a communicator: from -> to
)

// hello is what a client states about itself in the handshake.
type hello struct {
	world, from, to uint32
	kind            uint8
	comm            uint64
}

func mac(token []byte, label string, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

// clientHandshake authenticates a dialed connection as h. Deadlines are the
// caller's.
func clientHandshake(rw io.ReadWriter, token []byte, h hello) error {
	var s1 [s1Len]byte
	if _, err := io.ReadFull(rw, s1[:]); err != nil {
		return fmt.Errorf("handshake: reading server hello: %w", err)
	}
	if string(s1[:4]) != "TRNs" || binary.LittleEndian.Uint32(s1[4:]) != protoVersion {
		return errors.New("handshake: peer is not a train collective endpoint of this version")
	}
	var c1 [c1Len]byte
	copy(c1[:], "TRNc")
	binary.LittleEndian.PutUint32(c1[4:], protoVersion)
	binary.LittleEndian.PutUint32(c1[8:], h.world)
	binary.LittleEndian.PutUint32(c1[12:], h.from)
	binary.LittleEndian.PutUint32(c1[16:], h.to)
	c1[20] = h.kind
	binary.LittleEndian.PutUint64(c1[24:], h.comm)
	if _, err := rand.Read(c1[32:64]); err != nil {
		return fmt.Errorf("handshake: nonce: %w", err)
	}
	copy(c1[c1MacOff:], mac(token, "train/collective/v1 client", s1[:], c1[:c1MacOff]))
	if _, err := rw.Write(c1[:]); err != nil {
		return fmt.Errorf("handshake: sending hello: %w", err)
	}
	var s2 [macLen]byte
	if _, err := io.ReadFull(rw, s2[:]); err != nil {
		return fmt.Errorf("handshake: refused by peer (wrong job token or world size?): %w", err)
	}
	if !hmac.Equal(s2[:], mac(token, "train/collective/v1 server", s1[:], c1[:])) {
		return errors.New("handshake: peer failed to prove the job token")
	}
	return nil
}

// serverHandshake authenticates an accepted connection for the rank self of a
// world of the given size and returns what the client stated.
func serverHandshake(rw io.ReadWriter, token []byte, world, self uint32) (hello, error) {
	var s1 [s1Len]byte
	copy(s1[:], "TRNs")
	binary.LittleEndian.PutUint32(s1[4:], protoVersion)
	if _, err := rand.Read(s1[8:]); err != nil {
		return hello{}, fmt.Errorf("nonce: %w", err)
	}
	if _, err := rw.Write(s1[:]); err != nil {
		return hello{}, fmt.Errorf("sending hello: %w", err)
	}
	var c1 [c1Len]byte
	if _, err := io.ReadFull(rw, c1[:]); err != nil {
		return hello{}, fmt.Errorf("reading client hello: %w", err)
	}
	h, err := parseC1(c1[:], world, self)
	if err != nil {
		return hello{}, err
	}
	if !hmac.Equal(c1[c1MacOff:], mac(token, "train/collective/v1 client", s1[:], c1[:c1MacOff])) {
		return hello{}, errors.New("bad authentication (wrong job token or world size)")
	}
	if _, err := rw.Write(mac(token, "train/collective/v1 server", s1[:], c1[:])); err != nil {
		return hello{}, fmt.Errorf("sending proof: %w", err)
	}
	return h, nil
}

// parseC1 checks the clear-text fields of a client hello.
func parseC1(c1 []byte, world, self uint32) (hello, error) {
	if len(c1) != c1Len || string(c1[:4]) != "TRNc" {
		return hello{}, errors.New("not a train collective client")
	}
	if v := binary.LittleEndian.Uint32(c1[4:]); v != protoVersion {
		return hello{}, fmt.Errorf("protocol version %d, want %d", v, protoVersion)
	}
	h := hello{
		world: binary.LittleEndian.Uint32(c1[8:]),
		from:  binary.LittleEndian.Uint32(c1[12:]),
		to:    binary.LittleEndian.Uint32(c1[16:]),
		kind:  c1[20],
		comm:  binary.LittleEndian.Uint64(c1[24:]),
	}
	switch {
	case h.world != world:
		return hello{}, fmt.Errorf("client claims world size %d, this job has %d", h.world, world)
	case h.to != self:
		return hello{}, fmt.Errorf("client wants rank %d, this is rank %d", h.to, self)
	case h.from >= world || h.from == self:
		return hello{}, fmt.Errorf("client claims impossible rank %d", h.from)
	case h.kind < kindRendezvous || h.kind > kindP2P:
		return hello{}, fmt.Errorf("unknown connection kind %d", h.kind)
	case h.kind == kindRendezvous && self != 0:
		return hello{}, errors.New("rendezvous with a rank other than 0")
	}
	return h, nil
}

// Operation kinds in data headers.
const (
	opAllReduce = iota + 1
	opAllGather
	opReduceScatter
	opBroadcast
	opBarrier
	opSend
)

var opNames = [...]string{"?", "all-reduce", "all-gather", "reduce-scatter", "broadcast", "barrier", "send/recv"}

// header describes one operation on a data connection.
type header struct {
	kind, dtype, op, flag uint8
	seq, count            uint64
	root                  uint32
}

func (h header) String() string {
	name := "?"
	if int(h.kind) < len(opNames) {
		name = opNames[h.kind]
	}
	s := fmt.Sprintf("%s #%d of %d %v", name, h.seq, h.count, DType(h.dtype))
	if h.kind == opAllReduce || h.kind == opReduceScatter {
		s += " " + Op(h.op).String()
	}
	if h.kind == opBroadcast {
		s += fmt.Sprintf(" from root %d", h.root)
	}
	return s
}

func (h header) put(b *[hdrLen]byte) {
	binary.LittleEndian.PutUint32(b[0:], hdrMagic)
	b[4], b[5], b[6], b[7] = h.kind, h.dtype, h.op, h.flag
	binary.LittleEndian.PutUint64(b[8:], h.seq)
	binary.LittleEndian.PutUint64(b[16:], h.count)
	binary.LittleEndian.PutUint32(b[24:], h.root)
	binary.LittleEndian.PutUint32(b[28:], 0)
}

func parseHeader(b []byte) (header, error) {
	if len(b) != hdrLen || binary.LittleEndian.Uint32(b) != hdrMagic {
		return header{}, errors.New("corrupt operation header")
	}
	return header{
		kind: b[4], dtype: b[5], op: b[6], flag: b[7],
		seq:   binary.LittleEndian.Uint64(b[8:]),
		count: binary.LittleEndian.Uint64(b[16:]),
		root:  binary.LittleEndian.Uint32(b[24:]),
	}, nil
}

// Control frame types.
const (
	msgRegister  = 1 // rank -> 0: addr, host
	msgTable     = 2 // 0 -> rank: every rank's addr and host
	msgHeartbeat = 3 // both ways, empty
	msgReport    = 4 // rank -> 0: rank:u32 reason — a suspected failure (or a voluntary abort)
	msgAbort     = 5 // 0 -> rank: rank:u32 host addr reason — the job's verdict
	msgBye       = 6 // both ways, empty: orderly shutdown
)

// appendFrame appends a frame of type typ with payload p to dst.
func appendFrame(dst []byte, typ byte, p []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(p)+1))
	dst = append(dst, typ)
	return append(dst, p...)
}

// readFrame reads one control frame, reusing buf, and returns its type and
// payload (which aliases buf).
func readFrame(r io.Reader, buf []byte) (typ byte, payload, newBuf []byte, err error) {
	var lb [4]byte
	if _, err := io.ReadFull(r, lb[:]); err != nil {
		return 0, nil, buf, err
	}
	n := binary.LittleEndian.Uint32(lb[:])
	if n == 0 || n > maxFrame {
		return 0, nil, buf, fmt.Errorf("control frame length %d out of range [1, %d]", n, maxFrame)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, buf, err
	}
	return buf[0], buf[1:], buf, nil
}

func appendString(dst []byte, s string, limit int) []byte {
	if len(s) > limit {
		s = s[:limit]
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// decoder reads fields from a payload, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("malformed control message: %s", what)
	}
}

func (d *decoder) u32() uint32 {
	if d.err != nil || len(d.b) < 4 {
		d.fail("short integer")
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) str(limit int) string {
	if d.err != nil || len(d.b) < 2 {
		d.fail("short string length")
		return ""
	}
	n := int(binary.LittleEndian.Uint16(d.b))
	if n > limit || len(d.b)-2 < n {
		d.fail("string too long")
		return ""
	}
	s := string(d.b[2 : 2+n])
	d.b = d.b[2+n:]
	return s
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// peer is what the job knows about a rank.
type peer struct {
	addr string // host:port it listens on
	host string // its host name
}

func encodeRegister(p peer) []byte {
	b := appendString(nil, p.addr, maxName)
	return appendString(b, p.host, maxName)
}

func decodeRegister(p []byte) (peer, error) {
	d := decoder{b: p}
	r := peer{addr: d.str(maxName), host: d.str(maxName)}
	return r, d.end()
}

func encodeTable(peers []peer) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(peers)))
	for _, p := range peers {
		b = appendString(b, p.addr, maxName)
		b = appendString(b, p.host, maxName)
	}
	return b
}

// decodeTable decodes the address table of a world of the given size.
func decodeTable(p []byte, world int) ([]peer, error) {
	d := decoder{b: p}
	n := d.u32()
	if d.err == nil && int64(n) != int64(world) {
		return nil, fmt.Errorf("address table has %d ranks, world has %d", n, world)
	}
	if d.err != nil {
		return nil, d.err
	}
	peers := make([]peer, 0, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		peers = append(peers, peer{addr: d.str(maxName), host: d.str(maxName)})
	}
	if err := d.end(); err != nil {
		return nil, err
	}
	return peers, nil
}

func encodeReport(rank int, reason string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(rank))
	return appendString(b, reason, maxReason)
}

func decodeReport(p []byte, world int) (int, string, error) {
	d := decoder{b: p}
	r := d.u32()
	reason := d.str(maxReason)
	if err := d.end(); err != nil {
		return 0, "", err
	}
	if int64(r) >= int64(world) {
		return 0, "", fmt.Errorf("report names rank %d of %d", r, world)
	}
	return int(r), reason, nil
}

func encodeAbort(e *RankError) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(e.Rank))
	b = appendString(b, e.Host, maxName)
	b = appendString(b, e.Addr, maxName)
	return appendString(b, e.Reason, maxReason)
}

func decodeAbort(p []byte, world int) (*RankError, error) {
	d := decoder{b: p}
	r := d.u32()
	e := &RankError{Host: d.str(maxName), Addr: d.str(maxName), Reason: d.str(maxReason)}
	if err := d.end(); err != nil {
		return nil, err
	}
	if int64(r) >= int64(world) {
		return nil, fmt.Errorf("abort names rank %d of %d", r, world)
	}
	e.Rank = int(r)
	return e, nil
}
