package collective

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// session is what one process shares among every communicator of its job:
// the listener, the address table, the control plane to rank 0, and the
// job's failure state. Communicators only add ring and point-to-point links.
type session struct {
	rank, size int
	timeout    time.Duration
	opTimeout  time.Duration
	chunk      int
	token      []byte
	logf       func(format string, args ...any)

	ln    *net.TCPListener // nil for a world of one
	peers []peer           // world rank -> address and host

	failed  chan struct{} // closed once the job has failed (err set)
	stopped chan struct{} // closed when the world is closed or setup failed

	mu       sync.Mutex
	err      *RankError
	decided  bool // rank 0 has broadcast a verdict
	closing  bool // orderly shutdown: lost connections are expected
	conns    map[*net.TCPConn]struct{}
	pending  map[connKey]*net.TCPConn
	waiters  map[connKey]chan *net.TCPConn
	rdv      chan registration // rank 0 during setup; nil otherwise
	ctrl     *ctrlConn         // ranks > 0: the link to rank 0
	ctrls    []*ctrlConn       // rank 0: links to every rank (index 0 nil)
	byeCount int               // rank 0: ranks that said bye
	byeAll   chan struct{}     // rank 0: closed when every rank said bye
	byeFrom0 chan struct{}     // ranks > 0: closed when rank 0 said bye (or vanished)

	refused refusals // connections that failed the handshake

	wg sync.WaitGroup // every goroutine the session started
}

// Refused connections are logged one by one only up to refusalBurst per
// refusalEvery; the rest are counted and reported in one line per interval,
// so that a port scanner or a flood of junk cannot flood the log.
const (
	refusalBurst = 5
	refusalEvery = time.Minute
)

// refusals throttles the log of connections refused at the handshake
// (strangers, scanners, another job's ranks).
type refusals struct {
	mu     sync.Mutex
	start  time.Time // of the current interval
	logged int       // refusals logged one by one in it
	quiet  int       // refusals only counted in it
	last   string    // the latest of those
	total  int       // refusals since the session began
}

// note records one refusal (what: "address: reason") and logs it, or counts it
// once this interval's burst has been logged.
func (r *refusals) note(now time.Time, what string, logf func(string, ...any)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total++
	r.flushLocked(now, false, logf)
	switch {
	case r.logged < refusalBurst-1:
		logf("refused connection from %s", what)
	case r.logged == refusalBurst-1:
		logf("refused connection from %s (more refusals are counted, one line per %v)", what, refusalEvery)
	default:
		r.quiet++
		r.last = what
		return
	}
	r.logged++
}

// flush reports the refusals counted in an interval that is over, or, with
// end set (the session closes), in the current one.
func (r *refusals) flush(now time.Time, end bool, logf func(string, ...any)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flushLocked(now, end, logf)
}

func (r *refusals) flushLocked(now time.Time, end bool, logf func(string, ...any)) {
	if r.start.IsZero() {
		r.start = now
	}
	if !end && now.Sub(r.start) < refusalEvery {
		return
	}
	if r.quiet > 0 {
		logf("refused %d more connections in %v (the latest from %s); %d refused in all",
			r.quiet, now.Sub(r.start).Round(time.Second), r.last, r.total)
	}
	r.start, r.logged, r.quiet = now, 0, 0
}

// connKey names an incoming data connection.
type connKey struct {
	comm uint64
	kind uint8
	from int // world rank
}

type registration struct {
	rank int
	p    peer
	conn *net.TCPConn
}

// ctrlConn is one control link; writes are serialized.
type ctrlConn struct {
	c    *net.TCPConn
	rank int
	wmu  sync.Mutex
	wbuf []byte
	done chan struct{} // rank 0: closed when its reader has stopped
}

func (c *ctrlConn) send(typ byte, payload []byte, timeout time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = appendFrame(c.wbuf[:0], typ, payload)
	c.c.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.c.Write(c.wbuf)
	return err
}

