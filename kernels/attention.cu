#include "common.cuh"

// Causal grouped-query attention. Layouts, token-major as the projections
// produce them: q, out [B*Tq, H*D]; k, v [B*S, KVH*D]; lse [B, H, Tq] (float);
// seg [B*S] or null. Query head h reads key/value head h/(H/KVH).
//
// Training (AttentionForward/Backward, kernels/attention.go) runs its FLOPs in
// cuBLAS: per chunk of query rows and group index g, S = Q·Kᵀ (float) for the
// KVH heads h = kvh*rep+g, then the row kernels below turn the scores into
// probabilities P (and, backward, dS) for the next GEMMs. Decoding
// (AttentionDecode) keeps the plain warp-per-row kernel, attention_forward.

// Plain forward, one warp per query row; each lane holds D/32 elements of a head
// in registers (D <= 32*MAXJ), as float whatever the data type E. Written for
// training (Tq = Tk = S = T, seg optional, lse saved), used for decoding over a
// cache (query i of row b at position Tk-Tq+i, keys at rows b*S+s, lse null).
// Online softmax over the visible keys s <= t:
//   out_t = sum_s p_s v_s,  lse_t = log sum_s exp(q_t·k_s/sqrt(D)).
#define MAXJ 8

template <typename E>
__device__ __forceinline__ void attention_forward_t(E* out, float* lse, const E* q, const E* k, const E* v,
                                                    const int* seg, int B, int Tq, int Tk, int S, int H, int KVH,
                                                    int D) {
  long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (warp >= (long long)B * H * Tq) return;
  int i = (int)(warp % Tq);
  long long bh = warp / Tq;
  int h = (int)(bh % H), b = (int)(bh / H);
  int kh = h / (H / KVH), t = Tk - Tq + i;
  long long QW = (long long)H * D, KW = (long long)KVH * D, row = (long long)b * S;
  const E* qt = q + ((long long)b * Tq + i) * QW + (long long)h * D;
  float qr[MAXJ], acc[MAXJ];
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    qr[j] = d < D ? tof(qt[d]) : 0.f;
    acc[j] = 0.f;
  }
  float scale = 1.0f / sqrtf((float)D);
  float m = (-TR_INF), sum = 0.f;
  int st = seg ? seg[row + t] : 0;
  for (int s = 0; s <= t; s++) {
    if (seg && seg[row + s] != st) continue;  // uniform across the warp
    const E* ks = k + (row + s) * KW + (long long)kh * D;
    const E* vs = v + (row + s) * KW + (long long)kh * D;
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      int d = lane + 32 * j;
      if (d < D) dot += qr[j] * tof(ks[d]);
    }
    dot = warp_sum(dot) * scale;
    float mn = fmaxf(m, dot);
    float corr = expf(m - mn), e = expf(dot - mn);
    sum = sum * corr + e;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      int d = lane + 32 * j;
      if (d < D) acc[j] = acc[j] * corr + e * tof(vs[d]);
    }
    m = mn;
  }
  E* ot = out + ((long long)b * Tq + i) * QW + (long long)h * D;
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    if (d < D) ot[d] = fromf<E>(acc[j] / sum);
  }
  if (lse != nullptr && lane == 0) lse[bh * Tq + i] = m + logf(sum);
}
TR_KERNEL_FLOATS(attention_forward,
                   (T * out, float* lse, const T* q, const T* k, const T* v, const int* seg, int B, int Tq, int Tk,
                    int S, int H, int KVH, int D),
                   (out, lse, q, k, v, seg, B, Tq, Tk, S, H, KVH, D))

// The row kernels of the GEMM path. The score matrices of one chunk: query rows
// [t0, t0+Tc) of batch row b against keys [0, Nk), Nk = t0+Tc (the causal mask
// hides later keys); one [Tc, Nk] float matrix per key/value head kvh at
// S + kvh*Tc*ld, row i at +i*ld (ld >= Nk), for query head h = kvh*rep + g. One
// block per (row i, kvh): blockIdx.x = i, blockIdx.y = kvh. Key s is visible
// from token t = t0+i when s <= t and, with seg, seg[s] == seg[t] within the
// row; key t always is, so no row is empty. Each thread walks its keys in a
// fixed order and block_max/block_sum use a fixed tree: deterministic.

