//go:build cgo

package kernels

// NCCL loaded with dlopen at first use (never at process start), through
// prototypes written here: no NCCL header is needed to build. The enum values
// and the ncclConfig_t head below follow nccl.h (NVIDIA/nccl src/nccl.h.in).
// Handles and function pointers are process-wide C statics filled once under
// ncclOnce and read-only afterwards.

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct { char internal[128]; } nc_id; // ncclUniqueId

// nc_config is the head of ncclConfig_t as NCCL 2.14 defined it. NCCL copies
// `size` bytes over its defaults and reads the fields the `version` had, so
// later fields keep NCCL's defaults.
typedef struct {
	size_t size;
	unsigned int magic;   // NCCL_API_MAGIC
	unsigned int version; // NCCL_VERSION(2,14,0)
	int blocking;
} nc_config;

static int (*nc_pGetVersion)(int*);
static int (*nc_pGetUniqueId)(nc_id*);
static int (*nc_pCommInitRankConfig)(void**, int, nc_id, int, nc_config*);
static int (*nc_pCommFinalize)(void*);
static int (*nc_pCommDestroy)(void*);
static int (*nc_pCommAbort)(void*);
static int (*nc_pCommGetAsyncError)(void*, int*);
static int (*nc_pAllReduce)(const void*, void*, size_t, int, int, void*, void*);
static int (*nc_pReduceScatter)(const void*, void*, size_t, int, int, void*, void*);
static int (*nc_pAllGather)(const void*, void*, size_t, int, void*, void*);
static int (*nc_pBroadcast)(const void*, void*, size_t, int, int, void*, void*);
static int (*nc_pSend)(const void*, size_t, int, int, void*, void*);
static int (*nc_pRecv)(void*, size_t, int, int, void*, void*);
static int (*nc_pGroupStart)(void);
static int (*nc_pGroupEnd)(void);
static const char* (*nc_pGetErrorString)(int);
static const char* (*nc_pGetLastError)(void*); // optional (NCCL >= 2.13)
static int (*nc_pStreamQuery)(void*);         // libcuda's cuStreamQuery

static const char* nc_sym(void* lib, const char* name, void** dst) {
	*dst = dlsym(lib, name);
	return *dst ? NULL : name;
}

#define NC_SYM(fn, name) if ((miss = nc_sym(lib, name, (void**)&fn)) != NULL) return miss;

// nc_bind binds NCCL from an opened library; NULL or the missing symbol's name.
static const char* nc_bind(void* lib) {
	const char* miss;
	NC_SYM(nc_pGetVersion, "ncclGetVersion")
	NC_SYM(nc_pGetUniqueId, "ncclGetUniqueId")
	NC_SYM(nc_pCommInitRankConfig, "ncclCommInitRankConfig")
	NC_SYM(nc_pCommFinalize, "ncclCommFinalize")
	NC_SYM(nc_pCommDestroy, "ncclCommDestroy")
	NC_SYM(nc_pCommAbort, "ncclCommAbort")
	NC_SYM(nc_pCommGetAsyncError, "ncclCommGetAsyncError")
	NC_SYM(nc_pAllReduce, "ncclAllReduce")
	NC_SYM(nc_pReduceScatter, "ncclReduceScatter")
	NC_SYM(nc_pAllGather, "ncclAllGather")
	NC_SYM(nc_pBroadcast, "ncclBroadcast")
	NC_SYM(nc_pSend, "ncclSend")
	NC_SYM(nc_pRecv, "ncclRecv")
	NC_SYM(nc_pGroupStart, "ncclGroupStart")
	NC_SYM(nc_pGroupEnd, "ncclGroupEnd")
	NC_SYM(nc_pGetErrorString, "ncclGetErrorString")
	nc_pGetLastError = dlsym(lib, "ncclGetLastError");
	return NULL;
}

