//go:build cgo

package kernels

// This cgo file (nccl.go is the other, for NCCL) loads the NVIDIA driver
// (libcuda.so.1) and cuBLAS with dlopen at run time, through prototypes written
// here, so that the binary builds without CUDA and starts on machines without a
// GPU. Every wrapper returns the library's status code; Go turns it into an
// error naming the call.
//
// Process-wide library state: the dlopen handles and the function pointers below
// are C statics, filled once per process under loadOnce (see load). They are
// read-only afterwards; everything per device (context, stream, handles) lives
// in a Backend.

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE // dladdr
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUevent;
typedef unsigned long long CUdeviceptr;
typedef void *cublasHandle_t;
typedef int cublasStatus_t;

static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDriverGetVersion)(int*);
static CUresult (*p_cuDeviceGetCount)(int*);
static CUresult (*p_cuDeviceGet)(CUdevice*, int);
static CUresult (*p_cuDeviceGetName)(char*, int, CUdevice);
// cuDeviceGetAttribute; the attribute (CUdevice_attribute) is a C int.
static CUresult (*p_cuDeviceGetAttribute)(int*, int, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRelease)(CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuMemGetInfo)(size_t*, size_t*);
static CUresult (*p_cuMemAlloc)(CUdeviceptr*, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
static CUresult (*p_cuMemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
static CUresult (*p_cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
static CUresult (*p_cuMemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
static CUresult (*p_cuMemHostAlloc)(void**, size_t, unsigned);
static CUresult (*p_cuMemFreeHost)(void*);
static CUresult (*p_cuMemHostGetDevicePointer)(CUdeviceptr*, void*, unsigned);
static CUresult (*p_cuMemsetD32Async)(CUdeviceptr, unsigned, size_t, CUstream);
static CUresult (*p_cuMemsetD16Async)(CUdeviceptr, unsigned short, size_t, CUstream);
static CUresult (*p_cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
static CUresult (*p_cuModuleLoadData)(CUmodule*, const void*);
static CUresult (*p_cuModuleUnload)(CUmodule);
static CUresult (*p_cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
	unsigned, CUstream, void**, void**);
// cuFuncSetAttribute; the attribute (CUfunction_attribute) is a C int.
static CUresult (*p_cuFuncSetAttribute)(CUfunction, int, int);
static CUresult (*p_cuStreamCreate)(CUstream*, unsigned);
static CUresult (*p_cuStreamDestroy)(CUstream);
static CUresult (*p_cuStreamSynchronize)(CUstream);
static CUresult (*p_cuStreamWaitEvent)(CUstream, CUevent, unsigned);
static CUresult (*p_cuEventCreate)(CUevent*, unsigned);
static CUresult (*p_cuEventRecord)(CUevent, CUstream);
static CUresult (*p_cuEventDestroy)(CUevent);
static CUresult (*p_cuGetErrorString)(CUresult, const char**);

static cublasStatus_t (*p_cublasCreate)(cublasHandle_t*);
static cublasStatus_t (*p_cublasDestroy)(cublasHandle_t);
static cublasStatus_t (*p_cublasSetStream)(cublasHandle_t, CUstream);
static cublasStatus_t (*p_cublasGetVersion)(cublasHandle_t, int*);
static cublasStatus_t (*p_cublasSgemm)(cublasHandle_t, int, int, int, int, int, const float*, const float*, int,
	const float*, int, const float*, float*, int);
// cublasGemmEx; the enums (cudaDataType, cublasComputeType_t, cublasGemmAlgo_t)
// are C ints.
static cublasStatus_t (*p_cublasGemmEx)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int,
	const void*, int, int, const void*, void*, int, int, int, int);
// cublasSgemmStridedBatched and cublasGemmStridedBatchedEx: batch item i reads
// A + i*strideA, B + i*strideB and writes C + i*strideC (strides in elements,
// long long).
static cublasStatus_t (*p_cublasSgemmStridedBatched)(cublasHandle_t, int, int, int, int, int, const float*,
	const float*, int, long long, const float*, int, long long, const float*, float*, int, long long, int);
static cublasStatus_t (*p_cublasGemmStridedBatchedEx)(cublasHandle_t, int, int, int, int, int, const void*,
	const void*, int, int, long long, const void*, int, int, long long, const void*, void*, int, int, long long, int,
	int, int);
static const char* (*p_cublasGetStatusString)(cublasStatus_t);

// tr_sym loads one symbol into *dst; it returns the name when missing.
static const char* tr_sym(void* lib, const char* name, void** dst) {
	*dst = dlsym(lib, name);
	return *dst ? NULL : name;
}

#define SYM(lib, fn, name) if ((miss = tr_sym(lib, name, (void**)&fn)) != NULL) return miss;

// tr_load_cuda binds the driver API from an opened libcuda; NULL or the name of
// a missing symbol.
static const char* tr_load_cuda(void* lib) {
	const char* miss;
	SYM(lib, p_cuInit, "cuInit")
	SYM(lib, p_cuDriverGetVersion, "cuDriverGetVersion")
	SYM(lib, p_cuDeviceGetCount, "cuDeviceGetCount")
	SYM(lib, p_cuDeviceGet, "cuDeviceGet")
	SYM(lib, p_cuDeviceGetName, "cuDeviceGetName")
	SYM(lib, p_cuDeviceGetAttribute, "cuDeviceGetAttribute")
	SYM(lib, p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")
	SYM(lib, p_cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2")
	SYM(lib, p_cuCtxSetCurrent, "cuCtxSetCurrent")
	SYM(lib, p_cuMemGetInfo, "cuMemGetInfo_v2")
	SYM(lib, p_cuMemAlloc, "cuMemAlloc_v2")
	SYM(lib, p_cuMemFree, "cuMemFree_v2")
	SYM(lib, p_cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2")
	SYM(lib, p_cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2")
	SYM(lib, p_cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2")
	SYM(lib, p_cuMemcpyAsync, "cuMemcpyAsync")
	SYM(lib, p_cuMemHostAlloc, "cuMemHostAlloc")
	SYM(lib, p_cuMemFreeHost, "cuMemFreeHost")
	SYM(lib, p_cuMemHostGetDevicePointer, "cuMemHostGetDevicePointer_v2")
	SYM(lib, p_cuMemsetD32Async, "cuMemsetD32Async")
	SYM(lib, p_cuMemsetD16Async, "cuMemsetD16Async")
	SYM(lib, p_cuMemsetD8Async, "cuMemsetD8Async")
	SYM(lib, p_cuModuleLoadData, "cuModuleLoadData")
	SYM(lib, p_cuModuleUnload, "cuModuleUnload")
	SYM(lib, p_cuModuleGetFunction, "cuModuleGetFunction")
	SYM(lib, p_cuLaunchKernel, "cuLaunchKernel")
	SYM(lib, p_cuFuncSetAttribute, "cuFuncSetAttribute")
	SYM(lib, p_cuStreamCreate, "cuStreamCreate")
	SYM(lib, p_cuStreamDestroy, "cuStreamDestroy_v2")
	SYM(lib, p_cuStreamSynchronize, "cuStreamSynchronize")
	SYM(lib, p_cuStreamWaitEvent, "cuStreamWaitEvent")
	SYM(lib, p_cuEventCreate, "cuEventCreate")
	SYM(lib, p_cuEventRecord, "cuEventRecord")
	SYM(lib, p_cuEventDestroy, "cuEventDestroy_v2")
	SYM(lib, p_cuGetErrorString, "cuGetErrorString")
	return NULL;
}

static const char* tr_load_cublas(void* lib) {
	const char* miss;
	SYM(lib, p_cublasCreate, "cublasCreate_v2")
	SYM(lib, p_cublasDestroy, "cublasDestroy_v2")
	SYM(lib, p_cublasSetStream, "cublasSetStream_v2")
	SYM(lib, p_cublasGetVersion, "cublasGetVersion_v2")
	SYM(lib, p_cublasSgemm, "cublasSgemm_v2")
	SYM(lib, p_cublasGemmEx, "cublasGemmEx")
	SYM(lib, p_cublasSgemmStridedBatched, "cublasSgemmStridedBatched")
	SYM(lib, p_cublasGemmStridedBatchedEx, "cublasGemmStridedBatchedEx")
	p_cublasGetStatusString = dlsym(lib, "cublasGetStatusString"); // optional (cuBLAS >= 11.4)
	return NULL;
}

// tr_dlopen opens path (RTLD_GLOBAL when global, else RTLD_LOCAL); on failure
// it copies dlerror's text into err in the same call, since dlerror's state
// is per thread and Go may change threads between two cgo calls.
static void* tr_dlopen(const char* path, int global, char* err, size_t n) {
	void* h = dlopen(path, RTLD_NOW | (global ? RTLD_GLOBAL : RTLD_LOCAL));
	if (h == NULL) {
		const char* e = dlerror();
		snprintf(err, n, "%s", e ? e : "unknown dlopen error");
	}
	return h;
}
static void tr_dlclose(void* h) { dlclose(h); }

// tr_loaded_path copies into out the path of the first loaded object whose
// file name starts with prefix ("libcublasLt.so"), or "" when none: it tells
// which file the dynamic linker picked for a soname.
struct tr_find { const char* prefix; char* out; size_t n; };
static int tr_find_cb(struct dl_phdr_info* info, size_t size, void* data) {
	struct tr_find* f = data;
	const char* name = info->dlpi_name;
	const char* base = name ? strrchr(name, '/') : NULL;
	base = base ? base + 1 : name;
	if (base == NULL || strncmp(base, f->prefix, strlen(f->prefix)) != 0) return 0;
	strncpy(f->out, name, f->n - 1);
	f->out[f->n - 1] = 0;
	return 1;
}
static void tr_loaded_path(const char* prefix, char* out, size_t n) {
	struct tr_find f = {prefix, out, n};
	out[0] = 0;
	dl_iterate_phdr(tr_find_cb, &f);
}

// tr_symbol_file returns the file that defines the bound function fn (0: the
// driver's cuInit, 1: cublasCreate), or NULL.
static const char* tr_symbol_file(int fn) {
	Dl_info info;
	void* p = fn == 0 ? (void*)p_cuInit : (void*)p_cublasCreate;
	if (p == NULL || dladdr(p, &info) == 0) return NULL;
	return info.dli_fname;
}

static CUresult tr_cuInit(void) { return p_cuInit(0); }
static CUresult tr_cuDriverGetVersion(int* v) { return p_cuDriverGetVersion(v); }
static CUresult tr_cuDeviceGetCount(int* n) { return p_cuDeviceGetCount(n); }
static CUresult tr_cuDeviceGet(CUdevice* d, int i) { return p_cuDeviceGet(d, i); }
static CUresult tr_cuDeviceGetName(char* s, int n, CUdevice d) { return p_cuDeviceGetName(s, n, d); }
static CUresult tr_cuDeviceGetAttribute(int* v, int a, CUdevice d) { return p_cuDeviceGetAttribute(v, a, d); }
static CUresult tr_cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult tr_cuDevicePrimaryCtxRelease(CUdevice d) { return p_cuDevicePrimaryCtxRelease(d); }
static CUresult tr_cuCtxSetCurrent(CUcontext c) { return p_cuCtxSetCurrent(c); }
static CUresult tr_cuMemGetInfo(size_t* f, size_t* t) { return p_cuMemGetInfo(f, t); }
static CUresult tr_cuMemAlloc(CUdeviceptr* p, size_t n) { return p_cuMemAlloc(p, n); }
static CUresult tr_cuMemFree(CUdeviceptr p) { return p_cuMemFree(p); }
static CUresult tr_cuMemcpyHtoDAsync(CUdeviceptr d, const void* s, size_t n, CUstream st) { return p_cuMemcpyHtoDAsync(d, s, n, st); }
static CUresult tr_cuMemcpyDtoHAsync(void* d, CUdeviceptr s, size_t n, CUstream st) { return p_cuMemcpyDtoHAsync(d, s, n, st); }
static CUresult tr_cuMemcpyDtoDAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return p_cuMemcpyDtoDAsync(d, s, n, st); }
static CUresult tr_cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st) { return p_cuMemcpyAsync(d, s, n, st); }
// Page-locked host memory, mapped into the device's address space
// (CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP), at its device address.
static CUresult tr_cuMemHostAlloc(CUdeviceptr* dp, size_t n) {
	void* h = NULL;
	CUresult r = p_cuMemHostAlloc(&h, n, 0x01 | 0x02);
	if (r != 0) return r;
	r = p_cuMemHostGetDevicePointer(dp, h, 0);
	if (r != 0) p_cuMemFreeHost(h);
	return r;
}
// With unified addressing a mapped host buffer's device address is its host
// address.
static CUresult tr_cuMemFreeHost(CUdeviceptr p) { return p_cuMemFreeHost((void*)(uintptr_t)p); }
static CUresult tr_cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, CUstream st) { return p_cuMemsetD32Async(d, v, n, st); }
static CUresult tr_cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream st) { return p_cuMemsetD16Async(d, v, n, st); }
static CUresult tr_cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream st) { return p_cuMemsetD8Async(d, v, n, st); }
static CUresult tr_cuModuleLoadData(CUmodule* m, const void* img) { return p_cuModuleLoadData(m, img); }
static CUresult tr_cuModuleUnload(CUmodule m) { return p_cuModuleUnload(m); }
static CUresult tr_cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) { return p_cuModuleGetFunction(f, m, name); }
static CUresult tr_cuStreamCreate(CUstream* s) { return p_cuStreamCreate(s, 1); } // CU_STREAM_NON_BLOCKING
static CUresult tr_cuStreamDestroy(CUstream s) { return p_cuStreamDestroy(s); }
static CUresult tr_cuStreamSynchronize(CUstream s) { return p_cuStreamSynchronize(s); }
static CUresult tr_cuStreamWaitEvent(CUstream s, CUevent e) { return p_cuStreamWaitEvent(s, e, 0); }
static CUresult tr_cuEventCreate(CUevent* e) { return p_cuEventCreate(e, 2); } // CU_EVENT_DISABLE_TIMING
static CUresult tr_cuEventRecord(CUevent e, CUstream s) { return p_cuEventRecord(e, s); }
static CUresult tr_cuEventDestroy(CUevent e) { return p_cuEventDestroy(e); }
static const char* tr_cuGetErrorString(CUresult r) {
	const char* s = NULL;
	if (p_cuGetErrorString == NULL || p_cuGetErrorString(r, &s) != 0 || s == NULL) return "unknown CUDA error";
	return s;
}

// tr_launch launches f with its arguments packed one per 8-byte slot: the driver
// copies each parameter's size (from the kernel's metadata) from its slot, so a
// 4-byte int or float sits in the slot's low bytes (x86-64 and arm64 are little
// endian).
static CUresult tr_launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
	unsigned smem, CUstream s, uint64_t* args, int nargs) {
	void* params[24];
	if (nargs > 24) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < nargs; i++) params[i] = &args[i];
	return p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, smem, s, params, NULL);
}

