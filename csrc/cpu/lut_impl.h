// Codebook (weight sharing) linear micro-kernels, written once over a 16-lane trait E and included
// by each csrc/cpu/<isa>/lut.cpp, so each copy is compiled under that ISA's flags only (internal
// linkage: anonymous namespace). Layouts and the arithmetic contract: csrc/api.h,
// CodebookLinearArgs, and fastq/ops/reference.py (codebook section).
//
// E provides: V (16 floats), I (16 int32), Tab (a 16-entry float table in registers); zero, load,
// load_part(p, valid) (nothing at or past p + valid is read; those lanes are 0), store_part(p, v,
// valid), bcast, add, mul, fma(a, b, c) = a * b + c, keep_first(v, valid) (lanes >= valid become
// 0), hsum; expand(p) (16 bytes -> 16 int32), srl(i, s) (logical right shift); table(p) (16 floats);
// lookup(i, tab) = tab[i & 15] per lane; gather(base, i) = base[i & 255] per lane; tile shapes
// kMaxMR, nr(mr) (row kernel), kDqMR, kDqNB, kDqNB1 (dequant kernel; NB1 for one x row), kLutMR,
// kLutNB, kLutNB1 (lookup kernel).
//
// Invariants: nothing here allocates or threads (the driver, csrc/cpu/lut.cpp, splits the work);
// padding codes (past k or n) never reach a result: x is never read past k, products of the last
// partial sub-vector are masked, table terms past k are skipped and rows past n are not stored.
// Codes of fewer than 4 bits are looked up in 16-entry tables replicating the codebook
// (tab[i] = entry[i mod 2^bits]), so the garbage above a code's bits after a shift needs no mask.
#pragma once
#include <algorithm>
#include <cstdint>

#include "api.h"

#define FASTQ_LUT_INLINE inline __attribute__((always_inline))

namespace fastq::cpu {
namespace {

template <class E>
struct LutImpl {
  using V = typename E::V;
  using I = typename E::I;
  using Tab = typename E::Tab;
  static constexpr int64_t kRowsMB = 32;  // x rows per block (their k floats stay in L2)

  static int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

  // 16-entry table of a 2^BITS-entry codebook (entries repeated for BITS < 4).
  template <int BITS>
  static Tab make_tab(const float* cb) {
    if constexpr (BITS == 4) {
      return E::table(cb);
    } else {
      alignas(64) float buf[16];
      for (int t = 0; t < 16; ++t) buf[t] = cb[t & ((1 << BITS) - 1)];
      return E::table(buf);
    }
  }

  // ---- row layout: tiles of MR x rows by NR weight rows, entries looked up in registers --------
  // One 16-byte chunk of NR rows: S sub-vectors of 16 inputs from k. TAIL: the chunk holding the
  // end of k (sub-vectors past k skipped, the partial one masked). Forced inline, so the
  // accumulators stay in registers across the chunk loop (no branch in the full-chunk body).
  template <int BITS, int MR, int NR, bool TAIL>
  FASTQ_LUT_INLINE static void rows_chunk(const CodebookLinearArgs& a, const float* x, const uint8_t* const* rowp,
                                          int64_t c, const Tab* tab, const float* const* cbp, V (&acc)[MR][NR]) {
    constexpr int S = 8 / BITS;
    I e[NR];
    for (int j = 0; j < NR; ++j) e[j] = E::expand(rowp[j] + c * 16);
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      const int64_t k = c * 16 * S + 16 * s;
      int valid = 16;
      if constexpr (TAIL) {
        if (k >= a.k) break;
        valid = static_cast<int>(std::min<int64_t>(16, a.k - k));
      }
      V xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = TAIL ? E::load_part(x + i * a.k + k, valid) : E::load(x + i * a.k + k);
      for (int j = 0; j < NR; ++j) {
        const I idx = s == 0 ? e[j] : E::srl(e[j], BITS * s);
        V w;
        if constexpr (BITS == 8) w = E::gather(cbp[j], idx);
        else w = E::lookup(idx, tab[j]);
        if constexpr (TAIL) w = E::keep_first(w, valid);
        for (int i = 0; i < MR; ++i) acc[i][j] = E::fma(xv[i], w, acc[i][j]);
      }
    }
  }