// Connect joins the job that cfg describes and returns its world communicator:
// rank 0 listens at MasterAddr (or publishes its address for the single-host
// rendezvous), every other rank registers there, rank 0 answers with every
// rank's address, and the world's ring is connected. It returns once this
// rank's links are up, or fails within about cfg.Timeout.
func Connect(ctx context.Context, cfg Config) (Comm, error) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		return nil, errors.New("collective: the TCP backend needs a little-endian host")
	}
	if cfg.Size == 0 && cfg.Rank == 0 {
		cfg.Size = 1
	}
	if cfg.Size < 1 || cfg.Size > maxWorld || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, fmt.Errorf("collective: rank %d of world size %d is impossible", cfg.Rank, cfg.Size)
	}
	s := &session{
		rank: cfg.Rank, size: cfg.Size,
		timeout: cfg.Timeout, opTimeout: cfg.OpTimeout, chunk: cfg.ChunkBytes,
		token: cfg.Token, logf: cfg.Logf,
		failed: make(chan struct{}), stopped: make(chan struct{}),
		conns:   map[*net.TCPConn]struct{}{},
		pending: map[connKey]*net.TCPConn{},
		waiters: map[connKey]chan *net.TCPConn{},
		byeAll:  make(chan struct{}), byeFrom0: make(chan struct{}),
	}
	s.timeout, _ = cfg.timeoutAndSource()
	if s.chunk <= 0 {
		s.chunk = DefaultChunkBytes
	}
	s.chunk = (s.chunk + 7) &^ 7
	if s.logf == nil {
		s.logf = StderrLogf(cfg.Rank)
	}
	if s.size == 1 {
		s.peers = []peer{{host: hostname()}}
		return s.newComm(worldID, []int{0}, 0, "world")
	}
	tokenSource := cfg.TokenSource
	if len(s.token) == 0 {
		var err error
		if s.token, tokenSource, err = derivedToken(cfg); err != nil {
			return nil, fmt.Errorf("collective: rank %d of %d: %w", cfg.Rank, cfg.Size, err)
		}
	}
	if err := s.setup(ctx, cfg); err != nil {
		s.teardown()
		return nil, fmt.Errorf("collective: rank %d of %d: %w", cfg.Rank, cfg.Size, err)
	}
	c, err := s.newComm(worldID, seq(s.size), s.rank, "world")
	if err != nil {
		s.teardown()
		return nil, fmt.Errorf("collective: rank %d of %d: %w", cfg.Rank, cfg.Size, err)
	}
	if s.rank == 0 {
		timeout, from := cfg.timeoutAndSource()
		if tokenSource == "" {
			tokenSource = "given by the caller"
		}
		if from != "" {
			from = " (" + from + ")"
		}
		s.logf("%d ranks joined; job token: %s; timeout %v%s", s.size, tokenSource, timeout, from)
	}
	return c, nil
}

const worldID = 0x776f726c64 // "world"

// StderrLogf is what Config.Logf does when nil: one line per event on
// stderr, "collective: rank R: ...". A caller that also records the events
// elsewhere (the rank log) calls it from its own Logf.
func StderrLogf(rank int) func(format string, args ...any) {
	return func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "collective: rank %d: %s\n", rank, fmt.Sprintf(format, args...))
	}
}

func seq(n int) []int {
	r := make([]int, n)
	for i := range r {
		r[i] = i
	}
	return r
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "?"
	}
	return h
}

// rendezvousFile is where rank 0 publishes its address when no MasterAddr is
// given: one file per job id in dir.
func rendezvousFile(dir, job string) string {
	if dir == "" {
		dir = os.TempDir()
	}
	h := sha256.Sum256([]byte(job))
	return filepath.Join(dir, "train-rendezvous-"+hex.EncodeToString(h[:10])+".addr")
}

