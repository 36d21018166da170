#include "common.cuh"

// FlashAttention-2 for training: causal grouped-query attention on bf16 or f16
// data (every function below is a template over the element type E),
// head dims 64 and 128, the scores kept on chip (kernels/flash_attention.go
// launches these; attention.cu has the GEMM attention for other shapes).
//
// Layouts as the GEMM attention's: q, out, dout, dq [B*T, H*D]; k, v, dk, dv
// [B*T, KVH*D]; lse, delta [B, H, T] float; seg [B*T] int or null. Query head h
// reads key/value head h/rep (rep = H/KVH) in place. Token t of a batch row sees
// keys s <= t of its row and, with seg, only those with seg[s] == seg[t].
//
//   flash_fwd_dD:   out, lse from q, k, v (online softmax over key tiles)
//   flash_delta_dD: delta_t = dout_t·out_t, out recomputed from lse (the op is
//                   not given out; P = exp(S - lse) needs no running max)
//   flash_bwd_dq_dD:   dq += scale·Σ_s dS_ts k_s, query-tile major
//   flash_bwd_dkdv_dD: dk += scale·Σ_t dS_ts q_t, dv += Σ_t P_ts dout_t,
//                      key-tile major, over every query head of the group
// with P_ts = exp(q_t·k_s·scale - lse_t) and dS_ts = P_ts (dout_t·v_s - delta_t).
// dq and dk/dv come from two kernels so that every output element is summed by
// one thread in a fixed order and written once: no atomics, deterministic
// (FA2 proper adds dq with float atomics from the key-tile-major kernel). The
// price is recomputing S and dP in both, 7 matrix products of the causal
// triangle instead of 5, plus 2 for delta.
//
// Every block has 4 warps. Matrix products are mma.sync m16n8k16 (bf16 or f16
// in, float accumulate; sm_80 and later, like cp.async) on fragments read from shared memory by ldmatrix; tiles
// arrive by cp.async (zero-filled past T) into shared memory whose 16-byte
// chunks are XOR-swizzled by row, so ldmatrix reads are free of bank conflicts.
// A product's accumulator layout (C of m16n8) is the A-operand layout of the
// next product (P·V, dS·K, Pᵀ·dout, dSᵀ·q), so P and dS go from registers to
// the tensor cores without shared memory. Causal tiles wholly above the
// diagonal are skipped; the diagonal ones are masked. Softmax runs in base 2
// (sl2 = scale·log2 e); lse is stored in natural log.
//
// Index products that can pass 2^31 (token × row width) are 64-bit.

