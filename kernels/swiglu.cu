#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.f / (1.f + expf(-g)); }

// SwiGLU forward over n elements: out = silu(gate) * up, silu(g) = g*sigmoid(g).
// Saves nothing new (backward reads gate and up).
extern "C" __global__ void swiglu_forward(float* out, const float* gate, const float* up, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = gate[i];
  out[i] = (g / (1.f + expf(-g))) * up[i];
}

// SwiGLU backward: dgate += dout*up*s*(1 + g*(1-s)), dup += dout*silu(g),
// s = sigmoid(g).
extern "C" __global__ void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                           const float* up, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = gate[i], d = dout[i];
  float s = sigmoidf_(g);
  dgate[i] += d * up[i] * s * (1.f + g * (1.f - s));
  dup[i] += d * (g / (1.f + expf(-g)));
}