// setup listens, rendezvouses and starts the control plane.
func (s *session) setup(ctx context.Context, cfg Config) error {
	deadline := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	ip, port, err := listenAddr(cfg, s.rank, s.logf)
	if err != nil {
		return err
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return fmt.Errorf("listening on %s: %w", net.JoinHostPort(ip.String(), fmt.Sprint(port)), err)
	}
	s.ln = ln
	self := peer{addr: ln.Addr().String(), host: hostname()}
	if s.rank == 0 {
		s.rdv = make(chan registration, s.size)
	}
	s.wg.Add(1)
	go s.acceptLoop()

	if s.rank == 0 {
		if cfg.MasterAddr == "" {
			file := rendezvousFile(cfg.RendezvousDir, cfg.JobID)
			if err := publish(file, self.addr); err != nil {
				return err
			}
			// Every rank has registered (or never will) once gather returns:
			// nobody reads the file after that, so it goes, whatever ends the job.
			defer unpublish(file, self.addr)
		}
		err = s.gather(ctx, self, deadline)
	} else {
		err = s.register(ctx, cfg, self, deadline)
	}
	if err != nil {
		return err
	}
	s.startControl()
	return nil
}

// listenAddr picks the IP (and for rank 0, the port) to listen on.
func listenAddr(cfg Config, rank int, logf func(string, ...any)) (net.IP, int, error) {
	var ip net.IP
	if cfg.Interface != "" {
		var err error
		if ip, err = interfaceIP(cfg.Interface); err != nil {
			return nil, 0, err
		}
	}
	if cfg.MasterAddr == "" {
		if ip == nil {
			ip = net.IPv4(127, 0, 0, 1)
		}
		return ip, 0, nil
	}
	host, portStr, err := net.SplitHostPort(cfg.MasterAddr)
	if err != nil {
		return nil, 0, fmt.Errorf("master address %q: %w", cfg.MasterAddr, err)
	}
	var port int
	if rank == 0 {
		if _, err := fmt.Sscan(portStr, &port); err != nil || port < 0 || port > 65535 {
			return nil, 0, fmt.Errorf("master address %q: bad port", cfg.MasterAddr)
		}
	}
	if ip != nil {
		return ip, port, nil
	}
	if rank == 0 {
		// Listen on the address the others were told; it must be ours.
		addrs, err := net.LookupIP(host)
		if err != nil {
			return nil, 0, fmt.Errorf("resolving master address %q: %w", host, err)
		}
		local := localIPs()
		var loop net.IP
		for _, a := range addrs {
			if a.IsLoopback() {
				if loop == nil {
					loop = a
				}
				continue
			}
			if local[a.String()] {
				return a, port, nil
			}
		}
		if loop != nil {
			if net.ParseIP(host) == nil && host != "localhost" {
				logf("MASTER_ADDR %s resolves to loopback %v here: ranks on other hosts cannot reach rank 0 (set TRAIN_IFACE or -iface)", host, loop)
			}
			return loop, port, nil
		}
		return nil, 0, fmt.Errorf("rank 0 runs on %s, but MASTER_ADDR %s (%v) is not one of its addresses (set TRAIN_IFACE or -iface)", hostname(), host, addrs)
	}
	// The local address that routes to rank 0 (no packet is sent).
	u, err := net.Dial("udp", net.JoinHostPort(host, portStr))
	if err != nil {
		return nil, 0, fmt.Errorf("no route to master address %s: %w", cfg.MasterAddr, err)
	}
	defer u.Close()
	return u.LocalAddr().(*net.UDPAddr).IP, 0, nil
}

func localIPs() map[string]bool {
	m := map[string]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			m[n.IP.String()] = true
		}
	}
	return m
}

