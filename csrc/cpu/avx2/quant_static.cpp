// AVX2 static activation quantization into the kActS16 GEMM format (kernels.h: StaticActKernels),
// 16 elements per step: x * mul[i], NaN -> 0 / zp, clamp, round half to even (the sequence of
// quant_math.h, whose element functions serve the tails), then int16 q or q - zp.
#include <immintrin.h>

#include "cpu/avx2/vec.h"
#include "cpu/kernels.h"
#include "cpu/quant_math.h"

namespace fastq::cpu {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Symmetric: clamp(round(v), -127, 127), NaN -> 0, as int32 lanes.
inline __m256i sym8(__m256 v) {
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvtps_epi32(_mm256_round_ps(v, kRne));
}

// Asymmetric, minus the zero point: clamp(round(v) + zp, 0, 255) - zp, NaN -> 0, as int32 lanes.
inline __m256i asym8(__m256 v, __m256 zp) {
  __m256 r = _mm256_add_ps(_mm256_round_ps(v, kRne), zp);
  r = _mm256_blendv_ps(zp, r, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
  return _mm256_sub_epi32(_mm256_cvtps_epi32(r), _mm256_cvtps_epi32(zp));
}

// Two int32 x 8 vectors (in int16 range) -> 16 int16 in order.
inline __m256i pack16(__m256i a, __m256i b) { return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8); }

template <DType D>
void quant_act_s16__avx2(const void* x, int64_t n, const float* mul, bool symmetric, int32_t zp, void* out) {
  int16_t* q = static_cast<int16_t*>(out);
  const __m256 zpv = _mm256_set1_ps(static_cast<float>(zp));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_mul_ps(load8<D>(x, i), _mm256_loadu_ps(mul + i));
    const __m256 v1 = _mm256_mul_ps(load8<D>(x, i + 8), _mm256_loadu_ps(mul + i + 8));
    const __m256i r = symmetric ? pack16(sym8(v0), sym8(v1)) : pack16(asym8(v0, zpv), asym8(v1, zpv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), r);
  }
  for (; i < n; ++i) {
    const float v = load_elem<D>(x, i);
    q[i] = symmetric ? quantize_sym_elem(v, mul[i])
                     : static_cast<int16_t>(static_cast<int32_t>(quantize_asym_elem(v, mul[i], zp)) - zp);
  }
}

}  // namespace

const StaticActKernels static_act_kernels_avx2 = {
    {quant_act_s16__avx2<DType::f32>, quant_act_s16__avx2<DType::f16>, quant_act_s16__avx2<DType::bf16>},
};

}  // namespace fastq::cpu
