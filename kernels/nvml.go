//go:build cgo

package kernels

// NVML (libnvidia-ml.so.1, installed with the NVIDIA driver) loaded with
// dlopen at the first Utilization call, never at process start, through
// prototypes written here: no NVML header is needed to build. The prototypes
// and nvmlUtilization_t follow nvml.h (NVML 12.2, as NVIDIA/go-nvml
// gen/nvml/nvml.h carries it). Handles and function pointers are
// process-wide C statics filled once under nvmlOnce and read-only afterwards;
// NVML is initialised once per process and never shut down (see openNVML).

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef int CUresult;
typedef void* nv_device; // nvmlDevice_t, a pointer to NVML's opaque struct

// nv_util is nvmlUtilization_t: percent of time over the last sample period
// during which one or more kernels ran (gpu), and during which device memory
// was read or written (memory).
typedef struct {
	unsigned int gpu;
	unsigned int memory;
} nv_util;

// nvmlReturn_t is an enum: an int on the platforms we build for.
static int (*nv_pInit)(void);                            // nvmlInit_v2
static int (*nv_pShutdown)(void);                        // nvmlShutdown
static int (*nv_pHandleByBusID)(const char*, nv_device*); // nvmlDeviceGetHandleByPciBusId_v2
static int (*nv_pUtilization)(nv_device, nv_util*);      // nvmlDeviceGetUtilizationRates
static const char* (*nv_pErrorString)(int);              // nvmlErrorString
static CUresult (*nv_pBusID)(char*, int, int);           // libcuda's cuDeviceGetPCIBusId

static const char* nv_sym(void* lib, const char* name, void** dst) {
	*dst = dlsym(lib, name);
	return *dst ? NULL : name;
}

#define NV_SYM(fn, name) if ((miss = nv_sym(lib, name, (void**)&fn)) != NULL) return miss;

// nv_bind binds NVML from an opened library; NULL or the missing symbol's name.
static const char* nv_bind(void* lib) {
	const char* miss;
	NV_SYM(nv_pInit, "nvmlInit_v2")
	NV_SYM(nv_pShutdown, "nvmlShutdown")
	NV_SYM(nv_pHandleByBusID, "nvmlDeviceGetHandleByPciBusId_v2")
	NV_SYM(nv_pUtilization, "nvmlDeviceGetUtilizationRates")
	NV_SYM(nv_pErrorString, "nvmlErrorString")
	return NULL;
}

static const char* nv_bind_cuda(void* lib) {
	const char* miss;
	NV_SYM(nv_pBusID, "cuDeviceGetPCIBusId")
	return NULL;
}

