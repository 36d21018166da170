package kernels

import (
	"strings"
	"testing"
	"time"
	"unsafe"

	"train/ops"
)

func TestFormatNCCLVersion(t *testing.T) {
	for v, want := range map[int]string{22805: "2.28.5", 21903: "2.19.3", 2708: "2.7.8"} {
		if got := FormatNCCLVersion(v); got != want {
			t.Errorf("FormatNCCLVersion(%d) = %s, want %s", v, got, want)
		}
	}
}

// TestOverlapOK: in-place exactly at the rank's block, or disjoint.
func TestOverlapOK(t *testing.T) {
	large := span{ptr: 1000, bytes: 400}
	for _, c := range []struct {
		small span
		off   uint64
		ok    bool
	}{
		{span{ptr: 2000, bytes: 100}, 100, true}, // disjoint, after
		{span{ptr: 900, bytes: 100}, 100, true},  // disjoint, just before
		{span{ptr: 1100, bytes: 100}, 100, true}, // exactly the rank's block
		{span{ptr: 1000, bytes: 100}, 100, false},
		{span{ptr: 1150, bytes: 100}, 100, false},
		{span{ptr: 950, bytes: 100}, 0, false},
		{span{ptr: 1000, bytes: 0}, 100, true}, // empty
	} {
		if got := overlapOK(c.small, large, c.off); got != c.ok {
			t.Errorf("overlapOK(%+v, %+v, %d) = %v, want %v", c.small, large, c.off, got, c.ok)
		}
	}
}

// TestNCCLArgs: bad arguments are refused before NCCL, naming the call and
// the argument; a zero count issues nothing. No GPU needed: nothing is issued.
func TestNCCLArgs(t *testing.T) {
	var fake byte
	n := &NCCL{rank: 1, size: 2, comm: unsafe.Pointer(&fake), timeout: time.Second}
	f8 := &buf{ptr: 0x1000, n: 8, dt: ops.F32}
	f4 := &buf{ptr: 0x1000 + 16, n: 4, dt: ops.F32} // block 1 of f8
	i8 := &buf{ptr: 0x9000, n: 8, dt: ops.I32}
	cpu := ops.NewCPU()
	host, err := cpu.Alloc(ops.F32, 8)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"short", n.AllReduce(f8, 9, NCCLSum), "AllReduce (rank 1 of 2): buf has 8 elements, need 9"},
		{"host buffer", n.AllReduce(host, 8, NCCLSum), "want a GPU buffer of this backend"},
		{"nil", n.AllReduce(nil, 8, NCCLSum), "a nil buffer"},
		{"negative", n.Broadcast(f8, -1, 0), "need -1"},
		{"root", n.Broadcast(f8, 8, 2), "root 2 is not a rank of 2"},
		{"peer", n.Send(f8, 8, -1), "peer -1 is not a rank of 2"},
		{"recv peer", n.Recv(f8, 8, 5), "peer 5 is not a rank of 2"},
		{"rs short", n.ReduceScatter(f4, f4, 4, NCCLSum), "send has 4 elements, need 8"},
		{"rs types", n.ReduceScatter(f8, &buf{ptr: 0x5000, n: 4, dt: ops.I32}, 4, NCCLSum), "send is f32, recv is i32"},
		{"rs overlap", n.ReduceScatter(f8, &buf{ptr: 0x1000, n: 4, dt: ops.F32}, 4, NCCLSum), "recv overlaps send"},
		{"ag overlap", n.AllGather(&buf{ptr: 0x1000 + 8, n: 4, dt: ops.F32}, f8, 4), "send overlaps recv"},
		{"ag recv short", n.AllGather(i8, &buf{ptr: 0x5000, n: 15, dt: ops.I32}, 8), "recv has 15 elements, need 16"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, c.err, c.want)
		}
	}
	// In place at this rank's block, and zero counts, are accepted; with a zero
	// count nothing reaches NCCL (this communicator is not a real one).
	if err := n.AllGather(f4, f8, 0); err != nil {
		t.Errorf("AllGather of 0: %v", err)
	}
	if err := n.ReduceScatter(f8, f4, 0, NCCLSum); err != nil {
		t.Errorf("ReduceScatter of 0: %v", err)
	}
	if err := n.Send(nil, 0, 0); err == nil {
		t.Error("Send of a nil buffer accepted")
	}
	closed := &NCCL{rank: 0, size: 1}
	if err := closed.AllReduce(f8, 8, NCCLSum); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Errorf("AllReduce after Close: %v", err)
	}
}

