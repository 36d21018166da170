package collective

import (
	"errors"
	"fmt"
	"math"
)

// SelfTest runs every collective of c with known inputs and checks the
// results against a serial computation: all-reduce (every reduction and
// element type), all-gather, reduce-scatter, broadcast from every root,
// send/recv around the ring, barrier, and split and explicit sub-communicators,
// for lengths 0, 1, n-1, n+1, a prime and (unless short) a few MiB. It is
// collective over c. It returns how many checks passed; any wrong element on
// any rank makes it fail on every rank.
func SelfTest(c Comm, short bool) (checks int, err error) {
	n, r := c.Size(), c.Rank()
	lengths := []int{0, 1, max(n-1, 0), n + 1, 7919}
	if !short {
		lengths = append(lengths, 1048573) // a prime; 4 MiB of float32: many chunks
	}
	var bad []string
	check := func(ok bool, format string, args ...any) {
		checks++
		if !ok && len(bad) < 5 {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	val := func(rank, i int) int { return (rank*31+i*7)%17 - 8 }

	for _, length := range lengths {
		for _, op := range []Op{Sum, Avg, Max, Min} {
			f32, bf, f64, i64 := make(F32, length), make(BF16, length), make(F64, length), make(I64, length)
			for i := range f32 {
				v := val(r, i)
				f32[i], bf[i], f64[i], i64[i] = float32(v), Float32ToBF16(float32(v)), float64(v), int64(v)
			}
			hs := []Handle{c.AllReduceAsync(f32, op), c.AllReduceAsync(bf, op), c.AllReduceAsync(f64, op)}
			if op != Avg {
				hs = append(hs, c.AllReduceAsync(i64, op))
			}
			for _, h := range hs {
				if err := h.Wait(); err != nil {
					return checks, err
				}
			}
			okAll := true
			for i := range f32 {
				acc := val(0, i)
				for q := 1; q < n; q++ {
					switch v := val(q, i); op {
					case Sum, Avg:
						acc += v
					case Max:
						acc = max(acc, v)
					case Min:
						acc = min(acc, v)
					}
				}
				w32, wbf, w64 := float32(acc), Float32ToBF16(float32(acc)), float64(acc)
				if op == Avg {
					w32, wbf, w64 = float32(acc)/float32(n), Float32ToBF16(float32(acc)/float32(n)), float64(acc)/float64(n)
				}
				if f32[i] != w32 || bf[i] != wbf || f64[i] != w64 || op != Avg && i64[i] != int64(acc) {
					okAll = false
					check(false, "all-reduce %v of %d: element %d = %v (f32) %v (bf16) %v (f64) %d (i64), want %v", op, length, i, f32[i], BF16ToFloat32(bf[i]), f64[i], i64[i], w64)
					break
				}
			}
			check(okAll, "")
		}

		// All-gather (and in place), reduce-scatter, broadcast.
		send := make(F32, length)
		for i := range send {
			send[i] = float32(val(r, i))
		}
		recv := make(F32, n*length)
		if err := c.AllGather(send, recv); err != nil {
			return checks, err
		}
		ok := true
		for q := 0; q < n && ok; q++ {
			for i := 0; i < length; i++ {
				if recv[q*length+i] != float32(val(q, i)) {
					check(false, "all-gather of %d: block %d element %d = %v, want %d", length, q, i, recv[q*length+i], val(q, i))
					ok = false
					break
				}
			}
		}
		check(ok, "")

		big := make(BF16, n*length)
		for i := range big {
			big[i] = Float32ToBF16(float32(val(r, i)))
		}
		part := make(BF16, length)
		if err := c.ReduceScatter(big, part, Sum); err != nil {
			return checks, err
		}
		ok = true
		for i := range part {
			want := 0
			for q := 0; q < n; q++ {
				want += val(q, r*length+i)
			}
			if part[i] != Float32ToBF16(float32(want)) {
				check(false, "reduce-scatter of %d: element %d = %v, want %d", length, i, BF16ToFloat32(part[i]), want)
				ok = false
				break
			}
		}
		check(ok, "")

		for root := 0; root < n; root++ {
			b := make(Bytes, length)
			if r == root {
				for i := range b {
					b[i] = byte(i*13 + root)
				}
			}
			if err := c.Broadcast(b, root); err != nil {
				return checks, err
			}
			ok := true
			for i := range b {
				if b[i] != byte(i*13+root) {
					check(false, "broadcast of %d from %d: byte %d = %d", length, root, i, b[i])
					ok = false
					break
				}
			}
			check(ok, "")
		}

		if n > 1 {
			out, in := make(F64, length), make(F64, length)
			for i := range out {
				out[i] = float64(r*1_000_000 + i)
			}
			prev := (r + n - 1) % n
			hs, hr := c.SendAsync(out, (r+1)%n), c.RecvAsync(in, prev)
			if err := errors.Join(hs.Wait(), hr.Wait()); err != nil {
				return checks, err
			}
			ok := true
			for i := range in {
				if in[i] != float64(prev*1_000_000+i) {
					check(false, "recv of %d from %d: element %d = %v", length, prev, i, in[i])
					ok = false
					break
				}
			}
			check(ok, "")
		}
		if err := c.Barrier(); err != nil {
			return checks, err
		}
	}

	// Sub-communicators: even and odd ranks (reversed), and {n-1, 0}.
	sub, err := c.Split(r%2, -r)
	if err != nil {
		return checks, err
	}
	v := F64{float64(r), 1}
	if err := sub.AllReduce(v, Sum); err != nil {
		return checks, err
	}
	wantSum, wantN := 0, 0
	for q := r % 2; q < n; q += 2 {
		wantSum += q
		wantN++
	}
	check(sub.Size() == wantN && v[0] == float64(wantSum) && v[1] == float64(wantN),
		"split: rank %d of %d, all-reduce %v, want %d ranks summing to %d", sub.Rank(), sub.Size(), v, wantN, wantSum)
	if err := sub.Close(); err != nil {
		return checks, err
	}
	if n > 1 && (r == 0 || r == n-1) {
		pair, err := c.Sub([]int{n - 1, 0})
		if err != nil {
			return checks, err
		}
		x := I64{int64(r)}
		if err := pair.Broadcast(x, 0); err != nil {
			return checks, err
		}
		check(x[0] == int64(n-1), "sub [%d 0]: broadcast gave %d", n-1, x[0])
		if err := pair.Close(); err != nil {
			return checks, err
		}
	}

	// Every rank learns whether any rank saw a wrong result.
	failed := F32{float32(len(bad))}
	if err := c.AllReduce(failed, Max); err != nil {
		return checks, err
	}
	switch {
	case len(bad) > 0:
		return checks, fmt.Errorf("wrong results on this rank: %v", bad)
	case failed[0] > 0 || math.IsNaN(float64(failed[0])):
		return checks, errors.New("wrong results on another rank")
	}
	return checks, nil
}
