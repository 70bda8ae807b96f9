// Sparse masked matmul micro-kernels, written once over a SIMD trait V and included by each
// csrc/cpu/<isa>/sparse.cpp, so each copy is compiled under that ISA's flags only (internal
// linkage: anonymous namespace). Formats and math: csrc/api.h (SparseLinearArgs).
//
// V provides: W (lanes), kMaxLanes / kBsrLanes (activation rows per transposed pass, multiples of
// 16), vec, ivec, zero(), load(const float*), bcast(float), fma(a, b, c) = a * b + c, add, sum(vec),
// store(float*, vec), repeat<BC>(const float* x) -> x[l % BC] in lane l (BC <= W), idx_u16(const uint16_t*) / idx_i32(const int32_t*) -> W indices,
// gather(const float* base, ivec), load_i8(const int8_t*) -> W floats, fmas(float, float, float),
// s24_index(32 bits of 2:4 codes) and s24_pick(x + 2 j, index, u): the activations of stored values
// j + u W .. j + u W + W - 1 of a 16-value 2:4 step (value t's input is 4 (t / 2) + code_t).
//
// Also: ibcast(int32_t), clamp_idx(ivec i, ivec last, ivec& worst) -> min(i, last) with
// worst = max(worst, i) (unsigned), and hmax(ivec) (unsigned horizontal max).
//
// Invariants: CSR rows hold a multiple of 16 entries (padding is value 0 at a column the row
// already reads), so the CSR loops need no tails; nothing here allocates on the heap or threads.
// Nothing here trusts the index buffers either: Python validated them, but they can be rewritten
// in place afterwards (through .data or numpy), so every column index is clamped to the last
// column (vpminud, next to the gather) and the largest one seen is kept (vpmaxud); a row whose
// pointers leave [0, entries] (or do not cover a multiple of 16 entries) is skipped. Either finding
// sets *status and the driver raises: out-of-range buffers cost an error, never a stray read.
// Why two shapes: with row-major x (m < 8) each kept weight is loaded once and its activation
// gathered per row; with transposed x (m >= 8) each kept weight is broadcast once and multiplied
// into a contiguous run of up to kMaxLanes activation rows, so no gather is needed at all.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"

namespace fastq::cpu {
namespace {

template <class V>
struct SparseImpl {
  using vec = typename V::vec;
  static constexpr int W = V::W;

  static float epilogue(const SparseLinearArgs& a, int64_t n, float acc) {
    if (a.scale) acc = acc * a.scale[n];
    if (a.bias) acc = acc + a.bias[n];
    return acc;
  }

  template <bool I8>
  static vec load_vals(const void* v, int64_t j) {
    if constexpr (I8) return V::load_i8(static_cast<const int8_t*>(v) + j);
    else return V::load(static_cast<const float*>(v) + j);
  }
  template <bool I8>
  static float val(const void* v, int64_t j) {
    if constexpr (I8) return static_cast<float>(static_cast<const int8_t*>(v)[j]);
    else return static_cast<const float*>(v)[j];
  }

  static void report(const SparseLinearArgs& a, int32_t code) {
    if (a.status) __atomic_store_n(a.status, code, __ATOMIC_RELAXED);
  }
  // Entries [*j0, *e) of (block) row r, or false (and a report) when the pointers are unusable.
  static bool row_range(const SparseLinearArgs& a, int64_t r, int64_t step, int64_t* j0, int64_t* e) {
    *j0 = a.row_ptr[r];
    *e = a.row_ptr[r + 1];
    if (*j0 < 0 || *j0 > *e || *e > a.entries || (*e - *j0) % step != 0) {
      report(a, kSparseBadRowPtr);
      return false;
    }
    return true;
  }
  static void check_worst(const SparseLinearArgs& a, int64_t worst, int64_t last) {
    if (worst > last) report(a, kSparseBadIndex);
  }

  template <class F>
  static void for_row_blocks(const SparseLinearArgs& a, const F& f) {
    // activation rows in groups of up to 8 register accumulators
    for (int64_t m0 = 0; m0 < a.m; m0 += 8) {
      switch (std::min<int64_t>(8, a.m - m0)) {
        case 1: f(std::integral_constant<int, 1>{}, m0); break;
        case 2: f(std::integral_constant<int, 2>{}, m0); break;
        case 3: f(std::integral_constant<int, 3>{}, m0); break;
        case 4: f(std::integral_constant<int, 4>{}, m0); break;
        case 5: f(std::integral_constant<int, 5>{}, m0); break;
        case 6: f(std::integral_constant<int, 6>{}, m0); break;
        case 7: f(std::integral_constant<int, 7>{}, m0); break;
        default: f(std::integral_constant<int, 8>{}, m0); break;
      }
    }
  }

