// AVX2 (+FMA, F16C) intx micro-kernels (layout and arithmetic: csrc/api.h, IntxLinearArgs). The
// AVX-512 kernels' scheme on 8-lane registers: a 16-row block is two halves (bytes 0-31 and 32-63
// of every chunk), one ymm lane per output column. With 16 registers the chunk halves are re-read
// from L1 per k rather than held. Dynamic: vpmaddubsw (u8 codes x s8 activations, pairs < 2^12: no
// saturation) then vpmaddwd with ones gives vpdpbusd's 4-term int32 sums exactly.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/avx2/vec.h"
#include "cpu/gemm_math.h"
#include "cpu/intx_dispatch.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kMR = 2, kNB = 4;

inline const uint8_t* record(const IntxTask& t, int64_t nb, int64_t g) {
  return t.w + (nb * t.groups + g) * t.rec_bytes;
}

inline __m256i zero_points(const IntxTask& t, const uint8_t* rec, int h) {
  return t.asym ? _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rec + t.code_bytes + 64 + 8 * h)))
                : _mm256_set1_epi32(t.sym_zero);
}

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <DType D>
void store_half(void* y, int64_t i, __m256 v, int valid) {
  if (valid >= 8) {
    store8<D>(y, i, v);
    return;
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int l = 0; l < valid; ++l) store_elem<D>(y, i + l, tmp[l]);
}

// 8 floats of row m, columns [n0, n0 + 8) clipped to n.
inline void store_out8(const IntxTask& t, int64_t m, int64_t n0, __m256 v) {
  const int valid = static_cast<int>(std::min<int64_t>(8, t.n - n0));
  if (valid <= 0) return;
  switch (t.y_dtype) {
    case DType::f32: store_half<DType::f32>(t.y, m * t.n + n0, v, valid); break;
    case DType::f16: store_half<DType::f16>(t.y, m * t.n + n0, v, valid); break;
    default: store_half<DType::bf16>(t.y, m * t.n + n0, v, valid); break;
  }
}

inline __m256 bias8(const IntxTask& t, int64_t n0) {
  if (!t.bias) return _mm256_setzero_ps();
  const int64_t valid = t.n - n0;
  if (valid >= 8) return _mm256_loadu_ps(t.bias + n0);
  alignas(32) float tmp[8] = {};
  for (int64_t l = 0; l < valid; ++l) tmp[l] = t.bias[n0 + l];
  return _mm256_load_ps(tmp);
}

// H = 2 * NB halves of 8 rows; half h is block h / 2, bytes 32 (h % 2) of each chunk.
// 2-bit slots by table: vpermps (permutevar8x32) reads the low 3 bits of each lane, the code and
// one bit of the slot above it, so an 8-entry table repeating c - z (symmetric) or c replaces the
// and + convert. 4-bit codes would need two tables and a blend: they keep and + convert.
template <int S, int MR, int NB>
void wo_tile(const IntxTask& t, int64_t m0, int64_t nb0) {
  constexpr int CK = 4 * (8 / S), H = 2 * NB;
  constexpr bool kTable = S == 2;
  const int64_t G = t.groups, gs = t.chunks * CK, ldx = t.k;
  const bool correct = t.asym || !kTable;  // z * sum x still to subtract
  const __m256i mask = _mm256_set1_epi32((1 << S) - 1);
  const float tz = t.asym ? 0.0f : static_cast<float>(t.sym_zero);
  const __m256 table = _mm256_setr_ps(-tz, 1 - tz, 2 - tz, 3 - tz, -tz, 1 - tz, 2 - tz, 3 - tz);
  alignas(32) float yacc[MR][H][8];
  std::memset(yacc, 0, sizeof(yacc));
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* rec[NB];
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) rec[b] = record(t, nb0 + b, g);
    __m256 acc[MR][H];
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_ps();
    const float* xg = t.xf + m0 * ldx + g * gs;
    for (int64_t ch = 0; ch < t.chunks; ++ch) {
      const float* xc = xg + ch * CK;
      FASTQ_UNROLL for (int kk = 0; kk < CK; ++kk) {
        const int sh = 8 * (kk & 3) + S * (kk >> 2);
        __m256 xb[MR];
        FASTQ_UNROLL for (int r = 0; r < MR; ++r) xb[r] = _mm256_set1_ps(xc[r * ldx + kk]);
        FASTQ_UNROLL for (int h = 0; h < H; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec[h / 2] + ch * 64 + 32 * (h % 2)));
          __m256i c = sh ? _mm256_srli_epi32(v, sh) : v;
          __m256 wf;
          if constexpr (kTable) {
            wf = _mm256_permutevar8x32_ps(table, c);
          } else {
            if (sh + S < 32) c = _mm256_and_si256(c, mask);
            wf = _mm256_cvtepi32_ps(c);
          }
          FASTQ_UNROLL for (int r = 0; r < MR; ++r) acc[r][h] = _mm256_fmadd_ps(wf, xb[r], acc[r][h]);
        }
      }
    }
    FASTQ_UNROLL for (int h = 0; h < H; ++h) {
      const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float*>(rec[h / 2] + t.code_bytes) + 8 * (h % 2));
      const __m256 z = correct ? _mm256_cvtepi32_ps(zero_points(t, rec[h / 2], h % 2)) : _mm256_setzero_ps();
      FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
        const __m256 a = correct ? _mm256_fnmadd_ps(z, _mm256_set1_ps(t.xsum[(m0 + r) * G + g]), acc[r][h]) : acc[r][h];
        _mm256_store_ps(yacc[r][h], _mm256_fmadd_ps(a, s, _mm256_load_ps(yacc[r][h])));
      }
    }
  }
  FASTQ_UNROLL for (int h = 0; h < H; ++h) {
    const int64_t n0 = nb0 * 16 + 8 * h;
    const __m256 bias = bias8(t, n0);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) store_out8(t, m0 + r, n0, _mm256_add_ps(_mm256_load_ps(yacc[r][h]), bias));
  }
}

