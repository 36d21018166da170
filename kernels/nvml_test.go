package kernels

import (
	"errors"
	"strings"
	"testing"
	"time"

	"train/ops"
)

// TestNVMLBusID: the driver's PCI bus id becomes NVML's form; malformed ids
// are refused with the id in the message.
func TestNVMLBusID(t *testing.T) {
	for in, want := range map[string]string{
		"0000:3B:00.0":         "00000000:3B:00.0", // cuDeviceGetPCIBusId's usual form
		"0000:3b:00.0":         "00000000:3B:00.0", // lower case
		"00000000:18:1F.7":     "00000000:18:1F.7", // NVML's form already; device and function at their maxima
		"1:2:3.0":              "00000001:02:03.0", // short fields
		"ABCD0001:ff:00.0":     "ABCD0001:FF:00.0", // 32-bit domain
		"0000:3B:00.0\x00\x00": "00000000:3B:00.0", // a C buffer's padding
	} {
		got, err := nvmlBusID(in)
		if err != nil || got != want {
			t.Errorf("nvmlBusID(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"":                  "no '.'",
		"0000:3B:00":        "no '.'",
		"3B:00.0":           "2 ':'-separated fields",
		"0:0000:3B:00.0":    "4 ':'-separated fields",
		"0000::00.0":        "bus is empty",
		"0000:3B:00.":       "function is empty",
		"0000:3G:00.0":      `bus "3G" is not hexadecimal`,
		"0000:100:00.0":     `bus "100" has more than 2 hex digits`,
		"0000:3B:20.0":      "device 0x20 is above 0x1f",
		"0000:3B:00.8":      "function 0x8 is above 0x7",
		"123456789:3B:00.0": `domain "123456789" has more than 8 hex digits`,
		"0000:+3:00.0":      `bus "+3" is not hexadecimal`,
		"0000:3B:00.0.1":    `function "0.1" has more than 1 hex digits`,
	} {
		got, err := nvmlBusID(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "PCI bus id") {
			t.Errorf("nvmlBusID(%q) = %q, %v; want an error containing %q", in, got, err, want)
		}
	}
}

// TestUtilizationWithoutGPU: where no GPU opens (CI, CGO_ENABLED=0), a
// Backend that was never opened gets an error saying why, twice the same,
// and nothing panics. Without libnvidia-ml the error wraps ErrNVMLUnavailable
// and names the library.
func TestUtilizationWithoutGPU(t *testing.T) {
	if be, err := New(); err == nil {
		be.Close()
		t.Skip("a GPU is here: TestUtilization covers it")
	}
	var b Backend
	g, m, err := b.Utilization()
	t.Logf("Utilization: %v", err)
	if err == nil || g != 0 || m != 0 {
		t.Fatalf("Utilization of a Backend never opened = %d, %d, %v; want an error", g, m, err)
	}
	if !strings.HasPrefix(err.Error(), "kernels: utilization") {
		t.Errorf("error %q does not start with \"kernels: utilization\"", err)
	}
	// NVML may load on a machine with a driver and no usable GPU; then the
	// Backend's own state is the reason.
	if errors.Is(err, ErrNVMLUnavailable) {
		if !strings.Contains(err.Error(), "libnvidia-ml.so.1") && !strings.Contains(err.Error(), "libcuda.so.1") {
			t.Errorf("error %q does not name the library that is missing", err)
		}
	} else if !strings.Contains(err.Error(), "not an open GPU") {
		t.Errorf("error %q neither wraps ErrNVMLUnavailable nor says the Backend is not open", err)
	}
	if _, _, err2 := b.Utilization(); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second call: %v, want the first call's %v", err2, err)
	}
}

// TestUtilization (GPU): values in [0,100]; kernels kept running for longer
// than NVML's sample period show as GPU utilisation above 0 (a GPU mismatched
// through the bus id would read an idle GPU's 0); repeated calls are cheap.
func TestUtilization(t *testing.T) {
	be := gpu(t)
	g, m, err := be.Utilization()
	if errors.Is(err, ErrNVMLUnavailable) {
		t.Skipf("no NVML here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before work: gpu %d%%, memory %d%%", g, m)
	inRange := func(what string, g, m int) {
		t.Helper()
		if g < 0 || g > 100 || m < 0 || m > 100 {
			t.Errorf("%s: gpu %d%%, memory %d%%; want both in [0,100]", what, g, m)
		}
	}
	inRange("before work", g, m)

	const n = 4096 // one float32 GEMM: 137 GFLOP, milliseconds on an H100
	var bufs [3]ops.Buf
	for i := range bufs {
		if bufs[i], err = be.Alloc(ops.F32, n*n); err != nil {
			t.Fatal(err)
		}
		defer be.Free(bufs[i])
	}
	start := time.Now()
	gemms := 0
	for time.Since(start) < 1500*time.Millisecond {
		for range 8 {
			be.MatmulNT(bufs[0], bufs[1], bufs[2], n, n, n, 1, 0)
			gemms++
		}
		if err := be.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	g, m, err = be.Utilization()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d GEMMs in %v: gpu %d%%, memory %d%%", gemms, time.Since(start).Round(time.Millisecond), g, m)
	inRange("after work", g, m)
	if g == 0 {
		t.Errorf("gpu 0%% right after %v of back-to-back GEMMs: NVML reads another GPU, or its sample is stale", time.Since(start).Round(time.Millisecond))
	}

	const calls = 200
	t0 := time.Now()
	for range calls {
		if g, m, err = be.Utilization(); err != nil {
			t.Fatal(err)
		}
		inRange("repeated", g, m)
	}
	per := time.Since(t0) / calls
	t.Logf("one Utilization call: %v (logged, not asserted: tests never judge wall-clock time)", per)
}

// TestUtilizationAfterClose (GPU): a closed Backend gets an error, no panic.
func TestUtilizationAfterClose(t *testing.T) {
	be, err := New()
	if err != nil {
		t.Skipf("no GPU here: %v", err)
	}
	if _, _, err := be.Utilization(); errors.Is(err, ErrNVMLUnavailable) {
		be.Close()
		t.Skipf("no NVML here: %v", err)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := be.Utilization(); !errors.Is(err, errClosed) {
		t.Errorf("Utilization after Close: %v, want %v", err, errClosed)
	}
}