// ncclOrSkip returns a communicator of one rank on be, or skips where NCCL
// is missing.
func ncclOrSkip(t *testing.T, be *Backend, timeout time.Duration) *NCCL {
	t.Helper()
	v, path, err := NCCLVersion()
	if err != nil {
		t.Skipf("no NCCL here: %v", err)
	}
	t.Logf("NCCL %s from %s", FormatNCCLVersion(v), path)
	id, err := be.NCCLUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	n, err := be.NewNCCL(id, 0, 1, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestNCCLOneRank runs every call on a world of one rank, where each is a
// copy or the identity: it exercises loading, init, the calls on the stream,
// Group, Wait and Close.
func TestNCCLOneRank(t *testing.T) {
	be := gpu(t)
	n := ncclOrSkip(t, be, time.Minute)
	const N = 1<<16 + 3
	host := make([]float32, N)
	for i := range host {
		host[i] = float32(i%251) - 125
	}
	alloc := func() ops.Buf {
		x, err := be.Alloc(ops.F32, N)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Free(x) })
		return x
	}
	a, b, c := alloc(), alloc(), alloc()
	if err := be.Upload(a, host); err != nil {
		t.Fatal(err)
	}
	check := func(what string, x ops.Buf) {
		t.Helper()
		if err := n.Wait(); err != nil {
			t.Fatalf("%s: Wait: %v", what, err)
		}
		got := make([]float32, N)
		if err := be.Download(got, x); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != host[i] {
				t.Fatalf("%s: element %d is %v, want %v", what, i, got[i], host[i])
			}
		}
	}
	for _, op := range []NCCLOp{NCCLSum, NCCLMax, NCCLMin, NCCLAvg} {
		if err := n.AllReduce(a, N, op); err != nil {
			t.Fatal(err)
		}
		check("AllReduce "+op.String(), a)
	}
	if err := n.AllGather(a, b, N); err != nil {
		t.Fatal(err)
	}
	check("AllGather", b)
	if err := n.ReduceScatter(b, c, N, NCCLSum); err != nil {
		t.Fatal(err)
	}
	check("ReduceScatter", c)
	if err := n.Broadcast(c, N, 0); err != nil {
		t.Fatal(err)
	}
	check("Broadcast", c)
	be.Zero(b, N)
	err := n.Group(func() error {
		if err := n.Send(a, N, 0); err != nil {
			return err
		}
		return n.Recv(b, N, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	check("Send/Recv to itself", b)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := n.AllReduce(a, N, NCCLSum); err == nil || !strings.Contains(err.Error(), "after Close") {
		t.Errorf("AllReduce after Close: %v", err)
	}
}

// TestNCCLInitTimeout: rank 0 of a world of two whose other rank never comes
// fails after the timeout (the communicator aborted) instead of hanging.
func TestNCCLInitTimeout(t *testing.T) {
	be := gpu(t)
	if _, _, err := NCCLVersion(); err != nil {
		t.Skipf("no NCCL here: %v", err)
	}
	id, err := be.NCCLUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := be.NewNCCL(id, 0, 2, 3*time.Second)
	if err == nil {
		n.Close()
		t.Fatal("init of 2 ranks with one present succeeded")
	}
	if !strings.Contains(err.Error(), "not done after 3s") || !strings.Contains(err.Error(), "aborted") {
		t.Errorf("error %q does not say it timed out and aborted", err)
	}
	if el := time.Since(start); el > time.Minute {
		t.Errorf("took %v to give up", el)
	}
	// The Backend is still usable.
	x, err := be.Alloc(ops.F32, 4)
	if err != nil {
		t.Fatal(err)
	}
	be.Free(x)
	if err := be.Sync(); err != nil {
		t.Errorf("Sync after the abort: %v", err)
	}
}
