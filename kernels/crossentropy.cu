#include "common.cuh"

#define IGNORE_INDEX (-100)

// row_lse: log-sum-exp of row[V] over the block (every thread gets it).
__device__ float row_lse(const float* row, int V, float* sh) {
  float m = (-TR_INF);
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_max(m, sh);
  float s = 0.f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(row[j] - m);
  s = block_sum(s, sh);
  return m + logf(s);
}

// Cross-entropy forward over logits[N,V], one block per row:
// losses[n] = logsumexp(row) - row[targets[n]], 0 where the target is -100.
extern "C" __global__ void crossentropy_forward(float* losses, const float* logits, const int* targets, int N, int V,
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
  const float* row = logits + (long long)n * V;
  float lse = row_lse(row, V, sh);
  if (threadIdx.x == 0) losses[n] = lse - row[y];
}

// Cross-entropy backward, one block per row: dlogits = scale*(softmax - onehot),
// zero on ignored rows. dlogits may be logits: each thread overwrites only the
// elements it read, after the row's log-sum-exp is complete.
extern "C" __global__ void crossentropy_backward(float* dlogits, const float* logits, const int* targets, int N,
                                                 int V, float scale, int* err) {
  __shared__ float sh[32];
  int n = blockIdx.x;
  int y = targets[n];
  float* drow = dlogits + (long long)n * V;
  if (y == IGNORE_INDEX) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) drow[j] = 0.f;
    return;
  }
  if (y < 0 || y >= V) {
    if (threadIdx.x == 0) tr_fail(err, TR_ERR_CE_BWD, n, y, V);
    return;
  }
  const float* row = logits + (long long)n * V;
  float lse = row_lse(row, V, sh);
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float p = expf(row[j] - lse);
    if (j == y) p -= 1.f;
    drow[j] = scale * p;
  }
}
