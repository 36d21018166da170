// Shared helpers of the kernels: the device error word and warp/block
// reductions. Every kernel is extern "C" so Go finds it by name.
#pragma once

// +infinity without <math.h>.
#define TR_INF __int_as_float(0x7f800000)

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

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// block_sum returns the sum of v over the block to every thread; blockDim.x is
// a multiple of 32, sh holds 32 floats. The tree is fixed: deterministic.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous reduction
  if (lane == 0) sh[w] = v;
  __syncthreads();
  return warp_sum(lane < nw ? sh[lane] : 0.f);
}

__device__ __forceinline__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  return warp_max(lane < nw ? sh[lane] : (-TR_INF));
}
