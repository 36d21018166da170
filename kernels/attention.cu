#include "common.cuh"

// Causal grouped-query attention, a plain correct version (flash-style tiling
// is later work). Layouts, token-major as the projections produce them:
//   q, out [B*Tq, H*D]; k, v [B*S, KVH*D]; lse [B, H, Tq]; seg [B*S] or null.
// Query head h reads key/value head h/(H/KVH). One warp per query row; each lane
// holds D/32 elements of a head in registers (D <= 32*MAXJ), as float whatever
// the data type E; lse and the backward's delta are float.
#define MAXJ 8

// Forward, for training (Tq = Tk = S = T, seg optional, lse saved) and for
// decoding over a cache (query i of row b at position Tk-Tq+i, keys at rows
// b*S+s, lse null). Online softmax over the visible keys s <= t:
//   out_t = sum_s p_s v_s,  lse_t = log sum_s exp(q_t·k_s/sqrt(D)).
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
TR_KERNEL_F32_BF16(attention_forward,
                   (T * out, float* lse, const T* q, const T* k, const T* v, const int* seg, int B, int Tq, int Tk,
                    int S, int H, int KVH, int D),
                   (out, lse, q, k, v, seg, B, Tq, Tk, S, H, KVH, D))

// Backward, query side: one warp per query row t of head h (S = T). With
// p_s = exp(q_t·k_s*scale - lse_t) and dp_s = dout_t·v_s:
//   delta_t = sum_s p_s dp_s           (saved for the key side)
//   dq_t   += scale * sum_s p_s (dp_s - delta_t) k_s
template <typename E>
__device__ __forceinline__ void attention_backward_dq_t(E* dq, float* delta, const E* dout, const E* q, const E* k,
                                                        const E* v, const float* lse, const int* seg, int B, int T,
                                                        int H, int KVH, int D) {
  long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (warp >= (long long)B * H * T) return;
  int t = (int)(warp % T);
  long long bh = warp / T;
  int h = (int)(bh % H), b = (int)(bh / H);
  int kh = h / (H / KVH);
  long long QW = (long long)H * D, KW = (long long)KVH * D, row = (long long)b * T;
  long long qo = (row + t) * QW + (long long)h * D;
  float qr[MAXJ], gr[MAXJ], dqa[MAXJ];
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    qr[j] = d < D ? tof(q[qo + d]) : 0.f;
    gr[j] = d < D ? tof(dout[qo + d]) : 0.f;
    dqa[j] = 0.f;
  }
  float scale = 1.0f / sqrtf((float)D);
  float l = lse[bh * T + t];
  int st = seg ? seg[row + t] : 0;
  float dl = 0.f;
  for (int pass = 0; pass < 2; pass++) {
    for (int s = 0; s <= t; s++) {
      if (seg && seg[row + s] != st) continue;
      const E* ks = k + (row + s) * KW + (long long)kh * D;
      const E* vs = v + (row + s) * KW + (long long)kh * D;
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int j = 0; j < MAXJ; j++) {
        int d = lane + 32 * j;
        if (d < D) {
          sc += qr[j] * tof(ks[d]);
          dp += gr[j] * tof(vs[d]);
        }
      }
      sc = warp_sum(sc);
      dp = warp_sum(dp);
      float p = expf(sc * scale - l);
      if (pass == 0) {
        dl += p * dp;
      } else {
        float ds = p * (dp - dl) * scale;
#pragma unroll
        for (int j = 0; j < MAXJ; j++) {
          int d = lane + 32 * j;
          if (d < D) dqa[j] += ds * tof(ks[d]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    if (d < D) dq[qo + d] = fromf<E>(tof(dq[qo + d]) + dqa[j]);
  }
  if (lane == 0) delta[bh * T + t] = dl;
}
TR_KERNEL_F32_BF16(attention_backward_dq,
                   (T * dq, float* delta, const T* dout, const T* q, const T* k, const T* v, const float* lse,
                    const int* seg, int B, int T_, int H, int KVH, int D),
                   (dq, delta, dout, q, k, v, lse, seg, B, T_, H, KVH, D))

// Backward, key side: one warp per key row s of key/value head kh, summing over
// the query heads of its group and the queries t >= s that see it:
//   dv_s += sum p_ts dout_t,  dk_s += scale * sum p_ts (dp_ts - delta_t) q_t
template <typename E>
__device__ __forceinline__ void attention_backward_dkv_t(E* dk, E* dv, const float* delta, const E* dout, const E* q,
                                                         const E* k, const E* v, const float* lse, const int* seg,
                                                         int B, int T, int H, int KVH, int D) {
  long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (warp >= (long long)B * KVH * T) return;
  int s = (int)(warp % T);
  long long bk = warp / T;
  int kh = (int)(bk % KVH), b = (int)(bk / KVH);
  int rep = H / KVH;
  long long QW = (long long)H * D, KW = (long long)KVH * D, row = (long long)b * T;
  long long ko = (row + s) * KW + (long long)kh * D;
  float kr[MAXJ], vr[MAXJ], dka[MAXJ], dva[MAXJ];
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    kr[j] = d < D ? tof(k[ko + d]) : 0.f;
    vr[j] = d < D ? tof(v[ko + d]) : 0.f;
    dka[j] = 0.f;
    dva[j] = 0.f;
  }
  float scale = 1.0f / sqrtf((float)D);
  int ss = seg ? seg[row + s] : 0;
  for (int h = kh * rep; h < (kh + 1) * rep; h++) {
    long long bh = (long long)b * H + h;
    for (int t = s; t < T; t++) {
      if (seg && seg[row + t] != ss) continue;
      long long qo = (row + t) * QW + (long long)h * D;
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int j = 0; j < MAXJ; j++) {
        int d = lane + 32 * j;
        if (d < D) {
          sc += tof(q[qo + d]) * kr[j];
          dp += tof(dout[qo + d]) * vr[j];
        }
      }
      sc = warp_sum(sc);
      dp = warp_sum(dp);
      float p = expf(sc * scale - lse[bh * T + t]);
      float ds = p * (dp - delta[bh * T + t]) * scale;
#pragma unroll
      for (int j = 0; j < MAXJ; j++) {
        int d = lane + 32 * j;
        if (d < D) {
          dka[j] += ds * tof(q[qo + d]);
          dva[j] += p * tof(dout[qo + d]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    int d = lane + 32 * j;
    if (d < D) {
      dk[ko + d] = fromf<E>(tof(dk[ko + d]) + dka[j]);
      dv[ko + d] = fromf<E>(tof(dv[ko + d]) + dva[j]);
    }
  }
}
TR_KERNEL_F32_BF16(attention_backward_dkv,
                   (T * dk, T* dv, const float* delta, const T* dout, const T* q, const T* k, const T* v,
                    const float* lse, const int* seg, int B, int T_, int H, int KVH, int D),
                   (dk, dv, delta, dout, q, k, v, lse, seg, B, T_, H, KVH, D))
