// AVX-512 float loads/stores of f32/f16/bf16 (bf16 stores round to nearest even, NaN -> 0x7fc0,
// like quant_math.h's scalar versions), shared by this ISA's micro-kernels. Include only from
// csrc/cpu/avx512/ (it needs that directory's ISA flags); internal linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "api.h"

namespace fastq::cpu {
namespace {

template <DType D>
inline __m512 load16(const void* p, int64_t i);
template <>
inline __m512 load16<DType::f32>(const void* p, int64_t i) {
  return _mm512_loadu_ps(static_cast<const float*>(p) + i);
}
template <>
inline __m512 load16<DType::f16>(const void* p, int64_t i) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
}
template <>
inline __m512 load16<DType::bf16>(const void* p, int64_t i) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <DType D>
inline void store16(void* p, int64_t i, __m512 v);
template <>
inline void store16<DType::f32>(void* p, int64_t i, __m512 v) {
  _mm512_storeu_ps(static_cast<float*>(p) + i, v);
}
template <>
inline void store16<DType::f16>(void* p, int64_t i, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <>
inline void store16<DType::bf16>(void* p, int64_t i, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(p) + i), _mm512_cvtepi32_epi16(r));
}

}  // namespace
}  // namespace fastq::cpu

// ---- intx kernels: masked stores of 16 floats rounded to the output dtype ----
namespace fastq::cpu {
namespace {

template <DType D>
inline void store16_masked(void* p, int64_t i, __m512 v, __mmask16 k) {
  if constexpr (D == DType::f32) {
    _mm512_mask_storeu_ps(static_cast<float*>(p) + i, k, v);
  } else if constexpr (D == DType::f16) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, k,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p) + i, k, _mm512_cvtepi32_epi16(r));
  }
}

inline void store16_masked(DType d, void* p, int64_t i, __m512 v, __mmask16 k) {
  switch (d) {
    case DType::f32: store16_masked<DType::f32>(p, i, v, k); break;
    case DType::f16: store16_masked<DType::f16>(p, i, v, k); break;
    default: store16_masked<DType::bf16>(p, i, v, k); break;
  }
}

}  // namespace
}  // namespace fastq::cpu
