package collective

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tcpComm is a communicator of the TCP backend. Its collectives run on a ring
// of connections (this rank dials the next, accepts from the previous); its
// point-to-point messages use one connection per ordered pair of ranks, dialed
// by the sender on first use.
type tcpComm struct {
	s     *session
	id    uint64
	name  string
	ranks []int // comm rank -> world rank
	rank  int

	closeMu  sync.Mutex
	isClosed bool
	closed   chan struct{}
	wg       sync.WaitGroup

	coll       *worker      // runs collectives in issue order
	next, prev *net.TCPConn // ring links: send to next, receive from prev

	// Ring engine state, owned by the coll worker (and the sender goroutine
	// while an operation runs), reused so that operations do not allocate.
	seq       uint64
	plan      plan
	scratch   []byte // one chunk, for receiving an operand to reduce
	rsBuf     []byte // reduce-scatter's second partial-sum region
	stepBase  []int
	ready     atomic.Int64 // send items that may go
	sent      atomic.Int64 // send items written
	readyKick chan struct{}
	sentKick  chan struct{}
	sendStart chan struct{}
	sendDone  chan error
	shdr      [hdrLen]byte
	rhdr      [hdrLen]byte

	mu     sync.Mutex // guards the fields below
	sendTo map[int]*p2pLink
	recvFr map[int]*p2pLink
	splits uint64
	subs   map[uint64]uint64
}

// plan is one ring operation spelled out: what this rank sends to the next
// rank and receives from the previous one, chunk by chunk, in order.
type plan struct {
	hdr           header
	hdrOut, hdrIn bool
	send          [][]byte // the first nInit may go at once; the rest are forwarded recv items, in order
	nInit         int
	recv          []recvItem
}

type recvItem struct {
	dst   []byte // where the chunk ends up
	src   []byte // for a reduction: the local operand (may be dst); nil: receive straight into dst
	fwd   bool   // dst is then sent on to the next rank
	scale bool   // divide dst by the group size after the reduction (Avg)
	need  int    // this many send items must have been written before dst is overwritten
}

func (s *session) newComm(id uint64, ranks []int, me int, name string) (*tcpComm, error) {
	c := &tcpComm{
		s: s, id: id, name: name, ranks: ranks, rank: me,
		closed:    make(chan struct{}),
		coll:      &worker{kick: make(chan struct{}, 1)},
		readyKick: make(chan struct{}, 1),
		sentKick:  make(chan struct{}, 1),
		sendStart: make(chan struct{}),
		sendDone:  make(chan error, 1),
		sendTo:    map[int]*p2pLink{},
		recvFr:    map[int]*p2pLink{},
		subs:      map[uint64]uint64{},
	}
	if n := len(ranks); n > 1 {
		next, prev := ranks[(me+1)%n], ranks[(me+n-1)%n]
		var err error
		if c.next, err = s.dialPeer(id, kindRing, next); err != nil {
			return nil, c.fatal(fmt.Errorf("connecting the ring of comm %s: %w", name, err), next)
		}
		if c.prev, err = s.claim(connKey{id, kindRing, prev}, s.timeout, nil); err != nil {
			c.next.Close()
			s.untrack(c.next)
			return nil, c.fatal(fmt.Errorf("connecting the ring of comm %s: %w", name, err), prev)
		}
		c.goroutine(c.sender)
	}
	c.goroutine(func() { c.coll.loop(c) })
	return c, nil
}

// goroutine runs f as part of both the communicator and the session.
func (c *tcpComm) goroutine(f func()) {
	c.s.wg.Add(1)
	c.wg.Add(1)
	go func() {
		defer c.s.wg.Done()
		defer c.wg.Done()
		f()
	}()
}

// fatal turns a communication error with world rank peer into the job's
// failure (every rank learns of it) and returns the error to give the caller.
func (c *tcpComm) fatal(err error, peer int) error {
	if c.s.size == 1 {
		return err
	}
	var re *RankError
	if !errors.As(err, &re) {
		re = c.s.rankErr(peer, err.Error())
	}
	c.s.report(re)
	if f := c.s.failure(); f != nil {
		return f
	}
	return err
}

func (c *tcpComm) Rank() int { return c.rank }
func (c *tcpComm) Size() int { return len(c.ranks) }