static const char* nc_bind_cuda(void* lib) {
	const char* miss;
	NC_SYM(nc_pStreamQuery, "cuStreamQuery")
	return NULL;
}


// nc_path is the file the library was loaded from, found through one of its symbols.
static const char* nc_path(void) {
	Dl_info info;
	if (nc_pGetVersion == NULL || dladdr((void*)nc_pGetVersion, &info) == 0 || info.dli_fname == NULL) return "";
	return info.dli_fname;
}

static int nc_version(int* v) { return nc_pGetVersion(v); }
static int nc_unique_id(nc_id* id) { return nc_pGetUniqueId(id); }
static int nc_init(void** comm, int size, const nc_id* id, int rank) {
	nc_config c;
	c.size = sizeof c;
	c.magic = 0xcafebeef;
	c.version = 21400;
	c.blocking = 0;
	return nc_pCommInitRankConfig(comm, size, *id, rank, &c);
}
static int nc_finalize(void* comm) { return nc_pCommFinalize(comm); }
static int nc_destroy(void* comm) { return nc_pCommDestroy(comm); }
static int nc_abort(void* comm) { return nc_pCommAbort(comm); }
static int nc_async_error(void* comm, int* state) { return nc_pCommGetAsyncError(comm, state); }
static int nc_allreduce(uint64_t s, uint64_t r, size_t n, int dt, int op, void* comm, void* st) {
	return nc_pAllReduce((const void*)s, (void*)r, n, dt, op, comm, st);
}
static int nc_reducescatter(uint64_t s, uint64_t r, size_t n, int dt, int op, void* comm, void* st) {
	return nc_pReduceScatter((const void*)s, (void*)r, n, dt, op, comm, st);
}
static int nc_allgather(uint64_t s, uint64_t r, size_t n, int dt, void* comm, void* st) {
	return nc_pAllGather((const void*)s, (void*)r, n, dt, comm, st);
}
static int nc_broadcast(uint64_t s, uint64_t r, size_t n, int dt, int root, void* comm, void* st) {
	return nc_pBroadcast((const void*)s, (void*)r, n, dt, root, comm, st);
}
static int nc_send(uint64_t s, size_t n, int dt, int peer, void* comm, void* st) {
	return nc_pSend((const void*)s, n, dt, peer, comm, st);
}
static int nc_recv(uint64_t r, size_t n, int dt, int peer, void* comm, void* st) {
	return nc_pRecv((void*)r, n, dt, peer, comm, st);
}
static int nc_group_start(void) { return nc_pGroupStart(); }
static int nc_group_end(void) { return nc_pGroupEnd(); }
static const char* nc_error_string(int r) {
	const char* s = nc_pGetErrorString ? nc_pGetErrorString(r) : NULL;
	return s ? s : "unknown NCCL error";
}
static const char* nc_last_error(void* comm) {
	const char* s = nc_pGetLastError ? nc_pGetLastError(comm) : NULL;
	return s ? s : "";
}
static int nc_stream_query(void* st) { return nc_pStreamQuery(st); }
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// ncclCudaNotReady is CUDA_ERROR_NOT_READY, cuStreamQuery's "work still pending".
const ncclCudaNotReady = 600

type ncclLib struct {
	path    string
	version int
	err     error
}

var (
	ncclOnce   sync.Once // process-wide: dlopen and the C function pointers
	ncclLoaded ncclLib
)

// loadNCCL opens NCCL once per process; later calls return the first outcome.
func loadNCCL() ncclLib {
	ncclOnce.Do(func() { ncclLoaded = openNCCL() })
	return ncclLoaded
}

