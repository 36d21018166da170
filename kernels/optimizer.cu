#include "common.cuh"

// Sum of squares, the global norm's share of one tensor, in two passes with a
// fixed order (no atomics): sumsq_partial_T writes one double per block (a
// grid-stride loop, then the block's fixed tree), sumsq_final sums those in one
// block and adds the result, rounded to float, to out[0]. The host fixes the
// grid by n, so the same n always sums in the same order.
template <typename T>
__device__ __forceinline__ void sumsq_partial_t(double* partial, const T* x, long long n) {
  __shared__ double sh[32];
  double s = 0.0;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    double v = (double)tof(x[i]);
    s += v * v;
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
TR_KERNEL_FLOATS(sumsq_partial, (double* partial, const T* x, long long n), (partial, x, n))

extern "C" __global__ void sumsq_final(float* out, const double* partial, int blocks) {
  __shared__ double sh[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) s += partial[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = out[0] + (float)s;
}

// AdamW over n elements, ops.CPU's AdamW operation for operation (ops.AdamWStep
// says what the constants are): the moments in float, rounded at every step
// (no FMA), the denominator and the step term in double. value, grad, m, v are
// float; work, when not null, receives the new value rounded to T.
template <typename T>
__device__ __forceinline__ void adamw_t(float* value, const float* grad, float* m, float* v, T* work, long long n,
                                        float b1, float b2, float decay, float gradScale, double stepSize,
                                        double sqrtBC2, double eps) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = __fmul_rn(grad[i], gradScale);
  float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.f - b1, g));
  float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1.f - b2, g), g));
  m[i] = mi;
  v[i] = vi;
  double denom = __dadd_rn(__ddiv_rn(__dsqrt_rn((double)vi), sqrtBC2), eps);
  float upd = __double2float_rn(__ddiv_rn(__dmul_rn(stepSize, (double)mi), denom));
  float p = __fsub_rn(__fmul_rn(value[i], decay), upd);
  value[i] = p;
  if (work != nullptr) work[i] = fromf<T>(p);
}
TR_KERNEL_FLOATS(adamw,
                   (float* value, const float* grad, float* m, float* v, T* work, long long n, float b1, float b2,
                    float decay, float gradScale, double stepSize, double sqrtBC2, double eps),
                   (value, grad, m, v, work, n, b1, b2, decay, gradScale, stepSize, sqrtBC2, eps))