  template <int BITS, int MR, int NR>
  static void rows_tile(const CodebookLinearArgs& a, int64_t m0, int64_t n0) {
    constexpr int64_t kChunk = 128 / BITS;
    constexpr int C = 1 << BITS;
    const int64_t chunks = (a.k + kChunk - 1) / kChunk, full = a.k / kChunk;
    const int64_t G = a.cb_groups;
    const int64_t per_group = G == 1 ? chunks : a.k / G / kChunk;  // chunks per codebook group
    const float* x = a.x + m0 * a.k;
    const uint8_t* rowp[NR];
    for (int j = 0; j < NR; ++j) rowp[j] = a.codes + (n0 + j) * chunks * 16;
    V acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = E::zero();
    for (int64_t g = 0; g < G; ++g) {
      const float* cbp[NR];
      Tab tab[NR];
      for (int j = 0; j < NR; ++j) {
        cbp[j] = a.codebook + ((a.cb_rows == 1 ? 0 : n0 + j) * G + g) * C;
        if constexpr (BITS < 8) tab[j] = make_tab<BITS>(cbp[j]);
      }
      const int64_t c1 = (g + 1) * per_group;
      const int64_t cf = std::min(c1, full);
      for (int64_t c = g * per_group; c < cf; ++c) rows_chunk<BITS, MR, NR, false>(a, x, rowp, c, tab, cbp, acc);
      if (cf < c1) rows_chunk<BITS, MR, NR, true>(a, x, rowp, cf, tab, cbp, acc);  // the last, partial chunk
    }
    for (int i = 0; i < MR; ++i) {
      float* y = a.y + (m0 + i) * a.n + n0;
      for (int j = 0; j < NR; ++j) {
        float v = E::hsum(acc[i][j]);
        if (a.scale) v = v * a.scale[n0 + j];
        if (a.bias) v = v + a.bias[n0 + j];
        y[j] = v;
      }
    }
  }

  // Weight rows [n0, n1) against x rows [m0, m0 + MR): full NR tiles, then single rows.
  template <int BITS, int MR>
  static void rows_strip(const CodebookLinearArgs& a, int64_t m0, int64_t n0, int64_t n1) {
    constexpr int NR = E::nr(MR);
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) rows_tile<BITS, MR, NR>(a, m0, n);
    for (; n < n1; ++n) rows_tile<BITS, MR, 1>(a, m0, n);
  }

  template <int BITS>
  static void rows_bits(const CodebookLinearArgs& a, int64_t n0, int64_t n1) {
    for (int64_t mb = 0; mb < a.m; mb += kRowsMB) {
      const int64_t me = std::min(a.m, mb + kRowsMB);
      int64_t m = mb;
      for (; m + E::kMaxMR <= me; m += E::kMaxMR) rows_strip<BITS, E::kMaxMR>(a, m, n0, n1);
      switch (me - m) {
        case 1: rows_strip<BITS, 1>(a, m, n0, n1); break;
        case 2: if constexpr (E::kMaxMR > 2) rows_strip<BITS, 2>(a, m, n0, n1); break;
        case 3: if constexpr (E::kMaxMR > 3) rows_strip<BITS, 3>(a, m, n0, n1); break;
        default: break;
      }
    }
  }

  static void rows(const CodebookLinearArgs& a, int64_t n0, int64_t n1) {
    switch (a.bits) {
      case 1: return rows_bits<1>(a, n0, n1);
      case 2: return rows_bits<2>(a, n0, n1);
      case 4: return rows_bits<4>(a, n0, n1);
      default: return rows_bits<8>(a, n0, n1);
    }
  }

  // ---- lookup-table layout: shared epilogue of 16-row blocks ------------------------------------
  static void store_block(const CodebookLinearArgs& a, int64_t m, int64_t b, V v) {
    const int64_t r0 = 16 * b;
    const int rows = static_cast<int>(std::min<int64_t>(16, a.n - r0));
    if (a.scale) v = E::mul(v, E::load_part(a.scale + r0, rows));
    if (a.bias) v = E::add(v, E::load_part(a.bias + r0, rows));
    E::store_part(a.y + m * a.n + r0, v, rows);
  }

