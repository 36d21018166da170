package selftest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"train/collective"
	"train/device"
	"train/kernels"
	"train/model"
	"train/ops"
)

// GPUOptions says what GPU checks beside the devices. The command line has
// checked that MinFree and Timeout are positive.
type GPUOptions struct {
	RunDir  string        // run directory whose file system must have room (it need not exist yet)
	MinFree int64         // fail below this many bytes free for RunDir
	Timeout time.Duration // bound on NCCL set-up and on each NCCL check
}

// GPU is `train selftest gpu`, the pre-flight check of a GPU job, on every
// rank of the job world describes: it opens the local rank's GPU and reports
// it and its libraries, runs kernels and a GEMM against the host, checks room
// on opts.RunDir's file system, joins the world and checks the NCCL
// collectives across every rank's GPU. Rank 0 prints every rank's line and the
// verdict to stdout; any failure fails every rank. Without a GPU in a world of
// one it fails at once.
func GPU(world collective.Config, opts GPUOptions, stdout io.Writer) error {
	if world.Size == 0 { // the zero Config: a world of one
		world.Size = 1
	}
	start := time.Now()
	where := rankPlace(world)

	var r gpuReport
	be, gpuErr := device.OpenGPU(world.LocalRank)
	if gpuErr != nil {
		if world.Size == 1 { // nothing else to learn: fail fast
			r.fail("", gpuErr)
			fmt.Fprintf(stdout, "selftest gpu: %s: %s\nselftest gpu: FAIL: no GPU\n", where, r.line())
			return noGPUError(gpuErr)
		}
		r.fail("", fmt.Errorf("%w; %s", gpuErr, noGPUHint))
	} else {
		defer be.Close()
		deviceChecks(be, world.Size, &r)
	}
	diskCheck(opts.RunDir, opts.MinFree, &r)

	c, err := collective.Connect(context.Background(), world)
	if err != nil {
		r.fail("joining the world", err)
		fmt.Fprintf(stdout, "selftest gpu: %s: %s\n", where, r.line())
		return err
	}
	closed := false
	defer func() {
		if !closed { // an early return: leave the world all the same
			c.Close()
		}
	}()

	// NCCL only where every rank can take part: a rank that cannot would
	// leave the others waiting until -timeout.
	ready := collective.I64{0}
	if be != nil && ncclLoads() {
		ready[0] = 1
	}
	if err := c.AllReduce(ready, collective.Min); err != nil {
		r.fail("agreeing on NCCL", err)
	} else if ready[0] == 1 {
		t0 := time.Now()
		checks, err := ncclChecks(be, c, opts.Timeout)
		if err != nil {
			r.fail("nccl", err)
		} else {
			r.ok("nccl ok (%d checks over %d GPUs in %.2fs)", checks, c.Size(), time.Since(t0).Seconds())
		}
	} else if be != nil {
		r.ok("nccl skipped (a rank has no GPU or no NCCL)")
	}

	r.ok("%.1fs", time.Since(start).Seconds())
	line := fmt.Sprintf("selftest gpu: %s: %s", where, r.line())
	lines, failed, err := gatherReports(c, line, len(r.fails) > 0)
	if err != nil {
		fmt.Fprintln(stdout, line)
		return fmt.Errorf("gpu: gathering the ranks' reports: %w", err)
	}
	if c.Rank() == 0 {
		for _, l := range lines {
			fmt.Fprintln(stdout, l)
		}
	}
	verdict := ""
	if len(failed) > 0 {
		which := "rank"
		if len(failed) > 1 {
			which = "ranks"
		}
		verdict = fmt.Sprintf("%d of %d ranks failed (%s %s)", len(failed), c.Size(), which, joinInts(failed))
	}
	cerr := c.Close()
	closed = true
	if c.Rank() == 0 {
		if verdict == "" && cerr != nil {
			verdict = fmt.Sprintf("closing the world: %v", cerr)
		}
		if verdict == "" {
			fmt.Fprintf(stdout, "selftest gpu: ok, %d ranks\n", c.Size())
		} else {
			fmt.Fprintf(stdout, "selftest gpu: FAIL: %s\n", verdict)
		}
	}
	if verdict != "" {
		return fmt.Errorf("gpu: %s", verdict)
	}
	return cerr
}

