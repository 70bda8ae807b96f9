// AVX-512 codebook linear micro-kernels: lut_impl.h over one zmm per 16 lanes. A 16-entry table
// sits in one zmm and vpermps looks up 16 codes at once (it reads only the low 4 bits of each
// index); 8-bit codes gather from the 256-entry codebook.
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/lut_impl.h"

namespace fastq::cpu {
namespace {

struct Avx512Lut {
  using V = __m512;
  using I = __m512i;
  using Tab = __m512;
  static constexpr int kMaxMR = 4;
  static constexpr int nr(int mr) { return mr == 1 ? 8 : mr == 2 ? 6 : 4; }
  static constexpr int kDqMR = 8, kDqNB = 2, kDqNB1 = 4;
  static constexpr int kLutMR = 4, kLutNB = 2, kLutNB1 = 4;
  static __mmask16 first(int count) { return static_cast<__mmask16>((1u << count) - 1); }  // count <= 16
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_part(const float* p, int valid) { return _mm512_maskz_loadu_ps(first(valid), p); }
  static void store_part(float* p, V v, int valid) {
    if (valid == 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, first(valid), v);
  }
  static V bcast(float v) { return _mm512_set1_ps(v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V keep_first(V v, int valid) { return _mm512_maskz_mov_ps(first(valid), v); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static I expand(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I srl(I v, int s) { return _mm512_srl_epi32(v, _mm_cvtsi32_si128(s)); }
  static Tab table(const float* p) { return _mm512_loadu_ps(p); }
  static V lookup(I idx, Tab t) { return _mm512_permutexvar_ps(idx, t); }
  static V gather(const float* base, I idx) {
    return _mm512_i32gather_ps(_mm512_and_si512(idx, _mm512_set1_epi32(255)), base, 4);
  }
};

}  // namespace

const LutKernels lut_kernels_avx512 = LutImpl<Avx512Lut>::table();

}  // namespace fastq::cpu
