package kernels

import (
	"runtime"
	"sync"
)

// thread runs functions on one goroutine locked to one OS thread: a CUDA context
// is current per OS thread, and Go moves goroutines between threads, so every
// CUDA call of a Backend goes through its thread. Calls are serialised (one at a
// time, in the order callers get the lock); do returns when the function has
// returned. stop ends the goroutine.
type thread struct {
	mu      sync.Mutex
	jobs    chan func()
	done    chan struct{}
	stopped bool
}

func startThread() *thread {
	t := &thread{jobs: make(chan func()), done: make(chan struct{})}
	go func() {
		// Locked and never unlocked: when the goroutine returns the runtime
		// ends the OS thread with it, so no other goroutine inherits a thread
		// with our context current.
		runtime.LockOSThread()
		for f := range t.jobs {
			f()
			t.done <- struct{}{}
		}
		close(t.done)
	}()
	return t
}

// do runs f on the locked thread and waits for it; after stop it runs nothing
// and returns false.
func (t *thread) do(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.jobs <- f
	<-t.done
	return true
}

// stop ends the goroutine after the calls before it; later calls of stop do
// nothing.
func (t *thread) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	t.stopped = true
	close(t.jobs)
	<-t.done
}