// interfaceIP resolves an IP address or an interface name (its first IPv4
// address, else its first address).
func interfaceIP(name string) (net.IP, error) {
	if ip := net.ParseIP(name); ip != nil {
		return ip, nil
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", name, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", name, err)
	}
	var first net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if n.IP.To4() != nil {
				return n.IP, nil
			}
			if first == nil {
				first = n.IP
			}
		}
	}
	if first == nil {
		return nil, fmt.Errorf("interface %q has no IP address", name)
	}
	return first, nil
}

// unpublish removes the rendezvous file if it still holds addr (a later job
// with the same id may have replaced it).
func unpublish(file, addr string) {
	if b, err := os.ReadFile(file); err == nil && strings.TrimSpace(string(b)) == addr {
		os.Remove(file)
	}
}

// publish writes addr to file atomically (readers never see half a file).
func publish(file, addr string) error {
	f, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".tmp*")
	if err != nil {
		return fmt.Errorf("rendezvous file: %w", err)
	}
	_, err = f.WriteString(addr + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("rendezvous file: %w", err)
	}
	return nil
}

func (s *session) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.logf("accept: %v", err)
			select {
			case <-s.stopped:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go s.serve(c)
	}
}

// serve authenticates one incoming connection and hands it on.
func (s *session) serve(c *net.TCPConn) {
	defer s.wg.Done()
	if !s.track(c) { // so that closing the session cuts a handshake short
		return
	}
	c.SetDeadline(time.Now().Add(s.timeout))
	h, err := serverHandshake(c, s.token, uint32(s.size), uint32(s.rank))
	if err != nil {
		s.untrack(c)
		s.refused.note(time.Now(), fmt.Sprintf("%s: %v", c.RemoteAddr(), err), s.logf)
		c.Close()
		return
	}
	if h.kind == kindRendezvous {
		s.untrack(c) // a control link, not a data link: failures do not cut it
		typ, p, _, err := readFrame(c, nil)
		var reg peer
		if err == nil && typ != msgRegister {
			err = fmt.Errorf("expected a registration, got message type %d", typ)
		}
		if err == nil {
			reg, err = decodeRegister(p)
		}
		if err != nil {
			s.logf("refused registration of rank %d from %s: %v", h.from, c.RemoteAddr(), err)
			c.Close()
			return
		}
		s.mu.Lock()
		ok := s.rdv != nil
		if ok {
			select {
			case s.rdv <- registration{int(h.from), reg, c}:
			default:
				ok = false
			}
		}
		s.mu.Unlock()
		if !ok {
			s.logf("refused late registration of rank %d from %s", h.from, c.RemoteAddr())
			c.Close()
		}
		return
	}
	c.SetDeadline(time.Time{})
	tuneConn(c, s.timeout)
	s.deliver(connKey{h.comm, h.kind, int(h.from)}, c)
}

// gather is rank 0's side of the rendezvous: wait for every rank to register,
// then send everyone the address table.
func (s *session) gather(ctx context.Context, self peer, deadline time.Time) error {
	peers := make([]peer, s.size)
	peers[0] = self
	conns := make([]*net.TCPConn, s.size)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	rdv := s.rdv
	for n := 1; n < s.size; {
		select {
		case r := <-rdv:
			if conns[r.rank] != nil {
				s.logf("refused second registration of rank %d from %s (first from %s)", r.rank, r.conn.RemoteAddr(), conns[r.rank].RemoteAddr())
				r.conn.Close()
				continue
			}
			conns[r.rank], peers[r.rank] = r.conn, r.p
			n++
		case <-t.C:
			var missing []string
			for r := 1; r < s.size; r++ {
				if conns[r] == nil {
					missing = append(missing, fmt.Sprint(r))
				}
			}
			closeAll()
			return fmt.Errorf("rendezvous: rank(s) %s did not register at %s within %v", strings.Join(missing, ","), self.addr, s.timeout)
		case <-ctx.Done():
			closeAll()
			return ctx.Err()
		}
	}
	s.mu.Lock()
	s.rdv = nil
	s.mu.Unlock()
	table := encodeTable(peers)
	s.ctrls = make([]*ctrlConn, s.size)
	var firstErr error
	for r := 1; r < s.size; r++ {
		s.ctrls[r] = &ctrlConn{c: conns[r], rank: r, done: make(chan struct{})}
		if err := s.ctrls[r].send(msgTable, table, s.timeout); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("rendezvous: sending the address table to rank %d (%s): %w", r, peers[r].addr, err)
		}
	}
	s.peers = peers
	if firstErr != nil {
		closeAll()
		return firstErr
	}
	return nil
}

