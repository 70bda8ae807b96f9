// AVX2 (+FMA, F16C) quantize/dequantize micro-kernels, 32 elements per main-loop step.
// Same float-op sequence as quant_math.h (x * inv_scale, NaN -> 0 / zero point, clamp, round
// half to even); tails use the scalar element functions, so results match bit for bit. The
// *_stream variants use non-temporal stores for the 64-byte-aligned body; the driver fences.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/avx2/vec.h"

namespace fastq::cpu {
namespace {

// 8 floats -> 8 f16/bf16 bit patterns.
template <DType D>
inline __m128i half8(__m256 v);
template <>
inline __m128i half8<DType::f16>(__m256 v) {
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
template <>
inline __m128i half8<DType::bf16>(__m256 v) {
  const __m256i b = bf16_bits(v);
  // packus works per 128-bit lane: [b0..3, b0..3 | b4..7, b4..7]; take the low 64 bits of each lane.
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08));
}

// Streaming version (p + i aligned by the caller).
template <DType D>
inline void stream8(void* p, int64_t i, __m256 v) {
  if constexpr (D == DType::f32) {
    _mm256_stream_ps(static_cast<float*>(p) + i, v);
  } else {
    _mm_stream_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i), half8<D>(v));
  }
}

// Elements to handle one by one so that `p` reaches a 64-byte boundary (streaming stores need it).
inline int64_t head_to_align64(const void* p, size_t elem_bytes, int64_t n) {
  const int64_t bytes = static_cast<int64_t>((64 - (reinterpret_cast<uintptr_t>(p) & 63)) & 63);
  return std::min<int64_t>(n, bytes / static_cast<int64_t>(elem_bytes));
}

template <bool Stream>
inline void store32(void* p, __m256i v) {
  if (Stream) _mm256_stream_si256(static_cast<__m256i*>(p), v);
  else _mm256_storeu_si256(static_cast<__m256i*>(p), v);
}

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

template <DType D, bool Stream>
void quant_sym__avx2(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
  for (; i + 32 <= n; i += 32) {
    const __m256i r = pack_s8(quant_sym8(load8<D>(x, i), inv), quant_sym8(load8<D>(x, i + 8), inv),
                              quant_sym8(load8<D>(x, i + 16), inv), quant_sym8(load8<D>(x, i + 24), inv));
    store32<Stream>(q + i, r);
  }
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

// Dynamic, not poisoned: x finite and |x * inv| <= 127 (+ rounding), so no NaN or clamp step;
// the saturating packs keep the codes in range regardless.
template <DType D, bool Stream>
void quant_sym_dyn__avx2(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale);
  const auto cvt = [&](int64_t j) {
    return _mm256_cvtps_epi32(
        _mm256_round_ps(_mm256_mul_ps(load8<D>(x, j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  };
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
  for (; i + 32 <= n; i += 32) store32<Stream>(q + i, pack_s8(cvt(i), cvt(i + 8), cvt(i + 16), cvt(i + 24)));
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

// round(x * inv) + zp for a dynamic row that is not poisoned (x finite, |x * inv| <= ~256), in
// integers: exact, as the float sum is. Not clamped: pack_u8's saturating packs do the clamp.
inline __m256i quant_asym8_finite(__m256 x, __m256 inv, __m256i zp) {
  const __m256 r = _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm256_add_epi32(_mm256_cvtps_epi32(r), zp);
}

template <DType D, bool Stream, bool Finite>
void quant_asym__avx2(const void* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_scale), zp = _mm256_set1_ps(static_cast<float>(zero_point));
  const __m256i zpi = _mm256_set1_epi32(zero_point);
  const auto quant = [&](int64_t j) {
    return Finite ? quant_asym8_finite(load8<D>(x, j), inv, zpi) : quant_asym8(load8<D>(x, j), inv, zp);
  };
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i)
      q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
  for (; i + 32 <= n; i += 32) store32<Stream>(q + i, pack_u8(quant(i), quant(i + 8), quant(i + 16), quant(i + 24)));
  for (; i < n; ++i) q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
}
template <DType D, bool Stream>
void quant_asym_any__avx2(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  quant_asym__avx2<D, Stream, false>(x, n, inv_scale, zp, q);
}
template <DType D, bool Stream>
void quant_asym_dyn__avx2(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  quant_asym__avx2<D, Stream, true>(x, n, inv_scale, zp, q);
}

template <DType D, bool Stream>
void dequant_sym__avx2(const int8_t* q, int64_t n, float scale, void* y) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(y, D == DType::f32 ? 4 : 2, n); i < h; ++i)
      store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(c), s);
    if (Stream) stream8<D>(y, i, v);
    else store8<D>(y, i, v);
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
}

template <DType D, bool Stream>
void dequant_asym__avx2(const uint8_t* q, int64_t n, float scale, int32_t zero_point, void* y) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i zp = _mm256_set1_epi32(zero_point);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(y, D == DType::f32 ? 4 : 2, n); i < h; ++i)
      store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
  for (; i + 8 <= n; i += 8) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, zp)), s);
    if (Stream) stream8<D>(y, i, v);
    else store8<D>(y, i, v);
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
}

}  // namespace

#define FASTQ_BY_DTYPE(fn) {fn<DType::f32>, fn<DType::f16>, fn<DType::bf16>}
#define FASTQ_BY_DTYPE_S(fn, s) {fn<DType::f32, s>, fn<DType::f16, s>, fn<DType::bf16, s>}
const QuantKernels quant_kernels_avx2 = {
    FASTQ_BY_DTYPE(absmax_bits__avx2), FASTQ_BY_DTYPE(minmax__avx2),
    FASTQ_BY_DTYPE_S(quant_sym__avx2, false),   FASTQ_BY_DTYPE_S(quant_asym_any__avx2, false),
    FASTQ_BY_DTYPE_S(dequant_sym__avx2, false), FASTQ_BY_DTYPE_S(dequant_asym__avx2, false),
    FASTQ_BY_DTYPE_S(quant_sym__avx2, true),    FASTQ_BY_DTYPE_S(quant_asym_any__avx2, true),
    FASTQ_BY_DTYPE_S(dequant_sym__avx2, true),  FASTQ_BY_DTYPE_S(dequant_asym__avx2, true),
    FASTQ_BY_DTYPE_S(quant_sym_dyn__avx2, false), FASTQ_BY_DTYPE_S(quant_sym_dyn__avx2, true),
    FASTQ_BY_DTYPE_S(quant_asym_dyn__avx2, false), FASTQ_BY_DTYPE_S(quant_asym_dyn__avx2, true),
};
#undef FASTQ_BY_DTYPE_S
#undef FASTQ_BY_DTYPE

}  // namespace fastq::cpu
