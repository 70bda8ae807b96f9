// The int8 GEMM family's epilogue on 16 columns in AVX-512 registers (gemm_math.h's sequence: integer
// correction, float(acc) * (a_scale * w_scale), + bias, each float op rounded on its own, then the
// output dtype's rounding), shared by the AVX-512 VNNI and the AMX tiles, so both tiers give the same
// bits. Include only from objects built with the AVX-512 flags; internal linkage.
#pragma once
#include <immintrin.h>

#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

inline __mmask16 tail_mask(int valid) { return valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1); }

// Store 16 floats (masked) rounded to d.
__attribute__((always_inline)) inline void store_y16(DType d, void* y, int64_t i, __m512 v, __mmask16 k) {
  switch (d) {
    case DType::f32: _mm512_mask_storeu_ps(static_cast<float*>(y) + i, k, v); break;
    case DType::f16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + i, k,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: {
      const __m512i u = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
      r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + i, k, _mm512_cvtepi32_epi16(r));
    }
  }
}

__attribute__((always_inline)) inline void epilogue16(const GemmEpilogue& ep, int64_t m, int64_t n, __m512i v, const int32_t* colsum, int valid) {
  const __mmask16 k = tail_mask(valid);
  if (ep.row_off) {
    const __m512i cs = _mm512_maskz_loadu_epi32(k, colsum);
    v = _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_set1_epi32(ep.row_off[m]), cs));
  }
  if (ep.c) {
    int32_t* c = ep.c + m * ep.ldc + n;
    if (ep.accumulate) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(k, c));
    _mm512_mask_storeu_epi32(c, k, v);
    return;
  }
  const __m512 s = _mm512_mul_ps(_mm512_set1_ps(ep.a_scale[m]), _mm512_maskz_loadu_ps(k, ep.w_scale + n));
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), s);
  if (ep.bias) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(k, ep.bias + n));
  store_y16(ep.y_dtype, ep.y, m * ep.ldy + n, f, k);
}

}  // namespace
}  // namespace fastq::cpu