// register is a rank's side of the rendezvous: find rank 0, prove membership,
// say where it listens, and receive the address table.
func (s *session) register(ctx context.Context, cfg Config, self peer, deadline time.Time) error {
	var lastErr, authErr error
	file := ""
	if cfg.MasterAddr == "" {
		file = rendezvousFile(cfg.RendezvousDir, cfg.JobID)
	}
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		master := cfg.MasterAddr
		if file != "" {
			b, err := os.ReadFile(file)
			if err != nil {
				lastErr = fmt.Errorf("rank 0 has not published its address in %s yet", file)
				master = ""
			} else {
				master = strings.TrimSpace(string(b))
			}
		}
		if master != "" {
			// One attempt may not use up the whole budget (a stale address can
			// point at something that accepts and says nothing).
			attempt := time.Now().Add(max(s.timeout/4, time.Second))
			if attempt.After(deadline) {
				attempt = deadline
			}
			c, err := s.dial(ctx, master, hello{world: uint32(s.size), from: uint32(s.rank), to: 0, kind: kindRendezvous}, attempt)
			if err == nil {
				cc := &ctrlConn{c: c, rank: 0}
				err = cc.send(msgRegister, encodeRegister(self), s.timeout)
				if err == nil {
					err = s.readTable(cc, deadline)
				}
				if err == nil {
					s.ctrl = cc
					return nil
				}
				c.Close()
			}
			lastErr = fmt.Errorf("rank 0 at %s: %w", master, err)
			if strings.Contains(err.Error(), "handshake") {
				authErr = lastErr // more telling than the refusals once rank 0 has gone
			}
		}
		if time.Now().Add(wait).After(deadline) {
			if authErr != nil && authErr != lastErr {
				return fmt.Errorf("rendezvous failed within %v: %w (earlier: %v)", s.timeout, lastErr, authErr)
			}
			return fmt.Errorf("rendezvous failed within %v: %w", s.timeout, lastErr)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *session) readTable(cc *ctrlConn, deadline time.Time) error {
	cc.c.SetReadDeadline(deadline)
	typ, p, _, err := readFrame(cc.c, nil)
	if err != nil {
		return fmt.Errorf("waiting for the address table: %w", err)
	}
	if typ != msgTable {
		return fmt.Errorf("expected the address table, got message type %d", typ)
	}
	peers, err := decodeTable(p, s.size)
	if err != nil {
		return err
	}
	s.peers = peers
	return nil
}

// dial connects to addr and authenticates as h, by deadline.
func (s *session) dial(ctx context.Context, addr string, h hello, deadline time.Time) (*net.TCPConn, error) {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := nc.(*net.TCPConn)
	c.SetDeadline(deadline)
	if err := clientHandshake(c, s.token, h); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	tuneConn(c, s.timeout)
	return c, nil
}

// dialPeer opens a data connection to a world rank.
func (s *session) dialPeer(comm uint64, kind uint8, to int) (*net.TCPConn, error) {
	h := hello{world: uint32(s.size), from: uint32(s.rank), to: uint32(to), kind: kind, comm: comm}
	deadline := time.Now().Add(s.timeout)
	var err error
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		var c *net.TCPConn
		c, err = s.dial(context.Background(), s.peers[to].addr, h, deadline)
		if err == nil {
			if !s.track(c) {
				return nil, s.failure()
			}
			return c, nil
		}
		if s.err0() != nil {
			return nil, s.failure()
		}
		if time.Now().Add(wait).After(deadline) {
			break
		}
		time.Sleep(wait)
	}
	return nil, s.rankErr(to, fmt.Sprintf("cannot connect: %v", err))
}

