#include "common.cuh"

// RMSNorm forward over rows of x[N,C]: rstd[n] = 1/sqrt(mean(x^2)+eps) (float),
// out = w * (x*rstd) (the normalisation rounded to float before the weight
// multiplies, as the CPU twin does; out rounded once to T). One block per row.
// Saves rstd[N].
template <typename T>
__device__ __forceinline__ void rmsnorm_forward_t(T* out, float* rstd, const T* x, const T* w, int N, int C,
                                                  float eps) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  const T* xr = x + (long long)n * C;
  T* orow = out + (long long)n * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float v = tof(xr[i]);
    ss += v * v;
  }
  ss = block_sum(ss, sh);
  float r = 1.0f / sqrtf(ss / (float)C + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int i = threadIdx.x; i < C; i += blockDim.x) orow[i] = fromf<T>(tof(w[i]) * __fmul_rn(tof(xr[i]), r));
}
TR_KERNEL_FLOATS(rmsnorm_forward, (T * out, float* rstd, const T* x, const T* w, int N, int C, float eps),
                   (out, rstd, x, w, N, C, eps))

// RMSNorm backward, input gradient, one block per row. With g = dout*w:
// dx += rstd * (g - x * rstd^2 * mean(g*x)).
template <typename T>
__device__ __forceinline__ void rmsnorm_backward_dx_t(T* dx, const T* dout, const T* x, const T* w, const float* rstd,
                                                      int N, int C) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  long long base = (long long)n * C;
  float dot = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) dot += tof(dout[base + i]) * tof(w[i]) * tof(x[base + i]);
  dot = block_sum(dot, sh);
  float r = rstd[n];
  float k = dot * r * r / (float)C;
  for (int i = threadIdx.x; i < C; i += blockDim.x)
    dx[base + i] = fromf<T>(tof(dx[base + i]) + r * (tof(dout[base + i]) * tof(w[i]) - tof(x[base + i]) * k));
}
TR_KERNEL_FLOATS(rmsnorm_backward_dx, (T * dx, const T* dout, const T* x, const T* w, const float* rstd, int N, int C),
                   (dx, dout, x, w, rstd, N, C))

// RMSNorm backward, weight gradient (float): dw[c] += sum_n dout[n,c] *
// (x[n,c]*rstd[n]). One thread per column, rows in order (deterministic, no
// atomics).
template <typename T>
__device__ __forceinline__ void rmsnorm_backward_dw_t(float* dw, const T* dout, const T* x, const float* rstd, int N,
                                                      int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = dw[c];
  for (int n = 0; n < N; n++) {
    long long i = (long long)n * C + c;
    acc += tof(dout[i]) * __fmul_rn(tof(x[i]), rstd[n]);
  }
  dw[c] = acc;
}
TR_KERNEL_FLOATS(rmsnorm_backward_dw, (float* dw, const T* dout, const T* x, const float* rstd, int N, int C),
                   (dw, dout, x, rstd, N, C))