// Forward: S holds q_t·k_s. With x_s = S_s*scale over the visible keys,
//   lse_t = log sum_s exp(x_s),  P_s = exp(x_s - lse_t), 0 where hidden;
// P is written for every s < Nk (the P·V GEMM reads them all).
template <typename E>
__device__ __forceinline__ void attention_softmax_t(E* P, float* lse, const float* S, const int* seg, int b, int T,
                                                    int H, int rep, int g, int t0, int Tc, int Nk, int ld,
                                                    float scale) {
  __shared__ float sh[32];
  int i = blockIdx.x, kvh = blockIdx.y, t = t0 + i;
  long long r = ((long long)kvh * Tc + i) * ld;
  const float* srow = S + r;
  const int* sg = seg ? seg + (long long)b * T : nullptr;
  int st = sg ? sg[t] : 0;
  // Online max and sum per thread, then combined over the block.
  float m = (-TR_INF), sum = 0.f;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) {
    if (sg && sg[s] != st) continue;
    float x = srow[s] * scale;
    if (x > m) {
      sum = sum * expf(m - x) + 1.f;
      m = x;
    } else {
      sum += expf(x - m);
    }
  }
  float mx = block_max(m, sh);                             // finite: key t is visible
  float l = mx + logf(block_sum(sum * expf(m - mx), sh));  // a thread without keys adds 0*0
  if (threadIdx.x == 0) lse[((long long)b * H + kvh * rep + g) * T + t] = l;
  E* prow = P + r;
  for (int s = threadIdx.x; s < Nk; s += blockDim.x) {
    float p = 0.f;
    if (s <= t && (!sg || sg[s] == st)) p = expf(srow[s] * scale - l);
    prow[s] = fromf<E>(p);
  }
}
TR_KERNEL_FLOATS(attention_softmax,
                   (T * P, float* lse, const float* S, const int* seg, int b, int T_, int H, int rep, int g, int t0,
                    int Tc, int Nk, int ld, float scale),
                   (P, lse, S, seg, b, T_, H, rep, g, t0, Tc, Nk, ld, scale))

// Backward: S holds q_t·k_s again and dP holds dout_t·v_s. With P_s =
// exp(S_s*scale - lse_t) recomputed in float (0 where hidden),
//   delta_t = sum_s P_s dP_s   (= dout_t·out_t; the op is not given out)
//   dS_s    = P_s (dP_s - delta_t) * scale
// P and dS are written in the data type for every s < Nk, for the GEMMs
// dq += dS·K, dk += dSᵀ·Q and dv += Pᵀ·dout.
template <typename E>
__device__ __forceinline__ void attention_softmax_backward_t(E* P, E* dS, const float* S, const float* dP,
                                                             const float* lse, const int* seg, int b, int T, int H,
                                                             int rep, int g, int t0, int Tc, int Nk, int ld,
                                                             float scale) {
  __shared__ float sh[32];
  int i = blockIdx.x, kvh = blockIdx.y, t = t0 + i;
  long long r = ((long long)kvh * Tc + i) * ld;
  const float *srow = S + r, *dprow = dP + r;
  const int* sg = seg ? seg + (long long)b * T : nullptr;
  int st = sg ? sg[t] : 0;
  float l = lse[((long long)b * H + kvh * rep + g) * T + t];
  float acc = 0.f;
  for (int s = threadIdx.x; s <= t; s += blockDim.x) {
    if (sg && sg[s] != st) continue;
    acc += expf(srow[s] * scale - l) * dprow[s];
  }
  float delta = block_sum(acc, sh);
  E *prow = P + r, *dsrow = dS + r;
  for (int s = threadIdx.x; s < Nk; s += blockDim.x) {
    float p = 0.f, ds = 0.f;
    if (s <= t && (!sg || sg[s] == st)) {
      p = expf(srow[s] * scale - l);
      ds = p * (dprow[s] - delta) * scale;
    }
    prow[s] = fromf<E>(p);
    dsrow[s] = fromf<E>(ds);
  }
}
TR_KERNEL_FLOATS(attention_softmax_backward,
                   (T * P, T* dS, const float* S, const float* dP, const float* lse, const int* seg, int b, int T_,
                    int H, int rep, int g, int t0, int Tc, int Nk, int ld, float scale),
                   (P, dS, S, dP, lse, seg, b, T_, H, rep, g, t0, Tc, Nk, ld, scale))

// x[i] += acc[i] over n elements, rounding once: the bf16 backward accumulates
// a batch row's dk and dv in float (GEMMs with beta 1 over chunks and groups)
// and adds them into the bf16 gradients here.
template <typename E>
__device__ __forceinline__ void attention_add_acc_t(E* x, const float* acc, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = fromf<E>(tof(x[i]) + acc[i]);
}
TR_KERNEL_FLOATS(attention_add_acc, (T * x, const float* acc, long long n), (x, acc, n))
