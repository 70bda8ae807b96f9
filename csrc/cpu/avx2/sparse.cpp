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
  template <int BC>
  static vec repeat(const float* x) {
    if constexpr (BC == 1) return _mm256_set1_ps(*x);
    if constexpr (BC == 2) return _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(x)));
    if constexpr (BC == 4) return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(x));
    if constexpr (BC == 8) return _mm256_loadu_ps(x);
  }
  static ivec idx_u16(const uint16_t* p) {
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static ivec idx_i32(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static ivec ibcast(int32_t v) { return _mm256_set1_epi32(v); }
  static ivec clamp_idx(ivec i, ivec last, ivec& worst) {
    worst = _mm256_max_epu32(worst, i);
    return _mm256_min_epu32(i, last);
  }
  static int64_t hmax(ivec v) {
    alignas(32) uint32_t u[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(u), v);
    uint32_t m = 0;
    for (uint32_t e : u) m = e > m ? e : m;
    return m;
  }
  static vec gather(const float* base, ivec i) { return _mm256_i32gather_ps(base, i, 4); }
  static vec load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float fmas(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  // Two halves of 8 values, each over 16 inputs: index in [0, 16) per lane.
  struct Idx24 {
    __m256i lo, hi;
  };
  static __m256i s24_half(uint32_t bits16) {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits16)), shifts),
                                           _mm256_set1_epi32(3));
    return _mm256_add_epi32(codes, base);
  }
  static Idx24 s24_index(uint32_t word) { return {s24_half(word & 0xFFFFu), s24_half(word >> 16)}; }
  static vec s24_pick(const float* x32, const Idx24& idx, int u) {
    const __m256i i = u ? idx.hi : idx.lo;
    const float* p = x32 + 16 * u;
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p), i);
    const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p + 8), i);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));  // bit 3 selects
  }
};

}  // namespace

const SparseKernels sparse_kernels_avx2 = SparseImpl<Avx2V>::table();

}  // namespace fastq::cpu