  // ---- CSR / sparse-int8, x row-major: gather x at the kept columns -----------------------------
  template <bool I8, int MM>
  static void csr_row(const SparseLinearArgs& a, int64_t m0, int64_t n, typename V::ivec last,
                      typename V::ivec& worst) {
    int64_t j, e;
    if (!row_range(a, n, 16, &j, &e)) return;
    vec acc[MM];
    for (int i = 0; i < MM; ++i) acc[i] = V::zero();
    const float* x = a.x + m0 * a.k;
    for (; j < e; j += W) {
      const vec w = load_vals<I8>(a.values, j);
      const auto idx = V::clamp_idx(V::idx_u16(a.cols + j), last, worst);
      for (int i = 0; i < MM; ++i) acc[i] = V::fma(w, V::gather(x + i * a.k, idx), acc[i]);
    }
    for (int i = 0; i < MM; ++i) a.y[(m0 + i) * a.n + n] = epilogue(a, n, V::sum(acc[i]));
  }

  template <bool I8>
  static void csr(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    const auto last = V::ibcast(static_cast<int32_t>(a.k - 1));
    auto worst = V::ibcast(0);
    for_row_blocks(a, [&](auto mm, int64_t m0) {
      for (int64_t n = r0; n < r1; ++n) csr_row<I8, decltype(mm)::value>(a, m0, n, last, worst);
    });
    check_worst(a, V::hmax(worst), a.k - 1);
  }

  // Writes lanes [0, NV * W) of two accumulator sets to y rows mc + l (< m) of column n.
  template <int NV>
  static void store_column(const SparseLinearArgs& a, int64_t n, int64_t mc, const vec* acc0, const vec* acc1) {
    alignas(64) float out[NV * W];
    for (int i = 0; i < NV; ++i) V::store(out + i * W, V::add(acc0[i], acc1[i]));
    const int64_t lanes = std::min<int64_t>(NV * W, a.m - mc);
    for (int64_t l = 0; l < lanes; ++l) a.y[(mc + l) * a.n + n] = epilogue(a, n, out[l]);
  }

  // Calls f(NV) for each run of activation rows [mc, mc + NV * W) of the transposed x.
  template <int kLanes, class F>
  static void for_lane_chunks(const SparseLinearArgs& a, const F& f) {
    for (int64_t mc = 0; mc < a.ld_xt; mc += kLanes) {
      switch (std::min<int64_t>(kLanes, a.ld_xt - mc) / 16) {
        case 1: f(std::integral_constant<int, 16 / W>{}, mc); break;
        case 2: if constexpr (kLanes >= 32) f(std::integral_constant<int, 32 / W>{}, mc); break;
        case 3: if constexpr (kLanes >= 48) f(std::integral_constant<int, 48 / W>{}, mc); break;
        default: if constexpr (kLanes >= 64) f(std::integral_constant<int, 64 / W>{}, mc); break;
      }
    }
  }

  // ---- CSR / sparse-int8, x transposed --------------------------------------------------------
  template <bool I8, int NV>
  static void csr_t_run(const SparseLinearArgs& a, int64_t n, int64_t mc, uint32_t& worst) {
    int64_t j, e;
    if (!row_range(a, n, 16, &j, &e)) return;
    vec acc0[NV], acc1[NV];
    for (int i = 0; i < NV; ++i) acc0[i] = acc1[i] = V::zero();
    const float* xt = a.x + mc;
    const uint32_t last = static_cast<uint32_t>(a.k - 1);
    for (; j < e; j += 2) {  // e - j is even
      const vec w0 = V::bcast(val<I8>(a.values, j)), w1 = V::bcast(val<I8>(a.values, j + 1));
      const uint32_t c0 = a.cols[j], c1 = a.cols[j + 1];
      worst = std::max(worst, std::max(c0, c1));
      const float* p0 = xt + static_cast<int64_t>(std::min(c0, last)) * a.ld_xt;
      const float* p1 = xt + static_cast<int64_t>(std::min(c1, last)) * a.ld_xt;
      for (int i = 0; i < NV; ++i) {
        acc0[i] = V::fma(w0, V::load(p0 + i * W), acc0[i]);
        acc1[i] = V::fma(w1, V::load(p1 + i * W), acc1[i]);
      }
    }
    store_column<NV>(a, n, mc, acc0, acc1);
  }