namespace fa {

constexpr int kThreads = 128;  // 4 warps per block, every kernel
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

extern __shared__ __align__(1024) unsigned char smem[];

__device__ __forceinline__ unsigned saddr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// 16 bytes global -> shared, asynchronously; 16 zero bytes when !valid (src is
// not read then).
__device__ __forceinline__ void cp16(unsigned dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp4(unsigned dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldsm4(unsigned r[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm4t(unsigned r[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a·b on one m16n8k16 tile. Lane l (g = l/4, t = l%4) holds a[0] = A[g][2t..],
// a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]; b0 = B[2t..][g],
// b1 = B[2t+8..][g]; c[0..1] = C[g][2t..], c[2..3] = C[g+8][2t..].
// The fragments hold pairs of E; the two instantiations differ only in the
// instruction's input type.
template <typename E>
__device__ __forceinline__ void mma(float c[4], const unsigned a[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma<bf16>(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<f16>(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Pairs of E: the two-element vector type, to and from two floats (lo in the
// low half, the lower column), rounded to nearest even.
template <typename E>
struct Pair;
template <>
struct Pair<bf16> {
  typedef __nv_bfloat162 V;
  static __device__ __forceinline__ V from(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
  static __device__ __forceinline__ float2 to(V v) {  // exact: bf16 is a float's top half
    const unsigned u = *reinterpret_cast<unsigned*>(&v);
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
};
template <>
struct Pair<f16> {
  typedef __half2 V;
  static __device__ __forceinline__ V from(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  static __device__ __forceinline__ float2 to(V v) { return __half22float2(v); }
};

// Two floats as a pair of E in one register.
template <typename E>
__device__ __forceinline__ unsigned pack(float lo, float hi) {
  typename Pair<E>::V v = Pair<E>::from(lo, hi);
  return *reinterpret_cast<unsigned*>(&v);
}

// The pair at p (global memory) as two floats; p[0..1] = (x, y) rounded.
template <typename E>
__device__ __forceinline__ float2 load2(const E* p) {
  return Pair<E>::to(*reinterpret_cast<const typename Pair<E>::V*>(p));
}
template <typename E>
__device__ __forceinline__ void store2(E* p, float x, float y) {
  *reinterpret_cast<typename Pair<E>::V*>(p) = Pair<E>::from(x, y);
}

// The A fragment of k16 block kk from an accumulator row block c[n8 tile][4]:
// tiles 2kk and 2kk+1 (the layouts line up, see mma).
template <typename E, int NT>
__device__ __forceinline__ void afrag(unsigned a[4], const float (&c)[NT][4], int kk) {
  a[0] = pack<E>(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack<E>(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack<E>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack<E>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// p[0..1] (a pair of E in global memory) += (x, y), rounded once.
template <typename E>
__device__ __forceinline__ void add2(E* p, float x, float y) {
  float2 o = load2(p);
  store2(p, o.x + x, o.y + y);
}

// Byte offset of (row r, column c) in a [rows][D] tile of 2-byte E in shared memory,
// c a multiple of 8: 16-byte chunk c/8 of row r sits at chunk (c/8) ^ (r%8), so
// the 8 rows an ldmatrix phase reads hit 8 different bank groups. The chunk bits
// (4..7) and the row bits (7 or 8 up) do not overlap, so a column step of 16
// is an XOR of the chunk bits.
template <int D>
__device__ __forceinline__ unsigned swz(int r, int c) {
  return r * (2 * D) + ((((c >> 3) ^ (r & 7))) << 4);
}

// Rows [0, R) of a row-major global matrix g (row stride ld elements) into the
// swizzled tile at shared address s; rows >= valid are zero-filled.
template <int D, int R, typename E>
__device__ __forceinline__ void load_tile(unsigned s, const E* g, long long ld, int valid) {
  constexpr int CH = D / 8;
  static_assert(R * CH % kThreads == 0 && kThreads % CH == 0, "tile size");
  const int r = threadIdx.x / CH, c = (threadIdx.x % CH) * 8;
#pragma unroll
  for (int i = 0; i < R * CH / kThreads; i++) {
    const int ri = r + i * (kThreads / CH);
    const bool ok = ri < valid;
    cp16(s + swz<D>(ri, c), ok ? g + ri * ld + c : g, ok);
  }
}

// Per-lane byte offsets of the three ldmatrix patterns within a tile (row and
// swizzled chunk of the row address lane l gives), for column 0; a fragment at
// column c0 (a multiple of 16) XORs (c0/8) << 4 into them.
//   a: A fragment, rows l%16, columns 8*(l/16)
//   b: B fragments of X·Yᵀ (Y's rows as n): rows l%8 + 8*(l/16), columns 8*(l/8%2)
//   t: B fragments of X·Y, transposed: rows l%8 + 8*(l/8%2), columns 8*(l/16)
template <int D>
struct Lanes {
  unsigned a, b, t;
  __device__ __forceinline__ Lanes() {
    const int l = threadIdx.x & 31, x = l & 7;
    a = (l & 15) * (2 * D) + (((l >> 4) ^ x) << 4);
    b = (x + ((l >> 4) << 3)) * (2 * D) + ((((l >> 3) & 1) ^ x) << 4);
    t = (x + (((l >> 3) & 1) << 3)) * (2 * D) + (((l >> 4) ^ x) << 4);
  }
};

// A fragment of rows r0..r0+15 (r0 % 8 == 0), columns c0..c0+15 of the tile at s.
template <int D>
__device__ __forceinline__ void lda(unsigned a[4], unsigned s, const Lanes<D>& ln, int r0, int c0) {
  ldsm4(a, s + r0 * (2 * D) + (ln.a ^ ((c0 >> 3) << 4)));
}

// B fragments of two n8 tiles for X·Yᵀ with Y in the tile: n = rows n0..n0+15,
// k = columns k0..k0+15; b[0..1] n-tile n0, b[2..3] n-tile n0+8.
template <int D>
__device__ __forceinline__ void ldb(unsigned b[4], unsigned s, const Lanes<D>& ln, int n0, int k0) {
  ldsm4(b, s + n0 * (2 * D) + (ln.b ^ ((k0 >> 3) << 4)));
}

// B fragments of two n8 tiles for X·Y with Y in the tile: k = rows k0..k0+15,
// n = columns n0..n0+15 (transposed by ldmatrix); b[0..1] n-tile n0, b[2..3] n0+8.
template <int D>
__device__ __forceinline__ void ldbt(unsigned b[4], unsigned s, const Lanes<D>& ln, int k0, int n0) {
  ldsm4t(b, s + k0 * (2 * D) + (ln.t ^ ((n0 >> 3) << 4)));
}

// x[mt] += A·Bᵀ over D columns: rows r0+16mt..r0+16mt+15 of tile A against the
// NT·8 rows of tile B (S = Q·Kᵀ, dP = dout·Vᵀ, and their transposes).
template <typename E, int D, int MT, int NT>
__device__ __forceinline__ void nt_product(float (&x)[MT][NT][4], unsigned a, unsigned b, const Lanes<D>& ln, int r0) {
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    unsigned af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) lda<D>(af[mt], a, ln, r0 + mt * 16, kk * 16);
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      unsigned bb[4];
      ldb<D>(bb, b, ln, np * 16, kk * 16);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        mma<E>(x[mt][2 * np], af[mt], bb[0], bb[1]);
        mma<E>(x[mt][2 * np + 1], af[mt], bb[2], bb[3]);
      }
    }
  }
}

// acc[mt] += E(c[mt])·B: c accumulators of 16 × NT·8 used as A (k = their
// columns), B the NT·8 × D tile b (rows = k; P·V, dS·K, Pᵀ·dout, dSᵀ·Q).
template <typename E, int D, int MT, int NT>
__device__ __forceinline__ void nn_product(float (&acc)[MT][D / 8][4], const float (&c)[MT][NT][4], unsigned b,
                                           const Lanes<D>& ln) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; kk++) {
    unsigned af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) afrag<E, NT>(af[mt], c[mt], kk);
#pragma unroll
    for (int dd = 0; dd < D / 16; dd++) {
      unsigned bb[4];
      ldbt<D>(bb, b, ln, kk * 16, dd * 16);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        mma<E>(acc[mt][2 * dd], af[mt], bb[0], bb[1]);
        mma<E>(acc[mt][2 * dd + 1], af[mt], bb[2], bb[3]);
      }
    }
  }
}

// Forward, one block per (query tile of 128 rows, head h, batch row b); warp w
// owns rows 32w..32w+31 of the tile (two m16 tiles). Key tiles of 64 walk
// 0..the diagonal; K and V have one buffer each, loaded one step ahead: V_j
// while S_j = Q·K_jᵀ and the softmax run, K_j+1 while P·V_j does (FA2's order).
// !DELTA: online softmax, writes out and lse. DELTA: P = exp(S - lse) from the
// saved lse, then delta_t = dout_t·(P·V)_t; writes delta only.
template <typename E, int D, bool DELTA>
__device__ __forceinline__ void fwd(E* out, float* lse, float* delta, const E* q, const E* k, const E* v,
                                    const E* dout, const int* seg, int T, int H, int rep, float sl2) {
  constexpr int BM = 128, BN = 64, MT = 2, NT = BN / 8, DT = D / 8;
  const unsigned sQ = saddr(smem), sK = sQ + BM * D * 2, sV = sK + BN * D * 2;  // tiles
  int* sSeg = reinterpret_cast<int*>(smem + (BM + 2 * BN) * D * 2);              // the key tile's segments
  const Lanes<D> ln;
  const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;  // longest rows first
  const int q0 = tile * BM, kvh = h / rep;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const long long QW = (long long)H * D, KW = (long long)(H / rep) * D, row0 = (long long)b * T;
  const E* gk = k + row0 * KW + (long long)kvh * D;
  const E* gv = v + row0 * KW + (long long)kvh * D;
  const int* gs = seg ? seg + row0 : nullptr;
  const int nkv = min(T - 1, q0 + BM - 1) / BN + 1;  // key tiles up to the tile's last row

  load_tile<D, BM>(sQ, q + (row0 + q0) * QW + (long long)h * D, QW, T - q0);
  load_tile<D, BN>(sK, gk, KW, T);
  if (gs && tid < BN && tid < T) cp4(saddr(sSeg + tid), gs + tid);
  cp_commit();

  // This thread's rows: q0 + 32*warp + 16*mt + g + 8*hf.
  int sq[MT][2];
  float ls[MT][2];  // DELTA: lse in base 2, +inf past T (P = 0)
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      int t = q0 + warp * 32 + mt * 16 + g + 8 * hf;
      sq[mt][hf] = (gs && t < T) ? gs[t] : 0;
      ls[mt][hf] = TR_INF;
      if (DELTA && t < T) ls[mt][hf] = lse[((long long)b * H + h) * T + t] * kLog2e;
    }
  float o[MT][DT][4];
  float mx[MT][2], sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int e = 0; e < 4; e++) o[mt][dt][e] = 0.f;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      mx[mt][hf] = -TR_INF;
      sum[mt][hf] = 0.f;
    }
  }

  for (int j = 0; j < nkv; j++) {
    const int k0 = j * BN;
    cp_wait_all();
    __syncthreads();  // K_j in; every warp is done with V_j-1
    load_tile<D, BN>(sV, gv + (long long)k0 * KW, KW, T - k0);
    cp_commit();

    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s[mt][nt][e] = 0.f;
    nt_product<E, D, MT, NT>(s, sQ, sK, ln, warp * 32);

    // Masks: causal where some key of the tile follows the warp's first row
    // (this also hides keys past T from every row < T); segments everywhere.
    const bool causal = k0 + BN - 1 > q0 + warp * 32;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
          int r = q0 + warp * 32 + mt * 16 + g + ((e >> 1) << 3), c = nt * 8 + tq * 2 + (e & 1);
          float x = s[mt][nt][e] * sl2;
          if (causal && k0 + c > r) x = -TR_INF;
          if (gs && sSeg[c] != sq[mt][e >> 1]) x = -TR_INF;
          s[mt][nt][e] = x;
        }

    if (DELTA) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[mt][nt][e] = ex2(s[mt][nt][e] - ls[mt][e >> 1]);
    } else {
      // Online softmax: a row's max over the 4 lanes holding it (xor 1, 2).
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          float m = mx[mt][hf];
#pragma unroll
          for (int nt = 0; nt < NT; nt++) m = fmaxf(m, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
          m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
          const float mu = m == -TR_INF ? 0.f : m;  // a row with nothing visible yet
          const float corr = ex2(mx[mt][hf] - mu);
          mx[mt][hf] = m;
          float ps = 0.f;
#pragma unroll
          for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 2 * hf; e < 2 * hf + 2; e++) {
              float p = ex2(s[mt][nt][e] - mu);
              s[mt][nt][e] = p;
              ps += p;
            }
          sum[mt][hf] = sum[mt][hf] * corr + ps;  // this lane's part of the row
#pragma unroll
          for (int dt = 0; dt < DT; dt++) {
            o[mt][dt][2 * hf] *= corr;
            o[mt][dt][2 * hf + 1] *= corr;
          }
        }
    }

    cp_wait_all();
    __syncthreads();  // V_j in; every warp is done with K_j and its segments
    if (j + 1 < nkv) {
      const int k1 = k0 + BN;
      load_tile<D, BN>(sK, gk + (long long)k1 * KW, KW, T - k1);
      if (gs && tid < BN && k1 + tid < T) cp4(saddr(sSeg + tid), gs + k1 + tid);
      cp_commit();
    }

    nn_product<E, D, MT, NT>(o, s, sV, ln);
  }

#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      const int t = q0 + warp * 32 + mt * 16 + g + 8 * hf;
      const long long at = (row0 + t) * QW + (long long)h * D + tq * 2;
      if (DELTA) {
        float d = 0.f;
        if (t < T) {
#pragma unroll
          for (int dt = 0; dt < DT; dt++) {
            float2 x = load2(dout + at + dt * 8);
            d += o[mt][dt][2 * hf] * x.x + o[mt][dt][2 * hf + 1] * x.y;
          }
        }
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        if (t < T && tq == 0) delta[((long long)b * H + h) * T + t] = d;
      } else {
        float l = sum[mt][hf];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (t < T) {  // key t is visible from t: l >= 1
          const float inv = 1.f / l;
#pragma unroll
          for (int dt = 0; dt < DT; dt++)
            store2(out + at + dt * 8, o[mt][dt][2 * hf] * inv, o[mt][dt][2 * hf + 1] * inv);
          if (tq == 0) lse[((long long)b * H + h) * T + t] = (mx[mt][hf] + log2f(l)) * kLn2;
        }
      }
    }
}

// dq, one block per (query tile of 64 rows, head h, batch row b); warp w owns
// rows 16w..16w+15. Key tiles of 64 walk 0..the diagonal, double-buffered
// (K_j+1, V_j+1 arrive while step j computes):
//   S = Q·K_jᵀ, P = exp(S·scale - lse), dP = dout·V_jᵀ, dS = P∘(dP - delta),
//   acc += dS·K_j;  dq += scale·acc at the end (one rounding).
template <typename E, int D>
__device__ __forceinline__ void bwd_dq(E* dq, const E* q, const E* k, const E* v, const E* dout,
                                       const float* lse, const float* delta, const int* seg, int T, int H, int rep,
                                       float scale, float sl2) {
  constexpr int BM = 64, BN = 64, NT = BN / 8, DT = D / 8;
  // Tiles: Q, dout, then K[2], V[2] (double-buffered).
  const unsigned sQ = saddr(smem), sO = sQ + BM * D * 2, sK = sO + BM * D * 2, sV = sK + 2 * BN * D * 2;
  int* sS = reinterpret_cast<int*>(smem + (2 * BM + 4 * BN) * D * 2);  // [2][BN] the key tiles' segments
  const Lanes<D> ln;
  const int tile = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int q0 = tile * BM, kvh = h / rep;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const long long QW = (long long)H * D, KW = (long long)(H / rep) * D, row0 = (long long)b * T;
  const E* gk = k + row0 * KW + (long long)kvh * D;
  const E* gv = v + row0 * KW + (long long)kvh * D;
  const int* gs = seg ? seg + row0 : nullptr;
  const int nkv = min(T - 1, q0 + BM - 1) / BN + 1;
  auto stage = [&](int j, int st) {
    const int k1 = j * BN;
    load_tile<D, BN>(sK + st * BN * D * 2, gk + (long long)k1 * KW, KW, T - k1);
    load_tile<D, BN>(sV + st * BN * D * 2, gv + (long long)k1 * KW, KW, T - k1);
    if (gs && tid < BN && k1 + tid < T) cp4(saddr(sS + st * BN + tid), gs + k1 + tid);
  };

  const long long qoff = (row0 + q0) * QW + (long long)h * D;
  load_tile<D, BM>(sQ, q + qoff, QW, T - q0);
  load_tile<D, BM>(sO, dout + qoff, QW, T - q0);
  stage(0, 0);
  cp_commit();

  float lq[2], dl[2];  // lse (base 2; +inf past T) and delta of this thread's rows
  int sq[2];
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int t = q0 + warp * 16 + g + 8 * hf;
    const long long li = ((long long)b * H + h) * T + t;
    lq[hf] = t < T ? lse[li] * kLog2e : TR_INF;
    dl[hf] = t < T ? delta[li] : 0.f;
    sq[hf] = (gs && t < T) ? gs[t] : 0;
  }
  float acc[1][DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int e = 0; e < 4; e++) acc[0][dt][e] = 0.f;

  for (int j = 0; j < nkv; j++) {
    const int st = j & 1, k0 = j * BN;
    cp_wait_all();
    __syncthreads();  // step j's tiles in; every warp is done with step j-1's buffers
    if (j + 1 < nkv) {
      stage(j + 1, st ^ 1);
      cp_commit();
    }
    const unsigned tK = sK + st * BN * D * 2, tV = sV + st * BN * D * 2;
    const int* tS = sS + st * BN;

    float p[1][NT][4], dp[1][NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) p[0][nt][e] = dp[0][nt][e] = 0.f;
    nt_product<E, D, 1, NT>(p, sQ, tK, ln, warp * 16);   // S = Q·Kᵀ
    nt_product<E, D, 1, NT>(dp, sO, tV, ln, warp * 16);  // dP = dout·Vᵀ
    const bool causal = k0 + BN - 1 > q0 + warp * 16;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int r = q0 + warp * 16 + g + ((e >> 1) << 3), c = nt * 8 + tq * 2 + (e & 1);
        float x = p[0][nt][e] * sl2 - lq[e >> 1];
        if (causal && k0 + c > r) x = -TR_INF;
        if (gs && tS[c] != sq[e >> 1]) x = -TR_INF;
        const float pe = ex2(x);
        dp[0][nt][e] = pe * (dp[0][nt][e] - dl[e >> 1]);
      }
    nn_product<E, D, 1, NT>(acc, dp, tK, ln);  // += dS·K
  }

#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int t = q0 + warp * 16 + g + 8 * hf;
    if (t >= T) continue;
    E* at = dq + (row0 + t) * QW + (long long)h * D + tq * 2;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) add2(at + dt * 8, acc[0][dt][2 * hf] * scale, acc[0][dt][2 * hf + 1] * scale);
  }
}

