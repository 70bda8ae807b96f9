// AVX-512 (F/BW/DQ/VL + VNNI) int8 GEMM family micro-kernels.
// int8 tiles: vpdpbusd of uint8 activations (int8 code + 128, or the uint8 code itself) with the
// packed weight, whose 16 x 4 block is exactly one zmm operand; the epilogue removes
// row_off[m] * colsum[n] exactly in int32. Products are u8 x s8 summed 4 at a time into int32
// without saturation, so any int8 weight (-128 included) is exact. Tile up to 6 rows x 64 columns
// (24 zmm accumulators). Epilogue in registers, masked for column tails, same float-op sequence as
// gemm_math.h (mul, mul, add; no FMA). Weight-only: int8 -> f32 in registers, FMA.
#include <immintrin.h>

#include <cstring>

#include "cpu/avx2/vec.h"  // load4 (the AVX-512 flags include AVX2 + F16C)
#include "cpu/avx512/gemm_epilogue.h"
#include "cpu/avx512/vec.h"
#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kMR = 6, kNB = 4;
constexpr int kWoMR = 12, kWoNR = 32, kWoDirectMR = 4;

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// vpdpbusd in place. GCC copies each accumulator around the intrinsic (and spills the copies)
// when 24 of them are live; the asm form keeps them in registers.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

template <int MR, int NB>
void tile_vnni(const uint8_t* a, int64_t lda, const int8_t* w, int64_t w_bstride, const int32_t* colsum, int64_t kq,
               int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  // Few rows: MR * NB chains cannot cover vpdpbusd's latency x throughput, so the k loop runs two
  // blocks at a time into two accumulator sets, added at the end (wrapping int32: exact).
  // No software prefetch: the NB streams are sequential, and on the AMD EPYC we measured a
  // +2 KiB prefetch made M=1 at 4096x11008 ~25% slower (2.03 -> 1.60 ms, one thread).
  constexpr int U = MR <= 2 ? 2 : 1;
  __m512i acc[U][MR][NB];
  FASTQ_UNROLL for (int u = 0; u < U; ++u)
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int j = 0; j < NB; ++j) acc[u][r][j] = _mm512_setzero_si512();
  auto step = [&](int u, int64_t q) __attribute__((always_inline)) {
    __m512i wv[NB];
    FASTQ_UNROLL for (int j = 0; j < NB; ++j) {
      const int8_t* p = w + j * w_bstride + q * kBlockBytes;
      wv[j] = _mm512_loadu_si512(p);
    }
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      const __m512i ab = _mm512_set1_epi32(load_i32(a + r * lda + q * kKR));
      FASTQ_UNROLL for (int j = 0; j < NB; ++j) acc[u][r][j] = _mm512_dpbusd_epi32(acc[u][r][j], ab, wv[j]);
    }
  };
  int64_t q = 0;
  if constexpr (U == 2) {
    for (; q + 2 <= kq; q += 2) {
      step(0, q);
      step(1, q + 1);
    }
    if (q < kq) step(0, q);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int j = 0; j < NB; ++j) acc[0][r][j] = _mm512_add_epi32(acc[0][r][j], acc[1][r][j]);
  } else {
    for (; q < kq; ++q) step(0, q);
  }
  // The epilogue works on the registers directly: no int32 tile is ever stored.
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < NB; ++j) {
      const int valid = n_valid - 16 * j;
      if (valid > 0) epilogue16(ep, m0 + r, n0 + 16 * j, acc[0][r][j], colsum + 16 * j, valid);
    }
}

template <int MR>
void tile_rows(const uint8_t* a, int64_t lda, const int8_t* w, int64_t w_bstride, const int32_t* colsum, int64_t kq,
               int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  switch ((n_valid + kNR - 1) / kNR) {
    case 1: tile_vnni<MR, 1>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 2: tile_vnni<MR, 2>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 3: tile_vnni<MR, 3>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    default: tile_vnni<MR, 4>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
  }
}

void gemm_u8s8s32_6x64__avx512vnni(const void* act, int64_t lda, int mr, const int8_t* w, int64_t w_bstride,
                       const int32_t* colsum, int64_t kq, int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  const uint8_t* a = static_cast<const uint8_t*>(act);
  switch (mr) {
    case 1: tile_rows<1>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 2: tile_rows<2>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 3: tile_rows<3>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 4: tile_rows<4>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    case 5: tile_rows<5>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
    default: tile_rows<6>(a, lda, w, w_bstride, colsum, kq, n_valid, ep, m0, n0); break;
  }
}