  // ---- lookup-table layout, bits <= 2: T-MAC tables -------------------------------------------
  // tables[(i - m0) * Q + q][t] = sum over j < g with q g + j < k of entry[(t >> bits j) & mask] *
  // x[i, q g + j] (the group's codebook), Q = k_pad / g nibble groups.
  template <int BITS>
  static void build_bits(const CodebookLinearArgs& a, float* tables, int64_t m0, int64_t m1, int64_t q0, int64_t q1) {
    constexpr int g = 4 / BITS, C = 1 << BITS;
    const int64_t k_pad = round_up(a.k, 2 * g), Q = k_pad / g, gs = a.k / a.cb_groups;
    int64_t cur = -1;
    V ent[g];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t k0 = q * g;
      const int64_t grp = std::min(a.cb_groups - 1, k0 / gs);
      if (grp != cur) {  // entries of each position j of a nibble, per table index t
        cur = grp;
        const float* cb = a.codebook + grp * C;
        for (int j = 0; j < g; ++j) {
          alignas(64) float buf[16];
          for (int t = 0; t < 16; ++t) buf[t] = cb[(t >> (BITS * j)) & (C - 1)];
          ent[j] = E::load(buf);
        }
      }
      const int terms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(g, a.k - k0)));
      for (int64_t i = m0; i < m1; ++i) {
        const float* x = a.x + i * a.k + k0;
        V t = E::zero();
        if (terms > 0) t = E::mul(ent[0], E::bcast(x[0]));
        for (int j = 1; j < terms; ++j) t = E::fma(ent[j], E::bcast(x[j]), t);
        E::store_part(tables + ((i - m0) * Q + q) * 16, t, 16);
      }
    }
  }

  static void build_tables(const CodebookLinearArgs& a, float* tables, int64_t m0, int64_t m1, int64_t q0, int64_t q1) {
    if (a.bits == 1) build_bits<1>(a, tables, m0, m1, q0, q1);
    else build_bits<2>(a, tables, m0, m1, q0, q1);
  }

  // MR x rows by NB 16-row blocks: per 16-byte unit, one lookup per nibble adds g weights of 16
  // rows. Low and high nibbles accumulate separately (two dependency chains).
  template <int MR, int NB>
  static void lookup_tile(const CodebookLinearArgs& a, const float* tables, int64_t Q, int64_t m0, int64_t tm0,
                          int64_t b) {
    const int64_t U = Q / 2;
    V lo[MR][NB], hi[MR][NB];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NB; ++j) lo[i][j] = hi[i][j] = E::zero();
    const uint8_t* codes = a.codes + b * U * 16;
    for (int64_t u = 0; u < U; ++u) {
      I el[NB], eh[NB];
      for (int j = 0; j < NB; ++j) {
        el[j] = E::expand(codes + (j * U + u) * 16);
        eh[j] = E::srl(el[j], 4);
      }
      for (int i = 0; i < MR; ++i) {
        const float* t = tables + ((m0 - tm0 + i) * Q + 2 * u) * 16;
        const Tab tl = E::table(t), th = E::table(t + 16);
        for (int j = 0; j < NB; ++j) {
          lo[i][j] = E::add(lo[i][j], E::lookup(el[j], tl));
          hi[i][j] = E::add(hi[i][j], E::lookup(eh[j], th));
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NB; ++j) store_block(a, m0 + i, b + j, E::add(lo[i][j], hi[i][j]));
  }

  template <int MR>
  static void lookup_rows(const CodebookLinearArgs& a, const float* tables, int64_t Q, int64_t m, int64_t tm0,
                          int64_t b0, int64_t b1) {
    constexpr int NB = MR == 1 ? E::kLutNB1 : E::kLutNB;
    int64_t b = b0;
    for (; b + NB <= b1; b += NB) lookup_tile<MR, NB>(a, tables, Q, m, tm0, b);
    for (; b < b1; ++b) lookup_tile<MR, 1>(a, tables, Q, m, tm0, b);
  }

  static void lookup(const CodebookLinearArgs& a, const float* tables, int64_t m0, int64_t m1, int64_t b0, int64_t b1) {
    const int g = 4 / a.bits;
    const int64_t Q = round_up(a.k, 2 * g) / g;
    int64_t m = m0;
    for (; m + E::kLutMR <= m1; m += E::kLutMR) lookup_rows<E::kLutMR>(a, tables, Q, m, m0, b0, b1);
    for (; m < m1; ++m) lookup_rows<1>(a, tables, Q, m, m0, b0, b1);
  }

  // ---- lookup-table layout, any bits: entries of 16 rows looked up in registers, times the ----
  // broadcast x: a float GEMM on weights dequantized in registers.
  // One 16-byte unit (2g inputs) of NB blocks; TAIL: the unit holding the end of k.
  template <int BITS, int MR, int NB, bool TAIL>
  FASTQ_LUT_INLINE static void dequant_unit(const CodebookLinearArgs& a, const float* x, const uint8_t* codes,
                                            int64_t U, int64_t u, const Tab& tab, V (&acc)[MR][NB]) {
    constexpr int g = 4 / BITS;
    I e[NB];
    for (int j = 0; j < NB; ++j) e[j] = E::expand(codes + (j * U + u) * 16);
#pragma GCC unroll 8
    for (int p = 0; p < 2 * g; ++p) {  // position within the unit: nibble p / g, code p % g
      const int64_t k = u * 2 * g + p;
      if constexpr (TAIL) {
        if (k >= a.k) break;
      }
      const int shift = 4 * (p / g) + BITS * (p % g);
      V w[NB];
      for (int j = 0; j < NB; ++j) w[j] = E::lookup(shift ? E::srl(e[j], shift) : e[j], tab);
      for (int i = 0; i < MR; ++i) {
        const V xb = E::bcast(x[i * a.k + k]);
        for (int j = 0; j < NB; ++j) acc[i][j] = E::fma(xb, w[j], acc[i][j]);
      }
    }
  }

  template <int BITS, int MR, int NB>
  static void dequant_tile(const CodebookLinearArgs& a, int64_t m0, int64_t b) {
    constexpr int g = 4 / BITS, C = 1 << BITS;
    const int64_t U = round_up(a.k, 2 * g) / (2 * g), full = a.k / (2 * g);
    const int64_t G = a.cb_groups;
    const int64_t per_group = G == 1 ? U : a.k / G / (2 * g);  // units per codebook group
    const uint8_t* codes = a.codes + b * U * 16;
    const float* x = a.x + m0 * a.k;
    V acc[MR][NB];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = E::zero();
    for (int64_t grp = 0; grp < G; ++grp) {
      const Tab tab = make_tab<BITS>(a.codebook + grp * C);
      const int64_t u1 = (grp + 1) * per_group, uf = std::min(u1, full);
      for (int64_t u = grp * per_group; u < uf; ++u) dequant_unit<BITS, MR, NB, false>(a, x, codes, U, u, tab, acc);
      if (uf < u1) dequant_unit<BITS, MR, NB, true>(a, x, codes, U, uf, tab, acc);
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NB; ++j) store_block(a, m0 + i, b + j, acc[i][j]);
  }

  template <int BITS, int MR>
  static void dequant_rows(const CodebookLinearArgs& a, int64_t m, int64_t b0, int64_t b1) {
    constexpr int NB = MR == 1 ? E::kDqNB1 : E::kDqNB;
    int64_t b = b0;
    for (; b + NB <= b1; b += NB) dequant_tile<BITS, MR, NB>(a, m, b);
    for (; b < b1; ++b) dequant_tile<BITS, MR, 1>(a, m, b);
  }

  template <int BITS>
  static void dequant_bits(const CodebookLinearArgs& a, int64_t b0, int64_t b1) {
    for (int64_t mb = 0; mb < a.m; mb += kRowsMB) {
      const int64_t me = std::min(a.m, mb + kRowsMB);
      int64_t m = mb;
      for (; m + E::kDqMR <= me; m += E::kDqMR) dequant_rows<BITS, E::kDqMR>(a, m, b0, b1);
      for (; m + 4 <= me; m += 4) dequant_rows<BITS, 4>(a, m, b0, b1);
      for (; m < me; ++m) dequant_rows<BITS, 1>(a, m, b0, b1);
    }
  }

  static void dequant(const CodebookLinearArgs& a, int64_t b0, int64_t b1) {
    switch (a.bits) {
      case 1: return dequant_bits<1>(a, b0, b1);
      case 2: return dequant_bits<2>(a, b0, b1);
      default: return dequant_bits<4>(a, b0, b1);
    }
  }

  static constexpr LutKernels table() { return LutKernels{&rows, &build_tables, &lookup, &dequant}; }
};

}  // namespace
}  // namespace fastq::cpu
