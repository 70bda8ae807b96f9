// AVX-512 static activation quantization into the kActU8Offset GEMM format (kernels.h:
// StaticActKernels), 64 elements per step: x * mul[i], NaN -> 0 / zp, clamp, round half to even
// (embedded rounding: MXCSR is not read; the sequence of quant_math.h, whose element functions
// serve the tails), then uint8 q + 128 (symmetric) or q (asymmetric).
#include <immintrin.h>

#include "cpu/avx512/vec.h"
#include "cpu/kernels.h"
#include "cpu/quant_math.h"

namespace fastq::cpu {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Symmetric, plus the 128 offset: clamp(round(v), -127, 127) + 128, NaN -> 128, as int32 lanes.
inline __m512i sym16(__m512 v) {
  const __m512 c = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  const __m512i q = _mm512_maskz_cvt_roundps_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), c, kRne);
  return _mm512_add_epi32(q, _mm512_set1_epi32(128));
}

// Asymmetric: clamp(round(v) + zp, 0, 255), NaN -> zp, as int32 lanes.
inline __m512i asym16(__m512 v, __m512 zp) {
  __m512 r = _mm512_add_ps(_mm512_roundscale_ps(v, kRne), zp);
  r = _mm512_mask_mov_ps(zp, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), r);
  r = _mm512_min_ps(_mm512_max_ps(r, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
  return _mm512_cvt_roundps_epi32(r, kRne);  // already integral
}

// 4 x 16 int32 lanes in [0, 255] -> 64 bytes in order (the packs work per 128-bit lane; one dword
// permute restores the order).
inline __m512i pack_u8(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i p = _mm512_packus_epi16(_mm512_packs_epi32(a, b), _mm512_packs_epi32(c, d));
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), p);
}

template <DType D, bool Sym>
inline __m512i code16(const void* x, const float* mul, int64_t i, __m512 zp) {
  const __m512 v = _mm512_mul_ps(load16<D>(x, i), _mm512_loadu_ps(mul + i));
  if constexpr (Sym) return sym16(v);
  else return asym16(v, zp);
}

template <DType D, bool Sym>
void quant_rows(const void* x, int64_t n, const float* mul, int32_t zp, uint8_t* q) {
  const __m512 zpv = _mm512_set1_ps(static_cast<float>(zp));
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(q + i, pack_u8(code16<D, Sym>(x, mul, i, zpv), code16<D, Sym>(x, mul, i + 16, zpv),
                                       code16<D, Sym>(x, mul, i + 32, zpv), code16<D, Sym>(x, mul, i + 48, zpv)));
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtusepi32_epi8(code16<D, Sym>(x, mul, i, zpv)));
  for (; i < n; ++i) {
    const float v = load_elem<D>(x, i);
    q[i] = Sym ? static_cast<uint8_t>(quantize_sym_elem(v, mul[i]) + 128) : quantize_asym_elem(v, mul[i], zp);
  }
}

template <DType D>
void quant_act_u8__avx512(const void* x, int64_t n, const float* mul, bool symmetric, int32_t zp, void* out) {
  uint8_t* q = static_cast<uint8_t*>(out);
  if (symmetric) quant_rows<D, true>(x, n, mul, 0, q);
  else quant_rows<D, false>(x, n, mul, zp, q);
}

}  // namespace

const StaticActKernels static_act_kernels_avx512 = {
    {quant_act_u8__avx512<DType::f32>, quant_act_u8__avx512<DType::f16>, quant_act_u8__avx512<DType::bf16>},
};

}  // namespace fastq::cpu
