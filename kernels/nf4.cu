#include "common.cuh"

// NF4 4-bit weights and the counter-based normal generator, bit for bit the
// twins of ops/nf4.go (ops.CPU's DequantNF4, QuantizeNF4 and FillNormal):
// every float operation is spelled with an explicit rounding (__fmul_rn,
// __fadd_rn, __fdiv_rn, __dmul_rn, ...) so that nvcc cannot contract a product
// and a sum into an FMA (its default, -fmad=true). Element indices are 64-bit:
// a 70B MLP matrix has 235M weights and a model's buffers can exceed 2^31
// values.
//
// Layout (ops.NF4): N weights in blocks of blockSize (even), two 4-bit codes per
// byte, weight 2j in the high nibble of byte j and 2j+1 in the low one; one
// float absmax per block, or with double quantization one byte code per block
// into a 256-entry float map, scaled per `nested` codes by absmax2 and shifted
// by offset.

typedef unsigned char u8;
typedef unsigned long long u64;

// ops.NF4Code, the code book: code q stands for tr_nf4_code[q] x absmax. The
// literals are ops' (bitsandbytes' table), each rounded to float once.
__constant__ float tr_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

// a / d for a < 2^64, d < 2^32, in 32 bits when a fits (a 64-bit division is a
// long software sequence; a model's weight counts fit 32 bits in bytes).
__device__ __forceinline__ u64 tr_udiv(u64 a, unsigned d) {
  return a <= 0xffffffffULL ? (u64)((unsigned)a / d) : a / d;
}

// a / d, or a >> shift when d = 2^shift (shift >= 0).
__device__ __forceinline__ u64 tr_div_or_shift(u64 a, unsigned d, int shift) {
  return shift >= 0 ? a >> shift : tr_udiv(a, d);
}

// The absmax of block b: absmax[b], or with double quantization (absmax null)
// ops.NF4Scale: float(map[codes[b]] * absmax2[b / nested]) + offset, two
// float roundings.
__device__ __forceinline__ float nf4_scale_at(u64 b, const float* absmax, const u8* codes, const float* absmax2,
                                              const float* cmap, unsigned nested, int nshift, float offset) {
  if (absmax != nullptr) return absmax[b];
  return __fadd_rn(__fmul_rn(cmap[codes[b]], absmax2[tr_div_or_shift(b, nested, nshift)]), offset);
}