func (c *tcpComm) AllReduce(buf Buffer, op Op) error { return c.AllReduceAsync(buf, op).Wait() }
func (c *tcpComm) AllGather(send, recv Buffer) error { return c.AllGatherAsync(send, recv).Wait() }
func (c *tcpComm) ReduceScatter(send, recv Buffer, op Op) error {
	return c.ReduceScatterAsync(send, recv, op).Wait()
}
func (c *tcpComm) Broadcast(buf Buffer, root int) error { return c.BroadcastAsync(buf, root).Wait() }
func (c *tcpComm) Send(buf Buffer, dst int) error       { return c.SendAsync(buf, dst).Wait() }
func (c *tcpComm) Recv(buf Buffer, src int) error       { return c.RecvAsync(buf, src).Wait() }

func (c *tcpComm) Barrier() error {
	r := newRequest(c.barrier)
	c.coll.submit(r)
	return r.Wait()
}

func (c *tcpComm) AllReduceAsync(buf Buffer, op Op) Handle {
	r := newRequest(func() error { return c.allReduce(buf, op) })
	c.coll.submit(r)
	return r
}

func (c *tcpComm) AllGatherAsync(send, recv Buffer) Handle {
	r := newRequest(func() error { return c.allGather(send, recv) })
	c.coll.submit(r)
	return r
}

func (c *tcpComm) ReduceScatterAsync(send, recv Buffer, op Op) Handle {
	r := newRequest(func() error { return c.reduceScatter(send, recv, op) })
	c.coll.submit(r)
	return r
}

func (c *tcpComm) BroadcastAsync(buf Buffer, root int) Handle {
	r := newRequest(func() error { return c.broadcast(buf, root) })
	c.coll.submit(r)
	return r
}

// opDesc describes an operation for error messages; it is formatted only
// when there is an error.
type opDesc struct {
	name  string
	op    Op
	n     int
	dt    DType
	other int // root, destination or source; -1 if none
}

func (d opDesc) String() string {
	s := d.name
	if d.op != 0 {
		s += " " + d.op.String()
	}
	if d.dt != 0 {
		s += fmt.Sprintf(" of %d %v", d.n, d.dt)
	}
	switch d.name {
	case "broadcast":
		s += fmt.Sprintf(" from rank %d", d.other)
	case "send":
		s += fmt.Sprintf(" to rank %d", d.other)
	case "recv":
		s += fmt.Sprintf(" from rank %d", d.other)
	}
	return s
}

// errorf wraps an operation's error with where it happened.
func (c *tcpComm) errorf(what opDesc, err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("collective: %s on comm %s (rank %d of %d): %w", what, c.name, c.rank, len(c.ranks), err)
}

func (c *tcpComm) header(kind uint8, dt DType, op Op, count int, root int) header {
	c.seq++
	return header{kind: kind, dtype: uint8(dt), op: uint8(op), seq: c.seq, count: uint64(count), root: uint32(root)}
}

func (c *tcpComm) allReduce(buf Buffer, op Op) error {
	what := opDesc{"all-reduce", op, lenOf(buf), dtypeOf(buf), -1}
	b, err := hostBytes(buf)
	if err == nil {
		err = checkOp(buf.DType(), op)
	}
	if err != nil {
		return c.errorf(what, err)
	}
	dt := buf.DType()
	h := c.header(opAllReduce, dt, op, buf.Len(), 0)
	if len(c.ranks) == 1 {
		return nil
	}
	c.planAllReduce(h, b, dt.Size(), op == Avg)
	return c.runPlan(what, dt, op)
}

func (c *tcpComm) allGather(send, recv Buffer) error {
	what := opDesc{"all-gather", 0, lenOf(send), dtypeOf(send), -1}
	sb, err := hostBytes(send)
	var rb []byte
	if err == nil {
		rb, err = hostBytes(recv)
	}
	n := len(c.ranks)
	if err == nil {
		switch {
		case send.DType() != recv.DType():
			err = fmt.Errorf("send is %v, recv is %v", send.DType(), recv.DType())
		case recv.Len() != n*send.Len():
			err = fmt.Errorf("recv has %d elements, want %d ranks x %d", recv.Len(), n, send.Len())
		case overlap(sb, rb) && !same(sb, rb[c.rank*len(sb):(c.rank+1)*len(sb)]):
			err = errors.New("send overlaps recv other than as this rank's block")
		}
	}
	if err != nil {
		return c.errorf(what, err)
	}
	h := c.header(opAllGather, send.DType(), 0, send.Len(), 0)
	own := rb[c.rank*len(sb) : (c.rank+1)*len(sb)]
	if !same(sb, own) {
		copy(own, sb)
	}
	if n == 1 {
		return nil
	}
	c.planAllGather(h, rb, len(sb))
	return c.runPlan(what, send.DType(), 0)
}

