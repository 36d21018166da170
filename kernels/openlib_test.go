//go:build cgo

package kernels

import (
	"strings"
	"testing"
)

// TestOpenLib: a library that loads gives a handle, and one that does not
// gives dlerror's own reason (read in the same C call as the dlopen).
func TestOpenLib(t *testing.T) {
	if h, err := openLib("libc.so.6", false); err != nil || h == nil {
		t.Fatalf("openLib(libc.so.6) = %v, %v", h, err)
	}
	h, err := openLib("libtrain-none.so.1", false)
	if h != nil || err == nil || !strings.Contains(err.Error(), "libtrain-none.so.1") {
		t.Fatalf("openLib of a missing library = %v, %v; want dlerror's message naming it", h, err)
	}
}
