// AVX-512 (F/BW/DQ/VL) quantize/dequantize micro-kernels, 64 elements per main-loop step.
// Same float-op sequence as quant_math.h; tails use the scalar element functions.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/avx512/vec.h"

namespace fastq::cpu {
namespace {

inline __m512i abs_bits(__m512 v) {
  return _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
}

template <DType D>
uint32_t absmax_bits__avx512(const void* x, int64_t n) {
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_epu32(m0, abs_bits(load16<D>(x, i)));
    m1 = _mm512_max_epu32(m1, abs_bits(load16<D>(x, i + 16)));
    m2 = _mm512_max_epu32(m2, abs_bits(load16<D>(x, i + 32)));
    m3 = _mm512_max_epu32(m3, abs_bits(load16<D>(x, i + 48)));
  }
  for (; i + 16 <= n; i += 16) m0 = _mm512_max_epu32(m0, abs_bits(load16<D>(x, i)));
  uint32_t m = _mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_max_epu32(m0, m1), _mm512_max_epu32(m2, m3)));
  for (; i < n; ++i) m = std::max(m, f32_bits(load_elem<D>(x, i)) & 0x7fffffffu);
  return m;
}

template <DType D>
bool minmax__avx512(const void* x, int64_t n, float* mn, float* mx) {
  __m512 lo = _mm512_set1_ps(*mn), hi = _mm512_set1_ps(*mx);
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = load16<D>(x, i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    lo = _mm512_min_ps(lo, v);  // a NaN in v leaves lo unchanged
    hi = _mm512_max_ps(hi, v);
  }
  float a = _mm512_reduce_min_ps(lo), b = _mm512_reduce_max_ps(hi);
  bool any_nan = nan != 0;
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

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

inline __m128i quant_sym16(__m512 x, __m512 inv) {
  __m512 v = _mm512_mul_ps(x, inv);
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_roundscale_ps(v, kRne)));
}

inline __m128i quant_asym16(__m512 x, __m512 inv, __m512 zp) {
  const __m512 v = _mm512_mul_ps(x, inv);
  __m512 r = _mm512_add_ps(_mm512_roundscale_ps(v, kRne), zp);
  r = _mm512_mask_mov_ps(zp, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), r);
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
  return _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(r));
}

template <DType D>
void quant_sym__avx512(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int j = 0; j < 64; j += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i + j), quant_sym16(load16<D>(x, i + j), inv));
  }
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), quant_sym16(load16<D>(x, i), inv));
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

template <DType D>
void quant_asym__avx512(const void* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale), zp = _mm512_set1_ps(static_cast<float>(zero_point));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int j = 0; j < 64; j += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i + j), quant_asym16(load16<D>(x, i + j), inv, zp));
  }
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), quant_asym16(load16<D>(x, i), inv, zp));
  for (; i < n; ++i) q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
}

template <DType D>
void dequant_sym__avx512(const int8_t* q, int64_t n, float scale, void* y) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i c = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    store16<D>(y, i, _mm512_mul_ps(_mm512_cvtepi32_ps(c), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
}

template <DType D>
void dequant_asym__avx512(const uint8_t* q, int64_t n, float scale, int32_t zero_point, void* y) {
  const __m512 s = _mm512_set1_ps(scale);
  const __m512i zp = _mm512_set1_epi32(zero_point);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    store16<D>(y, i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, zp)), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
}

}  // namespace

#define FASTQ_BY_DTYPE(fn) {fn<DType::f32>, fn<DType::f16>, fn<DType::bf16>}
const QuantKernels quant_kernels_avx512 = {
    FASTQ_BY_DTYPE(absmax_bits__avx512), FASTQ_BY_DTYPE(minmax__avx512),
    FASTQ_BY_DTYPE(quant_sym__avx512),   FASTQ_BY_DTYPE(quant_asym__avx512),
    FASTQ_BY_DTYPE(dequant_sym__avx512), FASTQ_BY_DTYPE(dequant_asym__avx512),
};
#undef FASTQ_BY_DTYPE

}  // namespace fastq::cpu
