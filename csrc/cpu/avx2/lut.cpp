// AVX2 codebook linear micro-kernels: lut_impl.h over pairs of ymm (16 lanes). vpermps on ymm
// indexes 8 entries, so a 16-entry table is two ymm: both halves are looked up and bit 3 of the
// index (moved to the sign bit) picks one with vblendvps. 8-bit codes gather.
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/lut_impl.h"

namespace fastq::cpu {
namespace {

struct Avx2Lut {
  struct V {
    __m256 a, b;
  };
  struct I {
    __m256i a, b;
  };
  struct Tab {
    __m256 lo, hi;
  };
  static constexpr int kMaxMR = 2;
  static constexpr int nr(int mr) { return mr == 1 ? 4 : 2; }
  static constexpr int kDqMR = 4, kDqNB = 1, kDqNB1 = 2;
  static constexpr int kLutMR = 2, kLutNB = 1, kLutNB1 = 2;
  static __m256i lanes_below(int valid) {  // all-ones in lanes < valid (0 <= valid <= 8)
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static V load_part(const float* p, int valid) {
    return {_mm256_maskload_ps(p, lanes_below(std::min(valid, 8))),
            _mm256_maskload_ps(p + 8, lanes_below(std::max(valid - 8, 0)))};
  }
  static void store_part(float* p, V v, int valid) {
    if (valid == 16) {
      _mm256_storeu_ps(p, v.a);
      _mm256_storeu_ps(p + 8, v.b);
    } else {
      _mm256_maskstore_ps(p, lanes_below(std::min(valid, 8)), v.a);
      _mm256_maskstore_ps(p + 8, lanes_below(std::max(valid - 8, 0)), v.b);
    }
  }
  static V bcast(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
  static V add(V x, V y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
  static V mul(V x, V y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
  static V fma(V x, V y, V z) { return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
  static V keep_first(V v, int valid) {
    return {_mm256_and_ps(v.a, _mm256_castsi256_ps(lanes_below(std::min(valid, 8)))),
            _mm256_and_ps(v.b, _mm256_castsi256_ps(lanes_below(std::max(valid - 8, 0))))};
  }
  static float hsum(V v) {
    const __m256 s = _mm256_add_ps(v.a, v.b);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
  }
  static I expand(const uint8_t* p) {
    return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  static I srl(I v, int s) {
    const __m128i c = _mm_cvtsi32_si128(s);
    return {_mm256_srl_epi32(v.a, c), _mm256_srl_epi32(v.b, c)};
  }
  static Tab table(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static __m256 lookup8(__m256i idx, const Tab& t) {
    const __m256 lo = _mm256_permutevar8x32_ps(t.lo, idx), hi = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
  static V lookup(I idx, const Tab& t) { return {lookup8(idx.a, t), lookup8(idx.b, t)}; }
  static V gather(const float* base, I idx) {
    const __m256i m = _mm256_set1_epi32(255);
    return {_mm256_i32gather_ps(base, _mm256_and_si256(idx.a, m), 4),
            _mm256_i32gather_ps(base, _mm256_and_si256(idx.b, m), 4)};
  }
};

}  // namespace

const LutKernels lut_kernels_avx2 = LutImpl<Avx2Lut>::table();

}  // namespace fastq::cpu
