// AVX-512 (F/BW/DQ/VL + VNNI) intx micro-kernels (layout and arithmetic: csrc/api.h,
// IntxLinearArgs). A tile is up to 4 activation rows x 4 weight blocks of 16 rows (8 blocks for 1-2
// rows); one zmm lane per output column, so no horizontal reductions. Codes are expanded in
// registers, never stored.
//  - weight-only: for each k of a 64-byte chunk, v >> shift puts the 16 rows' codes in the low bits
//    of their int32 lanes; a vpermps table (2/4-bit slots) or and + convert (8-bit) makes them
//    floats, then one FMA with the broadcast activation per row; per group y += s * acc, or
//    y += s * (acc - z * sum x) where z is not in the table (float32, FMA: the order is free).
//    2-bit slots at m <= 32 use pair tables instead (wo_pair_tile): two k per lookup.
//  - dynamic: (v >> S p) & mask per byte is the u8 operand of vpdpbusd for k-quad p, the broadcast
//    4 int8 activations the s8 one (products < 2^11, exact); per group the reference's epilogue
//    with separate float multiply and add (bit-exact).
#include <immintrin.h>

#include <cstring>

#include "cpu/avx512/vec.h"
#include "cpu/gemm_math.h"
#include "cpu/intx_dispatch.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kMR = 4, kNB = 8;
constexpr int kPairMaxM = 32;

inline __mmask16 valid_rows(const IntxTask& t, int64_t nb) {
  const int64_t v = t.n - nb * 16;
  return v >= 16 ? __mmask16(0xffff) : __mmask16((1u << v) - 1);
}

inline const uint8_t* record(const IntxTask& t, int64_t nb, int64_t g) {
  return t.w + (nb * t.groups + g) * t.rec_bytes;
}

inline __m512i zero_points(const IntxTask& t, const uint8_t* rec) {
  return t.asym ? _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + t.code_bytes + 64)))
                : _mm512_set1_epi32(t.sym_zero);
}

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Weight values of 2- and 4-bit slots by table: vpermps reads only the low 4 bits of each 32-bit
// index lane, which after the shift hold the code (S = 4) or the code and the slot above it (S = 2:
// the table repeats every 4 entries, so the upper two bits need no mask). Entries are c - z for
// symmetric weights (z is the same for every row) and c for asymmetric ones (z per row: corrected
// with z * sum x per group). 8-bit slots are converted (and + cvt) and always corrected.
template <int S>
inline __m512 code_table(const IntxTask& t) {
  const float z = t.asym ? 0.0f : static_cast<float>(t.sym_zero);
  alignas(64) float v[16];
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(i & ((1 << S) - 1)) - z;
  return _mm512_load_ps(v);
}

template <int S, int MR, int NB>
void wo_tile(const IntxTask& t, int64_t m0, int64_t nb0) {
  constexpr int CK = 4 * (8 / S);
  constexpr bool kTable = S < 8;
  const int64_t G = t.groups, gs = t.chunks * CK, ldx = t.k;
  const bool correct = t.asym || !kTable;  // z * sum x still to subtract
  const __m512i mask = _mm512_set1_epi32((1 << S) - 1);
  const __m512 table = kTable ? code_table<S>(t) : _mm512_setzero_ps();
  alignas(64) float yacc[MR][NB][16];
  std::memset(yacc, 0, sizeof(yacc));
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* rec[NB];
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) rec[b] = record(t, nb0 + b, g);
    __m512 acc[MR][NB];
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
    const float* xg = t.xf + m0 * ldx + g * gs;
    for (int64_t ch = 0; ch < t.chunks; ++ch) {
      __m512i v[NB];
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) v[b] = _mm512_loadu_si512(rec[b] + ch * 64);
      const float* xc = xg + ch * CK;
      FASTQ_UNROLL for (int kk = 0; kk < CK; ++kk) {
        const int sh = 8 * (kk & 3) + S * (kk >> 2);  // k = 4p + j sits at bits 8j + S p of its row's lane
        __m512 xb[MR];
        FASTQ_UNROLL for (int r = 0; r < MR; ++r) xb[r] = _mm512_set1_ps(xc[r * ldx + kk]);
        FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
          __m512i c = sh ? _mm512_srli_epi32(v[b], sh) : v[b];
          __m512 wf;
          if constexpr (kTable) {
            wf = _mm512_permutexvar_ps(c, table);
          } else {
            if (sh + S < 32) c = _mm512_and_si512(c, mask);
            wf = _mm512_cvtepi32_ps(c);
          }
          FASTQ_UNROLL for (int r = 0; r < MR; ++r) acc[r][b] = _mm512_fmadd_ps(wf, xb[r], acc[r][b]);
        }
      }
    }
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
      const __m512 s = _mm512_loadu_ps(reinterpret_cast<const float*>(rec[b] + t.code_bytes));
      const __m512 z = correct ? _mm512_cvtepi32_ps(zero_points(t, rec[b])) : _mm512_setzero_ps();
      FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
        const __m512 a = correct ? _mm512_fnmadd_ps(z, _mm512_set1_ps(t.xsum[(m0 + r) * G + g]), acc[r][b]) : acc[r][b];
        _mm512_store_ps(yacc[r][b], _mm512_fmadd_ps(a, s, _mm512_load_ps(yacc[r][b])));
      }
    }
  }
  FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (nb0 + b) * 16;
    const __mmask16 k = valid_rows(t, nb0 + b);
    const __m512 bias = t.bias ? _mm512_maskz_loadu_ps(k, t.bias + n0) : _mm512_setzero_ps();
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      store16_masked(t.y_dtype, t.y, (m0 + r) * t.n + n0, _mm512_add_ps(_mm512_load_ps(yacc[r][b]), bias), k);
  }
}

