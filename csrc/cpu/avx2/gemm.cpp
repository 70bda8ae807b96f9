// AVX2 (+FMA, F16C) int8 GEMM family micro-kernels.
// int8 tiles: int16 activations (code - zero point) x int8 weights sign-extended to int16, summed
// by vpmaddwd into int32 pairs: exact for any int8/uint8 codes (no vpmaddubsw saturation, no 7-bit
// activations). Tile 4 rows x 8 columns (half a packed block; 8 accumulators).
// Epilogue in registers, same float-op sequence as gemm_math.h (mul, mul, add; no FMA); column
// tails go through the scalar epilogue_elem. Weight-only: int8 -> f32 in registers, FMA.
#include <immintrin.h>

#include <cstring>

#include "cpu/avx2/vec.h"
#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kMR = 4;
constexpr int kWoMR = 6, kWoNR = 16;

inline int64_t load_i64(const void* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline void store_y8(DType d, void* y, int64_t i, __m256 v) {
  switch (d) {
    case DType::f32: store8<DType::f32>(y, i, v); break;
    case DType::f16: store8<DType::f16>(y, i, v); break;
    default: store8<DType::bf16>(y, i, v); break;
  }
}

// Epilogue of 8 columns [n, n + 8) of row m; raw = the tile's accumulators.
inline void epilogue8(const GemmEpilogue& ep, int64_t m, int64_t n, __m256i raw, const int32_t* colsum, int valid) {
  if (valid < 8) {
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), raw);
    for (int c = 0; c < valid; ++c) epilogue_elem(ep, m, n + c, t[c], colsum[c]);
    return;
  }
  __m256i v = raw;
  if (ep.row_off) {
    const __m256i cs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(colsum));
    v = _mm256_sub_epi32(v, _mm256_mullo_epi32(_mm256_set1_epi32(ep.row_off[m]), cs));
  }
  if (ep.c) {
    __m256i* c = reinterpret_cast<__m256i*>(ep.c + m * ep.ldc + n);
    if (ep.accumulate) v = _mm256_add_epi32(v, _mm256_loadu_si256(c));
    _mm256_storeu_si256(c, v);
    return;
  }
  const __m256 s = _mm256_mul_ps(_mm256_set1_ps(ep.a_scale[m]), _mm256_loadu_ps(ep.w_scale + n));
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), s);
  if (ep.bias) f = _mm256_add_ps(f, _mm256_loadu_ps(ep.bias + n));
  store_y8(ep.y_dtype, ep.y, m * ep.ldy + n, f);
}

// MR rows x 8 columns (half h of a 16-column block): 2 * MR accumulators of [column x 2 partial
// sums], 2 weight and MR activation registers, which fits the 16 ymm registers for MR = 4.
template <int MR>
void tile_s16(const int16_t* a, int64_t lda, const int8_t* w, int h, const int32_t* colsum, int64_t kq, int n_valid,
              const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  __m256i acc[MR][2];
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < 2; ++j) acc[r][j] = _mm256_setzero_si256();
  const int8_t* wh = w + 32 * h;
  for (int64_t q = 0; q < kq; ++q) {
    const int8_t* blk = wh + q * kBlockBytes;
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 16)));
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      const __m256i ab = _mm256_set1_epi64x(load_i64(a + r * lda + q * kKR));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(w0, ab));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(w1, ab));
    }
  }
  FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
    // [c0 c0' c1 c1' | c2 c2' c3 c3'] pairs -> 8 column sums in order.
    const __m256i v = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    epilogue8(ep, m0 + r, n0 + 8 * h, v, colsum + 8 * h, n_valid < 8 ? n_valid : 8);
  }
}

void gemm_s16s8s32_4x8__avx2(const void* act, int64_t lda, int mr, const int8_t* w, int64_t w_bstride,
                     const int32_t* colsum, int64_t kq, int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  const int16_t* a = static_cast<const int16_t*>(act);
  for (int nb = 0; nb * kNR < n_valid; ++nb) {
    const int8_t* wb = w + nb * w_bstride;
    for (int h = 0; h < 2; ++h) {
      const int nv = n_valid - nb * kNR - 8 * h;
      if (nv <= 0) break;
      const int32_t* cs = colsum + nb * kNR;
      const int64_t n1 = n0 + nb * kNR;
      switch (mr) {
        case 1: tile_s16<1>(a, lda, wb, h, cs, kq, nv, ep, m0, n1); break;
        case 2: tile_s16<2>(a, lda, wb, h, cs, kq, nv, ep, m0, n1); break;
        case 3: tile_s16<3>(a, lda, wb, h, cs, kq, nv, ep, m0, n1); break;
        default: tile_s16<4>(a, lda, wb, h, cs, kq, nv, ep, m0, n1); break;
      }
    }
  }
}