  template <bool I8>
  static void csr_t(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    uint32_t worst = 0;
    for (int64_t n = r0; n < r1; ++n)
      for_lane_chunks<V::kMaxLanes>(a, [&](auto nv, int64_t mc) {
        csr_t_run<I8, decltype(nv)::value>(a, n, mc, worst);
      });
    check_worst(a, worst, a.k - 1);
  }

  // ---- 2:4, x row-major: 16 stored values cover 32 consecutive inputs, so their activations are
  // picked from registers with the ISA's permute (V::s24_index / V::s24_pick), not gathered ------
  template <int MM>
  static void s24_row(const SparseLinearArgs& a, int64_t m0, int64_t n) {
    const int64_t kv = a.k / 2;
    const float* v = static_cast<const float*>(a.values) + n * kv;
    const uint8_t* meta = a.meta + n * ((kv + 3) / 4);
    const float* x = a.x + m0 * a.k;
    vec acc[MM];
    for (int i = 0; i < MM; ++i) acc[i] = V::zero();
    int64_t j = 0;
    for (; j + 16 <= kv; j += 16) {
      uint32_t word;
      std::memcpy(&word, meta + j / 4, 4);  // 16 two-bit codes
      const auto idx = V::s24_index(word);
      for (int u = 0; u < 16 / W; ++u) {
        const vec w = V::load(v + j + u * W);
        for (int i = 0; i < MM; ++i) acc[i] = V::fma(w, V::s24_pick(x + i * a.k + 2 * j, idx, u), acc[i]);
      }
    }
    float tail[MM] = {};
    for (; j < kv; ++j) {
      const int64_t col = (j >> 1) * 4 + ((meta[j / 4] >> (2 * (j % 4))) & 3);
      for (int i = 0; i < MM; ++i) tail[i] = V::fmas(v[j], x[i * a.k + col], tail[i]);
    }
    for (int i = 0; i < MM; ++i) a.y[(m0 + i) * a.n + n] = epilogue(a, n, V::sum(acc[i]) + tail[i]);
  }

  static void s24(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    for_row_blocks(a, [&](auto mm, int64_t m0) {
      for (int64_t n = r0; n < r1; ++n) s24_row<decltype(mm)::value>(a, m0, n);
    });
  }

  // ---- 2:4, x transposed, blocked over K: a panel of kS24BlockK inputs x one lane chunk (16 KB at
  // 64 lanes) stays in L1 while kS24BlockRows weight rows use it, instead of every row streaming
  // all of x_t from L2/L3 (which left the FMAs waiting at large M). Each row's two partial sums
  // live in a stack buffer between panels, so the float-op order per lane is the unblocked one.
  static constexpr int64_t kS24BlockK = 64;  // inputs per panel: a multiple of 8 (whole meta bytes)
  static constexpr int64_t kS24BlockRows = 32;

  template <int NV>
  static void s24_t_panel(const SparseLinearArgs& a, int64_t n, int64_t mc, int64_t k0, int64_t k1,
                          float* part0, float* part1) {
    const int64_t kv = a.k / 2;
    const float* v = static_cast<const float*>(a.values) + n * kv;
    const uint8_t* meta = a.meta + n * ((kv + 3) / 4);
    const float* xt = a.x + mc;
    // this row's next panel is read after kS24BlockRows - 1 other rows' panels: ask for it now
    // (the rows' streams interleave too finely for the hardware prefetcher; the weights come from DRAM)
    for (int64_t b = 0; b < kS24BlockK * 2; b += 64) __builtin_prefetch(reinterpret_cast<const char*>(v + k1 / 2) + b);
    __builtin_prefetch(meta + k1 / 8);
    vec acc0[NV], acc1[NV];
    for (int i = 0; i < NV; ++i) acc0[i] = V::load(part0 + i * W), acc1[i] = V::load(part1 + i * W);
    for (int64_t j = k0 / 2; j < k1 / 2; j += 2) {  // one group of 4 inputs: two stored values
      const unsigned codes = meta[j >> 2] >> (2 * (j & 3));
      const int64_t base = 2 * j;
      const float* p0 = xt + (base + (codes & 3)) * a.ld_xt;
      const float* p1 = xt + (base + ((codes >> 2) & 3)) * a.ld_xt;
      const vec w0 = V::bcast(v[j]), w1 = V::bcast(v[j + 1]);
      for (int i = 0; i < NV; ++i) {
        acc0[i] = V::fma(w0, V::load(p0 + i * W), acc0[i]);
        acc1[i] = V::fma(w1, V::load(p1 + i * W), acc1[i]);
      }
    }
    for (int i = 0; i < NV; ++i) V::store(part0 + i * W, acc0[i]), V::store(part1 + i * W, acc1[i]);
  }