// tr_func_smem lets f take smem bytes of dynamic shared memory
// (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8; more than 48 KiB needs
// it) and asks for the largest shared-memory carveout
// (CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9, 100 percent), so
// that several such blocks fit a multiprocessor.
static CUresult tr_func_smem(CUfunction f, int smem) {
	CUresult r = p_cuFuncSetAttribute(f, 8, smem);
	if (r != 0) return r;
	return p_cuFuncSetAttribute(f, 9, 100);
}

static cublasStatus_t tr_cublasCreate(cublasHandle_t* h) { return p_cublasCreate(h); }
static cublasStatus_t tr_cublasDestroy(cublasHandle_t h) { return p_cublasDestroy(h); }
static cublasStatus_t tr_cublasSetStream(cublasHandle_t h, CUstream s) { return p_cublasSetStream(h, s); }
static cublasStatus_t tr_cublasGetVersion(cublasHandle_t h, int* v) { return p_cublasGetVersion(h, v); }
static cublasStatus_t tr_cublasSgemm(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
	CUdeviceptr A, int lda, CUdeviceptr B, int ldb, float beta, CUdeviceptr C, int ldc) {
	return p_cublasSgemm(h, ta, tb, m, n, k, &alpha, (const float*)A, lda, (const float*)B, ldb, &beta, (float*)C, ldc);
}
// tr_cublasGemmEx computes in float32 (CUBLAS_COMPUTE_32F = 68) with float
// alpha and beta on the host, and lets cuBLAS pick the algorithm
// (CUBLAS_GEMM_DEFAULT = -1).
static cublasStatus_t tr_cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
	CUdeviceptr A, int atype, int lda, CUdeviceptr B, int btype, int ldb, float beta, CUdeviceptr C, int ctype, int ldc) {
	return p_cublasGemmEx(h, ta, tb, m, n, k, &alpha, (const void*)A, atype, lda, (const void*)B, btype, ldb, &beta,
		(void*)C, ctype, ldc, 68, -1);
}
static cublasStatus_t tr_cublasSgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
	CUdeviceptr A, int lda, long long sa, CUdeviceptr B, int ldb, long long sb, float beta, CUdeviceptr C, int ldc,
	long long sc, int batch) {
	return p_cublasSgemmStridedBatched(h, ta, tb, m, n, k, &alpha, (const float*)A, lda, sa, (const float*)B, ldb, sb,
		&beta, (float*)C, ldc, sc, batch);
}
// tr_cublasGemmStridedBatchedEx: as tr_cublasGemmEx (CUBLAS_COMPUTE_32F,
// CUBLAS_GEMM_DEFAULT), batched.
static cublasStatus_t tr_cublasGemmStridedBatchedEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, float alpha,
	CUdeviceptr A, int atype, int lda, long long sa, CUdeviceptr B, int btype, int ldb, long long sb, float beta,
	CUdeviceptr C, int ctype, int ldc, long long sc, int batch) {
	return p_cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, (const void*)A, atype, lda, sa, (const void*)B, btype,
		ldb, sb, &beta, (void*)C, ctype, ldc, sc, batch, 68, -1);
}
static const char* tr_cublasStatusString(cublasStatus_t s) {
	return p_cublasGetStatusString ? p_cublasGetStatusString(s) : "cuBLAS error";
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"train/ops"
)