// Small-M int8_gemm: 16 k at a time, B sign-extended to int16, vpmaddwd with each row.
template <int MR>
void dot_rows_t(const int16_t* a, int64_t lda, const int8_t* b, int64_t kc, int32_t* out) {
  __m256i acc[MR];
  FASTQ_UNROLL for (int r = 0; r < MR; ++r) acc[r] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    const __m256i bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k)));
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(bv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k))));
  }
  FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), acc[r]);
    int32_t s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    for (int64_t kk = k; kk < kc; ++kk) s += static_cast<int32_t>(a[r * lda + kk]) * b[kk];
    out[r] = s;
  }
}

void dot_s16s8s32_4xk__avx2(const void* act, int64_t lda, int mr, const int8_t* b, int64_t kc, int32_t* out) {
  const int16_t* a = static_cast<const int16_t*>(act);
  switch (mr) {
    case 1: dot_rows_t<1>(a, lda, b, kc, out); break;
    case 2: dot_rows_t<2>(a, lda, b, kc, out); break;
    case 3: dot_rows_t<3>(a, lda, b, kc, out); break;
    default: dot_rows_t<4>(a, lda, b, kc, out); break;
  }
}

// ---- weight-only -------------------------------------------------------------------------------

// p[j] holds columns 2j (low lane) and 2j + 1 (high lane), 4 k each -> 8 column sums in order.
inline __m256 reduce4(__m256 p0, __m256 p1, __m256 p2, __m256 p3) {
  const __m256 s01 = _mm256_add_ps(_mm256_shuffle_ps(p0, p1, 0x44), _mm256_shuffle_ps(p0, p1, 0xEE));
  const __m256 s23 = _mm256_add_ps(_mm256_shuffle_ps(p2, p3, 0x44), _mm256_shuffle_ps(p2, p3, 0xEE));
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, 0x88), _mm256_shuffle_ps(s01, s23, 0xDD));
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <DType D>
void wo_direct_rows(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  const int64_t k_pad = (a.k + kKR - 1) / kKR * kKR, G = a.scale_groups, gq = a.k / G / kKR;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int8_t* wb = a.w_packed + nb * k_pad * kNR;
    const int64_t n0 = nb * kNR;
    const int nv = a.n - n0 < kNR ? static_cast<int>(a.n - n0) : kNR;
    for (int r = 0; r < mr; ++r) {
      const int64_t m = m0 + r;
      __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
      for (int64_t g = 0; g < G; ++g) {
        __m256 p[8];
        for (int j = 0; j < 8; ++j) p[j] = _mm256_setzero_ps();
        for (int64_t q = g * gq; q < (g + 1) * gq; ++q) {
          const __m128 x4 = load4<D>(a.x, m * a.k + q * kKR);
          const __m256 xb = _mm256_insertf128_ps(_mm256_castps128_ps256(x4), x4, 1);
          const int8_t* blk = wb + q * kBlockBytes;
          _mm_prefetch(reinterpret_cast<const char*>(blk) + 1024, _MM_HINT_T0);
          for (int j = 0; j < 8; ++j) {
            const __m256i wi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 8 * j)));
            p[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wi), xb, p[j]);
          }
        }
        alignas(32) float s[kNR];
        for (int c = 0; c < kNR; ++c) s[c] = c < nv ? wo_scale(a, n0 + c, g) : 0.0f;
        f0 = _mm256_fmadd_ps(reduce4(p[0], p[1], p[2], p[3]), _mm256_load_ps(s), f0);
        f1 = _mm256_fmadd_ps(reduce4(p[4], p[5], p[6], p[7]), _mm256_load_ps(s + 8), f1);
      }
      alignas(32) float out[kNR];
      _mm256_store_ps(out, f0);
      _mm256_store_ps(out + 8, f1);
      if (nv == kNR && a.bias == nullptr) {
        store_y8(a.y_dtype, a.y, m * a.n + n0, f0);
        store_y8(a.y_dtype, a.y, m * a.n + n0 + 8, f1);
      } else {
        for (int c = 0; c < nv; ++c) store_out(a.y_dtype, a.y, m * a.n + n0 + c, a.bias ? out[c] + a.bias[n0 + c] : out[c]);
      }
    }
  }
}