// 2-bit slots at small M by pair tables (IntxTask::lut): the 4 bits a shift brings to the bottom
// of a lane are two codes, k and k + 4, and vpermps looks up x[k] f(c) + x[k + 4] f(c') in one
// step: one shift, permute and add per 16 rows x 2 k (the wo_tile path needs one per k). The add
// is an FMA with 1 (same rounding): measured faster than vaddps here (0.22 vs 0.33 ns per 16
// weights on Zen 4, one thread, L2-resident).
void wo_pair_tables(const float* x, int64_t k, float zero, float* out) {
  alignas(64) float lo[16], hi[16];
  for (int i = 0; i < 16; ++i) {
    lo[i] = static_cast<float>(i & 3) - zero;
    hi[i] = static_cast<float>(i >> 2) - zero;
  }
  const __m512 vlo = _mm512_load_ps(lo), vhi = _mm512_load_ps(hi);
  for (int64_t c = 0; c < k / 16; ++c) {
    const float* xc = x + 16 * c;
    FASTQ_UNROLL for (int e = 0; e < 8; ++e) {
      const int ka = 8 * (e & 1) + (e >> 1);
      const __m512 ta = _mm512_mul_ps(_mm512_set1_ps(xc[ka]), vlo);
      _mm512_store_ps(out + 128 * c + 16 * e, _mm512_fmadd_ps(_mm512_set1_ps(xc[ka + 4]), vhi, ta));
    }
  }
}

template <int MR, int NB>
void wo_pair_tile(const IntxTask& t, int64_t m0, int64_t nb0) {
  const int64_t G = t.groups, ld = t.lut_ld;
  const __m512 ones = _mm512_set1_ps(1.0f);
  alignas(64) float yacc[MR][NB][16];
  std::memset(yacc, 0, sizeof(yacc));
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* rec[NB];
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) rec[b] = record(t, nb0 + b, g);
    __m512 acc[MR][NB];
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
    const float* tg = t.lut + m0 * ld + g * t.chunks * 128;
    for (int64_t ch = 0; ch < t.chunks; ++ch) {
      __m512i v[NB];
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) v[b] = _mm512_loadu_si512(rec[b] + ch * 64);
      const float* tc = tg + ch * 128;
      FASTQ_UNROLL for (int e = 0; e < 8; ++e) {
        __m512 tab[MR];
        FASTQ_UNROLL for (int r = 0; r < MR; ++r) tab[r] = _mm512_load_ps(tc + r * ld + 16 * e);
        FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
          const __m512i idx = e ? _mm512_srli_epi32(v[b], 4 * e) : v[b];
          FASTQ_UNROLL for (int r = 0; r < MR; ++r)
            acc[r][b] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab[r]), ones, acc[r][b]);
        }
      }
    }
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
      const __m512 s = _mm512_loadu_ps(reinterpret_cast<const float*>(rec[b] + t.code_bytes));
      const __m512 z = t.asym ? _mm512_cvtepi32_ps(zero_points(t, rec[b])) : _mm512_setzero_ps();
      FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
        const __m512 a = t.asym ? _mm512_fnmadd_ps(z, _mm512_set1_ps(t.xsum[(m0 + r) * G + g]), acc[r][b]) : acc[r][b];
        _mm512_store_ps(yacc[r][b], _mm512_fmadd_ps(a, s, _mm512_load_ps(yacc[r][b])));
      }
    }
  }
  FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (nb0 + b) * 16;
    const __mmask16 k = valid_rows(t, nb0 + b);
    const __m512 bias = t.bias ? _mm512_maskz_loadu_ps(k, t.bias + n0) : _mm512_setzero_ps();
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      store16_masked(t.y_dtype, t.y, (m0 + r) * t.n + n0, _mm512_add_ps(_mm512_load_ps(yacc[r][b]), bias), k);
  }
}