  template <int NV>
  static void s24_t_rows(const SparseLinearArgs& a, int64_t n0, int64_t n1, int64_t mc) {
    constexpr int L = NV * W;
    alignas(64) float part[2][kS24BlockRows][L];
    std::memset(part, 0, sizeof(part));
    for (int64_t k0 = 0; k0 < a.k; k0 += kS24BlockK)
      for (int64_t n = n0; n < n1; ++n)
        s24_t_panel<NV>(a, n, mc, k0, std::min(a.k, k0 + kS24BlockK), part[0][n - n0], part[1][n - n0]);
    for (int64_t n = n0; n < n1; ++n) {
      vec acc0[NV], acc1[NV];
      for (int i = 0; i < NV; ++i) acc0[i] = V::load(part[0][n - n0] + i * W), acc1[i] = V::load(part[1][n - n0] + i * W);
      store_column<NV>(a, n, mc, acc0, acc1);
    }
  }

  static void s24_t(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    for (int64_t n0 = r0; n0 < r1; n0 += kS24BlockRows)
      for_lane_chunks<V::kMaxLanes>(a, [&](auto nv, int64_t mc) {
        s24_t_rows<decltype(nv)::value>(a, n0, std::min(r1, n0 + kS24BlockRows), mc);
      });
  }

  // ---- block-CSR, x row-major. A block's BR*BC values are contiguous, so when they fill whole
  // vectors each block is one or more vector FMAs against x's BC inputs repeated across the lanes
  // (V::repeat), two accumulator sets alternating blocks; rows are summed out of the lanes at the
  // end. Smaller blocks (BR*BC < W) run the scalar loop. -----------------------------------------
  template <int BR, int BC>
  static void bsr_rm(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    const float* vals = static_cast<const float*>(a.values);
    constexpr int kVecs = BR * BC / W;
    const uint32_t last = static_cast<uint32_t>(a.k / BC - 1);
    uint32_t worst = 0;
    const auto block_col = [&](int64_t blk) {
      const uint32_t c = a.cols[blk];
      worst = std::max(worst, c);
      return static_cast<int64_t>(std::min(c, last));
    };
    for (int64_t R = r0; R < r1; ++R) {
      int64_t b0, e0;
      if (!row_range(a, R, 1, &b0, &e0)) continue;
      for (int64_t m = 0; m < a.m; ++m) {
        const float* x = a.x + m * a.k;
        float acc[BR][BC] = {};  // BC partial sums per row: independent chains
        if constexpr (kVecs >= 1) {
          vec va[2][kVecs];
          for (int u = 0; u < kVecs; ++u) va[0][u] = va[1][u] = V::zero();
          int64_t b = b0;
          const int64_t e = e0;
          auto step = [&](vec* acc_set, int64_t blk) {
            const float* vb = vals + blk * BR * BC;
            const float* xs = x + block_col(blk) * BC;
            for (int u = 0; u < kVecs; ++u) {
              // lane l of vector u is block element u W + l: input column (u W + l) % BC
              const vec xv = W >= BC ? V::template repeat<BC>(xs) : V::load(xs + (u * W) % BC);
              acc_set[u] = V::fma(V::load(vb + u * W), xv, acc_set[u]);
            }
          };
          for (; b + 1 < e; b += 2) step(va[0], b), step(va[1], b + 1);
          if (b < e) step(va[0], b);
          for (int u = 0; u < kVecs; ++u) V::store(&acc[0][0] + u * W, V::add(va[0][u], va[1][u]));
        } else {
          for (int64_t b = b0; b < e0; ++b) {
            const float* vb = vals + b * BR * BC;
            const float* xs = x + block_col(b) * BC;
            for (int r = 0; r < BR; ++r)
              for (int c = 0; c < BC; ++c) acc[r][c] = V::fmas(vb[r * BC + c], xs[c], acc[r][c]);
          }
        }
        for (int r = 0; r < BR; ++r) {
          const int64_t row = R * BR + r;
          float s = 0.0f;
          for (int c = 0; c < BC; ++c) s += acc[r][c];
          if (row < a.n) a.y[m * a.n + row] = epilogue(a, row, s);
        }
      }
    }
    check_worst(a, worst, last);
  }

