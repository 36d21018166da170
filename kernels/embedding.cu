#include "common.cuh"

// Embedding forward: out[N,C] = table[V,C] rows picked by ids[N]. One thread per
// output element. Saves nothing.
extern "C" __global__ void embedding_forward(float* out, const int* ids, const float* table, int N, int C, int V,
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

// Embedding backward: dtable[ids[n], c] += dout[n, c]. One thread per column c
// walks the rows in order: no atomics, the CPU's summation order when a token
// repeats.
extern "C" __global__ void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int C, int V,
                                              int* err) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int n = 0; n < N; n++) {
    int id = ids[n];
    if (id < 0 || id >= V) {
      if (c == 0) tr_fail(err, TR_ERR_EMBED_BWD, n, id, V);
      continue;
    }
    dtable[(long long)id * C + c] += dout[(long long)n * C + c];
  }
}