// noGPUHint says what to do where there is no GPU.
const noGPUHint = "run it on a GPU node, or use `train selftest collective` to check the network only"

func noGPUError(err error) error {
	return fmt.Errorf("gpu: %v; %s", err, noGPUHint)
}

// ncclLoads reports whether NCCL loads in this process.
func ncclLoads() bool {
	_, _, err := kernels.NCCLVersion()
	return err == nil
}

// gpuReport collects one rank's results: what passed and what failed.
type gpuReport struct {
	parts []string
	fails []string
}

func (r *gpuReport) ok(format string, args ...any) {
	r.parts = append(r.parts, fmt.Sprintf(format, args...))
}

func (r *gpuReport) fail(what string, err error) {
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	r.fails = append(r.fails, err.Error())
}

// line is the rank's report: "ok: a; b; c" or "FAIL: x; y (passed: a; b)".
func (r *gpuReport) line() string {
	if len(r.fails) == 0 {
		return "ok: " + strings.Join(r.parts, "; ")
	}
	s := "FAIL: " + strings.Join(r.fails, "; ")
	if len(r.parts) > 0 {
		s += " (passed: " + strings.Join(r.parts, "; ") + ")"
	}
	return s
}

// deviceChecks reports the GPU and its libraries and runs the checks that
// need no other rank. NCCL missing is a failure where the world has more
// than one rank (it would carry the gradients), a note otherwise.
func deviceChecks(be *kernels.Backend, size int, r *gpuReport) {
	in, err := be.Info()
	if err != nil {
		r.fail("device info", err)
		return
	}
	desc := fmt.Sprintf("GPU %d %s, driver %s (%s), cuBLAS %s (%s)", in.Ordinal, in.Name,
		driverVersion(in.Driver), in.LibCUDA, cublasVersion(in.CUBLAS), in.CUBLASL)
	if v, path, err := kernels.NCCLVersion(); err == nil {
		desc += fmt.Sprintf(", NCCL %s (%s)", kernels.FormatNCCLVersion(v), path)
	} else if size > 1 {
		r.fail("", err)
	} else {
		desc += fmt.Sprintf(", no NCCL (%v)", err)
	}
	r.ok("%s, %s free of %s", desc, model.HumanBytes(in.FreeMem), model.HumanBytes(in.Total))
	rng := rand.New(rand.NewPCG(1, 2))
	if err := kernelCheck(be, rng); err != nil {
		r.fail("kernels", err)
	} else {
		r.ok("kernels ok")
	}
	if worst, err := gemmCheck(be, rng); err != nil {
		r.fail("gemm", err)
	} else {
		r.ok("gemm ok (worst error %.1e of Σ|a·b|, tolerance 1e-5)", worst)
	}
}

// driverVersion writes CUDA's version code: 13000 is 13.0.
func driverVersion(v int) string { return fmt.Sprintf("%d.%d", v/1000, v%1000/10) }

// cublasVersion writes cublasGetVersion's code: 130100 is 13.1.0 (CUDA 12
// on; older codes are printed as they are).
func cublasVersion(v int) string {
	if v >= 100000 {
		return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	}
	return fmt.Sprint(v)
}

// stUpload allocates an F32 buffer holding v; free it with be.Free.
func stUpload(be ops.Backend, v []float32) (ops.Buf, error) {
	x, err := be.Alloc(ops.F32, len(v))
	if err != nil {
		return nil, err
	}
	if err := be.Upload(x, v); err != nil {
		be.Free(x)
		return nil, err
	}
	return x, nil
}

func stDownload(be ops.Backend, x ops.Buf, n int) ([]float32, error) {
	v := make([]float32, n)
	return v, be.Download(v, x)
}

func stRandoms(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 2*rng.Float32() - 1
	}
	return v
}

// kernelCheck runs Add then Scale by 0.5 on random values: both are exact in
// float32 after the one rounding of the sum, so the device must match the host
// bit for bit.
func kernelCheck(be ops.Backend, rng *rand.Rand) error {
	const n = 4099 // not a multiple of a block
	a, b := stRandoms(rng, n), stRandoms(rng, n)
	da, err := stUpload(be, a)
	if err != nil {
		return err
	}
	defer be.Free(da)
	db, err := stUpload(be, b)
	if err != nil {
		return err
	}
	defer be.Free(db)
	be.Add(da, da, db, n)
	be.Scale(da, 0.5, n)
	got, err := stDownload(be, da, n)
	if err != nil {
		return err
	}
	for i := range got {
		if want := (a[i] + b[i]) * 0.5; got[i] != want {
			return fmt.Errorf("(a+b)*0.5 element %d is %v, want %v", i, got[i], want)
		}
	}
	return nil
}

