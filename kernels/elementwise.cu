#include "common.cuh"

// out = a + b over n elements; out may be a or b.
template <typename T>
__device__ __forceinline__ void add_t(T* out, const T* a, const T* b, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = fromf<T>(tof(a[i]) + tof(b[i]));
}
TR_KERNEL_FLOATS(add, (T * out, const T* a, const T* b, long long n), (out, a, b, n))

// x *= s over n elements.
template <typename T>
__device__ __forceinline__ void scale_t(T* x, float s, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = fromf<T>(tof(x[i]) * s);
}
TR_KERNEL_FLOATS(scale, (T * x, float s, long long n), (x, s, n))

// Dropout: out[i] = x[i]*scale where keep(seed, i), else 0; out may be x. keep
// is ops.DropoutKeep exactly: splitmix64 of seed + (i+1)*golden, the top 24
// bits as u in [0,1), kept when u >= p. scale = float32(1/(1-p)) from the host.
template <typename T>
__device__ __forceinline__ void dropout_t(T* out, const T* x, long long n, double p, float scale,
                                          unsigned long long seed) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned long long z = seed + ((unsigned long long)i + 1ULL) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  double u = (double)(z >> 40) / 16777216.0;
  out[i] = fromf<T>(u >= p ? tof(x[i]) * scale : 0.f);
}
TR_KERNEL_FLOATS(dropout, (T * out, const T* x, long long n, double p, float scale, unsigned long long seed),
                   (out, x, n, p, scale, seed))

// Cast between float and bf16 or f16 over n elements (to nearest even); Go
// copies when the types are the same.
extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* x, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* x, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(x[i]);
}

extern "C" __global__ void cast_f32_to_f16(f16* out, const float* x, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half_rn(x[i]);
}

extern "C" __global__ void cast_f16_to_f32(float* out, const f16* x, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half2float(x[i]);
}
