// AVX-512 (F/BW/DQ/VL) quantize/dequantize micro-kernels, 64 elements per main-loop step.
// Same float-op sequence as quant_math.h; tails use the scalar element functions. The *_stream
// variants use non-temporal stores for the 64-byte-aligned body; the driver fences.
#include <immintrin.h>

#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/avx512/vec.h"

namespace fastq::cpu {
namespace {

// 16 floats -> 16 f16/bf16 bit patterns (round to nearest even; bf16 NaN -> 0x7fc0).
template <DType D>
inline __m256i half16(__m512 v);
template <>
inline __m256i half16<DType::f16>(__m512 v) {
  return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
template <>
inline __m256i half16<DType::bf16>(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

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
  // Four independent accumulator pairs (min/max are exact, so the order is free; a NaN is
  // reported through the flag, which poisons the row whatever lo/hi became).
  __m512 lo0 = _mm512_set1_ps(*mn), hi0 = _mm512_set1_ps(*mx), lo1 = lo0, hi1 = hi0, lo2 = lo0, hi2 = hi0,
         lo3 = lo0, hi3 = hi0;
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 a = load16<D>(x, i), b = load16<D>(x, i + 16), c = load16<D>(x, i + 32), d = load16<D>(x, i + 48);
    nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
    lo0 = _mm512_min_ps(lo0, a), hi0 = _mm512_max_ps(hi0, a);
    lo1 = _mm512_min_ps(lo1, b), hi1 = _mm512_max_ps(hi1, b);
    lo2 = _mm512_min_ps(lo2, c), hi2 = _mm512_max_ps(hi2, c);
    lo3 = _mm512_min_ps(lo3, d), hi3 = _mm512_max_ps(hi3, d);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 v = load16<D>(x, i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    lo0 = _mm512_min_ps(lo0, v);
    hi0 = _mm512_max_ps(hi0, v);
  }
  float a = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(lo0, lo1), _mm512_min_ps(lo2, lo3)));
  float b = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(hi0, hi1), _mm512_max_ps(hi2, hi3)));
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

// x * inv clamped to [-127, 127], rounded half to even (embedded rounding: MXCSR is not read),
// NaN -> 0; as int32 lanes.
inline __m512i quant_sym16(__m512 x, __m512 inv) {
  const __m512 v = _mm512_mul_ps(x, inv);
  const __m512 c = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_maskz_cvt_roundps_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), c, kRne);
}

// round(x * inv) + zp clamped to [0, 255]; NaN -> zp; as int32 lanes.
inline __m512i quant_asym16(__m512 x, __m512 inv, __m512 zp) {
  const __m512 v = _mm512_mul_ps(x, inv);
  __m512 r = _mm512_add_ps(_mm512_roundscale_ps(v, kRne), zp);
  r = _mm512_mask_mov_ps(zp, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), r);
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
  return _mm512_cvt_roundps_epi32(r, kRne);  // already integral
}

// 4 x 16 int32 lanes (already in range) -> 64 bytes in order. The packs work per 128-bit lane, so
// lane L ends up holding a[4L..4L+3], b[4L..], c[4L..], d[4L..]; one dword permute restores order.
inline __m512i pack64(__m512i ab16, __m512i cd16, bool is_unsigned) {
  const __m512i p = is_unsigned ? _mm512_packus_epi16(ab16, cd16) : _mm512_packs_epi16(ab16, cd16);
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), p);
}

// Elements to handle one by one so that `p` reaches a 64-byte boundary (streaming stores need it).
inline int64_t head_to_align64(const void* p, size_t elem_bytes, int64_t n) {
  const int64_t bytes = static_cast<int64_t>((64 - (reinterpret_cast<uintptr_t>(p) & 63)) & 63);
  return std::min<int64_t>(n, bytes / static_cast<int64_t>(elem_bytes));
}

template <bool Stream>
inline void store64(void* p, __m512i v) {
  if (Stream) _mm512_stream_si512(static_cast<__m512i*>(p), v);
  else _mm512_storeu_si512(p, v);
}

template <DType D, bool Stream>
void quant_sym__avx512(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
  for (; i + 64 <= n; i += 64) {
    const __m512i ab = _mm512_packs_epi32(quant_sym16(load16<D>(x, i), inv), quant_sym16(load16<D>(x, i + 16), inv));
    const __m512i cd = _mm512_packs_epi32(quant_sym16(load16<D>(x, i + 32), inv), quant_sym16(load16<D>(x, i + 48), inv));
    store64<Stream>(q + i, pack64(ab, cd, false));
  }
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(quant_sym16(load16<D>(x, i), inv)));
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