// deliver hands an accepted data connection to whoever waits for it.
func (s *session) deliver(k connKey, c *net.TCPConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.isStopped() {
		c.Close()
		return
	}
	if _, dup := s.pending[k]; dup {
		s.logf("refused duplicate connection from rank %d (%s)", k.from, c.RemoteAddr())
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	if w, ok := s.waiters[k]; ok {
		delete(s.waiters, k)
		w <- c
		return
	}
	s.pending[k] = c
}

// claim waits for the data connection k; a zero timeout waits until the job
// fails or stop closes.
func (s *session) claim(k connKey, timeout time.Duration, stop <-chan struct{}) (*net.TCPConn, error) {
	s.mu.Lock()
	if c, ok := s.pending[k]; ok {
		delete(s.pending, k)
		s.mu.Unlock()
		return c, nil
	}
	w := make(chan *net.TCPConn, 1)
	s.waiters[k] = w
	s.mu.Unlock()
	var tc <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		tc = t.C
	}
	var err error
	select {
	case c := <-w:
		return c, nil
	case <-s.failed:
		err = s.failure()
	case <-s.stopped:
		err = ErrClosed
	case <-stop:
		err = ErrClosed
	case <-tc:
		err = s.rankErr(k.from, fmt.Sprintf("did not connect within %v", timeout))
	}
	s.mu.Lock()
	if s.waiters[k] == w {
		delete(s.waiters, k)
	}
	s.mu.Unlock()
	select {
	case c := <-w: // arrived meanwhile
		s.untrack(c)
		c.Close()
	default:
	}
	return nil, err
}

func (s *session) isStopped() bool {
	select {
	case <-s.stopped:
		return true
	default:
		return false
	}
}

// track registers a data connection so that a failure can cut it.
func (s *session) track(c *net.TCPConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.isStopped() {
		c.Close()
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *session) untrack(c *net.TCPConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *session) err0() *RankError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// failure is the job's failure as an error (nil if it has not failed).
func (s *session) failure() error {
	if e := s.err0(); e != nil {
		return e
	}
	return nil
}

func (s *session) rankErr(rank int, reason string) *RankError {
	e := &RankError{Rank: rank, Reason: reason}
	if rank >= 0 && rank < len(s.peers) {
		e.Host, e.Addr = s.peers[rank].host, s.peers[rank].addr
	}
	return e
}

// fail records the job's failure and cuts every data connection, so that
// every blocked operation returns. The first failure wins.
func (s *session) fail(e *RankError) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = e
	close(s.failed)
	conns := make([]*net.TCPConn, 0, len(s.conns)+len(s.pending))
	for c := range s.conns {
		conns = append(conns, c)
	}
	for k, c := range s.pending {
		conns = append(conns, c)
		delete(s.pending, k)
	}
	ctrl := s.ctrl
	s.mu.Unlock()
	for _, c := range conns {
		c.SetDeadline(time.Unix(1, 0))
		c.Close()
	}
	if s.ln != nil {
		s.ln.Close()
	}
	if ctrl != nil {
		ctrl.c.Close()
	}
}

// report is how an operation that hit a communication error ends the job:
// rank 0 decides at once; other ranks tell rank 0, whose verdict (the first
// failure it learnt of) comes back to every rank, so that all name the same
// cause. Without a verdict within the timeout the rank decides alone.
func (s *session) report(e *RankError) {
	if s.rank == 0 {
		s.decide(e)
		s.awaitVerdict()
		return
	}
	select {
	case <-s.failed:
		return
	default:
	}
	s.ctrl.send(msgReport, encodeReport(e.Rank, e.Reason), s.timeout)
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-s.failed:
	case <-t.C:
		e.Reason += fmt.Sprintf(" (no verdict from rank 0 within %v)", s.timeout)
		s.fail(e)
	}
}

