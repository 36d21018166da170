package collective

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// serial computes what an all-reduce of intVal buffers must give.
func serial(n, length int, op Op) []float64 {
	want := make([]float64, length)
	for i := range want {
		acc := float64(intVal(0, i))
		for r := 1; r < n; r++ {
			v := float64(intVal(r, i))
			switch op {
			case Sum, Avg:
				acc += v
			case Max:
				acc = max(acc, v)
			case Min:
				acc = min(acc, v)
			}
		}
		want[i] = acc
	}
	return want
}

func TestAllReduceExact(t *testing.T) {
	for _, n := range groupSizes() {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 4096 })
			for _, length := range lengths(n) {
				for _, op := range []Op{Sum, Avg, Max, Min} {
					want := serial(n, length, op)
					w.run(t, func(c Comm) error {
						f32 := make(F32, length)
						bf := make(BF16, length)
						f64 := make(F64, length)
						i64 := make(I64, length)
						for i := range f32 {
							v := intVal(c.Rank(), i)
							f32[i], bf[i], f64[i], i64[i] = float32(v), Float32ToBF16(float32(v)), float64(v), int64(v)
						}
						h1 := c.AllReduceAsync(f32, op)
						h2 := c.AllReduceAsync(bf, op)
						h3 := c.AllReduceAsync(f64, op)
						var err error
						if op != Avg {
							err = c.AllReduce(i64, op)
						}
						if err = errors.Join(h1.Wait(), h2.Wait(), h3.Wait(), err); err != nil {
							return err
						}
						for i, wv := range want {
							w32 := float32(wv)
							wbf := Float32ToBF16(float32(wv))
							w64 := wv
							if op == Avg {
								w32 = float32(wv) / float32(n)
								wbf = Float32ToBF16(BF16ToFloat32(Float32ToBF16(float32(wv))) / float32(n))
								w64 = wv / float64(n)
							}
							if f32[i] != w32 || bf[i] != wbf || f64[i] != w64 || (op != Avg && i64[i] != int64(wv)) {
								return fmt.Errorf("len %d %v: element %d = f32 %v bf16 %v f64 %v i64 %v, want %v",
									length, op, i, f32[i], BF16ToFloat32(bf[i]), f64[i], i64[i], wv)
							}
						}
						return nil
					})
				}
			}
		})
	}
}

// TestAllReduceRandom checks rounding error against float64 and that every
// rank ends with bit-identical results.
func TestAllReduceRandom(t *testing.T) {
	n, length := 3, 10007
	w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 1000 })
	inputs := make([][]float32, n)
	bins := make([][]uint16, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for r := range inputs {
		inputs[r] = make([]float32, length)
		bins[r] = make([]uint16, length)
		for i := range inputs[r] {
			inputs[r][i] = float32(rng.NormFloat64())
			bins[r][i] = Float32ToBF16(float32(rng.NormFloat64()))
		}
	}
	out := make([][]float32, n)
	outb := make([][]uint16, n)
	w.run(t, func(c Comm) error {
		out[c.Rank()] = slices.Clone(inputs[c.Rank()])
		outb[c.Rank()] = slices.Clone(bins[c.Rank()])
		return errors.Join(c.AllReduce(F32(out[c.Rank()]), Sum), c.AllReduce(BF16(outb[c.Rank()]), Avg))
	})
	for i := 0; i < length; i++ {
		var s, sb float64
		for r := 0; r < n; r++ {
			s += float64(inputs[r][i])
			sb += float64(BF16ToFloat32(bins[r][i]))
		}
		if d := math.Abs(float64(out[0][i]) - s); d > 1e-5*(1+math.Abs(s)) {
			t.Fatalf("f32 element %d: %v, want %v", i, out[0][i], s)
		}
		if d := math.Abs(float64(BF16ToFloat32(outb[0][i])) - sb/float64(n)); d > 0.03*(1+math.Abs(sb)) {
			t.Fatalf("bf16 element %d: %v, want %v", i, BF16ToFloat32(outb[0][i]), sb/float64(n))
		}
	}
	for r := 1; r < n; r++ {
		if !slices.Equal(out[r], out[0]) || !slices.Equal(outb[r], outb[0]) {
			t.Fatalf("rank %d's result differs from rank 0's", r)
		}
	}
}