func (c *tcpComm) reduceScatter(send, recv Buffer, op Op) error {
	what := opDesc{"reduce-scatter", op, lenOf(send), dtypeOf(send), -1}
	sb, err := hostBytes(send)
	var rb []byte
	if err == nil {
		rb, err = hostBytes(recv)
	}
	n := len(c.ranks)
	if err == nil {
		err = checkOp(send.DType(), op)
	}
	if err == nil {
		switch {
		case send.DType() != recv.DType():
			err = fmt.Errorf("send is %v, recv is %v", send.DType(), recv.DType())
		case send.Len() != n*recv.Len():
			err = fmt.Errorf("send has %d elements, want %d ranks x %d", send.Len(), n, recv.Len())
		case overlap(sb, rb):
			err = errors.New("recv overlaps send")
		}
	}
	if err != nil {
		return c.errorf(what, err)
	}
	dt := send.DType()
	h := c.header(opReduceScatter, dt, op, recv.Len(), 0)
	if n == 1 {
		copy(rb, sb)
		return nil
	}
	c.planReduceScatter(h, sb, rb, op == Avg)
	return c.runPlan(what, dt, op)
}

func (c *tcpComm) broadcast(buf Buffer, root int) error {
	what := opDesc{"broadcast", 0, lenOf(buf), dtypeOf(buf), root}
	b, err := hostBytes(buf)
	if err == nil && (root < 0 || root >= len(c.ranks)) {
		err = fmt.Errorf("root %d is not a rank of %d", root, len(c.ranks))
	}
	if err != nil {
		return c.errorf(what, err)
	}
	h := c.header(opBroadcast, buf.DType(), 0, buf.Len(), root)
	if len(c.ranks) == 1 {
		return nil
	}
	c.planBroadcast(h, b, root)
	return c.runPlan(what, buf.DType(), 0)
}

func lenOf(b Buffer) int {
	if b == nil {
		return 0
	}
	return b.Len()
}

func dtypeOf(b Buffer) DType {
	if b == nil {
		return 0
	}
	return b.DType()
}

func mod(a, n int) int { return ((a % n) + n) % n }

// chunk returns the pipelining unit for elements of es bytes.
func (c *tcpComm) chunk(es int) int { return max(es, c.s.chunk-c.s.chunk%es) }

func (p *plan) reset(h header) {
	clear(p.send) // drop references to the last operation's buffers
	clear(p.recv)
	*p = plan{hdr: h, hdrOut: true, hdrIn: true, send: p.send[:0], recv: p.recv[:0]}
}

func (c *tcpComm) bases(n int) []int {
	if cap(c.stepBase) < n {
		c.stepBase = make([]int, n)
	}
	return c.stepBase[:n]
}

// planAllReduce: reduce-scatter then all-gather around the ring. Segment k
// (1/n of the buffer) is reduced as it travels k+1, k+2, ..., k-1 and ends,
// complete, on rank k-1 ... which starts it round again for the all-gather.
// Rank r sends segment r-s and receives segment r-s-1 at reduce-scatter step
// s, then sends r+1-t and receives r-t at all-gather step t. Each chunk is
// forwarded as soon as it has arrived, so every link stays busy.
func (c *tcpComm) planAllReduce(h header, b []byte, es int, avg bool) {
	n, r, p := len(c.ranks), c.rank, &c.plan
	p.reset(h)
	elems := len(b) / es
	seg := func(k int) []byte { return b[elems*k/n*es : elems*(k+1)/n*es] }
	ck := c.chunk(es)
	base := c.bases(n) // where the reduce-scatter send of segment k starts
	sr := seg(r)
	for off := 0; off < len(sr); off += ck {
		p.send = append(p.send, sr[off:min(off+ck, len(sr))])
	}
	p.nInit = len(p.send)
	base[r] = 0
	for s := 0; s < n-1; s++ {
		k, last := mod(r-s-1, n), s == n-2
		sg := seg(k)
		if !last {
			base[k] = len(p.send)
		}
		for off := 0; off < len(sg); off += ck {
			ch := sg[off:min(off+ck, len(sg))]
			p.recv = append(p.recv, recvItem{dst: ch, src: ch, fwd: true, scale: last && avg})
			p.send = append(p.send, ch)
		}
	}
	for t := 0; t < n-1; t++ {
		k, fwd := mod(r-t, n), t < n-2
		sg := seg(k)
		for j, off := 0, 0; off < len(sg); j, off = j+1, off+ck {
			ch := sg[off:min(off+ck, len(sg))]
			p.recv = append(p.recv, recvItem{dst: ch, fwd: fwd, need: base[k] + j + 1})
			if fwd {
				p.send = append(p.send, ch)
			}
		}
	}
}

