package kernels

// GPU utilisation through NVML: the part that needs no cgo (the sentinel
// error, the PCI bus id parsing). nvml.go binds libnvidia-ml with dlopen;
// nvml_nocgo.go stands in for it in CGO_ENABLED=0 builds.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNVMLUnavailable is wrapped by Utilization's error when NVML cannot be
// used at all in this process (no libnvidia-ml.so.1, a binary built without
// cgo, nvmlInit failing): callers test it with errors.Is to stop asking.
var ErrNVMLUnavailable = errors.New("NVML unavailable")

// nvmlBusID turns the driver's PCI bus id (cuDeviceGetPCIBusId:
// "domain:bus:device.function" in hexadecimal, e.g. "0000:3B:00.0") into
// NVML's own form ("%08X:%02X:%02X.%X", e.g. "00000000:3B:00.0"), checking
// each field's range, so that a malformed id fails here with the id in the
// message rather than as NVML's bare "not found".
func nvmlBusID(s string) (string, error) {
	s = strings.TrimRight(s, "\x00 \n")
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("PCI bus id %q: %s (want domain:bus:device.function in hexadecimal)", s, why)
	}
	rest, fn, ok := strings.Cut(s, ".")
	if !ok {
		return bad("no '.' before the function")
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 3 {
		return bad(fmt.Sprintf("%d ':'-separated fields before the '.', want 3", len(parts)))
	}
	fields := []struct {
		name   string
		text   string
		digits int
		max    uint64
	}{
		{"domain", parts[0], 8, 0xffffffff},
		{"bus", parts[1], 2, 0xff},
		{"device", parts[2], 2, 0x1f},
		{"function", fn, 1, 7},
	}
	var v [4]uint64
	for i, f := range fields {
		if f.text == "" {
			return bad(f.name + " is empty")
		}
		if len(f.text) > f.digits {
			return bad(fmt.Sprintf("%s %q has more than %d hex digits", f.name, f.text, f.digits))
		}
		n, err := strconv.ParseUint(f.text, 16, 32)
		if err != nil {
			return bad(fmt.Sprintf("%s %q is not hexadecimal", f.name, f.text))
		}
		if n > f.max {
			return bad(fmt.Sprintf("%s %#x is above %#x", f.name, n, f.max))
		}
		v[i] = n
	}
	return fmt.Sprintf("%08X:%02X:%02X.%X", v[0], v[1], v[2], v[3]), nil
}
