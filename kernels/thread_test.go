package kernels

import (
	"runtime"
	"testing"
)

// TestThread: work runs in order on one goroutine, stop ends it, and calls
// after stop run nothing instead of panicking.
func TestThread(t *testing.T) {
	before := runtime.NumGoroutine()
	th := startThread()
	var got []int
	for i := range 3 {
		if !th.do(func() { got = append(got, i) }) {
			t.Fatal("do refused before stop")
		}
	}
	th.stop()
	th.stop() // twice is fine
	if th.do(func() { got = append(got, 99) }) {
		t.Error("do ran after stop")
	}
	if len(got) != 3 || got[0] != 0 || got[2] != 2 {
		t.Errorf("ran %v", got)
	}
	for range 100 {
		if runtime.NumGoroutine() <= before {
			return
		}
		runtime.Gosched()
	}
	t.Errorf("%d goroutines after stop, %d before", runtime.NumGoroutine(), before)
}