template <int S, int MR, int NB>
void dyn_tile(const IntxTask& t, int64_t m0, int64_t nb0) {
  constexpr int P = 8 / S, CK = 4 * P;
  const int64_t G = t.groups, gs = t.chunks * CK, ldx = t.k;
  const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << S) - 1));
  alignas(64) float racc[MR][NB][16];
  std::memset(racc, 0, sizeof(racc));
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* rec[NB];
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) rec[b] = record(t, nb0 + b, g);
    __m512i acc[MR][NB];
    FASTQ_UNROLL for (int r = 0; r < MR; ++r)
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
    const int8_t* xg = t.xq + m0 * ldx + g * gs;
    for (int64_t ch = 0; ch < t.chunks; ++ch) {
      __m512i v[NB];
      FASTQ_UNROLL for (int b = 0; b < NB; ++b) v[b] = _mm512_loadu_si512(rec[b] + ch * 64);
      FASTQ_UNROLL for (int p = 0; p < P; ++p) {
        __m512i q[NB];
        FASTQ_UNROLL for (int b = 0; b < NB; ++b)
          q[b] = _mm512_and_si512(p ? _mm512_srli_epi16(v[b], S * p) : v[b], mask);
        FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
          const __m512i xb = _mm512_set1_epi32(load_i32(xg + r * ldx + ch * CK + 4 * p));
          FASTQ_UNROLL for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbusd_epi32(acc[r][b], q[b], xb);
        }
      }
    }
    FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
      const __m512 s = _mm512_loadu_ps(reinterpret_cast<const float*>(rec[b] + t.code_bytes));
      const __m512i z = zero_points(t, rec[b]);
      FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
        // z * sum qa: one scalar product for symmetric weights (z is the same for every row)
        const int32_t qs = t.qsum[(m0 + r) * G + g];
        const __m512i zq = t.asym ? _mm512_mullo_epi32(z, _mm512_set1_epi32(qs)) : _mm512_set1_epi32(t.sym_zero * qs);
        const __m512i corr = _mm512_sub_epi32(acc[r][b], zq);
        const __m512 term = _mm512_mul_ps(_mm512_cvtepi32_ps(corr), s);
        _mm512_store_ps(racc[r][b], _mm512_add_ps(_mm512_load_ps(racc[r][b]), term));
      }
    }
  }
  FASTQ_UNROLL for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (nb0 + b) * 16;
    const __mmask16 k = valid_rows(t, nb0 + b);
    const __m512 bias = t.bias ? _mm512_maskz_loadu_ps(k, t.bias + n0) : _mm512_setzero_ps();
    FASTQ_UNROLL for (int r = 0; r < MR; ++r) {
      __m512 y = _mm512_mul_ps(_mm512_load_ps(racc[r][b]), _mm512_set1_ps(t.a_scale[m0 + r]));
      if (t.bias) y = _mm512_add_ps(y, bias);
      store16_masked(t.y_dtype, t.y, (m0 + r) * t.n + n0, y, k);
    }
  }
}

// Tiles: up to 4 rows x 4 blocks; one or two rows take 8 blocks (more independent accumulators
// per decoded weight vector).
struct WeightOnly {
  static constexpr int kMaxMR = kMR;
  static constexpr bool kEight = true;
  template <int MR>
  static constexpr int wide_nb() { return MR <= 2 ? kNB : 4; }
  template <int S, int MR, int NB>
  static void tile(const IntxTask& t, int64_t m0, int64_t nb0) {
    if constexpr (S == 2) {
      if (t.lut) return wo_pair_tile<MR, NB>(t, m0, nb0);
    }
    wo_tile<S, MR, NB>(t, m0, nb0);
  }
};

struct Dynamic : WeightOnly {
  static constexpr bool kEight = false;  // dynamic needs codes < 16
  template <int MR>
  static constexpr int wide_nb() { return 4; }
  template <int S, int MR, int NB>
  static void tile(const IntxTask& t, int64_t m0, int64_t nb0) { dyn_tile<S, MR, NB>(t, m0, nb0); }
};

void intx_wo_f32_4x64__avx512(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  intx_slots<WeightOnly>(t, m0, mr, nb0, nb1);
}

void intx_dyn_s8_4x64__avx512vnni(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  intx_slots<Dynamic>(t, m0, mr, nb0, nb1);
}

}  // namespace

const IntxKernels intx_kernels_avx512 = {kMR, kNB, intx_wo_f32_4x64__avx512, intx_dyn_s8_4x64__avx512vnni, kPairMaxM,
                                         wo_pair_tables};

}  // namespace fastq::cpu