// libs is the outcome of loading the libraries, once per process.
type libs struct {
	cuda, cublas, cublasLt string // the files that loaded
	err                    error
}

var (
	loadOnce sync.Once // process-wide: dlopen and the C function pointers
	loaded   libs
)

// load opens libcuda.so.1 and cuBLAS and binds their functions, once per
// process; later calls return the first outcome.
func load() libs {
	loadOnce.Do(func() { loaded = loadLibs() })
	return loaded
}

func loadLibs() libs {
	var l libs
	h, err := openLib("libcuda.so.1", false)
	if err != nil {
		l.err = err // "libcuda.so.1: cannot open shared object file: ..."
		return l
	}
	if miss := C.tr_load_cuda(h); miss != nil {
		l.err = fmt.Errorf("libcuda.so.1: symbol %s missing (driver too old?)", C.GoString(miss))
		return l
	}
	l.cuda = symbolFile(0, "libcuda.so.1")
	var tried []string
	for _, c := range cublasCandidates(os.Getenv, "") {
		var lt unsafe.Pointer
		if c.Lt != "" {
			var err error
			if lt, err = openLib(c.Lt, true); err != nil {
				tried = append(tried, err.Error())
			}
		}
		h, err := openLib(c.Lib, false)
		if err != nil {
			tried = append(tried, err.Error())
		} else if miss := C.tr_load_cublas(h); miss != nil {
			tried = append(tried, fmt.Sprintf("%s: symbol %s missing", c.Lib, C.GoString(miss)))
			C.tr_dlclose(h)
			h = nil
		}
		if h == nil {
			if lt != nil {
				C.tr_dlclose(lt) // not to shadow the next candidate's cuBLASLt
			}
			continue
		}
		l.cublas = symbolFile(1, c.Lib)
		l.cublasLt = loadedPath("libcublasLt.so", c.Lt)
		return l
	}
	l.err = fmt.Errorf("cuBLAS not found (set TRAIN_CUBLAS to its path; searched the library path, /usr/local/cuda/lib64 "+
		"and pip's nvidia/cublas/lib): %s", strings.Join(tried, "; "))
	return l
}