  template <int BR>
  static void bsr_rm_bc(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    switch (a.block_cols) {
      case 1: return bsr_rm<BR, 1>(a, r0, r1);
      case 2: return bsr_rm<BR, 2>(a, r0, r1);
      case 4: return bsr_rm<BR, 4>(a, r0, r1);
      default: return bsr_rm<BR, 8>(a, r0, r1);
    }
  }

  static void bsr(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    switch (a.block_rows) {
      case 1: return bsr_rm_bc<1>(a, r0, r1);
      case 2: return bsr_rm_bc<2>(a, r0, r1);
      case 4: return bsr_rm_bc<4>(a, r0, r1);
      default: return bsr_rm_bc<8>(a, r0, r1);
    }
  }

  // ---- block-CSR, x transposed: each x_t row chunk is loaded once per block column and used by
  // all BR rows of the block (register blocking the dense kernels get, within a block) ----------
  template <int BR, int NV>
  static void bsr_t_run(const SparseLinearArgs& a, int64_t R, int64_t mc, uint32_t& worst) {
    const float* vals = static_cast<const float*>(a.values);
    const int bc = a.block_cols;
    const float* xt = a.x + mc;
    const uint32_t last = static_cast<uint32_t>(a.k / bc - 1);
    int64_t b0, e0;
    if (!row_range(a, R, 1, &b0, &e0)) return;
    vec acc[BR][NV];
    for (int r = 0; r < BR; ++r)
      for (int i = 0; i < NV; ++i) acc[r][i] = V::zero();
    for (int64_t b = b0; b < e0; ++b) {
      const float* vb = vals + b * BR * bc;
      const uint32_t c = a.cols[b];
      worst = std::max(worst, c);
      const int64_t col0 = static_cast<int64_t>(std::min(c, last)) * bc;
      for (int c = 0; c < bc; ++c) {
        const float* p = xt + (col0 + c) * a.ld_xt;
        vec xv[NV];
        for (int i = 0; i < NV; ++i) xv[i] = V::load(p + i * W);
        for (int r = 0; r < BR; ++r) {
          const vec w = V::bcast(vb[r * bc + c]);
          for (int i = 0; i < NV; ++i) acc[r][i] = V::fma(w, xv[i], acc[r][i]);
        }
      }
    }
    const vec zero[NV] = {};
    for (int r = 0; r < BR; ++r) {
      const int64_t row = R * BR + r;
      if (row < a.n) store_column<NV>(a, row, mc, acc[r], zero);
    }
  }

  template <int BR>
  static void bsr_t_br(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    uint32_t worst = 0;
    for (int64_t R = r0; R < r1; ++R)
      for_lane_chunks<V::kBsrLanes>(a, [&](auto nv, int64_t mc) {
        bsr_t_run<BR, decltype(nv)::value>(a, R, mc, worst);
      });
    check_worst(a, worst, a.k / a.block_cols - 1);
  }

  static void bsr_t(const SparseLinearArgs& a, int64_t r0, int64_t r1) {
    switch (a.block_rows) {
      case 1: return bsr_t_br<1>(a, r0, r1);
      case 2: return bsr_t_br<2>(a, r0, r1);
      case 4: return bsr_t_br<4>(a, r0, r1);
      default: return bsr_t_br<8>(a, r0, r1);
    }
  }

  static constexpr SparseKernels table() {
    return SparseKernels{&csr<false>, &csr_t<false>, &csr<true>, &csr_t<true>, &s24, &s24_t, &bsr, &bsr_t};
  }
};

}  // namespace
}  // namespace fastq::cpu