func openNCCL() ncclLib {
	// NVLink SHARP (NVLS) multicast stays off unless the user sets it: the
	// project runs without it (DESIGN.md; it needs fabric-manager multicast
	// support), and NCCL reads the variable once, at its first call.
	if _, set := os.LookupEnv("NCCL_NVLS_ENABLE"); !set {
		os.Setenv("NCCL_NVLS_ENABLE", "0")
	}
	candidates := []string{"libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2"}
	if p := os.Getenv(NCCLEnv); p != "" {
		candidates = []string{p}
	}
	var tried []string
	var lib unsafe.Pointer
	for _, p := range candidates {
		h, err := openLib(p, false)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		if miss := C.nc_bind(h); miss != nil {
			tried = append(tried, fmt.Sprintf("%s: symbol %s missing (NCCL older than 2.14?)", p, C.GoString(miss)))
			continue
		}
		lib = h
		break
	}
	if lib == nil {
		return ncclLib{err: fmt.Errorf("NCCL not found (set %s to libnccl.so.2's path): %s", NCCLEnv, strings.Join(tried, "; "))}
	}
	l := ncclLib{path: C.GoString(C.nc_path())}
	var v C.int
	if r := C.nc_version(&v); r != ncclSuccess {
		l.err = fmt.Errorf("ncclGetVersion: %s", ncclResultText(int(r), nil))
		return l
	}
	l.version = int(v)
	// Wait polls the stream, which the driver's API does (the Backend has
	// loaded libcuda already; this only takes another reference).
	cu, err := openLib("libcuda.so.1", false)
	if err != nil {
		l.err = err
		return l
	}
	if miss := C.nc_bind_cuda(cu); miss != nil {
		l.err = fmt.Errorf("libcuda.so.1: symbol %s missing", C.GoString(miss))
	}
	return l
}

// NCCLVersion loads NCCL if needed and reports its version code (22805 is
// 2.28.5; see FormatNCCLVersion) and the file it came from.
func NCCLVersion() (version int, path string, err error) {
	l := loadNCCL()
	if l.err != nil {
		return 0, l.path, fmt.Errorf("kernels: %w", l.err)
	}
	return l.version, l.path, nil
}

// ncclResultText describes an NCCL status, with NCCL's last error message when
// there is one.
func ncclResultText(r int, comm unsafe.Pointer) string {
	s := fmt.Sprintf("%s (%s)", C.GoString(C.nc_error_string(C.int(r))), ncclResultName(r))
	if last := C.GoString(C.nc_last_error(comm)); last != "" {
		s += ": " + last
	}
	return s
}

