package selftest

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"train/collective"
	"train/kernels"
	"train/ops"
)

// skipWithGPU skips where a GPU opens: there GPU would run the checks for
// real (the GPU check scripts do that under mpirun).
func skipWithGPU(t *testing.T) {
	t.Helper()
	if be, err := kernels.New(); err == nil {
		be.Close()
		t.Skip("a GPU is here: the no-GPU behaviour cannot be seen")
	}
}

// TestGPUOneRankNoGPU: alone (the zero Config is a world of one) and without
// a GPU, the check fails at once, before joining anyone, and says what to do
// instead.
func TestGPUOneRankNoGPU(t *testing.T) {
	skipWithGPU(t)
	var out bytes.Buffer
	err := GPU(collective.Config{}, GPUOptions{RunDir: t.TempDir(), MinFree: 1, Timeout: time.Minute}, &out)
	if err == nil || !strings.HasPrefix(err.Error(), "gpu: ") || !strings.Contains(err.Error(), "run it on a GPU node") {
		t.Errorf("err %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "rank 0/1 (host ") || !strings.Contains(lines[0], "single process): FAIL: ") ||
		lines[1] != "selftest gpu: FAIL: no GPU" {
		t.Errorf("output:\n%s", &out)
	}
}

// TestGPUTwoRanksNoGPU: in a world of two ranks without GPUs, both join, rank
// 0 prints both ranks' lines in order and the verdict, and both fail.
func TestGPUTwoRanksNoGPU(t *testing.T) {
	skipWithGPU(t)
	dir := t.TempDir()
	outs, errs := twoRanks(t, func(world collective.Config, stdout io.Writer) error {
		return GPU(world, GPUOptions{RunDir: dir, MinFree: 1, Timeout: time.Minute}, stdout)
	})
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "2 of 2 ranks failed (ranks 0, 1)") {
			t.Errorf("rank %d returned %v", r, err)
		}
	}
	lines := strings.Split(strings.TrimSpace(outs[0].String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("rank 0 printed %d lines, want 3:\n%s", len(lines), &outs[0])
	}
	for r := range 2 {
		if !strings.Contains(lines[r], fmt.Sprintf("rank %d/2 (host ", r)) || !strings.Contains(lines[r], "local rank 0, test)") ||
			!strings.Contains(lines[r], "no usable NVIDIA GPU") || !strings.Contains(lines[r], "disk "+dir) {
			t.Errorf("line %d: %s", r, lines[r])
		}
	}
	if !strings.HasPrefix(lines[2], "selftest gpu: FAIL: 2 of 2 ranks failed") {
		t.Errorf("verdict: %s", lines[2])
	}
	if outs[1].Len() != 0 {
		t.Errorf("rank 1 printed (only rank 0 speaks):\n%s", &outs[1])
	}
}

func TestRoomVerdict(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		free, min int64
		want      string // "" for an error
	}{
		{500 * gib, 10 * gib, "500.00 GiB free"},
		{15 * gib, 10 * gib, "15.00 GiB free (warning: less than twice -min-free 10.00 GiB)"},
		{20 * gib, 10 * gib, "20.00 GiB free"},
		{10 * gib, 10 * gib, "10.00 GiB free (warning"},
		{10*gib - 1, 10 * gib, ""},
		{0, 1, ""},
	} {
		got, err := roomVerdict(c.free, c.min)
		switch {
		case c.want == "" && (err == nil || !strings.Contains(err.Error(), "under -min-free")):
			t.Errorf("roomVerdict(%d, %d) = %q, %v; want an error", c.free, c.min, got, err)
		case c.want != "" && (err != nil || !strings.HasPrefix(got, c.want)):
			t.Errorf("roomVerdict(%d, %d) = %q, %v; want %q", c.free, c.min, got, err, c.want)
		}
	}
}

// TestDiskFree: a run directory that does not exist yet is judged by its
// nearest existing parent; a path through a file is an error.
func TestDiskFree(t *testing.T) {
	dir := t.TempDir()
	free, at, err := diskFree(filepath.Join(dir, "a", "b"))
	if err != nil || at != dir || free <= 0 {
		t.Errorf("diskFree of a missing run dir = %d, %s, %v; want >0, %s, nil", free, at, err, dir)
	}
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := diskFree(filepath.Join(file, "run")); err == nil {
		t.Error("diskFree under a file succeeded")
	}
	var r gpuReport
	diskCheck(filepath.Join(dir, "runs"), 1<<62, &r)
	if len(r.fails) != 1 || !strings.Contains(r.fails[0], "under -min-free") {
		t.Errorf("diskCheck with an impossible -min-free: %v", r.fails)
	}
}

// TestDeviceChecksOnCPU runs the kernel and GEMM checks on the CPU backend
// (they take any ops.Backend) and shows that they catch a wrong result.
func TestDeviceChecksOnCPU(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cpu := ops.NewCPU()
	if err := kernelCheck(cpu, rng); err != nil {
		t.Errorf("kernelCheck on the CPU: %v", err)
	}
	worst, err := gemmCheck(cpu, rng)
	if err != nil || worst > 1e-6 {
		t.Errorf("gemmCheck on the CPU: worst %.2g, %v", worst, err)
	}
	if _, err := gemmCheck(offMatmul{cpu}, rng); err == nil || !strings.Contains(err.Error(), "tolerance 1e-5") {
		t.Errorf("gemmCheck of a wrong matmul: %v", err)
	}
	if err := kernelCheck(offScale{cpu}, rng); err == nil || !strings.Contains(err.Error(), "(a+b)*0.5 element 0") {
		t.Errorf("kernelCheck of a wrong Scale: %v", err)
	}
}

// offMatmul is a backend whose matmul is off by 1e-4.
type offMatmul struct{ ops.Backend }

func (b offMatmul) MatmulNT(out, a, x ops.Buf, M, N, K int, alpha, beta float32) {
	b.Backend.MatmulNT(out, a, x, M, N, K, alpha*1.0001, beta)
}

// offScale is a backend whose Scale scales by a little more.
type offScale struct{ ops.Backend }

func (b offScale) Scale(x ops.Buf, s float32, n int) { b.Backend.Scale(x, s*1.001, n) }

func TestGPUReportLine(t *testing.T) {
	var r gpuReport
	r.ok("a")
	r.ok("b %d", 2)
	if got := r.line(); got != "ok: a; b 2" {
		t.Errorf("line = %q", got)
	}
	r.fail("nccl", fmt.Errorf("boom"))
	if got := r.line(); got != "FAIL: nccl: boom (passed: a; b 2)" {
		t.Errorf("line = %q", got)
	}
	if got := cublasVersion(130100); got != "13.1.0" {
		t.Errorf("cublasVersion = %s", got)
	}
	if got := driverVersion(13000); got != "13.0" {
		t.Errorf("driverVersion = %s", got)
	}
}