// One chunk of values into 16 aligned bytes of out: four floats, or eight
// bf16 or f16 rounded to nearest even.
__device__ __forceinline__ void store_chunk(float* o, const float* v) {
  *reinterpret_cast<float4*>(o) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_chunk(bf16* o, const float* v) {
  unsigned h[4];  // __floats2bfloat162_rn: one cvt.rn.bf16x2.f32 per pair, element 2e in the low half
#pragma unroll
  for (int e = 0; e < 4; e++) {
    __nv_bfloat162 p = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
    h[e] = *reinterpret_cast<unsigned*>(&p);
  }
  *reinterpret_cast<uint4*>(o) = make_uint4(h[0], h[1], h[2], h[3]);
}
__device__ __forceinline__ void store_chunk(f16* o, const float* v) {
  unsigned h[4];  // __floats2half2_rn: element 2e in the low half
#pragma unroll
  for (int e = 0; e < 4; e++) {
    __half2 p = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
    h[e] = *reinterpret_cast<unsigned*>(&p);
  }
  *reinterpret_cast<uint4*>(o) = make_uint4(h[0], h[1], h[2], h[3]);
}

// Dequantization, ops.CPU's DequantNF4: out[i] = code(i) x scale(i / blockSize),
// one float product rounded once to T.
//
// Work split: a chunk is C packed bytes, 2C weights, 16 bytes of out (C = 4 for
// bf16, 2 for f32), so that a warp's store of one chunk per lane writes 512
// contiguous bytes. Each thread does R chunks, blockDim chunks apart, issuing
// its R loads (codes and scales) before any arithmetic. Vector loads and
// stores where packed + j and out + i are aligned, byte and element accesses
// otherwise and at the tail. Block and nested-block indices are shifts when
// the host found those sizes powers of two (bshift, nshift >= 0), divisions
// otherwise; the scale is rebuilt when a chunk's bytes cross a block boundary
// (blocks of 2 or 6 weights do). The code book sits in shared memory: 16 words
// in 16 banks, so any mix of codes in a warp reads without conflicts. Traffic
// per weight: 1/2 byte read, 2 (bf16) or 4 (f32) bytes written, plus the
// absmaxes (1/16 byte per weight at blocks of 64) from cache.
template <typename T, int R>
__device__ __forceinline__ void dequant_nf4_t(T* out, const u8* packed, const float* absmax, const u8* codes,
                                              const float* absmax2, const float* cmap, long long n, int blockSize,
                                              int bshift, int nested, int nshift, float offset) {
  constexpr int C = 8 / sizeof(T);  // packed bytes per chunk
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = tr_nf4_code[threadIdx.x];
  __syncthreads();
  const u64 nbytes = ((u64)n + 1) / 2;
  const u64 j0 = (u64)blockIdx.x * blockDim.x * (C * R) + threadIdx.x * C;
  const unsigned stride = blockDim.x * C;
  if (j0 >= nbytes) return;
  const unsigned bpb = (unsigned)blockSize / 2;  // bytes per block
  const int pshift = bshift >= 0 ? bshift - 1 : -1;
  const bool alignedIn = (reinterpret_cast<u64>(packed) & (C - 1)) == 0;
  unsigned word[R];
  float scale[R];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const u64 j = j0 + (u64)r * stride;
    word[r] = 0;
    if (j + C <= nbytes && alignedIn) {
      if constexpr (C == 4) {
        word[r] = *reinterpret_cast<const unsigned*>(packed + j);
      } else {
        word[r] = *reinterpret_cast<const unsigned short*>(packed + j);
      }
    } else {
      for (int k = 0; k < C; k++)
        if (j + k < nbytes) word[r] |= (unsigned)packed[j + k] << (8 * k);
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    const u64 j = j0 + (u64)r * stride;
    scale[r] = 0.f;
    if (j < nbytes)
      scale[r] = nf4_scale_at(tr_div_or_shift(j, bpb, pshift), absmax, codes, absmax2, cmap, (unsigned)nested, nshift,
                              offset);
  }
  const bool alignedOut = (reinterpret_cast<u64>(out) & 15) == 0;
#pragma unroll
  for (int r = 0; r < R; r++) {
    const u64 j = j0 + (u64)r * stride;
    if (j >= nbytes) break;
    float v[2 * C];
    float sc = scale[r];
    if (bpb % C == 0) {  // the chunk lies in one block
#pragma unroll
      for (int k = 0; k < C; k++) {
        unsigned b = (word[r] >> (8 * k)) & 0xff;
        v[2 * k] = __fmul_rn(code[b >> 4], sc);
        v[2 * k + 1] = __fmul_rn(code[b & 15], sc);
      }
    } else {
      u64 blk = tr_div_or_shift(j, bpb, pshift);
      unsigned rem = (unsigned)(j - blk * bpb);  // byte j's place in its block
      for (int k = 0; k < C; k++) {
        if (k > 0 && ++rem == bpb) {  // byte j+k starts the next block
          rem = 0;
          blk++;
          if (j + k < nbytes) sc = nf4_scale_at(blk, absmax, codes, absmax2, cmap, (unsigned)nested, nshift, offset);
        }
        unsigned b = (word[r] >> (8 * k)) & 0xff;
        v[2 * k] = __fmul_rn(code[b >> 4], sc);
        v[2 * k + 1] = __fmul_rn(code[b & 15], sc);
      }
    }
    const u64 i = 2 * j;
    if (i + 2 * C <= (u64)n && alignedOut) {
      store_chunk(out + i, v);
    } else {
      for (int e = 0; e < 2 * C; e++)
        if (i + e < (u64)n) out[i + e] = fromf<T>(v[e]);
    }
  }
}
// R: 2 chunks per thread for f32 out, 8 for bf16 (kernels/nf4.go's
// dequantChunks; the fastest of 1, 2, 4, 8 on an H200, 128 threads a block:
// 8192x28672 weights in 0.27 ms into f32, 0.16 ms into bf16, 0.19 ms with
// double quantization).
extern "C" __global__ void dequant_nf4_f32(float* out, const u8* packed, const float* absmax, const u8* codes,
                                           const float* absmax2, const float* cmap, long long n, int blockSize,
                                           int bshift, int nested, int nshift, float offset) {
  dequant_nf4_t<float, 2>(out, packed, absmax, codes, absmax2, cmap, n, blockSize, bshift, nested, nshift, offset);
}
extern "C" __global__ void dequant_nf4_bf16(bf16* out, const u8* packed, const float* absmax, const u8* codes,
                                            const float* absmax2, const float* cmap, long long n, int blockSize,
                                            int bshift, int nested, int nshift, float offset) {
  dequant_nf4_t<bf16, 8>(out, packed, absmax, codes, absmax2, cmap, n, blockSize, bshift, nested, nshift, offset);
}
extern "C" __global__ void dequant_nf4_f16(f16* out, const u8* packed, const float* absmax, const u8* codes,
                                           const float* absmax2, const float* cmap, long long n, int blockSize,
                                           int bshift, int nested, int nshift, float offset) {
  dequant_nf4_t<f16, 8>(out, packed, absmax, codes, absmax2, cmap, n, blockSize, bshift, nested, nshift, offset);
}

// ops.NF4Index: the number of ops.NF4Thresholds that x lies strictly above (a
// NaN lies above none: code 0). The literals are ops' (bitsandbytes'
// dQuantizeNF4's), each rounded straight from decimal to float, as Go rounds
// its float32 constants; counting the comparisons equals ops' binary search
// since the thresholds are sorted.
__device__ __forceinline__ unsigned nf4_index(float x) {
  return (unsigned)(x > -0.8480964004993439f) + (unsigned)(x > -0.6106329262256622f) +
         (unsigned)(x > -0.4599952697753906f) + (unsigned)(x > -0.33967943489551544f) +
         (unsigned)(x > -0.23460740596055984f) + (unsigned)(x > -0.13791173323988914f) +
         (unsigned)(x > -0.045525018125772476f) + (unsigned)(x > 0.03979014977812767f) +
         (unsigned)(x > 0.1202552504837513f) + (unsigned)(x > 0.2035212516784668f) +
         (unsigned)(x > 0.2920137718319893f) + (unsigned)(x > 0.3893125355243683f) +
         (unsigned)(x > 0.5016634166240692f) + (unsigned)(x > 0.6427869200706482f) +
         (unsigned)(x > 0.8614784181118011f);
}

// Quantization, ops.QuantizeNF4Block per block: one warp per block of
// blockSize values of x (the last may be shorter, and odd). absmax = max |x|
// (a NaN anywhere makes it NaN, as Go's max does), inv = 1/absmax (IEEE float
// division), code = nf4_index(x * inv) (one float product); an all-zero block
// has inv = +Inf and every product 0 x Inf = NaN: code 0. Lane l writes bytes
// l, l+32, ... of the block; an odd block ends with the code of 0 x inv in its
// last low nibble. The whole warp returns together, so the shuffles see 32
// lanes.
extern "C" __global__ void quantize_nf4(u8* packed, float* absmax, const float* x, long long n, int blockSize) {
  const u64 w = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const unsigned lane = threadIdx.x & 31;
  const u64 blocks = tr_udiv((u64)n + blockSize - 1, (unsigned)blockSize);
  if (w >= blocks) return;
  const u64 start = w * (u64)blockSize;
  const unsigned len = (unsigned)min((u64)blockSize, (u64)n - start);
  const float* xb = x + start;
  float m = 0.f;
  bool isnan_ = false;
  for (unsigned i = lane; i < len; i += 32) {
    float a = fabsf(xb[i]);
    isnan_ |= a != a;
    m = fmaxf(m, a);
  }
  m = warp_max(m);
  if (__any_sync(0xffffffffu, isnan_)) m = __int_as_float(0x7fc00000);
  const float inv = __fdiv_rn(1.f, m);
  u8* pb = packed + start / 2;
  const unsigned pairs = (len + 1) / 2;
  for (unsigned p = lane; p < pairs; p += 32) {
    float hi = xb[2 * p], lo = 2 * p + 1 < len ? xb[2 * p + 1] : 0.f;
    pb[p] = (u8)(nf4_index(__fmul_rn(hi, inv)) << 4 | nf4_index(__fmul_rn(lo, inv)));
  }
  if (lane == 0) absmax[w] = m;
}

// splitmix64's finaliser, ops.Splitmix64.
__device__ __forceinline__ u64 tr_splitmix64(u64 x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// FillNormal, ops.FillNormalHost's formula from element 0: one thread per pair
// (2j, 2j+1), the Box-Muller transform in double of u1 = (mix(key+2j)>>11 + 1)
// / 2^53 in (0, 1] and u2 = (mix(key+2j+1)>>11) / 2^53 in [0, 1): r =
// sqrt(-2 log u1) x std, (s, c) = sincos(2 pi u2), out[2j] = float(r c) and
// out[2j+1] = float(r s), rounded once more to T. The products, sqrt and the
// conversions are correctly rounded, as Go's are; CUDA's double log and sincos
// are within an ulp or two of Go's (math.Log, math.Sincos) but not always
// equal, so a rare value differs from the host's by one float ulp
// (ops.Backend.FillNormal allows it).
template <typename T>
__device__ __forceinline__ void fill_normal_t(T* out, long long n, u64 key, double std) {
  const u64 i = ((u64)blockIdx.x * blockDim.x + threadIdx.x) * 2;
  if (i >= (u64)n) return;
  const double two53inv = 1.0 / 9007199254740992.0;  // 2^-53: exact
  double u1 = __dmul_rn(__dadd_rn((double)(tr_splitmix64(key + i) >> 11), 1.0), two53inv);
  double u2 = __dmul_rn((double)(tr_splitmix64(key + i + 1) >> 11), two53inv);
  double r = __dmul_rn(__dsqrt_rn(__dmul_rn(-2.0, log(u1))), std);
  double s, c;
  sincos(__dmul_rn(6.283185307179586476925286766559, u2), &s, &c);  // float64(2*math.Pi)
  out[i] = fromf<T>(__double2float_rn(__dmul_rn(r, c)));
  if (i + 1 < (u64)n) out[i + 1] = fromf<T>(__double2float_rn(__dmul_rn(r, s)));
}
TR_KERNEL_FLOATS(fill_normal, (T * out, long long n, unsigned long long key, double std), (out, n, key, std))