// Dynamic, not poisoned: x finite and |x * inv| <= 127 (+ rounding), so no NaN or clamp step;
// the saturating packs keep the codes in range regardless.
template <DType D, bool Stream>
void quant_sym_dyn__avx512(const void* x, int64_t n, float inv_scale, int8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale);
  const auto cvt = [&](int64_t j) { return _mm512_cvt_roundps_epi32(_mm512_mul_ps(load16<D>(x, j), inv), kRne); };
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
  for (; i + 64 <= n; i += 64) {
    const __m512i ab = _mm512_packs_epi32(cvt(i), cvt(i + 16));
    const __m512i cd = _mm512_packs_epi32(cvt(i + 32), cvt(i + 48));
    store64<Stream>(q + i, pack64(ab, cd, false));
  }
  for (; i + 16 <= n; i += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(cvt(i)));
  for (; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

// round(x * inv) + zp for a dynamic row that is not poisoned (x finite, |x * inv| <= ~256), in
// integers: exact, as the float sum is. NOT clamped: callers saturate (packs/packus, or max 0 then
// the unsigned-saturating narrow), which is exactly the clamp to [0, 255].
inline __m512i quant_asym16_finite(__m512 x, __m512 inv, __m512i zp) {
  return _mm512_add_epi32(_mm512_cvt_roundps_epi32(_mm512_mul_ps(x, inv), kRne), zp);
}

template <DType D, bool Stream, bool Finite>
void quant_asym__avx512(const void* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* q) {
  const __m512 inv = _mm512_set1_ps(inv_scale), zp = _mm512_set1_ps(static_cast<float>(zero_point));
  const __m512i zpi = _mm512_set1_epi32(zero_point);
  const auto quant = [&](int64_t j) {
    return Finite ? _mm512_max_epi32(quant_asym16_finite(load16<D>(x, j), inv, zpi), _mm512_setzero_si512())
                  : quant_asym16(load16<D>(x, j), inv, zp);
  };
  const auto quant_packed = [&](int64_t j) {  // the packs saturate, so no max with 0 is needed
    return Finite ? quant_asym16_finite(load16<D>(x, j), inv, zpi) : quant_asym16(load16<D>(x, j), inv, zp);
  };
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(q, 1, n); i < h; ++i)
      q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
  for (; i + 64 <= n; i += 64) {
    const __m512i ab = _mm512_packs_epi32(quant_packed(i), quant_packed(i + 16));
    const __m512i cd = _mm512_packs_epi32(quant_packed(i + 32), quant_packed(i + 48));
    store64<Stream>(q + i, pack64(ab, cd, true));
  }
  for (; i + 16 <= n; i += 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtusepi32_epi8(quant(i)));
  for (; i < n; ++i) q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zero_point);
}
template <DType D, bool Stream>
void quant_asym_any__avx512(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  quant_asym__avx512<D, Stream, false>(x, n, inv_scale, zp, q);
}
template <DType D, bool Stream>
void quant_asym_dyn__avx512(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  quant_asym__avx512<D, Stream, true>(x, n, inv_scale, zp, q);
}

// 16 results: a 64-byte (f32) or 32-byte (f16/bf16) store, streamed when asked (aligned by the caller).
template <DType D, bool Stream>
inline void store16_out(void* p, int64_t i, __m512 v) {
  if constexpr (!Stream) {
    store16<D>(p, i, v);
  } else if constexpr (D == DType::f32) {
    _mm512_stream_ps(static_cast<float*>(p) + i, v);
  } else {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), half16<D>(v));
  }
}

template <DType D, bool Stream>
void dequant_sym__avx512(const int8_t* q, int64_t n, float scale, void* y) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(y, D == DType::f32 ? 4 : 2, n); i < h; ++i)
      store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
  for (; i + 16 <= n; i += 16) {
    const __m512i c = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    store16_out<D, Stream>(y, i, _mm512_mul_ps(_mm512_cvtepi32_ps(c), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
}

template <DType D, bool Stream>
void dequant_asym__avx512(const uint8_t* q, int64_t n, float scale, int32_t zero_point, void* y) {
  const __m512 s = _mm512_set1_ps(scale);
  const __m512i zp = _mm512_set1_epi32(zero_point);
  int64_t i = 0;
  if (Stream)
    for (const int64_t h = head_to_align64(y, D == DType::f32 ? 4 : 2, n); i < h; ++i)
      store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
  for (; i + 16 <= n; i += 16) {
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
    store16_out<D, Stream>(y, i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, zp)), s));
  }
  for (; i < n; ++i) store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zero_point) * scale);
}

}  // namespace

#define FASTQ_BY_DTYPE(fn) {fn<DType::f32>, fn<DType::f16>, fn<DType::bf16>}
#define FASTQ_BY_DTYPE_S(fn, s) {fn<DType::f32, s>, fn<DType::f16, s>, fn<DType::bf16, s>}
const QuantKernels quant_kernels_avx512 = {
    FASTQ_BY_DTYPE(absmax_bits__avx512), FASTQ_BY_DTYPE(minmax__avx512),
    FASTQ_BY_DTYPE_S(quant_sym__avx512, false),   FASTQ_BY_DTYPE_S(quant_asym_any__avx512, false),
    FASTQ_BY_DTYPE_S(dequant_sym__avx512, false), FASTQ_BY_DTYPE_S(dequant_asym__avx512, false),
    FASTQ_BY_DTYPE_S(quant_sym__avx512, true),    FASTQ_BY_DTYPE_S(quant_asym_any__avx512, true),
    FASTQ_BY_DTYPE_S(dequant_sym__avx512, true),  FASTQ_BY_DTYPE_S(dequant_asym__avx512, true),
    FASTQ_BY_DTYPE_S(quant_sym_dyn__avx512, false), FASTQ_BY_DTYPE_S(quant_sym_dyn__avx512, true),
    FASTQ_BY_DTYPE_S(quant_asym_dyn__avx512, false), FASTQ_BY_DTYPE_S(quant_asym_dyn__avx512, true),
};
#undef FASTQ_BY_DTYPE_S
#undef FASTQ_BY_DTYPE

}  // namespace fastq::cpu