// NCCLUniqueID returns a new communicator id (ncclGetUniqueId) for rank 0 to
// give every rank before NewNCCL. It opens NCCL's bootstrap listener on this
// host; it runs on the Backend's CUDA thread like every NCCL call.
func (b *Backend) NCCLUniqueID() ([]byte, error) {
	if l := loadNCCL(); l.err != nil {
		return nil, fmt.Errorf("kernels: %w", l.err)
	}
	var id C.nc_id
	err := b.call(func(*device) error {
		if r := int(C.nc_unique_id(&id)); r != ncclSuccess {
			return fmt.Errorf("ncclGetUniqueId: %s", ncclResultText(r, nil))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernels: %w", err)
	}
	return C.GoBytes(unsafe.Pointer(&id), NCCLIDBytes), nil
}

// NewNCCL joins this Backend's GPU to the communicator id (from rank 0's
// NCCLUniqueID) as rank of size. Every rank must call it; it returns once all
// have, or fails after timeout (DefaultNCCLTimeout if timeout <= 0).
func (b *Backend) NewNCCL(id []byte, rank, size int, timeout time.Duration) (*NCCL, error) {
	if len(id) != NCCLIDBytes {
		return nil, fmt.Errorf("kernels: nccl: an id has %d bytes, got %d", NCCLIDBytes, len(id))
	}
	if size < 1 || rank < 0 || rank >= size {
		return nil, fmt.Errorf("kernels: nccl: rank %d of %d is impossible", rank, size)
	}
	if timeout <= 0 {
		timeout = DefaultNCCLTimeout
	}
	if l := loadNCCL(); l.err != nil {
		return nil, fmt.Errorf("kernels: %w", l.err)
	}
	n := &NCCL{b: b, rank: rank, size: size, timeout: timeout}
	var cid C.nc_id
	copy((*[NCCLIDBytes]byte)(unsafe.Pointer(&cid))[:], id)
	err := b.call(func(*device) error {
		// The handle's slot is C memory: some NCCL versions keep its address
		// for the background init.
		slot := (*unsafe.Pointer)(C.calloc(1, C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
		defer C.free(unsafe.Pointer(slot))
		r := int(C.nc_init(slot, C.int(size), &cid, C.int(rank)))
		n.comm = *slot
		return n.settle("CommInitRank", r, time.Now().Add(timeout))
	})
	if err != nil {
		if n.err == nil { // the Backend was closed: nothing ran
			n.err = fmt.Errorf("kernels: nccl init (rank %d of %d): %w", rank, size, err)
		}
		return nil, n.err
	}
	return n, nil
}

// Version is the NCCL version code (see FormatNCCLVersion).
func (n *NCCL) Version() int { return loadNCCL().version }

// do issues c on the CUDA thread and waits until NCCL has queued it.
func (n *NCCL) do(c ncclCall) error {
	err := n.b.call(func(d *device) error {
		st := unsafe.Pointer(d.stream)
		cnt := C.size_t(c.count)
		dt := C.int(c.dt)
		var r C.int
		switch c.fn {
		case "AllReduce":
			r = C.nc_allreduce(C.uint64_t(c.send), C.uint64_t(c.recv), cnt, dt, C.int(c.op), n.comm, st)
		case "ReduceScatter":
			r = C.nc_reducescatter(C.uint64_t(c.send), C.uint64_t(c.recv), cnt, dt, C.int(c.op), n.comm, st)
		case "AllGather":
			r = C.nc_allgather(C.uint64_t(c.send), C.uint64_t(c.recv), cnt, dt, n.comm, st)
		case "Broadcast":
			r = C.nc_broadcast(C.uint64_t(c.send), C.uint64_t(c.recv), cnt, dt, C.int(c.peer), n.comm, st)
		case "Send":
			r = C.nc_send(C.uint64_t(c.send), cnt, dt, C.int(c.peer), n.comm, st)
		case "Recv":
			r = C.nc_recv(C.uint64_t(c.recv), cnt, dt, C.int(c.peer), n.comm, st)
		default:
			return fmt.Errorf("unknown call %q", c.fn)
		}
		return n.settle(c.fn, int(r), time.Now().Add(n.timeout))
	})
	return n.closedErr(c.fn, err)
}

// closedErr turns the Backend's "used after Close" into this package's form.
func (n *NCCL) closedErr(fn string, err error) error {
	if errors.Is(err, errClosed) {
		return n.argErr(fn, err)
	}
	return err
}

func (n *NCCL) groupStart() error {
	err := n.b.call(func(*device) error {
		if r := int(C.nc_group_start()); r != ncclSuccess {
			return n.argErr("GroupStart", errors.New(ncclResultText(r, nil)))
		}
		return nil
	})
	return n.closedErr("GroupStart", err)
}

// groupEnd launches the group's calls. It is called even when a call failed
// inside the group (NCCL's group must be closed), and aborts the communicator
// only then: an abort inside an open group would leave NCCL holding it.
func (n *NCCL) groupEnd() error {
	err := n.b.call(func(*device) error {
		r := int(C.nc_group_end())
		if n.err != nil {
			return n.fail("GroupEnd", n.err)
		}
		return n.settle("GroupEnd", r, time.Now().Add(n.timeout))
	})
	return n.closedErr("GroupEnd", err)
}

// settle finishes a call that returned r: a non-blocking communicator answers
// ncclInProgress until the call's work is queued (or init has connected), and
// ncclCommGetAsyncError tells when. A failure or the deadline aborts the
// communicator. It runs on the CUDA thread.
func (n *NCCL) settle(fn string, r int, deadline time.Time) error {
	start := time.Now()
	for r == ncclInProgress {
		if time.Now().After(deadline) {
			return n.fail(fn, fmt.Errorf("not done after %v (a rank is missing, stuck, or called something else)", n.timeout))
		}
		ncclPause(start)
		var state C.int
		if q := int(C.nc_async_error(n.comm, &state)); q != ncclSuccess {
			r = q
			break
		}
		r = int(state)
	}
	if r != ncclSuccess {
		return n.fail(fn, errors.New(ncclResultText(r, n.comm)))
	}
	return nil
}

// fail records the communicator's failure and aborts it (which ends its
// kernels on the GPU), on the CUDA thread; every later call returns the error.
// Inside a Group the abort waits for groupEnd.
func (n *NCCL) fail(fn string, err error) error {
	if n.err == nil {
		n.err = fmt.Errorf("kernels: nccl %s (rank %d of %d): %w; communicator aborted", fn, n.rank, n.size, err)
	}
	if n.comm != nil && !n.inGroup {
		C.nc_abort(n.comm)
		n.comm = nil
	}
	return n.err
}

// ncclPause waits a little between polls: a spin at first (a small collective
// ends in microseconds), then sleeps growing to a millisecond.
func ncclPause(start time.Time) {
	since := time.Since(start)
	if since < 100*time.Microsecond {
		runtime.Gosched()
		return
	}
	time.Sleep(min(since/8, time.Millisecond))
}

// Wait waits until the Backend's stream has run everything queued so far,
// NCCL's operations included, polling the stream and the communicator's
// health. A communicator error, or work still pending after the timeout,
// aborts the communicator and is returned. Use it after NCCL calls instead
// of (or before) the Backend's Sync, which cannot notice a lost rank.
func (n *NCCL) Wait() error {
	if n.err != nil {
		return n.err
	}
	if n.comm == nil {
		return n.argErr("Wait", errors.New("communicator used after Close"))
	}
	err := n.b.call(func(d *device) error {
		start := time.Now()
		deadline := start.Add(n.timeout)
		for {
			q := int(C.nc_stream_query(unsafe.Pointer(d.stream)))
			var state C.int
			if r := int(C.nc_async_error(n.comm, &state)); r != ncclSuccess {
				return n.fail("Wait", errors.New(ncclResultText(r, n.comm)))
			}
			if s := int(state); s != ncclSuccess && s != ncclInProgress {
				return n.fail("Wait", errors.New(ncclResultText(s, n.comm)))
			}
			switch {
			case q == 0:
				return nil
			case q != ncclCudaNotReady:
				return n.fail("Wait", fmt.Errorf("cuStreamQuery: CUDA error %d", q))
			case time.Now().After(deadline):
				return n.fail("Wait", fmt.Errorf("the stream's work not done after %v (a rank is missing, stuck, or called something else)", n.timeout))
			}
			ncclPause(start)
		}
	})
	return n.closedErr("Wait", err)
}

// Close waits for the communicator's work (bounded by the timeout), then
// releases it (ncclCommFinalize, ncclCommDestroy). A communicator that failed
// was aborted already; Close then does nothing. It is safe to call twice.
func (n *NCCL) Close() error {
	if n.comm == nil {
		return nil
	}
	if err := n.Wait(); err != nil {
		return err
	}
	err := n.b.call(func(*device) error {
		if err := n.settle("CommFinalize", int(C.nc_finalize(n.comm)), time.Now().Add(n.timeout)); err != nil {
			return err
		}
		r := int(C.nc_destroy(n.comm))
		n.comm = nil
		if r != ncclSuccess {
			return fmt.Errorf("kernels: nccl CommDestroy (rank %d of %d): %s", n.rank, n.size, ncclResultText(r, nil))
		}
		return nil
	})
	if errors.Is(err, errClosed) {
		return n.argErr("Close", errors.New("the Backend was closed before its communicator"))
	}
	return err
}