// planReduceScatter: rank r ends with block r. At step s it sends the partial
// sum of block r-s-1 and receives that of block r-s-2, adds its own block and
// keeps the result (in two alternating regions, the last being recv) to send
// on at step s+1. send is only read.
func (c *tcpComm) planReduceScatter(h header, send, recv []byte, avg bool) {
	n, r, p := len(c.ranks), c.rank, &c.plan
	p.reset(h)
	nb := len(recv)
	blk := func(k int) []byte { return send[k*nb : (k+1)*nb] }
	if n > 2 && len(c.rsBuf) < nb {
		c.rsBuf = make([]byte, nb)
	}
	region := func(s int) []byte {
		if (n-2-s)%2 == 0 {
			return recv
		}
		return c.rsBuf[:nb]
	}
	ck := c.chunk(max(1, DType(h.dtype).Size()))
	b0 := blk(mod(r-1, n))
	for off := 0; off < nb; off += ck {
		p.send = append(p.send, b0[off:min(off+ck, nb)])
	}
	p.nInit = len(p.send)
	base := c.bases(n) // where send step s starts
	base[0] = 0
	for s := 0; s < n-1; s++ {
		k, last := mod(r-s-2, n), s == n-2
		reg, src := region(s), blk(k)
		if !last {
			base[s+1] = len(p.send)
		}
		for j, off := 0, 0; off < nb; j, off = j+1, off+ck {
			end := min(off+ck, nb)
			it := recvItem{dst: reg[off:end], src: src[off:end], fwd: !last, scale: last && avg}
			if s >= 2 {
				it.need = base[s-1] + j + 1
			}
			p.recv = append(p.recv, it)
			if !last {
				p.send = append(p.send, it.dst)
			}
		}
	}
}

// planAllGather: rank r sends its block, then forwards block r-t-1 received
// at step t.
func (c *tcpComm) planAllGather(h header, recv []byte, nb int) {
	n, r, p := len(c.ranks), c.rank, &c.plan
	p.reset(h)
	blk := func(k int) []byte { return recv[k*nb : (k+1)*nb] }
	ck := c.chunk(max(1, DType(h.dtype).Size()))
	own := blk(r)
	for off := 0; off < nb; off += ck {
		p.send = append(p.send, own[off:min(off+ck, nb)])
	}
	p.nInit = len(p.send)
	for t := 0; t < n-1; t++ {
		b, fwd := blk(mod(r-t-1, n)), t < n-2
		for off := 0; off < nb; off += ck {
			ch := b[off:min(off+ck, nb)]
			p.recv = append(p.recv, recvItem{dst: ch, fwd: fwd})
			if fwd {
				p.send = append(p.send, ch)
			}
		}
	}
}

// planBroadcast: a pipelined chain from root around the ring.
func (c *tcpComm) planBroadcast(h header, b []byte, root int) {
	n, p := len(c.ranks), &c.plan
	p.reset(h)
	d := mod(c.rank-root, n) // distance from root
	p.hdrIn, p.hdrOut = d > 0, d < n-1
	ck := c.chunk(max(1, DType(h.dtype).Size()))
	for off := 0; off < len(b); off += ck {
		ch := b[off:min(off+ck, len(b))]
		if d == 0 {
			p.send = append(p.send, ch)
			continue
		}
		p.recv = append(p.recv, recvItem{dst: ch, fwd: d < n-1})
		if d < n-1 {
			p.send = append(p.send, ch)
		}
	}
	if d == 0 {
		p.nInit = len(p.send)
	}
}