// openLib opens a library with dlopen, RTLD_GLOBAL when global (else
// RTLD_LOCAL), or returns dlerror's reason (cuda.go, nccl.go and cudnn.go
// load theirs through it).
func openLib(path string, global bool) (unsafe.Pointer, error) {
	cp := C.CString(path)
	defer C.free(unsafe.Pointer(cp))
	g := C.int(0)
	if global {
		g = 1
	}
	var msg [1024]C.char
	if h := C.tr_dlopen(cp, g, &msg[0], C.size_t(len(msg))); h != nil {
		return h, nil
	}
	return nil, errors.New(C.GoString(&msg[0]))
}

// symbolFile returns the file that defines the driver's functions (fn 0) or
// cuBLAS's (fn 1), or def when the dynamic linker does not say.
func symbolFile(fn int, def string) string {
	if p := C.tr_symbol_file(C.int(fn)); p != nil {
		return C.GoString(p)
	}
	return def
}

// loadedPath returns the file of the loaded object whose name starts with
// prefix, or def when the dynamic linker does not say.
func loadedPath(prefix, def string) string {
	cp := C.CString(prefix)
	defer C.free(unsafe.Pointer(cp))
	var out [4096]C.char
	C.tr_loaded_path(cp, &out[0], C.size_t(len(out)))
	if p := C.GoString(&out[0]); p != "" {
		return p
	}
	return def
}