// Small-M int8_gemm: 64 k at a time, vpdpbusd of the uint8 rows (code + 128) with B; a vpdpbusd
// of ones with B gives sum(b), and 128 * sum(b) is taken off exactly. The K tail is a masked load.
template <int MR>
void dot_rows_t(const uint8_t* a, int64_t lda, const int8_t* b, int64_t kc, int32_t* out) {
  __m512i acc[MR];
  __m512i bsum = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  FASTQ_UNROLL for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < kc; k += 64) {
    const __mmask64 km = kc - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (kc - k)) - 1;
    const __m512i bv = _mm512_maskz_loadu_epi8(km, b + k);
    bsum = _mm512_dpbusd_epi32(bsum, ones, bv);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_loadu_si512(a + r * lda + k), bv);
  }
  const int32_t sb = _mm512_reduce_add_epi32(bsum);
  FASTQ_UNROLL for (int r = 0; r < MR; ++r) out[r] = sub_mul_wrap(_mm512_reduce_add_epi32(acc[r]), 128, sb);
}

void dot_u8s8s32_4xk__avx512vnni(const void* act, int64_t lda, int mr, const int8_t* b, int64_t kc, int32_t* out) {
  const uint8_t* a = static_cast<const uint8_t*>(act);
  switch (mr) {
    case 1: dot_rows_t<1>(a, lda, b, kc, out); break;
    case 2: dot_rows_t<2>(a, lda, b, kc, out); break;
    case 3: dot_rows_t<3>(a, lda, b, kc, out); break;
    default: dot_rows_t<4>(a, lda, b, kc, out); break;
  }
}

// ---- weight-only -------------------------------------------------------------------------------

// p[j] holds columns 4j..4j+3 (one per 128-bit lane), 4 k each -> 16 column sums in order.
inline __m512 reduce4(__m512 p0, __m512 p1, __m512 p2, __m512 p3) {
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_ps(p0, p1, 0x44), _mm512_shuffle_ps(p0, p1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_ps(p2, p3, 0x44), _mm512_shuffle_ps(p2, p3, 0xEE));
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x88), _mm512_shuffle_ps(s01, s23, 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

template <DType D, int MR>
void wo_direct_rows(const Int8LinearArgs& a, int64_t m0, int64_t nb0, int64_t nb1) {
  const int64_t k_pad = (a.k + kKR - 1) / kKR * kKR, G = a.scale_groups, gq = a.k / G / kKR;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int8_t* wb = a.w_packed + nb * k_pad * kNR;
    const int64_t n0 = nb * kNR;
    const int nv = a.n - n0 < kNR ? static_cast<int>(a.n - n0) : kNR;
    const __mmask16 km = tail_mask(nv);
    __m512 f[MR];
    for (int r = 0; r < MR; ++r) f[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      __m512 p[MR][4];
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < 4; ++j) p[r][j] = _mm512_setzero_ps();
      for (int64_t q = g * gq; q < (g + 1) * gq; ++q) {
        const int8_t* blk = wb + q * kBlockBytes;
        _mm_prefetch(reinterpret_cast<const char*>(blk) + 2048, _MM_HINT_T0);
        __m512 xb[MR];
        for (int r = 0; r < MR; ++r) xb[r] = _mm512_broadcast_f32x4(load4<D>(a.x, (m0 + r) * a.k + q * kKR));
        for (int j = 0; j < 4; ++j) {
          const __m512 wf = _mm512_cvtepi32_ps(
              _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16 * j))));
          for (int r = 0; r < MR; ++r) p[r][j] = _mm512_fmadd_ps(wf, xb[r], p[r][j]);
        }
      }
      const __m512 s = G == 1 ? _mm512_maskz_loadu_ps(km, a.w_scale + n0)
                              : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), km,
                                                         _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(G)),
                                                                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
                                                         a.w_scale + n0 * G + g, 4);
      for (int r = 0; r < MR; ++r) f[r] = _mm512_fmadd_ps(reduce4(p[r][0], p[r][1], p[r][2], p[r][3]), s, f[r]);
    }
    const __m512 b = a.bias ? _mm512_maskz_loadu_ps(km, a.bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) store_y16(a.y_dtype, a.y, (m0 + r) * a.n + n0, _mm512_add_ps(f[r], b), km);
  }
}

template <DType D>
void wo_direct_d(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  switch (mr) {
    case 1: wo_direct_rows<D, 1>(a, m0, nb0, nb1); break;
    case 2: wo_direct_rows<D, 2>(a, m0, nb0, nb1); break;
    case 3: wo_direct_rows<D, 3>(a, m0, nb0, nb1); break;
    default: wo_direct_rows<D, 4>(a, m0, nb0, nb1); break;
  }
}