// runPlan executes c.plan: the sender goroutine writes p.send while this one
// reads p.recv, reduces, and releases forwarded chunks to the sender.
func (c *tcpComm) runPlan(what opDesc, dt DType, op Op) error {
	if err := c.s.failure(); err != nil {
		return c.errorf(what, err)
	}
	if c.s.opTimeout > 0 {
		d := time.Now().Add(c.s.opTimeout)
		c.next.SetDeadline(d)
		c.prev.SetDeadline(d)
	}
	if need := c.chunk(max(1, dt.Size())); len(c.scratch) < need {
		c.scratch = make([]byte, need)
	}
	c.ready.Store(int64(c.plan.nInit))
	c.sent.Store(0)
	select {
	case c.sendStart <- struct{}{}:
	case <-c.s.stopped:
		return ErrClosed
	}
	rerr := c.receive(dt, op)
	serr := <-c.sendDone
	c.plan.reset(header{})
	if rerr == nil {
		rerr = serr
	}
	if rerr != nil {
		return c.errorf(what, rerr)
	}
	return nil
}

// sender is the goroutine that writes the ring's outgoing chunks.
func (c *tcpComm) sender() {
	for {
		select {
		case <-c.sendStart:
		case <-c.closed:
			return
		case <-c.s.stopped:
			return
		}
		c.sendDone <- c.sendPlan()
	}
}

func (c *tcpComm) sendPlan() error {
	p := &c.plan
	next := c.ranks[(c.rank+1)%len(c.ranks)]
	if p.hdrOut {
		p.hdr.put(&c.shdr)
		if _, err := c.next.Write(c.shdr[:]); err != nil {
			return c.linkErr(err, next, "sending to")
		}
	}
	for j, b := range p.send {
		for c.ready.Load() <= int64(j) {
			select {
			case <-c.readyKick:
			case <-c.s.failed:
				return c.s.failure()
			}
		}
		if _, err := c.next.Write(b); err != nil {
			return c.linkErr(err, next, "sending to")
		}
		c.sent.Store(int64(j + 1))
		select {
		case c.sentKick <- struct{}{}:
		default:
		}
	}
	return nil
}

