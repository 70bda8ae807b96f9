// AVX-512 sparse masked matmul micro-kernels: sparse_impl.h over 16-lane __m512. Row-major x uses
// vgatherdps (one 16-entry gather per step); transposed x runs 64 activation rows per pass
// (2 sets of 4 zmm accumulators).
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/sparse_impl.h"

namespace fastq::cpu {
namespace {

struct Avx512V {
  static constexpr int W = 16;
  static constexpr int kMaxLanes = 64;
  static constexpr int kBsrLanes = 32;
  using vec = __m512;
  using ivec = __m512i;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec bcast(float v) { return _mm512_set1_ps(v); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static float sum(vec a) { return _mm512_reduce_add_ps(a); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  template <int BC>
  static vec repeat(const float* x) {
    if constexpr (BC == 1) return _mm512_set1_ps(*x);
    if constexpr (BC == 2) return _mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(x)));
    if constexpr (BC == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(x));
    if constexpr (BC == 8) return _mm512_broadcast_f32x8(_mm256_loadu_ps(x));
    if constexpr (BC == 16) return _mm512_loadu_ps(x);
  }
  static ivec idx_u16(const uint16_t* p) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static ivec idx_i32(const int32_t* p) { return _mm512_loadu_si512(p); }
  static ivec ibcast(int32_t v) { return _mm512_set1_epi32(v); }
  static ivec clamp_idx(ivec i, ivec last, ivec& worst) {
    worst = _mm512_max_epu32(worst, i);
    return _mm512_min_epu32(i, last);
  }
  static int64_t hmax(ivec v) { return static_cast<uint32_t>(_mm512_reduce_max_epu32(v)); }
  static vec gather(const float* base, ivec i) { return _mm512_i32gather_ps(i, base, 4); }
  static vec load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static float fmas(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  // 16 values over 32 inputs: a 5-bit index per lane for vpermt2ps.
  static __m512i s24_index(uint32_t word) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i codes = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), shifts),
                                           _mm512_set1_epi32(3));
    return _mm512_add_epi32(codes, base);
  }
  static vec s24_pick(const float* x32, __m512i idx, int) {
    return _mm512_permutex2var_ps(_mm512_loadu_ps(x32), idx, _mm512_loadu_ps(x32 + 16));
  }
};

}  // namespace

const SparseKernels sparse_kernels_avx512 = SparseImpl<Avx512V>::table();

}  // namespace fastq::cpu
