#include "common.cuh"

// RoPE with rotate_half pairing on x[N, H*D], float tables cos/sin[P, D/2]
// indexed by pos[N]; one thread per (n, h, i < D/2), reading x[i] and x[i+D/2]
// before writing both, so out may be x. Forward:
//   out[i] = x[i]*cos - x[i+D/2]*sin,  out[i+D/2] = x[i+D/2]*cos + x[i]*sin
// inverse (the backward, on dout): the rotation by -angle. Products rounded
// separately (no FMA), as the CPU twin does.
template <typename T>
__device__ __forceinline__ void rope_t(T* out, const T* x, const float* cosT, const float* sinT, const int* pos, int N,
                                       int H, int D, int P, int inverse, int* err) {
  int half = D / 2;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)N * H * half) return;
  int j = (int)(i % half);
  long long nh = i / half;  // n*H + h
  int n = (int)(nh / H);
  int p = pos[n];
  if (p < 0 || p >= P) {
    if (j == 0 && nh % H == 0) tr_fail(err, TR_ERR_ROPE_POS, n, p, P);
    return;
  }
  float cs = cosT[(long long)p * half + j], sn = sinT[(long long)p * half + j];
  long long b = nh * D;
  float x1 = tof(x[b + j]), x2 = tof(x[b + j + half]);
  if (inverse) {
    out[b + j] = fromf<T>(__fmul_rn(x1, cs) + __fmul_rn(x2, sn));
    out[b + j + half] = fromf<T>(__fmul_rn(x2, cs) - __fmul_rn(x1, sn));
  } else {
    out[b + j] = fromf<T>(__fmul_rn(x1, cs) - __fmul_rn(x2, sn));
    out[b + j + half] = fromf<T>(__fmul_rn(x2, cs) + __fmul_rn(x1, sn));
  }
}
TR_KERNEL_FLOATS(rope,
                   (T * out, const T* x, const float* cosT, const float* sinT, const int* pos, int N, int H, int D,
                    int P, int inverse, int* err),
                   (out, x, cosT, sinT, pos, N, H, D, P, inverse, err))
