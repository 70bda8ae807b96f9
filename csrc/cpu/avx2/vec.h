// AVX2 float loads/stores of f32/f16/bf16 (bf16 stores round to nearest even, NaN -> 0x7fc0,
// like quant_math.h's scalar versions), shared by this ISA's micro-kernels. Include only from
// csrc/cpu/avx2/ or csrc/cpu/avx512/ (it needs AVX2 + F16C flags); internal linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "api.h"

namespace fastq::cpu {
namespace {

template <DType D>
inline __m256 load8(const void* p, int64_t i);
template <>
inline __m256 load8<DType::f32>(const void* p, int64_t i) {
  return _mm256_loadu_ps(static_cast<const float*>(p) + i);
}
template <>
inline __m256 load8<DType::f16>(const void* p, int64_t i) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
}
template <>
inline __m256 load8<DType::bf16>(const void* p, int64_t i) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// f32 -> bf16 bits (round to nearest even, NaN -> 0x7fc0) in the low half of each 32-bit lane.
inline __m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
}

template <DType D>
inline void store8(void* p, int64_t i, __m256 v);
template <>
inline void store8<DType::f32>(void* p, int64_t i, __m256 v) {
  _mm256_storeu_ps(static_cast<float*>(p) + i, v);
}
template <>
inline void store8<DType::f16>(void* p, int64_t i, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
template <>
inline void store8<DType::bf16>(void* p, int64_t i, __m256 v) {
  const __m256i b = bf16_bits(v);
  // packus works per 128-bit lane: [b0..3, b0..3 | b4..7, b4..7]; take the low 64 bits of each lane.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(p) + i), _mm256_castsi256_si128(packed));
}

// 4 floats of f32/f16/bf16 (used by both the AVX2 and AVX-512 weight-only kernels).
template <DType D>
inline __m128 load4(const void* p, int64_t i) {
  if constexpr (D == DType::f32) {
    return _mm_loadu_ps(static_cast<const float*>(p) + i);
  } else if constexpr (D == DType::f16) {
    return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
  } else {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
  }
}

}  // namespace
}  // namespace fastq::cpu
