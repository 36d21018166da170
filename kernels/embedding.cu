#include "common.cuh"

// Embedding forward: out[N,C] = table[V,C] rows picked by ids[N] (out and table
// of one type: a copy, no rounding). One thread per output element. Saves
// nothing.
template <typename T>
__device__ __forceinline__ void embedding_forward_t(T* out, const int* ids, const T* table, int N, int C, int V,
                                                    int* err) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (long long)N * C) return;
  int n = (int)(i / C), c = (int)(i % C);
  int id = ids[n];
  if (id < 0 || id >= V) {
    if (c == 0) tr_fail(err, TR_ERR_EMBED_FWD, n, id, V);
    return;
  }
  out[i] = table[(long long)id * C + c];
}
TR_KERNEL_FLOATS(embedding_forward, (T * out, const int* ids, const T* table, int N, int C, int V, int* err),
                   (out, ids, table, N, C, V, err))

// Embedding backward: dtable[ids[n], c] += dout[n, c], dtable float (a
// parameter gradient). One thread per column c walks the rows in order: no
// atomics, the CPU's summation order when a token repeats.
template <typename T>
__device__ __forceinline__ void embedding_backward_t(float* dtable, const T* dout, const int* ids, int N, int C, int V,
                                                     int* err) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int n = 0; n < N; n++) {
    int id = ids[n];
    if (id < 0 || id >= V) {
      if (c == 0) tr_fail(err, TR_ERR_EMBED_BWD, n, id, V);
      continue;
    }
    dtable[(long long)id * C + c] += tof(dout[(long long)n * C + c]);
  }
}
TR_KERNEL_FLOATS(embedding_backward, (float* dtable, const T* dout, const int* ids, int N, int C, int V, int* err),
                   (dtable, dout, ids, N, C, V, err))