func TestAllReduce64MiB(t *testing.T) {
	if raceEnabled || testing.Short() {
		t.Skip("64 MiB per rank is slow under -race / -short")
	}
	n, length := 4, 16<<20 // float32: 64 MiB per rank
	w := startWorld(t, n, nil)
	w.run(t, func(c Comm) error {
		buf := make(F32, length)
		for i := range buf {
			buf[i] = float32(intVal(c.Rank(), i))
		}
		if err := c.AllReduce(buf, Sum); err != nil {
			return err
		}
		for i := range buf {
			want := 0
			for r := 0; r < n; r++ {
				want += intVal(r, i)
			}
			if buf[i] != float32(want) {
				return fmt.Errorf("element %d = %v, want %d", i, buf[i], want)
			}
		}
		return nil
	})
}

func TestAllGather(t *testing.T) {
	for _, n := range groupSizes() {
		w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 16 << 10 })
		for _, length := range lengths(n) {
			w.run(t, func(c Comm) error {
				send := make(F32, length)
				for i := range send {
					send[i] = float32(intVal(c.Rank(), i))
				}
				recv := make(F32, n*length)
				if err := c.AllGather(send, recv); err != nil {
					return err
				}
				// In place: send is this rank's block of recv.
				recv2 := make(Bytes, n*length)
				for i := range length {
					recv2[c.Rank()*length+i] = byte(intVal(c.Rank(), i))
				}
				if err := c.AllGather(recv2[c.Rank()*length:(c.Rank()+1)*length], recv2); err != nil {
					return err
				}
				for r := 0; r < n; r++ {
					for i := 0; i < length; i++ {
						if recv[r*length+i] != float32(intVal(r, i)) || recv2[r*length+i] != byte(intVal(r, i)) {
							return fmt.Errorf("n %d len %d: block %d element %d = %v/%v, want %d", n, length, r, i, recv[r*length+i], recv2[r*length+i], intVal(r, i))
						}
					}
				}
				return nil
			})
		}
	}
}

func TestReduceScatter(t *testing.T) {
	for _, n := range groupSizes() {
		w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 16 << 10 })
		for _, length := range lengths(n) {
			for _, op := range []Op{Sum, Avg, Max} {
				want := serial(n, n*length, op)
				w.run(t, func(c Comm) error {
					send := make(F32, n*length)
					sendb := make(BF16, n*length)
					for i := range send {
						send[i] = float32(intVal(c.Rank(), i))
						sendb[i] = Float32ToBF16(send[i])
					}
					orig := slices.Clone(send)
					recv := make(F32, length)
					recvb := make(BF16, length)
					if err := errors.Join(c.ReduceScatter(send, recv, op), c.ReduceScatter(sendb, recvb, op)); err != nil {
						return err
					}
					if !slices.Equal(send, orig) {
						return errors.New("send was modified")
					}
					for i := range recv {
						wv := want[c.Rank()*length+i]
						w32, wbf := float32(wv), Float32ToBF16(float32(wv))
						if op == Avg {
							w32 /= float32(n)
							wbf = Float32ToBF16(float32(wv) / float32(n))
						}
						if recv[i] != w32 || recvb[i] != wbf {
							return fmt.Errorf("n %d len %d %v: element %d = %v/%v, want %v", n, length, op, i, recv[i], BF16ToFloat32(recvb[i]), w32)
						}
					}
					return nil
				})
			}
		}
	}
}

func TestBroadcast(t *testing.T) {
	for _, n := range groupSizes() {
		w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 512 })
		for _, length := range lengths(n) {
			for root := 0; root < n; root++ {
				w.run(t, func(c Comm) error {
					buf := make(F64, length)
					if c.Rank() == root {
						for i := range buf {
							buf[i] = float64(intVal(root, i)) + 0.5
						}
					}
					if err := c.Broadcast(buf, root); err != nil {
						return err
					}
					for i := range buf {
						if buf[i] != float64(intVal(root, i))+0.5 {
							return fmt.Errorf("root %d len %d: element %d = %v", root, length, i, buf[i])
						}
					}
					return nil
				})
			}
		}
	}
}