static void* nv_dlopen(const char* path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void nv_dlclose(void* h) { dlclose(h); }
static const char* nv_dlerror(void) { const char* e = dlerror(); return e ? e : "unknown dlopen error"; }

static int nv_init(void) { return nv_pInit(); }
static int nv_handle(const char* busID, nv_device* h) { return nv_pHandleByBusID(busID, h); }
static int nv_utilization(nv_device h, nv_util* u) { return nv_pUtilization(h, u); }
static const char* nv_error_string(int r) {
	const char* s = nv_pErrorString ? nv_pErrorString(r) : NULL;
	return s ? s : "unknown NVML error";
}
static CUresult nv_bus_id(char* out, int n, int dev) { return nv_pBusID(out, n, dev); }
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// nvmlLibName is the soname the driver installs NVML under.
const nvmlLibName = "libnvidia-ml.so.1"

var (
	nvmlOnce sync.Once // process-wide: dlopen, the C function pointers, nvmlInit_v2
	nvmlErr  error     // its outcome, wrapping ErrNVMLUnavailable
)

// loadNVML opens and initialises NVML once per process; later calls return
// the first outcome.
func loadNVML() error {
	nvmlOnce.Do(func() { nvmlErr = openNVML() })
	return nvmlErr
}

// openNVML binds NVML and libcuda's cuDeviceGetPCIBusId, then calls
// nvmlInit_v2. NVML stays initialised for the life of the process (nvmlShutdown
// is bound but never called): the device handles are cached for every
// Backend, and a shutdown would invalidate them under a concurrent query.
func openNVML() error {
	name := C.CString(nvmlLibName)
	defer C.free(unsafe.Pointer(name))
	lib := C.nv_dlopen(name)
	if lib == nil {
		return fmt.Errorf("%w: %s (installed with the NVIDIA driver) could not be loaded: %s",
			ErrNVMLUnavailable, nvmlLibName, C.GoString(C.nv_dlerror()))
	}
	if miss := C.nv_bind(lib); miss != nil {
		C.nv_dlclose(lib)
		return fmt.Errorf("%w: %s: symbol %s missing (driver too old?)", ErrNVMLUnavailable, nvmlLibName, C.GoString(miss))
	}
	// The GPU is found in NVML by its PCI bus id, which the driver API
	// tells. The Backend has loaded libcuda RTLD_LOCAL, so its symbols are
	// not in the global scope: this dlopen takes another reference to the
	// same library (as nccl.go does for cuStreamQuery).
	cuName := C.CString("libcuda.so.1")
	defer C.free(unsafe.Pointer(cuName))
	cu := C.nv_dlopen(cuName)
	if cu == nil {
		return fmt.Errorf("%w: libcuda.so.1 (for cuDeviceGetPCIBusId): %s", ErrNVMLUnavailable, C.GoString(C.nv_dlerror()))
	}
	if miss := C.nv_bind_cuda(cu); miss != nil {
		return fmt.Errorf("%w: libcuda.so.1: symbol %s missing", ErrNVMLUnavailable, C.GoString(miss))
	}
	if r := C.nv_init(); r != 0 {
		return fmt.Errorf("%w: nvmlInit_v2 (%s): %s", ErrNVMLUnavailable, nvmlLibName, nvmlText(r))
	}
	return nil
}

// nvmlText describes an NVML status: NVML's message and the code.
func nvmlText(r C.int) string {
	return fmt.Sprintf("%s (nvmlReturn %d)", C.GoString(C.nv_error_string(r)), int(r))
}

// nvmlDev is the NVML handle of one CUDA device, or why there is none. The
// lookup's outcome, failure included, is kept: it does not change while the
// process runs, and Utilization stays one NVML query per call.
type nvmlDev struct {
	busID  string // NVML's form, e.g. "00000000:3B:00.0"
	handle C.nv_device
	err    error
}

var (
	nvmlMu   sync.Mutex
	nvmlDevs = map[int]*nvmlDev{} // by CUDA ordinal: fixed for the process once the driver is initialised
)

// nvmlDevice returns the NVML device of b's GPU, looked up on first use by
// the PCI bus id the driver gives (so CUDA_VISIBLE_DEVICES reordering cannot
// pick another GPU). An error here (a closed Backend, a driver error) is not
// kept.
func (b *Backend) nvmlDevice() (*nvmlDev, error) {
	if b.closed {
		return nil, errClosed
	}
	if b.dev == nil {
		return nil, errors.New("not an open GPU (a Backend comes from New or Open)")
	}
	ord := b.dev.ord
	nvmlMu.Lock()
	d := nvmlDevs[ord]
	nvmlMu.Unlock()
	if d != nil {
		return d, nil
	}
	var raw string
	err := b.call(func(dv *device) error {
		var buf [64]C.char // 13 bytes suffice for "0000:3B:00.0"; room for an 8-digit domain
		if err := cuErr("cuDeviceGetPCIBusId", C.nv_bus_id(&buf[0], C.int(len(buf)), C.int(dv.dev))); err != nil {
			return err
		}
		raw = C.GoString(&buf[0])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("GPU %d: %w", ord, err)
	}
	d = &nvmlDev{}
	d.busID, d.err = nvmlBusID(raw)
	if d.err == nil {
		cs := C.CString(d.busID)
		r := C.nv_handle(cs, &d.handle)
		C.free(unsafe.Pointer(cs))
		if r != 0 {
			d.err = fmt.Errorf("nvmlDeviceGetHandleByPciBusId_v2(%s): %s", d.busID, nvmlText(r))
		}
	}
	nvmlMu.Lock()
	if first := nvmlDevs[ord]; first != nil {
		d = first // another Backend of this GPU got there first: same answer
	} else {
		nvmlDevs[ord] = d
	}
	nvmlMu.Unlock()
	return d, nil
}

// Utilization reports NVML's utilisation of the Backend's GPU over its last
// sample period (1/6 s to 1 s, by product): gpuPct is the percent of time one
// or more kernels ran, memPct the percent of time device memory was read or
// written. After the first call (which loads NVML and finds the GPU) it is
// one NVML query, cheap enough for every training step. It may run beside
// the Backend's ops from another goroutine, not beside Close.
//
// When NVML cannot be used in this process (no libnvidia-ml.so.1, nvmlInit
// failing) the error wraps ErrNVMLUnavailable; other errors concern this GPU
// (NVML reports utilisation as not supported on MIG-enabled GPUs).
func (b *Backend) Utilization() (gpuPct, memPct int, err error) {
	if err := loadNVML(); err != nil {
		return 0, 0, fmt.Errorf("kernels: utilization: %w", err)
	}
	d, err := b.nvmlDevice()
	if err != nil {
		return 0, 0, fmt.Errorf("kernels: utilization: %w", err)
	}
	if d.err != nil {
		return 0, 0, fmt.Errorf("kernels: utilization of GPU %d: %w", b.dev.ord, d.err)
	}
	var u C.nv_util
	if r := C.nv_utilization(d.handle, &u); r != 0 {
		return 0, 0, fmt.Errorf("kernels: utilization of GPU %d (%s): nvmlDeviceGetUtilizationRates: %s", b.dev.ord, d.busID, nvmlText(r))
	}
	return int(u.gpu), int(u.memory), nil
}