void wo_f32s8_1x16__avx2(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  switch (a.x_dtype) {
    case DType::f32: wo_direct_rows<DType::f32>(a, m0, mr, nb0, nb1); break;
    case DType::f16: wo_direct_rows<DType::f16>(a, m0, mr, nb0, nb1); break;
    default: wo_direct_rows<DType::bf16>(a, m0, mr, nb0, nb1); break;
  }
}

void dequant_s8f32_4x16__avx2(const int8_t* w, int64_t, int nb, const float* const s[4], float* dst) {
  for (int h = 0; h < 2; ++h) {
    if (nb < 1) {
      for (int r = 0; r < kKR; ++r) _mm256_storeu_ps(dst + r * kWoNR + 8 * h, _mm256_setzero_ps());
      continue;
    }
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * h));
    for (int r = 0; r < kKR; ++r) {
      const __m256i e = _mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * r), 24);
      _mm256_storeu_ps(dst + r * kWoNR + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(e), _mm256_loadu_ps(s[r] + 8 * h)));
    }
  }
}

template <int MR>
void sgemm(const float* a, int64_t lda, const float* panel, int64_t kc, float* c, bool first) {
  __m256 acc[MR][2];
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < 2; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kWoNR), b1 = _mm256_loadu_ps(panel + k * kWoNR + 8);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  // Accumulating from zero and adding c afterwards keeps acc out of memory inside the k loop.
  FASTQ_UNROLL for (int r = 0; r < MR; ++r)
    FASTQ_UNROLL for (int j = 0; j < 2; ++j) {
      __m256 v = acc[r][j];
      if (!first) v = _mm256_add_ps(v, _mm256_loadu_ps(c + r * kWoNR + 8 * j));
      _mm256_storeu_ps(c + r * kWoNR + 8 * j, v);
    }
}

void sgemm_f32_6x16__avx2(const float* a, int64_t lda, int mr, const float* panel, int64_t kc, float* c, bool first) {
  switch (mr) {
    case 1: sgemm<1>(a, lda, panel, kc, c, first); break;
    case 2: sgemm<2>(a, lda, panel, kc, c, first); break;
    case 3: sgemm<3>(a, lda, panel, kc, c, first); break;
    case 4: sgemm<4>(a, lda, panel, kc, c, first); break;
    case 5: sgemm<5>(a, lda, panel, kc, c, first); break;
    default: sgemm<6>(a, lda, panel, kc, c, first); break;
  }
}

template <DType D>
void to_f32__avx2(const void* x, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<D>(x, i));
  for (; i < n; ++i) dst[i] = load_elem<D>(x, i);
}

// 12 independent vpmaddwd + vpaddd chains: the int8 (via int16) multiply-add rate our tiles use.
double peak_int8__avx2(int64_t iters) {
  __m256i acc[12];
  FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_epi32(i);
  __m256i a = _mm256_set1_epi16(3), b = _mm256_set1_epi16(5);
  __asm__ volatile("" : "+x"(a), "+x"(b));
  for (int64_t it = 0; it < iters; ++it) {
    FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(a, b));
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(acc[4]), "+x"(acc[5]));
  }
  __m256i s = acc[0];
  FASTQ_UNROLL for (int i = 1; i < 12; ++i) s = _mm256_add_epi32(s, acc[i]);
  volatile int sink = _mm256_extract_epi32(s, 0);
  (void)sink;
  return static_cast<double>(iters) * 12 * 16 * 2;
}

double peak_fp32__avx2(int64_t iters) {
  __m256 acc[12];
  FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  __asm__ volatile("" : "+x"(a), "+x"(b));
  for (int64_t it = 0; it < iters; ++it) {
    FASTQ_UNROLL for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(acc[4]), "+x"(acc[5]));
  }
  __m256 s = acc[0];
  FASTQ_UNROLL for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  volatile float sink = _mm256_cvtss_f32(s);
  (void)sink;
  return static_cast<double>(iters) * 12 * 8 * 2;
}

}  // namespace

const GemmKernels gemm_kernels_avx2 = {
    kActS16, kMR, kNR, gemm_s16s8s32_4x8__avx2, dot_s16s8s32_4xk__avx2,
    1, wo_f32s8_1x16__avx2,
    kWoMR, kWoNR, dequant_s8f32_4x16__avx2, sgemm_f32_6x16__avx2,
    {to_f32__avx2<DType::f32>, to_f32__avx2<DType::f16>, to_f32__avx2<DType::bf16>},
    peak_int8__avx2, peak_fp32__avx2,
};

}  // namespace fastq::cpu