func TestSendRecvAndBarrier(t *testing.T) {
	n := 4
	w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 256 })
	w.run(t, func(c Comm) error {
		r := c.Rank()
		for _, length := range []int{0, 1, 3, 100_003} {
			// Ring shift, all ranks sending at once (async, so no deadlock).
			send := make(BF16, length)
			for i := range send {
				send[i] = uint16(r*1000 + i)
			}
			recv := make(BF16, length)
			hs := c.SendAsync(send, (r+1)%n)
			hr := c.RecvAsync(recv, (r+n-1)%n)
			if err := errors.Join(hs.Wait(), hr.Wait()); err != nil {
				return err
			}
			for i := range recv {
				if recv[i] != uint16(((r+n-1)%n)*1000+i) {
					return fmt.Errorf("len %d: element %d = %d", length, i, recv[i])
				}
			}
			if err := c.Barrier(); err != nil {
				return err
			}
		}
		// Several messages in order between one pair.
		if r == 0 {
			for k := range 5 {
				if err := c.Send(I64{int64(k)}, 3); err != nil {
					return err
				}
			}
		}
		if r == 3 {
			for k := range 5 {
				v := make(I64, 1)
				if err := c.Recv(v, 0); err != nil {
					return err
				}
				if v[0] != int64(k) {
					return fmt.Errorf("message %d arrived as %d", k, v[0])
				}
			}
		}
		return c.Barrier()
	})
}

func TestSplitAndSub(t *testing.T) {
	n := 4
	if raceEnabled {
		n = 3
	}
	w := startWorld(t, n, nil)
	w.run(t, func(c Comm) error {
		r := c.Rank()
		// Even and odd ranks, in reverse order.
		sub, err := c.Split(r%2, -r)
		if err != nil {
			return err
		}
		members := []int{}
		for q := n - 1; q >= 0; q-- {
			if q%2 == r%2 {
				members = append(members, q)
			}
		}
		if sub.Size() != len(members) || members[sub.Rank()] != r {
			return fmt.Errorf("split: rank %d is %d of %d, want %d of %v", r, sub.Rank(), sub.Size(), slices.Index(members, r), members)
		}
		buf := F32{float32(r), 1}
		if err := sub.AllReduce(buf, Sum); err != nil {
			return err
		}
		want := 0
		for _, m := range members {
			want += m
		}
		if buf[0] != float32(want) || buf[1] != float32(len(members)) {
			return fmt.Errorf("split all-reduce = %v, want [%d %d]", buf, want, len(members))
		}
		// A rank that joins no group.
		none, err := c.Split(-1+r%1, 0)
		if err != nil || none != nil {
			return fmt.Errorf("split with negative color = %v, %v", none, err)
		}
		// Explicit rank lists: {0, n-1} only.
		if r == 0 || r == n-1 {
			pair, err := c.Sub([]int{n - 1, 0})
			if err != nil {
				return err
			}
			v := I64{int64(r)}
			if err := pair.Broadcast(v, 0); err != nil { // root is world rank n-1
				return err
			}
			if v[0] != int64(n-1) {
				return fmt.Errorf("sub broadcast = %d, want %d", v[0], n-1)
			}
			if err := pair.Close(); err != nil {
				return err
			}
		}
		// The world and a sub-communicator in flight at once.
		h1 := c.AllReduceAsync(F32{1}, Sum)
		h2 := sub.AllReduceAsync(F32{1}, Sum)
		if err := errors.Join(h1.Wait(), h2.Wait()); err != nil {
			return err
		}
		return sub.Close()
	})
}

