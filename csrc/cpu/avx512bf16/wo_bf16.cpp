// AVX512-BF16 micro-kernels of the bf16 weight-only path (cpu/wo_bf16.h): int8 code quads ->
// bf16 k-pairs (exact), a 12-row x 32-column vdpbf16ps tile (24 zmm accumulators), and the
// scale/bias epilogue (vcvtneps2bf16 rounds to nearest even like the scalar f32_to_bf16).
// Compiled with the AVX-512 tier's flags plus -mavx512bf16 only.
#include <immintrin.h>

#include <cstring>

#include "cpu/wo_bf16.h"

namespace fastq::cpu {
namespace {

// 16 int8 -> 16 float32 (exact).
inline __m512 i8_to_f32(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }

void convert(const int8_t* w, int64_t w_bstride, int nb, int64_t q0, int64_t nq, uint16_t* panel) {
  // In each 128-bit lane (4 columns x 4 k): bytes k0 k1 of the 4 columns, then bytes k2 k3.
  const __m512i lane = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  const __m512i qwords = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);  // first pairs, then second pairs
  for (int64_t q = 0; q < nq; ++q) {
    uint16_t* p0 = panel + (2 * q) * 64;  // pair 2q: k = 4 (q0 + q) + 0, 1
    uint16_t* p1 = p0 + 64;               // pair 2q + 1: k + 2, 3
    for (int j = 0; j < 2; ++j) {
      if (j >= nb) {
        std::memset(p0 + 32 * j, 0, 64);
        std::memset(p1 + 32 * j, 0, 64);
        continue;
      }
      const __m512i v = _mm512_loadu_si512(w + j * w_bstride + (q0 + q) * 64);
      const __m512i s = _mm512_permutexvar_epi64(qwords, _mm512_shuffle_epi8(v, lane));
      const __m256i first = _mm512_castsi512_si256(s), second = _mm512_extracti64x4_epi64(s, 1);
      const __m512bh a = _mm512_cvtne2ps_pbh(i8_to_f32(_mm256_extracti128_si256(first, 1)),
                                             i8_to_f32(_mm256_castsi256_si128(first)));
      const __m512bh b = _mm512_cvtne2ps_pbh(i8_to_f32(_mm256_extracti128_si256(second, 1)),
                                             i8_to_f32(_mm256_castsi256_si128(second)));
      _mm512_storeu_si512(p0 + 32 * j, reinterpret_cast<const __m512i&>(a));
      _mm512_storeu_si512(p1 + 32 * j, reinterpret_cast<const __m512i&>(b));
    }
  }
}

inline __m512bh pair_of(const uint16_t* x) {
  int32_t v;
  std::memcpy(&v, x, 4);
  const __m512i b = _mm512_set1_epi32(v);
  return reinterpret_cast<const __m512bh&>(b);
}

template <int MR>
void tile_mr(const uint16_t* x, int64_t lda, const uint16_t* panel, int64_t np, float* c, bool first) {
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * 32);
    acc[r][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * 32 + 16);
  }
  for (int64_t p = 0; p < np; ++p) {
    const __m512i b0i = _mm512_loadu_si512(panel + p * 64), b1i = _mm512_loadu_si512(panel + p * 64 + 32);
    const __m512bh b0 = reinterpret_cast<const __m512bh&>(b0i), b1 = reinterpret_cast<const __m512bh&>(b1i);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = pair_of(x + r * lda + 2 * p);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * 32, acc[r][0]);
    _mm512_storeu_ps(c + r * 32 + 16, acc[r][1]);
  }
}

void tile(const uint16_t* x, int64_t lda, int mr, const uint16_t* panel, int64_t np, float* c, bool first) {
  switch (mr) {
    case 12: return tile_mr<12>(x, lda, panel, np, c, first);
    case 11: return tile_mr<11>(x, lda, panel, np, c, first);
    case 10: return tile_mr<10>(x, lda, panel, np, c, first);
    case 9: return tile_mr<9>(x, lda, panel, np, c, first);
    case 8: return tile_mr<8>(x, lda, panel, np, c, first);
    case 7: return tile_mr<7>(x, lda, panel, np, c, first);
    case 6: return tile_mr<6>(x, lda, panel, np, c, first);
    case 5: return tile_mr<5>(x, lda, panel, np, c, first);
    case 4: return tile_mr<4>(x, lda, panel, np, c, first);
    case 3: return tile_mr<3>(x, lda, panel, np, c, first);
    case 2: return tile_mr<2>(x, lda, panel, np, c, first);
    default: return tile_mr<1>(x, lda, panel, np, c, first);
  }
}

__mmask16 first_lanes(int count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// 16 floats rounded to d (to nearest even; NaN stays NaN), masked.
void store16(DType d, void* y, int64_t i, __m512 v, __mmask16 k) {
  if (d == DType::f32) {
    _mm512_mask_storeu_ps(static_cast<float*>(y) + i, k, v);
  } else if (d == DType::bf16) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + i, k, reinterpret_cast<const __m256i&>(
                                                                   static_cast<const __m256bh&>(_mm512_cvtneps_pbh(v))));
  } else {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(y) + i, k,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

void epilogue(const float* c, int64_t rows, int nv, const float* s, float* acc, bool first, bool last,
              const float* bias, void* y, int64_t ldy, DType y_dtype) {
  const __mmask16 k0 = first_lanes(nv), k1 = first_lanes(nv - 16);
  const __m512 s0 = _mm512_maskz_loadu_ps(k0, s), s1 = _mm512_maskz_loadu_ps(k1, s + 16);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(c + r * 32), s0);
    __m512 v1 = _mm512_mul_ps(_mm512_loadu_ps(c + r * 32 + 16), s1);
    if (!first) {
      v0 = _mm512_add_ps(_mm512_loadu_ps(acc + r * 32), v0);
      v1 = _mm512_add_ps(_mm512_loadu_ps(acc + r * 32 + 16), v1);
    }
    if (!last) {
      _mm512_storeu_ps(acc + r * 32, v0);
      _mm512_storeu_ps(acc + r * 32 + 16, v1);
      continue;
    }
    if (bias) {
      v0 = _mm512_add_ps(v0, b0);
      v1 = _mm512_add_ps(v1, b1);
    }
    store16(y_dtype, y, r * ldy, v0, k0);
    store16(y_dtype, y, r * ldy + 16, v1, k1);
  }
}

}  // namespace

const WoBf16Kernels wo_bf16_kernels_avx512bf16{&convert, &tile, &epilogue};

}  // namespace fastq::cpu