func (c *tcpComm) receive(dt DType, op Op) error {
	p := &c.plan
	prev := c.ranks[(c.rank+len(c.ranks)-1)%len(c.ranks)]
	if p.hdrIn {
		if _, err := io.ReadFull(c.prev, c.rhdr[:]); err != nil {
			return c.linkErr(err, prev, "receiving from")
		}
		got, err := parseHeader(c.rhdr[:])
		if err == nil && got != p.hdr {
			err = fmt.Errorf("mismatched collective: comm rank %d called %v while rank %d called %v", mod(c.rank-1, len(c.ranks)), got, c.rank, p.hdr)
		}
		if err != nil {
			return c.fatal(err, prev)
		}
	}
	fwd := int64(p.nInit)
	for i := range p.recv {
		it := &p.recv[i]
		for c.sent.Load() < int64(it.need) {
			select {
			case <-c.sentKick:
			case <-c.s.failed:
				return c.s.failure()
			}
		}
		if it.src == nil {
			if _, err := io.ReadFull(c.prev, it.dst); err != nil {
				return c.linkErr(err, prev, "receiving from")
			}
		} else {
			tmp := c.scratch[:len(it.dst)]
			if _, err := io.ReadFull(c.prev, tmp); err != nil {
				return c.linkErr(err, prev, "receiving from")
			}
			reduce(dt, op, it.dst, tmp, it.src)
		}
		if it.scale {
			scale(dt, it.dst, len(c.ranks))
		}
		if it.fwd {
			fwd++
			c.ready.Store(fwd)
			select {
			case c.readyKick <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// linkErr turns an I/O error on the link with world rank peer into the job's
// failure. If the job has already failed (which is why the link was cut),
// that verdict is the error.
func (c *tcpComm) linkErr(err error, peer int, dir string) error {
	if f := c.s.failure(); f != nil {
		return f
	}
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	var ne net.Error
	reason := fmt.Sprintf("connection lost while %s it (%v)", dir, err)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		reason = fmt.Sprintf("connection closed while %s it (process exited or was killed?)", dir)
	case errors.As(err, &ne) && ne.Timeout():
		reason = fmt.Sprintf("no progress while %s it within the operation timeout %v", dir, c.s.opTimeout)
	}
	return c.fatal(c.s.rankErr(peer, reason), peer)
}

// barrier: a token goes round the ring twice; when it is back at rank 0 the
// first time, every rank has arrived, and the second lap releases them.
func (c *tcpComm) barrier() error {
	h := c.header(opBarrier, 0, 0, 0, 0)
	n := len(c.ranks)
	if n == 1 {
		return nil
	}
	if err := c.s.failure(); err != nil {
		return c.errorf(opDesc{name: "barrier"}, err)
	}
	if c.s.opTimeout > 0 {
		d := time.Now().Add(c.s.opTimeout)
		c.next.SetDeadline(d)
		c.prev.SetDeadline(d)
	}
	next, prev := c.ranks[(c.rank+1)%n], c.ranks[(c.rank+n-1)%n]
	for lap := uint8(1); lap <= 2; lap++ {
		h.flag = lap
		if c.rank == 0 {
			if err := c.writeHdr(h, next); err != nil {
				return c.errorf(opDesc{name: "barrier"}, err)
			}
		}
		if err := c.readHdr(h, prev); err != nil {
			return c.errorf(opDesc{name: "barrier"}, err)
		}
		if c.rank != 0 {
			if err := c.writeHdr(h, next); err != nil {
				return c.errorf(opDesc{name: "barrier"}, err)
			}
		}
	}
	return nil
}

func (c *tcpComm) writeHdr(h header, next int) error {
	h.put(&c.shdr)
	if _, err := c.next.Write(c.shdr[:]); err != nil {
		return c.linkErr(err, next, "sending to")
	}
	return nil
}

func (c *tcpComm) readHdr(want header, prev int) error {
	if _, err := io.ReadFull(c.prev, c.rhdr[:]); err != nil {
		return c.linkErr(err, prev, "receiving from")
	}
	got, err := parseHeader(c.rhdr[:])
	if err == nil && got != want {
		err = fmt.Errorf("mismatched collective: comm rank %d called %v while rank %d called %v", mod(c.rank-1, len(c.ranks)), got, c.rank, want)
	}
	if err != nil {
		return c.fatal(err, prev)
	}
	return nil
}

// p2pLink is one direction of point-to-point traffic with one peer: its own
// connection and a worker that runs its operations in order.
type p2pLink struct {
	w    *worker
	conn *net.TCPConn
	seq  uint64
	hdr  [hdrLen]byte
}

// link returns (starting if need be) the link to or from comm rank peer.
func (c *tcpComm) link(m map[int]*p2pLink, peer int) *p2pLink {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := m[peer]
	if l == nil {
		l = &p2pLink{w: &worker{kick: make(chan struct{}, 1)}}
		c.closeMu.Lock()
		if c.isClosed {
			l.w.dead = ErrClosed
		} else {
			c.goroutine(func() { l.w.loop(c) })
		}
		c.closeMu.Unlock()
		m[peer] = l
	}
	return l
}

// setLink installs a link's connection unless the comm closed meanwhile.
func (c *tcpComm) setLink(l *p2pLink, conn *net.TCPConn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		c.s.untrack(conn)
		conn.Close()
		return ErrClosed
	default:
	}
	l.conn = conn
	return nil
}

func (c *tcpComm) checkPeer(what opDesc, buf Buffer, peer int) ([]byte, error) {
	b, err := hostBytes(buf)
	if err == nil && (peer < 0 || peer >= len(c.ranks) || peer == c.rank) {
		err = fmt.Errorf("peer %d is not another rank of %d", peer, len(c.ranks))
	}
	if err != nil {
		return nil, c.errorf(what, err)
	}
	return b, nil
}

func (c *tcpComm) SendAsync(buf Buffer, dst int) Handle {
	what := opDesc{"send", 0, lenOf(buf), dtypeOf(buf), dst}
	b, err := c.checkPeer(what, buf, dst)
	if err != nil {
		return doneRequest(err)
	}
	l := c.link(c.sendTo, dst)
	r := newRequest(func() error {
		w := c.ranks[dst]
		if err := c.s.failure(); err != nil {
			return c.errorf(what, err)
		}
		if l.conn == nil {
			conn, err := c.s.dialPeer(c.id, kindP2P, w)
			if err != nil {
				return c.errorf(what, c.fatal(err, w))
			}
			if err := c.setLink(l, conn); err != nil {
				return err
			}
		}
		if c.s.opTimeout > 0 {
			l.conn.SetDeadline(time.Now().Add(c.s.opTimeout))
		}
		l.seq++
		header{kind: opSend, dtype: uint8(buf.DType()), seq: l.seq, count: uint64(buf.Len())}.put(&l.hdr)
		if _, err := l.conn.Write(l.hdr[:]); err != nil {
			return c.errorf(what, c.linkErr(err, w, "sending to"))
		}
		if _, err := l.conn.Write(b); err != nil {
			return c.errorf(what, c.linkErr(err, w, "sending to"))
		}
		return nil
	})
	l.w.submit(r)
	return r
}

func (c *tcpComm) RecvAsync(buf Buffer, src int) Handle {
	what := opDesc{"recv", 0, lenOf(buf), dtypeOf(buf), src}
	b, err := c.checkPeer(what, buf, src)
	if err != nil {
		return doneRequest(err)
	}
	l := c.link(c.recvFr, src)
	r := newRequest(func() error {
		w := c.ranks[src]
		if err := c.s.failure(); err != nil {
			return c.errorf(what, err)
		}
		if l.conn == nil {
			conn, err := c.s.claim(connKey{c.id, kindP2P, w}, c.s.opTimeout, c.closed)
			if err != nil {
				if !errors.Is(err, ErrClosed) {
					err = c.fatal(err, w)
				}
				return c.errorf(what, err)
			}
			if err := c.setLink(l, conn); err != nil {
				return err
			}
		}
		if c.s.opTimeout > 0 {
			l.conn.SetDeadline(time.Now().Add(c.s.opTimeout))
		}
		if _, err := io.ReadFull(l.conn, l.hdr[:]); err != nil {
			return c.errorf(what, c.linkErr(err, w, "receiving from"))
		}
		l.seq++
		want := header{kind: opSend, dtype: uint8(buf.DType()), seq: l.seq, count: uint64(buf.Len())}
		got, err := parseHeader(l.hdr[:])
		if err == nil && got != want {
			err = fmt.Errorf("mismatched send/recv: rank %d sent %v, rank %d expected %v", src, got, c.rank, want)
		}
		if err != nil {
			return c.errorf(what, c.fatal(err, w))
		}
		if _, err := io.ReadFull(l.conn, b); err != nil {
			return c.errorf(what, c.linkErr(err, w, "receiving from"))
		}
		return nil
	})
	l.w.submit(r)
	return r
}

// commID names a new communicator identically on all its members.
func commID(parent uint64, parts ...uint64) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for _, v := range append([]uint64{parent}, parts...) {
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		h.Write(b[:])
	}
	return h.Sum64()
}

func (c *tcpComm) Split(color, key int) (Comm, error) {
	n := len(c.ranks)
	mine := I64{int64(color), int64(key)}
	all := make(I64, 2*n)
	if err := c.AllGather(mine, all); err != nil {
		return nil, fmt.Errorf("collective: split of comm %s: %w", c.name, err)
	}
	c.mu.Lock()
	c.splits++
	nth := c.splits
	c.mu.Unlock()
	if color < 0 {
		return nil, nil
	}
	type member struct{ key, rank int }
	var ms []member
	for i := 0; i < n; i++ {
		if all[2*i] == int64(color) {
			ms = append(ms, member{int(all[2*i+1]), i})
		}
	}
	// Stable order by key, then parent rank (ms is in parent-rank order).
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && ms[j].key < ms[j-1].key; j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
	ranks, me := make([]int, len(ms)), -1
	for i, m := range ms {
		ranks[i] = c.ranks[m.rank]
		if m.rank == c.rank {
			me = i
		}
	}
	name := fmt.Sprintf("%s/split%d(color %d)", c.name, nth, color)
	sub, err := c.s.newComm(commID(c.id, 1, nth, uint64(color)), ranks, me, name)
	if err != nil {
		return nil, fmt.Errorf("collective: split of comm %s: %w", c.name, err)
	}
	return sub, nil
}

func (c *tcpComm) Sub(ranks []int) (Comm, error) {
	n, me := len(c.ranks), -1
	seen := map[int]bool{}
	world := make([]int, len(ranks))
	h := fnv.New64a()
	for i, r := range ranks {
		if r < 0 || r >= n || seen[r] {
			return nil, fmt.Errorf("collective: sub of comm %s: rank list %v has an impossible or repeated rank %d", c.name, ranks, r)
		}
		seen[r] = true
		world[i] = c.ranks[r]
		if r == c.rank {
			me = i
		}
		fmt.Fprintf(h, "%d,", r)
	}
	if me < 0 {
		return nil, fmt.Errorf("collective: sub of comm %s: rank %d is not in %v", c.name, c.rank, ranks)
	}
	lh := h.Sum64()
	c.mu.Lock()
	c.subs[lh]++
	nth := c.subs[lh]
	c.mu.Unlock()
	strs := make([]string, len(ranks))
	for i, r := range ranks {
		strs[i] = fmt.Sprint(r)
	}
	name := fmt.Sprintf("%s/sub[%s]", c.name, strings.Join(strs, " "))
	if nth > 1 {
		name += fmt.Sprintf("#%d", nth)
	}
	sub, err := c.s.newComm(commID(c.id, 2, lh, nth), world, me, name)
	if err != nil {
		return nil, fmt.Errorf("collective: sub of comm %s: %w", c.name, err)
	}
	return sub, nil
}

func (c *tcpComm) Abort(reason error) {
	msg := "aborted"
	if reason != nil {
		msg = "aborted: " + reason.Error()
	}
	if c.s.size == 1 {
		return
	}
	c.s.report(c.s.rankErr(c.s.rank, msg))
}

func (c *tcpComm) Close() error {
	c.closeMu.Lock()
	if c.isClosed {
		c.closeMu.Unlock()
		return nil
	}
	c.closeMu.Unlock()
	err := c.Barrier()
	c.closeMu.Lock()
	c.isClosed = true
	close(c.closed)
	c.closeMu.Unlock()
	c.mu.Lock()
	var conns []*net.TCPConn
	for _, l := range c.sendTo {
		conns = append(conns, l.conn)
	}
	for _, l := range c.recvFr {
		conns = append(conns, l.conn)
	}
	c.mu.Unlock()
	conns = append(conns, c.next, c.prev)
	for _, conn := range conns {
		if conn != nil {
			c.s.untrack(conn)
			conn.Close() // ends a point-to-point transfer still in flight
		}
	}
	c.wg.Wait()
	if c.id == worldID {
		c.s.shutdown(err == nil)
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("collective: closing comm %s: %w", c.name, err)
	}
	return nil
}

// request is a pending operation; it is its own Handle.
type request struct {
	run  func() error
	done chan struct{}
	err  error
}

func newRequest(run func() error) *request { return &request{run: run, done: make(chan struct{})} }

func doneRequest(err error) *request {
	r := &request{done: make(chan struct{}), err: err}
	close(r.done)
	return r
}

func (r *request) Wait() error {
	<-r.done
	return r.err
}

// worker runs requests one at a time in the order submitted, until its comm
// closes or the job fails; then it fails whatever is left.
type worker struct {
	mu   sync.Mutex
	q    []*request
	kick chan struct{}
	dead error
}

func (w *worker) submit(r *request) {
	w.mu.Lock()
	if w.dead != nil {
		r.err = w.dead
		w.mu.Unlock()
		close(r.done)
		return
	}
	w.q = append(w.q, r)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *worker) loop(c *tcpComm) {
	for {
		w.mu.Lock()
		var r *request
		if len(w.q) > 0 {
			r = w.q[0]
			w.q[0] = nil
			w.q = w.q[1:]
		}
		w.mu.Unlock()
		if r != nil {
			r.err = r.run()
			close(r.done)
			continue
		}
		var err error
		select {
		case <-w.kick:
			continue
		case <-c.closed:
			err = ErrClosed
		case <-c.s.stopped:
			err = ErrClosed
		case <-c.s.failed:
			err = c.errorf(opDesc{name: "operation"}, c.s.failure())
		}
		w.mu.Lock()
		w.dead = err
		q := w.q
		w.q = nil
		w.mu.Unlock()
		for _, r := range q {
			r.err = err
			close(r.done)
		}
		return
	}
}