// cuErr turns a driver status into an error naming the call, or nil.
func cuErr(call string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s (CUresult %d)", call, C.GoString(C.tr_cuGetErrorString(r)), int(r))
}

// blasErr turns a cuBLAS status into an error naming the call, or nil.
func blasErr(call string, s C.cublasStatus_t) error {
	if s == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s (cublasStatus %d)", call, C.GoString(C.tr_cublasStatusString(s)), int(s))
}

// device is the CUDA state of one Backend: the primary context of one GPU, one
// stream, the kernel module and a cuBLAS handle. Its methods must run on the
// Backend's locked OS thread (see thread.go).
type device struct {
	ord     int
	dev     C.CUdevice
	ctx     C.CUcontext
	stream  C.CUstream
	module  C.CUmodule
	blas    C.cublasHandle_t
	name    string
	cc      int // compute capability as major*10 + minor: 90 for an H100 or H200
	driver  int
	blasVer int
	dnn     *dnnState // cuDNN, opened on first use (cudnn.go)
	// copies is the second stream of CopyAsync, made on first use, and
	// events its free events (CopyAsync takes, WaitCopy gives back).
	copies  C.CUstream
	events  []C.CUevent
	tickets map[uint64]C.CUevent // CopyAsync's tickets not yet waited for
	ticket  uint64               // the last ticket given
	funcs   map[string]C.CUfunction
	smem    map[C.CUfunction]int // dynamic shared memory each function was allowed (launchSmem)
}