// gemmCheck runs MatmulNT on random odd-sized matrices and compares with a
// float64 triple loop: each element within 1e-5 of the sum of its products'
// magnitudes (the scale of float32 rounding). It returns the worst ratio.
func gemmCheck(be ops.Backend, rng *rand.Rand) (float64, error) {
	const M, N, K = 67, 45, 129
	a, b := stRandoms(rng, M*K), stRandoms(rng, N*K)
	da, err := stUpload(be, a)
	if err != nil {
		return 0, err
	}
	defer be.Free(da)
	db, err := stUpload(be, b)
	if err != nil {
		return 0, err
	}
	defer be.Free(db)
	dout, err := be.Alloc(ops.F32, M*N)
	if err != nil {
		return 0, err
	}
	defer be.Free(dout)
	be.MatmulNT(dout, da, db, M, N, K, 1, 0)
	got, err := stDownload(be, dout, M*N)
	if err != nil {
		return 0, err
	}
	worst := 0.0
	for i := 0; i < M; i++ {
		for j := 0; j < N; j++ {
			var want, scale float64
			for k := 0; k < K; k++ {
				p := float64(a[i*K+k]) * float64(b[j*K+k])
				want += p
				scale += math.Abs(p)
			}
			e := math.Abs(float64(got[i*N+j])-want) / scale
			if !(e <= 1e-5) { // NaN fails too
				return e, fmt.Errorf("out[%d,%d] = %v, want %v (error %.1e of the scale %.3g, tolerance 1e-5)", i, j, got[i*N+j], want, e, scale)
			}
			worst = max(worst, e)
		}
	}
	return worst, nil
}

