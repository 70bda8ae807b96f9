// AVX-512 sliced-ELL micro-kernels: sparse_ell_impl.h over one __m512 per 16-lane step. A tile's
// 32 x of an activation row sit in two zmm and vpermt2ps picks each lane's input. Blocks of 4
// activation rows: 8-row blocks spill accumulators at every tile and measured 15-25% slower per
// row (768x3072, 75-95% sparse, Zen 4).
#include <immintrin.h>

#include "cpu/kernels.h"
#include "cpu/sparse_ell_impl.h"

namespace fastq::cpu {
namespace {

struct Avx512Ell {
  static constexpr int kMaxRows = 4;
  using Lanes = __m512;
  using Index = __m512i;
  struct Tile {
    __m512 lo, hi;
  };
  struct Weights {
    __m512 w;
    __mmask16 nz;
  };
  static __mmask16 first(int count) { return static_cast<__mmask16>((1u << count) - 1); }  // count <= 16
  static Lanes zero() { return _mm512_setzero_ps(); }
  static Tile load_tile(const float* p, int valid) {
    if (valid == 32) return {_mm512_loadu_ps(p), _mm512_loadu_ps(p + 16)};
    return {_mm512_maskz_loadu_ps(first(std::min(valid, 16)), p),
            _mm512_maskz_loadu_ps(first(std::max(valid - 16, 0)), p + 16)};
  }
  static Weights nonzero(__m512 w) { return {w, _mm512_cmpneq_ps_mask(w, _mm512_setzero_ps())}; }
  static Weights load_weights(const float* p) { return nonzero(_mm512_loadu_ps(p)); }
  static Weights load_weights(const int8_t* p) {
    return nonzero(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
  }
  static Index load_index(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Lanes pick(const Tile& t, Index i) { return _mm512_permutex2var_ps(t.lo, i, t.hi); }
  static Lanes mul_nz(const Weights& w, Lanes x) { return _mm512_maskz_mul_ps(w.nz, w.w, x); }
  static Lanes add(Lanes a, Lanes b) { return _mm512_add_ps(a, b); }
  static Lanes mul(Lanes a, Lanes b) { return _mm512_mul_ps(a, b); }
  static Lanes load_part(const float* p, int valid) { return _mm512_maskz_loadu_ps(first(valid), p); }
  static void store_part(float* p, Lanes v, int valid) { _mm512_mask_storeu_ps(p, first(valid), v); }
};

}  // namespace

const SparseEllKernels sparse_ell_kernels_avx512 = SparseEllImpl<Avx512Ell>::table();

}  // namespace fastq::cpu
