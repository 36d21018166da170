package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sort"
	"time"

	"train/collective"
)

// CollectiveOptions says what Collective measures. The command line has
// checked that 4 <= MinBytes <= MaxBytes and that DType is "float32" or
// "bf16".
type CollectiveOptions struct {
	MinBytes, MaxBytes int           // buffer sizes, from MinBytes doubling up to MaxBytes
	DType              string        // element type: "float32" or "bf16"
	Time               time.Duration // measuring time per size (at least 3 all-reduces)
}

// Collective is `train bench collective`: it joins the job world describes
// and measures the ring all-reduce (reduce-scatter + all-gather over TCP) for
// each buffer size against a raw TCP stream over loopback in the same run (one
// socket, one writer, one reader, no reduction). Rank 0 prints, per size, the
// time per all-reduce, the algorithm and bus bandwidths, and the bus
// bandwidth's ratio to the raw stream.
func Collective(world collective.Config, opts CollectiveOptions, stdout io.Writer) error {
	c, err := collective.Connect(context.Background(), world)
	if err != nil {
		return err
	}
	err = allReduce(c, world, opts, stdout)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

// allReduce measures the all-reduce on c for every size of opts and prints
// the table on rank 0.
func allReduce(c collective.Comm, cfg collective.Config, opts CollectiveOptions, w io.Writer) error {
	n, rank := c.Size(), c.Rank()
	// The peers: raw TCP streams over loopback, one socket, 1 MiB writes, no
	// reduction: from rank 1's process to rank 0's (what a ring link is), and
	// inside rank 0's process, while the other ranks wait.
	if err := c.Barrier(); err != nil {
		return err
	}
	var rawSelf float64
	if rank == 0 {
		var err error
		if rawSelf, err = rawStream(256<<20, 3); err != nil {
			return fmt.Errorf("raw TCP stream: %w", err)
		}
	}
	raw, err := rawStreamRanks(c, cfg, 256<<20, 1<<20, 3)
	if err != nil {
		return fmt.Errorf("raw TCP stream between ranks 1 and 0: %w", err)
	}
	peerName := "rank 1 -> rank 0"
	if raw == 0 {
		raw, peerName = rawSelf, "within rank 0"
	}
	chunk := cfg.ChunkBytes
	if chunk <= 0 {
		chunk = collective.DefaultChunkBytes
	}
	if rank == 0 {
		fmt.Fprintf(w, "all-reduce %s sum, ring over TCP: %d ranks (%s), chunk %d KiB, GOMAXPROCS %d\n",
			opts.DType, n, cfg.Launcher(), chunk>>10, runtime.GOMAXPROCS(0))
		fmt.Fprintf(w, "raw TCP loopback stream (1 socket, 1 MiB writes): within rank 0 %.2f GB/s", rawSelf/1e9)
		if peerName != "within rank 0" {
			fmt.Fprintf(w, ", rank 1 -> rank 0 %.2f GB/s", raw/1e9)
		}
		fmt.Fprintf(w, "\nraw GB/s: %s, re-measured after each size with as many bytes as one ring link carried (<= 512 MiB), through a buffer of that size\n", peerName)
		fmt.Fprintf(w, "%10s %6s %10s %12s %12s %10s %10s\n", "bytes", "iters", "time/op", "algbw GB/s", "busbw GB/s", "raw GB/s", "busbw/raw")
	}
	big := make([]float32, opts.MaxBytes/4)
	for i := range big {
		big[i] = float32(i % 7)
	}
	for size := opts.MinBytes; size <= opts.MaxBytes; size *= 2 {
		var buf collective.Buffer
		if opts.DType == "bf16" {
			b := make(collective.BF16, size/2)
			for i := range b {
				b[i] = collective.Float32ToBF16(float32(i % 3))
			}
			buf = b
		} else {
			buf = collective.F32(big[:size/4])
		}
		// Warm up, and let rank 0 choose the iteration count for everyone.
		t0 := time.Now()
		if err := c.AllReduce(buf, collective.Sum); err != nil {
			return err
		}
		iters := collective.I64{int64(max(3, min(1000, int(opts.Time/max(time.Since(t0), time.Microsecond)))))}
		if err := c.Broadcast(iters, 0); err != nil {
			return err
		}
		if err := c.Barrier(); err != nil {
			return err
		}
		t0 = time.Now()
		for range iters[0] {
			if err := c.AllReduce(buf, collective.Sum); err != nil {
				return err
			}
		}
		el := collective.F64{time.Since(t0).Seconds()}
		// The peer again, now, for the same number of bytes per link (the load
		// of a shared machine drifts; a ratio of two moments would measure that).
		linkBytes := int(float64(size) * 2 * float64(n-1) / float64(n) * float64(iters[0]))
		rawNow, err := rawStreamRanks(c, cfg, max(min(linkBytes, 512<<20), 1<<20), size, 1)
		if err != nil {
			return err
		}
		if rawNow == 0 {
			rawNow = raw
		}
		if err := c.AllReduce(el, collective.Max); err != nil { // the slowest rank's time
			return err
		}
		if rank == 0 {
			per := el[0] / float64(iters[0])
			alg := float64(size) / per
			bus := alg * 2 * float64(n-1) / float64(n)
			ratio := "-"
			if n > 1 && rawNow > 0 {
				ratio = fmt.Sprintf("%.2f", bus/rawNow)
			}
			fmt.Fprintf(w, "%10d %6d %10s %12.2f %12.2f %10.2f %10s\n", size, iters[0], fmtDur(per), alg/1e9, bus/1e9, rawNow/1e9, ratio)
		}
	}
	return nil
}

// fmtDur writes a time of s seconds in the unit that suits it: s, ms or us.
func fmtDur(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.1fus", float64(d)/1e3)
}

// rawStream measures one TCP stream over loopback: bytes per second, the
// median of reps transfers of total bytes each.
func rawStream(total, reps int) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for r := 0; r < reps; r++ {
			for got := 0; got < total; {
				n, err := c.Read(buf[:min(len(buf), total-got)])
				if err != nil {
					errc <- err
					return
				}
				got += n
			}
			if _, err := c.Write([]byte{1}); err != nil { // done
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	var rates []float64
	for r := 0; r < reps; r++ {
		t0 := time.Now()
		for sent := 0; sent < total; sent += len(buf) {
			if _, err := c.Write(buf[:min(len(buf), total-sent)]); err != nil {
				return 0, err
			}
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return 0, err
		}
		rates = append(rates, float64(total)/time.Since(t0).Seconds())
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	sort.Float64s(rates)
	return rates[len(rates)/2], nil
}

// rawStreamRanks measures a raw TCP stream over loopback from rank 1 to rank
// 0 (bytes per second, median of reps transfers; every rank gets the result).
// It is 0 when the ranks do not share a host (a MasterAddr was given) or there
// is one rank.
//
// The bytes go from and to a buffer of bufBytes, walked through in 1 MiB
// writes and reads: as much memory traffic as the all-reduce it is compared
// with (a 1 MiB buffer would stay in cache).
func rawStreamRanks(c collective.Comm, cfg collective.Config, total, bufBytes, reps int) (float64, error) {
	if c.Size() < 2 || cfg.MasterAddr != "" {
		return 0, nil
	}
	var ln net.Listener
	var lnErr error
	info := collective.I64{0, 0} // port, nonce (keeps strangers out of the measurement)
	if c.Rank() == 0 {
		ln, lnErr = net.Listen("tcp", "127.0.0.1:0")
		if lnErr == nil {
			defer ln.Close()
			info[0] = int64(ln.Addr().(*net.TCPAddr).Port)
			info[1] = time.Now().UnixNano()
		}
	}
	if err := c.Broadcast(info, 0); err != nil {
		return 0, err
	}
	if info[0] == 0 {
		return 0, lnErr
	}
	rate := collective.F64{0}
	var err error
	switch c.Rank() {
	case 0:
		err = rawReceive(ln, info[1], total, bufBytes, reps)
	case 1:
		rate[0], err = rawSend(fmt.Sprintf("127.0.0.1:%d", info[0]), info[1], total, bufBytes, reps)
	}
	if err != nil {
		return 0, err // the job fails: the other ranks see this rank go
	}
	if err := c.AllReduce(rate, collective.Max); err != nil {
		return 0, err
	}
	return rate[0], nil
}

// rawReceive is rank 0's side of rawStreamRanks: it accepts one connection,
// refuses it unless it opens with nonce, and reads reps transfers of total
// bytes, acknowledging each with one byte.
func rawReceive(ln net.Listener, nonce int64, total, bufBytes, reps int) error {
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	var hello [8]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return err
	}
	if int64(binary.LittleEndian.Uint64(hello[:])) != nonce {
		return fmt.Errorf("a stranger (%s) connected to the benchmark stream", conn.RemoteAddr())
	}
	buf := make([]byte, max(bufBytes, 1<<20))
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1 // fault the pages in before the clock starts
	}
	for r := 0; r < reps; r++ {
		for got, off := 0, 0; got < total; {
			if off == len(buf) {
				off = 0
			}
			n, err := conn.Read(buf[off:min(off+1<<20, len(buf), off+total-got)])
			if err != nil {
				return err
			}
			got += n
			off += n
		}
		if _, err := conn.Write([]byte{1}); err != nil {
			return err
		}
	}
	return nil
}

// rawSend is rank 1's side of rawStreamRanks: it writes reps transfers of
// total bytes to addr and returns the median rate, each transfer timed from
// its first write to rank 0's acknowledgement.
func rawSend(addr string, nonce int64, total, bufBytes, reps int) (float64, error) {
	conn, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	buf := make([]byte, max(bufBytes, 1<<20))
	for i := range buf {
		buf[i] = byte(i)
	}
	binary.LittleEndian.PutUint64(buf, uint64(nonce))
	if _, err := conn.Write(buf[:8]); err != nil {
		return 0, err
	}
	var rates []float64
	for r := 0; r < reps; r++ {
		t0 := time.Now()
		for sent, off := 0, 0; sent < total; {
			if off == len(buf) {
				off = 0
			}
			n := min(1<<20, len(buf)-off, total-sent)
			if _, err := conn.Write(buf[off : off+n]); err != nil {
				return 0, err
			}
			sent += n
			off += n
		}
		var ack [1]byte
		if _, err := io.ReadFull(conn, ack[:]); err != nil {
			return 0, err
		}
		rates = append(rates, float64(total)/time.Since(t0).Seconds())
	}
	sort.Float64s(rates)
	return rates[len(rates)/2], nil
}
