// AVX2 (+FMA) sparse masked matmul micro-kernels: sparse_impl.h over 8-lane __m256. Row-major x
// uses vgatherdps; transposed x runs 32 activation rows per pass (2 sets of 4 ymm accumulators),
// so the 16 ymm registers are not spilled.
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/sparse_impl.h"

namespace fastq::cpu {
namespace {

struct Avx2V {
  static constexpr int W = 8;
  static constexpr int kMaxLanes = 32;
  static constexpr int kBsrLanes = 16;
  using vec = __m256;
  using ivec = __m256i;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec bcast(float v) { return _mm256_set1_ps(v); }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static float sum(vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static ivec idx_u16(const uint16_t* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static ivec idx_i32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static vec gather(const float* base, ivec i) { return _mm256_i32gather_ps(base, i, 4); }
  static vec load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float fmas(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
};

}  // namespace

const SparseKernels sparse_kernels_avx2 = SparseImpl<Avx2V>::table();

}  // namespace fastq::cpu