void wo_f32s8_4x16__avx512(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  switch (a.x_dtype) {
    case DType::f32: wo_direct_d<DType::f32>(a, m0, mr, nb0, nb1); break;
    case DType::f16: wo_direct_d<DType::f16>(a, m0, mr, nb0, nb1); break;
    default: wo_direct_d<DType::bf16>(a, m0, mr, nb0, nb1); break;
  }
}

void dequant_s8f32_4x32__avx512(const int8_t* w, int64_t w_bstride, int nb, const float* const s[4], float* dst) {
  for (int j = 0; j < kWoNR / kNR; ++j) {
    if (j >= nb) {
      for (int r = 0; r < kKR; ++r) _mm512_storeu_ps(dst + r * kWoNR + 16 * j, _mm512_setzero_ps());
      continue;
    }
    const __m512i v = _mm512_loadu_si512(w + j * w_bstride);
    for (int r = 0; r < kKR; ++r) {
      const __m512i e = _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * r), 24);
      _mm512_storeu_ps(dst + r * kWoNR + 16 * j, _mm512_mul_ps(_mm512_cvtepi32_ps(e), _mm512_loadu_ps(s[r] + 16 * j)));
    }
  }
}

template <int MR>
void sgemm(const float* a, int64_t lda, const float* panel, int64_t kc, float* c, bool first) {
  __m512 acc[MR][2];
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < 2; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kWoNR), b1 = _mm512_loadu_ps(panel + k * kWoNR + 16);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  // Accumulating from zero and adding c afterwards keeps acc out of memory inside the k loop.
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < 2; ++j) {
      __m512 v = acc[r][j];
      if (!first) v = _mm512_add_ps(v, _mm512_loadu_ps(c + r * kWoNR + 16 * j));
      _mm512_storeu_ps(c + r * kWoNR + 16 * j, v);
    }
}

void sgemm_f32_12x32__avx512(const float* a, int64_t lda, int mr, const float* panel, int64_t kc, float* c, bool first) {
  switch (mr) {
    case 1: sgemm<1>(a, lda, panel, kc, c, first); break;
    case 2: sgemm<2>(a, lda, panel, kc, c, first); break;
    case 3: sgemm<3>(a, lda, panel, kc, c, first); break;
    case 4: sgemm<4>(a, lda, panel, kc, c, first); break;
    case 5: sgemm<5>(a, lda, panel, kc, c, first); break;
    case 6: sgemm<6>(a, lda, panel, kc, c, first); break;
    case 7: sgemm<7>(a, lda, panel, kc, c, first); break;
    case 8: sgemm<8>(a, lda, panel, kc, c, first); break;
    case 9: sgemm<9>(a, lda, panel, kc, c, first); break;
    case 10: sgemm<10>(a, lda, panel, kc, c, first); break;
    case 11: sgemm<11>(a, lda, panel, kc, c, first); break;
    default: sgemm<12>(a, lda, panel, kc, c, first); break;
  }
}

template <DType D>
void to_f32__avx512(const void* x, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<D>(x, i));
  for (; i < n; ++i) dst[i] = load_elem<D>(x, i);
}

// 12 independent vpdpbusd chains (64 u8 x s8 multiply-adds each), unrolled so the accumulators
// stay in registers (a rolled loop keeps them on the stack and measures store forwarding).
double peak_int8__avx512(int64_t iters) {
  __m512i acc[12];
  FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
  __asm__ volatile("" : "+v"(a), "+v"(b));
  for (int64_t it = 0; it < iters; ++it) {
    FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]), "+v"(acc[5]));
  }
  __m512i s = acc[0];
  FASTQ_UNROLL for (int i = 1; i < 12; ++i) s = _mm512_add_epi32(s, acc[i]);
  volatile int sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return static_cast<double>(iters) * 12 * 64 * 2;
}

double peak_fp32__avx512(int64_t iters) {
  __m512 acc[12];
  FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  __asm__ volatile("" : "+v"(a), "+v"(b));
  for (int64_t it = 0; it < iters; ++it) {
    FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]), "+v"(acc[5]));
  }
  __m512 s = acc[0];
  FASTQ_UNROLL for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return static_cast<double>(iters) * 12 * 16 * 2;
}

}  // namespace

const GemmKernels gemm_kernels_avx512 = {
    kActU8Offset, kMR, kNB * kNR, gemm_u8s8s32_6x64__avx512vnni, dot_u8s8s32_4xk__avx512vnni,
    kWoDirectMR, wo_f32s8_4x16__avx512,
    kWoMR, kWoNR, dequant_s8f32_4x32__avx512, sgemm_f32_12x32__avx512,
    {to_f32__avx512<DType::f32>, to_f32__avx512<DType::f16>, to_f32__avx512<DType::bf16>},
    peak_int8__avx512, peak_fp32__avx512,
};

}  // namespace fastq::cpu