// decide is rank 0 declaring the job failed (the first failure it learns of
// wins) and telling every rank why. The verdict must reach every live rank
// before this process fails, and so most likely exits: a socket closed with
// unread data is reset, and a reset discards what the peer has not read yet.
// So, in the background, rank 0 sends the verdict and waits, briefly, for each
// rank to hang up its control link, which is what a rank does on a verdict;
// only then does it fail itself. Its own operations wait for that
// (awaitVerdict).
func (s *session) decide(e *RankError) {
	s.mu.Lock()
	if s.decided || s.err != nil {
		s.mu.Unlock()
		return
	}
	s.decided = true
	s.mu.Unlock()
	s.logf("job failed: %v", e)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		p := encodeAbort(e)
		grace := min(s.timeout, 5*time.Second)
		var wg sync.WaitGroup
		for _, c := range s.ctrls {
			if c != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.send(msgAbort, p, grace)
				}()
			}
		}
		wg.Wait()
		expired := time.After(grace)
	acks:
		for _, c := range s.ctrls {
			if c == nil || c.rank == e.Rank {
				continue // the lost rank may never answer
			}
			select {
			case <-c.done:
			case <-expired:
				break acks
			}
		}
		s.fail(e)
	}()
}

// awaitVerdict waits (a bounded time) for the job's verdict.
func (s *session) awaitVerdict() {
	t := time.NewTimer(3 * s.timeout)
	defer t.Stop()
	select {
	case <-s.failed:
	case <-t.C:
	}
}

// startControl starts the heartbeats and the control readers.
func (s *session) startControl() {
	s.wg.Add(1)
	go s.heartbeats()
	if s.rank == 0 {
		for _, c := range s.ctrls[1:] {
			s.wg.Add(1)
			go s.readCtrl0(c)
		}
		return
	}
	s.wg.Add(1)
	go s.readCtrl(s.ctrl)
}

func (s *session) heartbeats() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.timeout/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.failed:
			return
		case <-s.stopped:
			return
		}
		s.refused.flush(time.Now(), false, s.logf)
		if s.rank == 0 {
			for _, c := range s.ctrls[1:] {
				c.send(msgHeartbeat, nil, s.timeout) // a dead link shows up in its reader
			}
		} else {
			s.ctrl.send(msgHeartbeat, nil, s.timeout)
		}
	}
}

// readCtrl is a rank's reader of its link to rank 0.
func (s *session) readCtrl(c *ctrlConn) {
	defer s.wg.Done()
	defer c.c.Close()
	var buf []byte
	for {
		c.c.SetReadDeadline(time.Now().Add(s.timeout))
		typ, p, b, err := readFrame(c.c, buf)
		buf = b
		if err != nil {
			s.mu.Lock()
			closing := s.closing || s.isStopped()
			s.mu.Unlock()
			if closing {
				s.closeOnce(s.byeFrom0)
				return
			}
			s.fail(s.rankErr(0, "lost: "+describe(err, s.timeout)))
			return
		}
		switch typ {
		case msgHeartbeat:
		case msgAbort:
			e, err := decodeAbort(p, s.size)
			if err != nil {
				e = s.rankErr(0, fmt.Sprintf("sent a malformed verdict: %v", err))
			}
			s.fail(e)
			return
		case msgBye:
			s.closeOnce(s.byeFrom0)
			return
		default:
			s.fail(s.rankErr(0, fmt.Sprintf("sent unexpected control message type %d", typ)))
			return
		}
	}
}