// deviceCount initialises the driver and returns how many GPUs it sees (after
// CUDA_VISIBLE_DEVICES). It needs no context, so any thread may call it.
func deviceCount() (int, error) {
	l := load()
	if l.err != nil {
		return 0, l.err
	}
	if err := cuErr("cuInit", C.tr_cuInit()); err != nil {
		return 0, err
	}
	var n C.int
	if err := cuErr("cuDeviceGetCount", C.tr_cuDeviceGetCount(&n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// openDevice initialises the driver, makes GPU ord's primary context current on
// this (locked) thread, and loads the fatbin.
func openDevice(ord int, fatbin []byte) (*device, error) {
	l := load()
	if l.err != nil {
		return nil, l.err
	}
	if err := cuErr("cuInit", C.tr_cuInit()); err != nil {
		return nil, err
	}
	var n C.int
	if err := cuErr("cuDeviceGetCount", C.tr_cuDeviceGetCount(&n)); err != nil {
		return nil, err
	}
	if int(n) == 0 {
		return nil, errors.New("the driver sees no GPU")
	}
	if ord < 0 || ord >= int(n) {
		return nil, fmt.Errorf("GPU %d asked for, the driver sees %d", ord, int(n))
	}
	d := &device{ord: ord, funcs: map[string]C.CUfunction{}, smem: map[C.CUfunction]int{}}
	if err := cuErr("cuDeviceGet", C.tr_cuDeviceGet(&d.dev, C.int(ord))); err != nil {
		return nil, err
	}
	var buf [256]C.char
	if err := cuErr("cuDeviceGetName", C.tr_cuDeviceGetName(&buf[0], C.int(len(buf)), d.dev)); err != nil {
		return nil, err
	}
	d.name = C.GoString(&buf[0])
	var major, minor C.int // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, _MINOR
	if err := cuErr("cuDeviceGetAttribute", C.tr_cuDeviceGetAttribute(&major, 75, d.dev)); err != nil {
		return nil, err
	}
	if err := cuErr("cuDeviceGetAttribute", C.tr_cuDeviceGetAttribute(&minor, 76, d.dev)); err != nil {
		return nil, err
	}
	d.cc = int(major)*10 + int(minor)
	var v C.int
	if err := cuErr("cuDriverGetVersion", C.tr_cuDriverGetVersion(&v)); err != nil {
		return nil, err
	}
	d.driver = int(v)
	if err := cuErr("cuDevicePrimaryCtxRetain", C.tr_cuDevicePrimaryCtxRetain(&d.ctx, d.dev)); err != nil {
		return nil, err
	}
	if err := d.init(fatbin); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *device) init(fatbin []byte) error {
	if err := cuErr("cuCtxSetCurrent", C.tr_cuCtxSetCurrent(d.ctx)); err != nil {
		return err
	}
	if err := cuErr("cuStreamCreate", C.tr_cuStreamCreate(&d.stream)); err != nil {
		return err
	}
	if len(fatbin) == 0 {
		return errors.New("no kernel image embedded (run scripts/build-kernels.sh on a machine with nvcc)")
	}
	img := C.CBytes(fatbin) // the driver reads the image; keep it off the Go heap
	defer C.free(img)
	if err := cuErr("cuModuleLoadData", C.tr_cuModuleLoadData(&d.module, img)); err != nil {
		return fmt.Errorf("loading the kernel image: %w", err)
	}
	if err := blasErr("cublasCreate", C.tr_cublasCreate(&d.blas)); err != nil {
		d.blas = nil
		return err
	}
	if err := blasErr("cublasSetStream", C.tr_cublasSetStream(d.blas, d.stream)); err != nil {
		return err
	}
	var bv C.int
	if err := blasErr("cublasGetVersion", C.tr_cublasGetVersion(d.blas, &bv)); err != nil {
		return err
	}
	d.blasVer = int(bv)
	return nil
}

// close releases what init made, in reverse order; it returns the first error.
func (d *device) close() error {
	errs := []error{d.closeCudnn(), d.closeCopies()}
	if d.blas != nil {
		errs = append(errs, blasErr("cublasDestroy", C.tr_cublasDestroy(d.blas)))
	}
	if d.module != nil {
		errs = append(errs, cuErr("cuModuleUnload", C.tr_cuModuleUnload(d.module)))
	}
	if d.stream != nil {
		errs = append(errs, cuErr("cuStreamDestroy", C.tr_cuStreamDestroy(d.stream)))
	}
	if d.ctx != nil {
		errs = append(errs, cuErr("cuDevicePrimaryCtxRelease", C.tr_cuDevicePrimaryCtxRelease(d.dev)))
	}
	return errors.Join(errs...)
}

// fn returns the kernel called name, looked up once.
func (d *device) fn(name string) (C.CUfunction, error) {
	if f, ok := d.funcs[name]; ok {
		return f, nil
	}
	cn := C.CString(name)
	defer C.free(unsafe.Pointer(cn))
	var f C.CUfunction
	if err := cuErr("cuModuleGetFunction "+name, C.tr_cuModuleGetFunction(&f, d.module, cn)); err != nil {
		return nil, err
	}
	d.funcs[name] = f
	return f, nil
}

// launch runs kernel name on the stream over grid x block threads; args are
// packed one per 8-byte slot (see arg).
func (d *device) launch(name string, grid, block [3]int, args []uint64) error {
	return d.launchSmem(name, grid, block, 0, args)
}

// launchSmem is launch with smem bytes of dynamic shared memory per block; the
// first launch of a function with more than it was allowed raises its limit
// (cuFuncSetAttribute).
func (d *device) launchSmem(name string, grid, block [3]int, smem int, args []uint64) error {
	f, err := d.fn(name)
	if err != nil {
		return err
	}
	if smem > d.smem[f] {
		if err := cuErr("cuFuncSetAttribute "+name, C.tr_func_smem(f, C.int(smem))); err != nil {
			return err
		}
		d.smem[f] = smem
	}
	if len(args) == 0 {
		args = []uint64{0}
	}
	return cuErr("cuLaunchKernel "+name, C.tr_launch(f, C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]),
		C.uint(block[0]), C.uint(block[1]), C.uint(block[2]), C.uint(smem), d.stream, (*C.uint64_t)(unsafe.Pointer(&args[0])), C.int(len(args))))
}

func (d *device) memInfo() (free, total int64, err error) {
	var f, t C.size_t
	err = cuErr("cuMemGetInfo", C.tr_cuMemGetInfo(&f, &t))
	return int64(f), int64(t), err
}

func (d *device) alloc(bytes int) (uint64, error) {
	var p C.CUdeviceptr
	if err := cuErr(fmt.Sprintf("cuMemAlloc(%d bytes)", bytes), C.tr_cuMemAlloc(&p, C.size_t(bytes))); err != nil {
		return 0, err
	}
	return uint64(p), nil
}

func (d *device) free(p uint64) error { return cuErr("cuMemFree", C.tr_cuMemFree(C.CUdeviceptr(p))) }

// allocHost returns page-locked host memory mapped for the device, by its
// device address (the same as its host address under unified addressing).
func (d *device) allocHost(bytes int) (uint64, error) {
	var p C.CUdeviceptr
	if err := cuErr(fmt.Sprintf("cuMemHostAlloc(%d bytes)", bytes), C.tr_cuMemHostAlloc(&p, C.size_t(bytes))); err != nil {
		return 0, err
	}
	return uint64(p), nil
}

func (d *device) freeHost(p uint64) error {
	if err := d.sync(); err != nil { // no copy may still read or write it
		return err
	}
	return cuErr("cuMemFreeHost", C.tr_cuMemFreeHost(C.CUdeviceptr(p)))
}

// event takes a free event, or makes one.
func (d *device) event() (C.CUevent, error) {
	if n := len(d.events); n > 0 {
		e := d.events[n-1]
		d.events = d.events[:n-1]
		return e, nil
	}
	var e C.CUevent
	return e, cuErr("cuEventCreate", C.tr_cuEventCreate(&e))
}

// copyAsync queues a copy of bytes from src to dst (device or mapped host
// memory) on the copy stream, after the work queued on the compute stream so
// far, and returns the event that marks its end.
func (d *device) copyAsync(dst, src uint64, bytes int) (uint64, error) {
	if d.copies == nil {
		if err := cuErr("cuStreamCreate", C.tr_cuStreamCreate(&d.copies)); err != nil {
			d.copies = nil
			return 0, err
		}
	}
	after, err := d.event()
	if err != nil {
		return 0, err
	}
	done, err := d.event()
	if err != nil {
		return 0, err
	}
	if err := cuErr("cuEventRecord", C.tr_cuEventRecord(after, d.stream)); err != nil {
		return 0, err
	}
	if err := cuErr("cuStreamWaitEvent", C.tr_cuStreamWaitEvent(d.copies, after)); err != nil {
		return 0, err
	}
	d.events = append(d.events, after) // the wait is queued: it may be recorded again
	if err := cuErr("cuMemcpyAsync", C.tr_cuMemcpyAsync(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes), d.copies)); err != nil {
		return 0, err
	}
	if err := cuErr("cuEventRecord", C.tr_cuEventRecord(done, d.copies)); err != nil {
		return 0, err
	}
	if d.tickets == nil {
		d.tickets = map[uint64]C.CUevent{}
	}
	d.ticket++
	d.tickets[d.ticket] = done
	return d.ticket, nil
}