// TestConcurrentAsync keeps many operations of several kinds in flight from
// several goroutines per rank.
func TestConcurrentAsync(t *testing.T) {
	n := 3
	w := startWorld(t, n, func(c *Config) { c.ChunkBytes = 128 })
	subs := make([]Comm, n)
	w.run(t, func(c Comm) error {
		var err error
		subs[c.Rank()], err = c.Split(0, c.Rank())
		return err
	})
	w.run(t, func(c Comm) error {
		r := c.Rank()
		const k = 8
		bufs := make([]F32, k)
		var hs []Handle
		for j := range bufs {
			bufs[j] = make(F32, 1000+j)
			for i := range bufs[j] {
				bufs[j][i] = float32(r + i + j)
			}
			hs = append(hs, c.AllReduceAsync(bufs[j], Sum))
		}
		subBuf := make(F32, 5000)
		for i := range subBuf {
			subBuf[i] = 1
		}
		hs = append(hs, subs[r].AllReduceAsync(subBuf, Sum))
		p2pOut, p2pIn := make(F32, 3000), make(F32, 3000)
		for i := range p2pOut {
			p2pOut[i] = float32(r)
		}
		hs = append(hs, c.SendAsync(p2pOut, (r+1)%n), c.RecvAsync(p2pIn, (r+n-1)%n))
		for _, h := range hs {
			if err := h.Wait(); err != nil {
				return err
			}
		}
		for j := range bufs {
			for i, v := range bufs[j] {
				want := float32(n*(i+j) + n*(n-1)/2)
				if v != want {
					return fmt.Errorf("buffer %d element %d = %v, want %v", j, i, v, want)
				}
			}
		}
		for i := range subBuf {
			if subBuf[i] != float32(n) || p2pIn[i%len(p2pIn)] != float32((r+n-1)%n) {
				return fmt.Errorf("sub-comm or point-to-point result wrong at %d", i)
			}
		}
		return subs[r].Close()
	})
}

func TestArgumentErrors(t *testing.T) {
	w := startWorld(t, 2, nil)
	w.run(t, func(c Comm) error {
		bad := []error{
			c.AllReduce(Bytes{1}, Sum),
			c.AllReduce(I64{1}, Avg),
			c.AllGather(F32{1}, F32{1, 2, 3}),
			c.AllGather(F32{1}, BF16{1, 2}),
			c.ReduceScatter(F32{1, 2}, F32{1, 2}, Sum),
			c.Broadcast(F32{1}, 2),
			c.Send(F32{1}, c.Rank()),
			c.Recv(F32{1}, -1),
			c.AllReduce(nil, Sum),
		}
		for i, err := range bad {
			if err == nil {
				return fmt.Errorf("bad call %d succeeded", i)
			}
		}
		// The job is still fine.
		return c.AllReduce(F32{1}, Sum)
	})
}

// TestMismatch: ranks calling different collectives fail, naming the problem,
// instead of exchanging garbage or hanging.
func TestMismatch(t *testing.T) {
	w := startWorld(t, 3, func(c *Config) { c.Timeout = 3 * time.Second })
	w.expectErr = true
	errs := w.each(func(c Comm) error {
		if c.Rank() == 1 {
			return c.AllReduce(make(F32, 10), Sum)
		}
		return c.AllReduce(make(F32, 11), Sum)
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "mismatched collective") {
			t.Errorf("rank %d: %v, want a mismatch error", r, err)
		}
	}
	for r, c := range w.comms {
		if err := c.Barrier(); err == nil {
			t.Errorf("rank %d: barrier after a failure succeeded", r)
		}
	}
}

// BenchmarkAllReduce: 2 and 4 ranks as goroutines of one process over
// loopback. allocs/op stays a small constant whatever the size: nothing is
// allocated per chunk.
func BenchmarkAllReduce(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{4 << 10, 4 << 20} {
			b.Run(fmt.Sprintf("n=%d/bytes=%d", n, size), func(b *testing.B) {
				w := startWorld(b, n, func(c *Config) { c.ChunkBytes = 256 << 10 })
				bufs := make([]F32, n)
				for r := range bufs {
					bufs[r] = make(F32, size/4)
				}
				w.run(b, func(c Comm) error { return c.AllReduce(bufs[c.Rank()], Sum) }) // warm up
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				w.run(b, func(c Comm) error {
					for range b.N {
						if err := c.AllReduce(bufs[c.Rank()], Sum); err != nil {
							return err
						}
					}
					return nil
				})
			})
		}
	}
}