// dk, dv, one block per (key tile of 64, key/value head kvh, batch row b); warp
// w owns keys 16w..16w+15. The block walks every query head h of the group and,
// per head, the query tiles of 64 from the diagonal to the end, double-buffered
// (q, dout, lse, delta and segments of step i+1 arrive while step i computes).
// It works on the transposed scores, keys as rows, so that Pᵀ and dSᵀ are
// A operands straight from the accumulators:
//   Sᵀ = K·Qᵀ, Pᵀ = exp(Sᵀ·scale - lse), dPᵀ = V·doutᵀ, dSᵀ = Pᵀ∘(dPᵀ - delta),
//   accV += Pᵀ·dout, accK += dSᵀ·Q;  dv += accV, dk += scale·accK at the end.
// Every (head, query tile) adds into the same registers in a fixed order.
template <typename E, int D>
__device__ __forceinline__ void bwd_dkdv(E* dk, E* dv, const E* q, const E* k, const E* v,
                                         const E* dout, const float* lse, const float* delta, const int* seg, int T,
                                         int H, int rep, float scale, float sl2) {
  constexpr int BM = 64, BN = 64, NT = BM / 8, DT = D / 8;
  static_assert(BM == BN, "the first query tile of a key tile starts at its first key");
  // Tiles: K, V, then Q[2], dout[2] (double-buffered).
  const unsigned sK = saddr(smem), sV = sK + BN * D * 2, sQ = sV + BN * D * 2, sO = sQ + 2 * BM * D * 2;
  float* sL = reinterpret_cast<float*>(smem + (2 * BN + 4 * BM) * D * 2);  // [2][BM] lse (natural log; +inf past T)
  float* sD = sL + 2 * BM;                                 // [2][BM] delta
  int* sS = reinterpret_cast<int*>(sD + 2 * BM);           // [2][BM] the queries' segments
  const Lanes<D> ln;
  const int jt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;  // low key tiles have the most work: first
  const int k0 = jt * BN;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const long long QW = (long long)H * D, KW = (long long)(H / rep) * D, row0 = (long long)b * T;
  const int* gs = seg ? seg + row0 : nullptr;
  const int nq = (T + BM - 1) / BM, per = nq - jt, nit = rep * per;
  auto stage = [&](int it, int st) {
    const int h = kvh * rep + it / per, qq0 = (jt + it % per) * BM;
    const long long off = (row0 + qq0) * QW + (long long)h * D;
    load_tile<D, BM>(sQ + st * BM * D * 2, q + off, QW, T - qq0);
    load_tile<D, BM>(sO + st * BM * D * 2, dout + off, QW, T - qq0);
    if (tid < BM) {
      const int t = qq0 + tid, i = st * BM + tid;
      const long long li = ((long long)b * H + h) * T + t;
      if (t < T) {
        cp4(saddr(sL + i), lse + li);
        cp4(saddr(sD + i), delta + li);
        if (gs) cp4(saddr(sS + i), gs + t);
      } else {
        sL[i] = TR_INF;
        sD[i] = 0.f;
      }
    }
  };

  const long long koff = (row0 + k0) * KW + (long long)kvh * D;
  load_tile<D, BN>(sK, k + koff, KW, T - k0);
  load_tile<D, BN>(sV, v + koff, KW, T - k0);
  stage(0, 0);
  cp_commit();

  int sk[2];  // segments of this thread's keys
#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int s = k0 + warp * 16 + g + 8 * hf;
    sk[hf] = (gs && s < T) ? gs[s] : 0;
  }
  float ak[1][DT][4], av[1][DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int e = 0; e < 4; e++) ak[0][dt][e] = av[0][dt][e] = 0.f;

  for (int it = 0; it < nit; it++) {
    const int st = it & 1, qq0 = (jt + it % per) * BM;
    cp_wait_all();
    __syncthreads();  // step it's tiles in; every warp is done with step it-1's buffers
    if (it + 1 < nit) {
      stage(it + 1, st ^ 1);
      cp_commit();
    }
    const unsigned tQ = sQ + st * BM * D * 2, tO = sO + st * BM * D * 2;
    const float* tL = sL + st * BM;
    const float* tD = sD + st * BM;
    const int* tS = sS + st * BM;

    float p[1][NT][4], dp[1][NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) p[0][nt][e] = dp[0][nt][e] = 0.f;
    nt_product<E, D, 1, NT>(p, sK, tQ, ln, warp * 16);   // Sᵀ = K·Qᵀ
    nt_product<E, D, 1, NT>(dp, sV, tO, ln, warp * 16);  // dPᵀ = V·doutᵀ
    // Causal where some query of the step precedes some key of the warp (the
    // diagonal step); queries past T have lse +inf, so P = 0 there.
    const bool causal = qq0 < k0 + warp * 16 + 15;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int c = nt * 8 + tq * 2 + (e & 1), s = k0 + warp * 16 + g + ((e >> 1) << 3);
        float x = p[0][nt][e] * sl2 - tL[c] * kLog2e;
        if (causal && s > qq0 + c) x = -TR_INF;
        if (gs && tS[c] != sk[e >> 1]) x = -TR_INF;
        const float pe = ex2(x);
        p[0][nt][e] = pe;
        dp[0][nt][e] = pe * (dp[0][nt][e] - tD[c]);
      }
    nn_product<E, D, 1, NT>(av, p, tO, ln);   // += Pᵀ·dout
    nn_product<E, D, 1, NT>(ak, dp, tQ, ln);  // += dSᵀ·Q
  }