// waitCopy makes the compute stream's later work wait for the copy of
// ticket t, and frees its event.
func (d *device) waitCopy(t uint64) error {
	e, ok := d.tickets[t]
	if !ok {
		return fmt.Errorf("WaitCopy: ticket %d was not given or was waited for already", t)
	}
	delete(d.tickets, t)
	err := cuErr("cuStreamWaitEvent", C.tr_cuStreamWaitEvent(d.stream, e))
	d.events = append(d.events, e)
	return err
}

// closeCopies ends the copy stream and its events.
func (d *device) closeCopies() error {
	if d.copies == nil {
		return nil
	}
	errs := []error{cuErr("cuStreamSynchronize", C.tr_cuStreamSynchronize(d.copies))}
	for _, e := range d.tickets {
		d.events = append(d.events, e)
	}
	for _, e := range d.events {
		errs = append(errs, cuErr("cuEventDestroy", C.tr_cuEventDestroy(e)))
	}
	errs = append(errs, cuErr("cuStreamDestroy", C.tr_cuStreamDestroy(d.copies)))
	d.copies, d.events, d.tickets = nil, nil, nil
	return errors.Join(errs...)
}

// copyAny is copy between any two of device and mapped host memory, on the
// stream: the driver tells the directions apart by the addresses.
func (d *device) copyAny(dst, src uint64, bytes int) error {
	return cuErr("cuMemcpyAsync", C.tr_cuMemcpyAsync(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes), d.stream))
}

// sync waits for the compute stream and the copy stream.
func (d *device) sync() error {
	if d.copies != nil {
		if err := cuErr("cuStreamSynchronize", C.tr_cuStreamSynchronize(d.copies)); err != nil {
			return err
		}
	}
	return cuErr("cuStreamSynchronize", C.tr_cuStreamSynchronize(d.stream))
}

// upload copies host bytes to the device and waits, so src may be reused.
// The bytes go to C as &src[0] of a []byte, so that cgo's pointer check looks
// at the slice's elements (bytes: no pointers) and not at the whole heap
// object they lie in, which may hold pointers (an array field of a struct).
func (d *device) upload(dst uint64, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	if err := cuErr("cuMemcpyHtoDAsync", C.tr_cuMemcpyHtoDAsync(C.CUdeviceptr(dst), unsafe.Pointer(&src[0]), C.size_t(len(src)), d.stream)); err != nil {
		return err
	}
	return d.sync()
}

// download waits for the stream and copies device bytes to the host (dst as
// upload's src).
func (d *device) download(dst []byte, src uint64) error {
	if len(dst) == 0 {
		return d.sync()
	}
	if err := cuErr("cuMemcpyDtoHAsync", C.tr_cuMemcpyDtoHAsync(unsafe.Pointer(&dst[0]), C.CUdeviceptr(src), C.size_t(len(dst)), d.stream)); err != nil {
		return err
	}
	return d.sync()
}

func (d *device) copy(dst, src uint64, bytes int) error {
	return cuErr("cuMemcpyDtoDAsync", C.tr_cuMemcpyDtoDAsync(C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes), d.stream))
}

func (d *device) memset32(dst uint64, v uint32, n int) error {
	return cuErr("cuMemsetD32Async", C.tr_cuMemsetD32Async(C.CUdeviceptr(dst), C.uint(v), C.size_t(n), d.stream))
}

