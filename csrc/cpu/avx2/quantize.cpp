// AVX2 (+FMA, F16C) quantize/dequantize micro-kernels, 32 elements per main-loop step.
// Same float-op sequence as quant_math.h (x * inv_scale, NaN -> 0 / zero point, clamp, round
// half to even); tails use the scalar element functions, so results match bit for bit.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/avx2/vec.h"

namespace fastq::cpu {
namespace {

inline __m256i abs_bits(__m256 v) {
  return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff));
}

template <DType D>
uint32_t absmax_bits__avx2(const void* x, int64_t n) {
  __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_epu32(m0, abs_bits(load8<D>(x, i)));
    m1 = _mm256_max_epu32(m1, abs_bits(load8<D>(x, i + 8)));
    m2 = _mm256_max_epu32(m2, abs_bits(load8<D>(x, i + 16)));
    m3 = _mm256_max_epu32(m3, abs_bits(load8<D>(x, i + 24)));
  }
  for (; i + 8 <= n; i += 8) m0 = _mm256_max_epu32(m0, abs_bits(load8<D>(x, i)));
  m0 = _mm256_max_epu32(_mm256_max_epu32(m0, m1), _mm256_max_epu32(m2, m3));
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), m0);
  uint32_t m = *std::max_element(lanes, lanes + 8);
  for (; i < n; ++i) m = std::max(m, f32_bits(load_elem<D>(x, i)) & 0x7fffffffu);
  return m;
}

template <DType D>
bool minmax__avx2(const void* x, int64_t n, float* mn, float* mx) {
  __m256 lo = _mm256_set1_ps(*mn), hi = _mm256_set1_ps(*mx);
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = load8<D>(x, i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    lo = _mm256_min_ps(lo, v);  // a NaN in v leaves lo unchanged (minps returns the 2nd operand)
    hi = _mm256_max_ps(hi, v);
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, lo);
  _mm256_store_ps(h, hi);
  float a = *std::min_element(l, l + 8), b = *std::max_element(h, h + 8);
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (; i < n; ++i) {
    const float v = load_elem<D>(x, i);
    any_nan |= v != v;
    a = std::min(a, v);
    b = std::max(b, v);
  }
  *mn = a;
  *mx = b;
  return any_nan;
}

// x * inv, NaN -> 0, clamped to [-127, 127] and rounded half to even, as int32 lanes.
inline __m256i quant_sym8(__m256 x, __m256 inv) {
  __m256 v = _mm256_mul_ps(x, inv);
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// round(x * inv) + zp clamped to [0, 255]; NaN -> zp.
inline __m256i quant_asym8(__m256 x, __m256 inv, __m256 zp) {
  const __m256 v = _mm256_mul_ps(x, inv);
  const __m256 ord = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
  __m256 r = _mm256_add_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
  r = _mm256_blendv_ps(zp, r, ord);
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
  return _mm256_cvtps_epi32(r);
}

// 32 int32 lanes (already in range) -> 32 bytes in order.
inline __m256i pack_s8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
inline __m256i pack_u8(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  return _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <DType D>
void quant_sym__avx2(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i r = pack_s8(quant_sym8(load8<D>(x, i), inv), quant_sym8(load8<D>(x, i + 8), inv),
                              quant_sym8(load8<D>(x, i + 16), inv), quant_sym8(load8<D>(x, i + 24), inv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), r);
  }
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

template <DType D>
void quant_asym__avx2(const void* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale), zp = _mm256_set1_ps(static_cast<float>(zero_point));
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i r = pack_u8(quant_asym8(load8<D>(x, i), inv, zp), quant_asym8(load8<D>(x, i + 8), inv, zp),
                              quant_asym8(load8<D>(x, i + 16), inv, zp), quant_asym8(load8<D>(x, i + 24), inv, zp));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), r);
  }
  for (; i < n; ++i) q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
}

template <DType D>
void dequant_sym__avx2(const int8_t* q, int64_t n, float scale, void* y) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    store8<D>(y, i, _mm256_mul_ps(_mm256_cvtepi32_ps(c), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
}

template <DType D>
void dequant_asym__avx2(const uint8_t* q, int64_t n, float scale, int32_t zero_point, void* y) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i zp = _mm256_set1_epi32(zero_point);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    store8<D>(y, i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, zp)), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
}

}  // namespace

#define FASTQ_BY_DTYPE(fn) {fn<DType::f32>, fn<DType::f16>, fn<DType::bf16>}
const QuantKernels quant_kernels_avx2 = {
    FASTQ_BY_DTYPE(absmax_bits__avx2), FASTQ_BY_DTYPE(minmax__avx2),
    FASTQ_BY_DTYPE(quant_sym__avx2),   FASTQ_BY_DTYPE(quant_asym__avx2),
    FASTQ_BY_DTYPE(dequant_sym__avx2), FASTQ_BY_DTYPE(dequant_asym__avx2),
};
#undef FASTQ_BY_DTYPE

}  // namespace fastq::cpu