#pragma unroll
  for (int hf = 0; hf < 2; hf++) {
    const int s = k0 + warp * 16 + g + 8 * hf;
    if (s >= T) continue;
    const long long at = (row0 + s) * KW + (long long)kvh * D + tq * 2;
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
      add2(dk + at + dt * 8, ak[0][dt][2 * hf] * scale, ak[0][dt][2 * hf + 1] * scale);
      add2(dv + at + dt * 8, av[0][dt][2 * hf], av[0][dt][2 * hf + 1]);
    }
  }
}

}  // namespace fa

// The kernels, per element type and head dim: flash_fwd_dD etc. for bf16,
// flash_fwd_f16_dD etc. for f16. Grids and shared memory in
// flash_attention.go (flashSmem). 128 threads; two blocks per multiprocessor
// by registers. Before sm_80 (no mma.sync m16n8k16, no cp.async) the bodies
// are empty and never launched: flash_attention.go takes the GEMM attention.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TR_FLASH_BODY(x) x
#else
#define TR_FLASH_BODY(x)
#endif
#define TR_FLASH(E, S, D)                                                                                            \
  extern "C" __global__ void __launch_bounds__(fa::kThreads, 2)                                                      \
      flash_fwd##S##_d##D(E* out, float* lse, const E* q, const E* k, const E* v, const int* seg, int T, int H,      \
                          int rep, float sl2) {                                                                      \
    TR_FLASH_BODY((fa::fwd<E, D, false>(out, lse, nullptr, q, k, v, nullptr, seg, T, H, rep, sl2)));                 \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(fa::kThreads, 2)                                                      \
      flash_delta##S##_d##D(float* delta, const float* lse, const E* q, const E* k, const E* v, const E* dout,       \
                            const int* seg, int T, int H, int rep, float sl2) {                                      \
    TR_FLASH_BODY((fa::fwd<E, D, true>(nullptr, const_cast<float*>(lse), delta, q, k, v, dout, seg, T, H, rep, sl2))); \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(fa::kThreads, 2)                                                      \
      flash_bwd_dq##S##_d##D(E* dq, const E* q, const E* k, const E* v, const E* dout, const float* lse,             \
                             const float* delta, const int* seg, int T, int H, int rep, float scale, float sl2) {    \
    TR_FLASH_BODY((fa::bwd_dq<E, D>(dq, q, k, v, dout, lse, delta, seg, T, H, rep, scale, sl2)));                    \
  }                                                                                                                  \
  extern "C" __global__ void __launch_bounds__(fa::kThreads, 2)                                                      \
      flash_bwd_dkdv##S##_d##D(E* dk, E* dv, const E* q, const E* k, const E* v, const E* dout, const float* lse,    \
                               const float* delta, const int* seg, int T, int H, int rep, float scale, float sl2) {  \
    TR_FLASH_BODY((fa::bwd_dkdv<E, D>(dk, dv, q, k, v, dout, lse, delta, seg, T, H, rep, scale, sl2)));              \
  }

TR_FLASH(bf16, , 64)
TR_FLASH(bf16, , 128)
TR_FLASH(f16, _f16, 64)
TR_FLASH(f16, _f16, 128)