// ncclChecks runs each NCCL collective across the world on values whose
// results are small integers, exact in float32 for worlds of up to 2048 ranks,
// and compares every element. It returns how many checks passed.
func ncclChecks(be *kernels.Backend, c collective.Comm, timeout time.Duration) (checks int, err error) {
	n, err := kernels.NCCLOver(be, c, timeout)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := n.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	rank, size := n.Rank(), n.Size()
	tri := float32(size * (size + 1) / 2) // sum of rank+1 over the ranks

	// run uploads this rank's values send, runs op on them and a receive
	// buffer of recvN elements (recvN 0: op works in place on send), waits,
	// and compares every element of the result with want.
	run := func(name string, send []float32, recvN int, op func(s, r ops.Buf) error, want func(i int) float32) error {
		s, err := stUpload(be, send)
		if err != nil {
			return err
		}
		defer be.Free(s)
		r := s
		if recvN > 0 {
			if r, err = be.Alloc(ops.F32, recvN); err != nil {
				return err
			}
			defer be.Free(r)
		}
		if err := op(s, r); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := n.Wait(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		got, err := stDownload(be, r, r.Len())
		if err != nil {
			return err
		}
		for i, g := range got {
			if w := want(i); g != w {
				return fmt.Errorf("%s: element %d is %v, want %v", name, i, g, w)
			}
		}
		checks++
		return nil
	}
	fill := func(m int, f func(i int) float32) []float32 {
		v := make([]float32, m)
		for i := range v {
			v[i] = f(i)
		}
		return v
	}

	// Every check runs even after one failed, so that the ranks issue the same
	// collectives (a wrong value on one rank must not leave the others waiting
	// until the timeout); after a communicator failure the calls fail at once.
	var first error
	check := func(err error) {
		if first == nil {
			first = err
		}
	}
	const big = 1<<20 + 3 // 4 MiB of float32: NCCL's pipelined path, not only its small-message one
	check(run("all-reduce sum", fill(big, func(i int) float32 { return float32((rank + 1) * (i%7 + 1)) }), 0,
		func(s, _ ops.Buf) error { return n.AllReduce(s, big, kernels.NCCLSum) },
		func(i int) float32 { return tri * float32(i%7+1) }))
	const m = 4099
	check(run("all-gather", fill(m, func(i int) float32 { return float32(rank*8192 + i) }), size*m,
		func(s, r ops.Buf) error { return n.AllGather(s, r, m) },
		func(i int) float32 { return float32(i/m*8192 + i%m) }))
	check(run("reduce-scatter sum", fill(size*m, func(j int) float32 { return float32((rank + 1) * (j%5 + 1)) }), m,
		func(s, r ops.Buf) error { return n.ReduceScatter(s, r, m, kernels.NCCLSum) },
		func(i int) float32 { return tri * float32((rank*m+i)%5+1) }))
	root := size - 1
	check(run(fmt.Sprintf("broadcast from rank %d", root), fill(m, func(i int) float32 {
		if rank == root {
			return float32(i%1000) + 0.5
		}
		return -1
	}), 0,
		func(s, _ ops.Buf) error { return n.Broadcast(s, m, root) },
		func(i int) float32 { return float32(i%1000) + 0.5 }))
	next, prev := (rank+1)%size, (rank+size-1)%size
	check(run("send/recv ring", fill(m, func(i int) float32 { return float32(rank*1000 + i%1000) }), m,
		func(s, r ops.Buf) error {
			return n.Group(func() error {
				if err := n.Send(s, m, next); err != nil {
					return err
				}
				return n.Recv(r, m, prev)
			})
		},
		func(i int) float32 { return float32(prev*1000 + i%1000) }))
	return checks, first
}

// diskCheck reports the free space for the run directory, failing below
// minFree or where it cannot be written.
func diskCheck(dir string, minFree int64, r *gpuReport) {
	free, at, err := diskFree(dir)
	if err != nil {
		r.fail("disk", err)
		return
	}
	if err := syscall.Access(at, 2 /* W_OK */); err != nil {
		r.fail("disk", fmt.Errorf("%s is not writable: %w", at, err))
		return
	}
	note, err := roomVerdict(free, minFree)
	if err != nil {
		r.fail("disk "+dir, err)
		return
	}
	r.ok("disk %s: %s", dir, note)
}

// diskFree returns the bytes this user may still write on the file system of
// dir, or of its nearest existing parent when dir does not exist yet (a run
// directory is made by the run), and which directory that was.
func diskFree(dir string) (free int64, at string, err error) {
	at = filepath.Clean(dir)
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(at, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), at, nil
		}
		parent := filepath.Dir(at)
		if !errors.Is(err, syscall.ENOENT) || parent == at {
			return 0, at, fmt.Errorf("statfs %s: %w", at, err)
		}
		at = parent
	}
}

// roomVerdict judges free bytes against the minimum: an error below it, a
// warning below twice it (the next checkpoint may not fit), else a note.
func roomVerdict(free, minFree int64) (string, error) {
	switch {
	case free < minFree:
		return "", fmt.Errorf("only %s free, under -min-free %s: make room or point -run at a larger file system", model.HumanBytes(free), model.HumanBytes(minFree))
	case free/2 < minFree:
		return fmt.Sprintf("%s free (warning: less than twice -min-free %s)", model.HumanBytes(free), model.HumanBytes(minFree)), nil
	}
	return fmt.Sprintf("%s free", model.HumanBytes(free)), nil
}

// gatherReports gives every rank every rank's line (in rank order) and the
// ranks that failed.
func gatherReports(c collective.Comm, line string, failed bool) (lines []string, bad []int, err error) {
	size := c.Size()
	flags := make(collective.I64, size)
	mine := collective.I64{0}
	if failed {
		mine[0] = 1
	}
	if err := c.AllGather(mine, flags); err != nil {
		return nil, nil, err
	}
	width := collective.I64{int64(len(line))}
	if err := c.AllReduce(width, collective.Max); err != nil {
		return nil, nil, err
	}
	w := int(width[0])
	send := make(collective.Bytes, w)
	copy(send, line)
	all := make(collective.Bytes, w*size)
	if err := c.AllGather(send, all); err != nil {
		return nil, nil, err
	}
	for r := 0; r < size; r++ {
		lines = append(lines, strings.TrimRight(string(all[r*w:(r+1)*w]), "\x00"))
		if flags[r] != 0 {
			bad = append(bad, r)
		}
	}
	return lines, bad, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}
