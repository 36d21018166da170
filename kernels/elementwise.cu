#include "common.cuh"

// out = a + b over n elements; out may be a or b.
extern "C" __global__ void add(float* out, const float* a, const float* b, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

// x *= s over n elements.
extern "C" __global__ void scale(float* x, float s, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

// Dropout: out[i] = x[i]*scale where keep(seed, i), else 0; out may be x. keep
// is ops.DropoutKeep exactly: splitmix64 of seed + (i+1)*golden, the top 24
// bits as u in [0,1), kept when u >= p. scale = float32(1/(1-p)) from the host.
extern "C" __global__ void dropout(float* out, const float* x, long long n, double p, float scale,
                                   unsigned long long seed) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  unsigned long long z = seed + ((unsigned long long)i + 1ULL) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  double u = (double)(z >> 40) / 16777216.0;
  out[i] = u >= p ? x[i] * scale : 0.f;
}
