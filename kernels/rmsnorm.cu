#include "common.cuh"

// RMSNorm forward over rows of x[N,C]: rstd[n] = 1/sqrt(mean(x^2)+eps),
// out = w * (x*rstd) (the normalisation rounded before the weight multiplies,
// as transformers does). One block per row. Saves rstd[N].
extern "C" __global__ void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                                           float eps) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  const float* xr = x + (long long)n * C;
  float* orow = out + (long long)n * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  float r = 1.0f / sqrtf(ss / (float)C + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int i = threadIdx.x; i < C; i += blockDim.x) orow[i] = w[i] * __fmul_rn(xr[i], r);
}

// RMSNorm backward, input gradient, one block per row. With g = dout*w:
// dx += rstd * (g - x * rstd^2 * mean(g*x)).
extern "C" __global__ void rmsnorm_backward_dx(float* dx, const float* dout, const float* x, const float* w,
                                               const float* rstd, int N, int C) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  long long base = (long long)n * C;
  float dot = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) dot += dout[base + i] * w[i] * x[base + i];
  dot = block_sum(dot, sh);
  float r = rstd[n];
  float k = dot * r * r / (float)C;
  for (int i = threadIdx.x; i < C; i += blockDim.x) dx[base + i] += r * (dout[base + i] * w[i] - x[base + i] * k);
}

// RMSNorm backward, weight gradient: dw[c] += sum_n dout[n,c] * (x[n,c]*rstd[n]).
// One thread per column, rows in order (deterministic, no atomics).
extern "C" __global__ void rmsnorm_backward_dw(float* dw, const float* dout, const float* x, const float* rstd, int N,
                                               int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = dw[c];
  for (int n = 0; n < N; n++) {
    long long i = (long long)n * C + c;
    acc += dout[i] * __fmul_rn(x[i], rstd[n]);
  }
  dw[c] = acc;
}
