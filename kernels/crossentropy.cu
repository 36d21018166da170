#include "common.cuh"

#define IGNORE_INDEX (-100)

// row_lse: log-sum-exp of row[V] over the block (every thread gets it).
template <typename T>
__device__ __forceinline__ float row_lse(const T* row, int V, float* sh) {
  float m = (-TR_INF);
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, tof(row[j]));
  m = block_max(m, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(tof(row[j]) - m);
  s = block_sum(s, sh);
  return m + logf(s);
}

// Cross-entropy forward over logits[N,V], one block per row, losses float:
// losses[n] = logsumexp(row) - row[targets[n]], 0 where the target is -100.
template <typename T>
__device__ __forceinline__ void crossentropy_forward_t(float* losses, const T* logits, const int* targets, int N, int V,
                                                       int* err) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  int y = targets[n];
  if (y == IGNORE_INDEX) {
    if (threadIdx.x == 0) losses[n] = 0.f;
    return;
  }
  if (y < 0 || y >= V) {
    if (threadIdx.x == 0) tr_fail(err, TR_ERR_CE_FWD, n, y, V);
    return;
  }
  const T* row = logits + (long long)n * V;
  float lse = row_lse(row, V, sh);
  if (threadIdx.x == 0) losses[n] = lse - tof(row[y]);
}
TR_KERNEL_FLOATS(crossentropy_forward, (float* losses, const T* logits, const int* targets, int N, int V, int* err),
                   (losses, logits, targets, N, V, err))

// Cross-entropy backward, one block per row: dlogits = scale*(softmax - onehot),
// zero on ignored rows. dlogits may be logits: each thread overwrites only the
// elements it read, after the row's log-sum-exp is complete.
template <typename T>
__device__ __forceinline__ void crossentropy_backward_t(T* dlogits, const T* logits, const int* targets, int N, int V,
                                                        float scale, int* err) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  int y = targets[n];
  T* drow = dlogits + (long long)n * V;
  if (y == IGNORE_INDEX) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) drow[j] = fromf<T>(0.f);
    return;
  }
  if (y < 0 || y >= V) {
    if (threadIdx.x == 0) tr_fail(err, TR_ERR_CE_BWD, n, y, V);
    return;
  }
  const T* row = logits + (long long)n * V;
  float lse = row_lse(row, V, sh);
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float p = expf(tof(row[j]) - lse);
    if (j == y) p -= 1.f;
    drow[j] = fromf<T>(scale * p);
  }
}
TR_KERNEL_FLOATS(crossentropy_backward,
                   (T * dlogits, const T* logits, const int* targets, int N, int V, float scale, int* err),
                   (dlogits, logits, targets, N, V, scale, err))