template <int S, int MR, int NB>
void dyn_tile(const IntxTask& t, int64_t m0, int64_t nb0) {
  constexpr int P = 8 / S, CK = 4 * P, H = 2 * NB;
  const int64_t G = t.groups, gs = t.chunks * CK, ldx = t.k;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>((1 << S) - 1)), ones = _mm256_set1_epi16(1);
  alignas(32) float racc[MR][H][8];
  std::memset(racc, 0, sizeof(racc));
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* rec[NB];
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) rec[b] = record(t, nb0 + b, g);
    __m256i acc[MR][H];
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_si256();
    const int8_t* xg = t.xq + m0 * ldx + g * gs;
    for (int64_t ch = 0; ch < t.chunks; ++ch) {
      FASTQ_UNROLL for (int p = 0; p < P; ++p) {
        __m256i xb[MR];
        FASTQ_UNROLL for (int r = 0; r < MR; ++r) xb[r] = _mm256_set1_epi32(load_i32(xg + r * ldx + ch * CK + 4 * p));
        FASTQ_UNROLL for (int h = 0; h < H; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rec[h / 2] + ch * 64 + 32 * (h % 2)));
          const __m256i q = _mm256_and_si256(p ? _mm256_srli_epi16(v, S * p) : v, mask);
          FASTQ_UNROLL for (int r = 0; r < MR; ++r)
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(_mm256_maddubs_epi16(q, xb[r]), ones));
        }
      }
    }
    FASTQ_UNROLL for (int h = 0; h < H; ++h) {
      const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float*>(rec[h / 2] + t.code_bytes) + 8 * (h % 2));
      const __m256i z = zero_points(t, rec[h / 2], h % 2);
      FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
        const int32_t qs = t.qsum[(m0 + r) * G + g];
        const __m256i zq = t.asym ? _mm256_mullo_epi32(z, _mm256_set1_epi32(qs)) : _mm256_set1_epi32(t.sym_zero * qs);
        const __m256i corr = _mm256_sub_epi32(acc[r][h], zq);
        const __m256 term = _mm256_mul_ps(_mm256_cvtepi32_ps(corr), s);
        _mm256_store_ps(racc[r][h], _mm256_add_ps(_mm256_load_ps(racc[r][h]), term));
      }
    }
  }
  FASTQ_UNROLL for (int h = 0; h < H; ++h) {
    const int64_t n0 = nb0 * 16 + 8 * h;
    const __m256 bias = bias8(t, n0);
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      __m256 y = _mm256_mul_ps(_mm256_load_ps(racc[r][h]), _mm256_set1_ps(t.a_scale[m0 + r]));
      if (t.bias) y = _mm256_add_ps(y, bias);
      store_out8(t, m0 + r, n0, y);
    }
  }
}

// Tiles: 4 blocks at a time for one row (8 accumulator chains), 2 for two rows.
struct WeightOnly {
  static constexpr int kMaxMR = kMR;
  static constexpr bool kEight = true;
  template <int MR>
  static constexpr int wide_nb() { return MR == 1 ? 4 : 2; }
  template <int S, int MR, int NB>
  static void tile(const IntxTask& t, int64_t m0, int64_t nb0) { wo_tile<S, MR, NB>(t, m0, nb0); }
};

struct Dynamic : WeightOnly {
  static constexpr bool kEight = false;  // dynamic needs codes < 16
  template <int S, int MR, int NB>
  static void tile(const IntxTask& t, int64_t m0, int64_t nb0) { dyn_tile<S, MR, NB>(t, m0, nb0); }
};

void intx_wo_f32_2x64__avx2(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  intx_slots<WeightOnly>(t, m0, mr, nb0, nb1);
}

void intx_dyn_s8_2x64__avx2(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  intx_slots<Dynamic>(t, m0, mr, nb0, nb1);
}

}  // namespace

const IntxKernels intx_kernels_avx2 = {kMR, kNB, intx_wo_f32_2x64__avx2, intx_dyn_s8_2x64__avx2, 0, nullptr};

}  // namespace fastq::cpu
