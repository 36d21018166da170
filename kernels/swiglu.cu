#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }

// SwiGLU forward over n elements: out = silu(gate) * up, silu(g) = g*sigmoid(g).
// Saves nothing new (backward reads gate and up).
template <typename T>
__device__ __forceinline__ void swiglu_forward_t(T* out, const T* gate, const T* up, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = tof(gate[i]);
  out[i] = fromf<T>((g / (1.f + expf(-g))) * tof(up[i]));
}
TR_KERNEL_FLOATS(swiglu_forward, (T * out, const T* gate, const T* up, long long n), (out, gate, up, n))

// SwiGLU backward: dgate += dout*up*s*(1 + g*(1-s)), dup += dout*silu(g),
// s = sigmoid(g).
template <typename T>
__device__ __forceinline__ void swiglu_backward_t(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                                  long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = tof(gate[i]), d = tof(dout[i]);
  float s = sigmoidf_(g);
  dgate[i] = fromf<T>(tof(dgate[i]) + d * tof(up[i]) * s * (1.f + g * (1.f - s)));
  dup[i] = fromf<T>(tof(dup[i]) + d * (g / (1.f + expf(-g))));
}
TR_KERNEL_FLOATS(swiglu_backward, (T * dgate, T* dup, const T* dout, const T* gate, const T* up, long long n),
                   (dgate, dup, dout, gate, up, n))
