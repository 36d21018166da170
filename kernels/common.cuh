// Shared helpers of the kernels: the float types, the device error word and
// warp/block reductions.
//
// Float types: every op is a template over its data type T, float,
// __nv_bfloat16 (bf16) or __half (f16). A kernel loads T to float (tof),
// computes in float and rounds once when it stores (fromf<T>, to nearest
// even). Statistics (rstd, lse, losses), rope tables, parameter gradients and
// optimizer state are float whatever T is. TR_KERNEL_FLOATS instantiates a
// template as three extern "C" kernels, name_f32, name_bf16 and name_f16, so
// Go finds them by name.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;

// +infinity without <math.h>.
#define TR_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float tof(f16 x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T fromf(float x);
template <>
__device__ __forceinline__ float fromf<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 fromf<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ f16 fromf<f16>(float x) {
  return __float2half_rn(x);
}

// TR_KERNEL_FLOATS(name, params, args) defines the kernels name_f32,
// name_bf16 and name_f16 calling the device template name##_t<T>(args); params
// may use T, which each instantiation's namespace defines.
#define TR_KERNEL_FLOATS(name, params, args)                           \
  namespace tr_##name##_f32 {                                          \
  typedef float T;                                                     \
  extern "C" __global__ void name##_f32 params { name##_t<T> args; }   \
  }                                                                    \
  namespace tr_##name##_bf16 {                                         \
  typedef bf16 T;                                                      \
  extern "C" __global__ void name##_bf16 params { name##_t<T> args; }  \
  }                                                                    \
  namespace tr_##name##_f16 {                                          \
  typedef f16 T;                                                       \
  extern "C" __global__ void name##_f16 params { name##_t<T> args; }   \
  }

// Error codes written to the error word int32[4] {code, row, value, limit};
// backend.go's kernelOps says what each means. The first error wins.
#define TR_ERR_EMBED_FWD 1
#define TR_ERR_EMBED_BWD 2
#define TR_ERR_ROPE_POS 3
#define TR_ERR_CE_FWD 4
#define TR_ERR_CE_BWD 5

__device__ __forceinline__ void tr_fail(int* err, int code, int row, int value, int limit) {
  if (atomicCAS(err, 0, code) == 0) {
    err[1] = row;
    err[2] = value;
    err[3] = limit;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum returns the sum of v over the block to every thread; blockDim.x is
// a multiple of 32, sh holds 32 values. The tree is fixed: deterministic.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous reduction
  if (lane == 0) sh[w] = v;
  __syncthreads();
  return warp_sum(lane < nw ? sh[lane] : F(0));
}

__device__ __forceinline__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  return warp_max(lane < nw ? sh[lane] : (-TR_INF));
}