// readCtrl0 is rank 0's reader of its link to one rank.
func (s *session) readCtrl0(c *ctrlConn) {
	defer s.wg.Done()
	defer close(c.done)
	defer c.c.Close()
	var buf []byte
	saidBye := false
	for {
		c.c.SetReadDeadline(time.Now().Add(s.timeout))
		typ, p, b, err := readFrame(c.c, buf)
		buf = b
		if err != nil {
			s.mu.Lock()
			expected := saidBye || s.err != nil || s.isStopped()
			s.mu.Unlock()
			if !expected {
				s.decide(s.rankErr(c.rank, "lost: "+describe(err, s.timeout)))
			}
			return
		}
		switch typ {
		case msgHeartbeat:
		case msgReport:
			r, reason, err := decodeReport(p, s.size)
			if err != nil {
				s.decide(s.rankErr(c.rank, fmt.Sprintf("sent a malformed report: %v", err)))
				return
			}
			if r != c.rank {
				reason = fmt.Sprintf("%s (reported by rank %d)", reason, c.rank)
			}
			s.decide(s.rankErr(r, reason))
		case msgBye:
			saidBye = true
			s.mu.Lock()
			s.byeCount++
			if s.byeCount == s.size-1 {
				close(s.byeAll)
			}
			s.mu.Unlock()
		default:
			s.decide(s.rankErr(c.rank, fmt.Sprintf("sent unexpected control message type %d", typ)))
			return
		}
	}
}

func (s *session) closeOnce(ch chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// describe turns a control-link error into words.
func describe(err error, timeout time.Duration) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("silent for %v (no heartbeat; hung, stopped or unreachable)", timeout)
	case errors.Is(err, io.EOF):
		return "connection closed (process exited or was killed)"
	}
	return fmt.Sprintf("connection failed (%v)", err)
}

// shutdown ends the session: with orderly true after a successful world
// barrier, it first tells rank 0 (which tells everyone) that this rank is
// done, so that the links closing is not taken for a failure.
func (s *session) shutdown(orderly bool) {
	if orderly && s.size > 1 && s.err0() == nil {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		t := time.NewTimer(s.timeout)
		if s.rank == 0 {
			select {
			case <-s.byeAll:
			case <-s.failed:
			case <-t.C:
				s.logf("closing: not every rank said goodbye within %v", s.timeout)
			}
			for _, c := range s.ctrls[1:] {
				c.send(msgBye, nil, min(s.timeout, 5*time.Second))
			}
		} else {
			s.ctrl.send(msgBye, nil, s.timeout)
			select {
			case <-s.byeFrom0:
			case <-s.failed:
			case <-t.C:
			}
		}
		t.Stop()
	}
	s.teardown()
}

// teardown closes everything and waits for the session's goroutines.
func (s *session) teardown() {
	s.mu.Lock()
	select {
	case <-s.stopped:
	default:
		close(s.stopped)
	}
	conns := make([]*net.TCPConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	for _, c := range s.pending {
		conns = append(conns, c)
	}
	s.conns, s.pending = map[*net.TCPConn]struct{}{}, map[connKey]*net.TCPConn{}
	s.rdv = nil
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if s.ln != nil {
		s.ln.Close()
	}
	if s.ctrl != nil {
		s.ctrl.c.Close()
	}
	for _, c := range s.ctrls {
		if c != nil {
			c.c.Close()
		}
	}
	s.refused.flush(time.Now(), true, s.logf)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.timeout):
		s.logf("closing: some goroutines did not stop within %v", s.timeout)
	}
}

// tuneConn sets up a data connection: no Nagle delay, and keepalive probes so
// that an idle link to a vanished host fails within about timeout. (A busy
// link to a live but slow peer never times out here: the heartbeats on the
// control links are what find hung ranks.)
func tuneConn(c *net.TCPConn, timeout time.Duration) {
	c.SetNoDelay(true)
	c.SetKeepAliveConfig(net.KeepAliveConfig{
		Enable: true, Idle: max(timeout/2, time.Second), Interval: max(timeout/8, time.Second), Count: 4,
	})
}