func (d *device) memset16(dst uint64, v uint16, n int) error {
	return cuErr("cuMemsetD16Async", C.tr_cuMemsetD16Async(C.CUdeviceptr(dst), C.ushort(v), C.size_t(n), d.stream))
}

func (d *device) memset8(dst uint64, v uint8, n int) error {
	return cuErr("cuMemsetD8Async", C.tr_cuMemsetD8Async(C.CUdeviceptr(dst), C.uchar(v), C.size_t(n), d.stream))
}

// sgemm is column-major cublasSgemm: C[m,n] = alpha op(A) op(B) + beta C.
func (d *device) sgemm(transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, b uint64, ldb int, beta float32, c uint64, ldc int) error {
	ta, tb := C.int(0), C.int(0) // CUBLAS_OP_N
	if transA {
		ta = 1 // CUBLAS_OP_T
	}
	if transB {
		tb = 1
	}
	return blasErr("cublasSgemm", C.tr_cublasSgemm(d.blas, ta, tb, C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.CUdeviceptr(a), C.int(lda), C.CUdeviceptr(b), C.int(ldb), C.float(beta), C.CUdeviceptr(c), C.int(ldc)))
}

// gemmEx is column-major cublasGemmEx computing in float32: C[m,n] = alpha
// op(A) op(B) + beta C, A and B of type ab (BF16 or F16), C of type ct (F32 or
// ab).
func (d *device) gemmEx(transA, transB bool, m, n, k int, alpha float32, a uint64, lda int, b uint64, ldb int,
	ab ops.DType, beta float32, c uint64, ct ops.DType, ldc int) error {
	ta, tb := C.int(0), C.int(0) // CUBLAS_OP_N
	if transA {
		ta = 1 // CUBLAS_OP_T
	}
	if transB {
		tb = 1
	}
	at, err := cudaDataType(ab)
	if err != nil {
		return err
	}
	cty, err := cudaDataType(ct)
	if err != nil {
		return err
	}
	return blasErr("cublasGemmEx", C.tr_cublasGemmEx(d.blas, ta, tb, C.int(m), C.int(n), C.int(k), C.float(alpha),
		C.CUdeviceptr(a), at, C.int(lda), C.CUdeviceptr(b), at, C.int(ldb), C.float(beta), C.CUdeviceptr(c), cty, C.int(ldc)))
}

// gemmBatched is column-major strided-batched GEMM: for i < batch, C_i =
// alpha op(A_i) op(B_i) + beta C_i, where X_i starts strideX elements after
// X_(i-1). F32 A and B (C F32) go through cublasSgemmStridedBatched (default
// math mode: no TF32); BF16 and F16 ones through cublasGemmStridedBatchedEx
// computing in float32, C F32 or their type.
func (d *device) gemmBatched(transA, transB bool, m, n, k int, alpha float32, a uint64, lda, sa int, b uint64, ldb, sb int,
	ab ops.DType, beta float32, c uint64, ldc, sc int, ct ops.DType, batch int) error {
	ta, tb := C.int(0), C.int(0) // CUBLAS_OP_N
	if transA {
		ta = 1 // CUBLAS_OP_T
	}
	if transB {
		tb = 1
	}
	if ab == ops.F32 {
		if ct != ops.F32 {
			return fmt.Errorf("cublasSgemmStridedBatched: f32 inputs into a %v out", ct)
		}
		return blasErr("cublasSgemmStridedBatched", C.tr_cublasSgemmStridedBatched(d.blas, ta, tb, C.int(m), C.int(n),
			C.int(k), C.float(alpha), C.CUdeviceptr(a), C.int(lda), C.longlong(sa), C.CUdeviceptr(b), C.int(ldb),
			C.longlong(sb), C.float(beta), C.CUdeviceptr(c), C.int(ldc), C.longlong(sc), C.int(batch)))
	}
	at, err := cudaDataType(ab)
	if err != nil {
		return err
	}
	cty, err := cudaDataType(ct)
	if err != nil {
		return err
	}
	return blasErr("cublasGemmStridedBatchedEx", C.tr_cublasGemmStridedBatchedEx(d.blas, ta, tb, C.int(m), C.int(n),
		C.int(k), C.float(alpha), C.CUdeviceptr(a), at, C.int(lda), C.longlong(sa), C.CUdeviceptr(b), at, C.int(ldb),
		C.longlong(sb), C.float(beta), C.CUdeviceptr(c), cty, C.int(ldc), C.longlong(sc), C.int(batch)))
}

// cudaDataType is library_types.h's cudaDataType of dt.
func cudaDataType(dt ops.DType) (C.int, error) {
	switch dt {
	case ops.F32:
		return 0, nil // CUDA_R_32F
	case ops.BF16:
		return 14, nil // CUDA_R_16BF
	case ops.F16:
		return 2, nil // CUDA_R_16F
	}
	return 0, fmt.Errorf("cublasGemmEx: no %v matrices", dt)
}

// libPaths reports which library files loaded.
func libPaths() (cuda, cublas, cublasLt string) {
	l := load()
	return l.cuda, l.cublas, l.cublasLt
}
