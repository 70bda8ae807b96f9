// Sliced-ELL sparse linear micro-kernels ("ell"; layout and arithmetic in csrc/api.h,
// SparseEllArgs), written once over a 16-lane trait E and included by each
// csrc/cpu/<isa>/sparse_ell.cpp, so each copy is compiled under that ISA's flags only (internal
// linkage: anonymous namespace).
//
// E provides: kMaxRows (activation rows per register block, <= 8); Lanes (16 floats, one per output
// row of a group); Tile (the 32 x of one activation row in one tile); Weights (a step's 16 values
// plus what marks the nonzero ones); Index (a step's 16 decoded offsets); zero(); load_tile(x32,
// valid) (valid < 32 only in the last tile of a k that is not a multiple of 32: nothing at or past
// x32 + valid is read); load_weights(const float* | const int8_t*); load_index(const uint8_t*);
// pick(Tile, Index) -> x at each lane's offset; mul_nz(Weights, Lanes) -> w * x where w != 0 and
// +0.0f elsewhere; add; mul; load_part(p, valid) (lanes >= valid read as 0) and store_part(p, v,
// valid) (lanes >= valid left untouched).
//
// Invariants: the buffers are re-checked as they are read (they may have been rewritten in place
// after Python validated them): a group whose pointers leave [0, total_steps] or whose tiles
// overrun the group is skipped, an offset >= 32 is noticed (picks use its low 5 bits, inside
// the tile), and either sets *status for the driver to raise.
// Each lane accumulates its slots in storage order with a separate multiply and add
// (the reference's sequence), so every ISA is bit-exact with fastq/ops/reference.py; the
// accumulator starts at +0.0 and so never becomes -0.0, which makes adding the +0.0 of a skipped
// slot an identity. Nothing here allocates on the heap or threads.
// Why this shape: a step's 16 lanes are 16 different output rows, so accumulators stay
// lane-parallel across all tiles (no horizontal reduction), and a step's activations are picked
// from the tile's 32 x held in registers by a permute instead of gathered from memory.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "api.h"

namespace fastq::cpu {
namespace {

template <class E>
struct SparseEllImpl {
  using Lanes = typename E::Lanes;

  template <bool I8>
  static typename E::Weights weights(const void* values, int64_t step) {
    if constexpr (I8) return E::load_weights(static_cast<const int8_t*>(values) + 16 * step);
    else return E::load_weights(static_cast<const float*>(values) + 16 * step);
  }

  static void report(const SparseEllArgs& a) {
    if (a.status) __atomic_store_n(a.status, kSparseBadEll, __ATOMIC_RELAXED);
  }

  // Row group g x activation rows [m0, m0 + MM): all tiles, then the epilogue.
  template <bool I8, int MM>
  static void block(const SparseEllArgs& a, int64_t g, int64_t m0) {
    const int64_t tiles = (a.k + 31) / 32;
    const uint8_t* steps = a.steps + g * tiles;
    const float* x = a.x + m0 * a.k;
    int64_t j = a.group_ptr[g];
    const int64_t group_end = a.group_ptr[g + 1];
    if (j < 0 || j > group_end || group_end > a.total_steps) return report(a);
    uint64_t offset_bits = 0;  // OR of every offset byte read: bits 5..7 flag an offset >= 32
    Lanes acc[MM];
    for (int i = 0; i < MM; ++i) acc[i] = E::zero();
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t end = j + steps[t];
      if (end == j) continue;
      if (end > group_end) return report(a);
      const int valid = static_cast<int>(std::min<int64_t>(32, a.k - 32 * t));
      typename E::Tile tile[MM];
      for (int i = 0; i < MM; ++i) tile[i] = E::load_tile(x + i * a.k + 32 * t, valid);
      for (; j < end; ++j) {
        const auto w = weights<I8>(a.values, j);
        uint64_t o[2];
        std::memcpy(o, a.offsets + 16 * j, 16);
        offset_bits |= o[0] | o[1];
        const auto idx = E::load_index(a.offsets + 16 * j);
        for (int i = 0; i < MM; ++i) acc[i] = E::add(acc[i], E::mul_nz(w, E::pick(tile[i], idx)));
      }
    }
    if (offset_bits & 0xE0E0E0E0E0E0E0E0ull) report(a);
    const int64_t r0 = 16 * g;
    const int rows = static_cast<int>(std::min<int64_t>(16, a.n - r0));
    for (int i = 0; i < MM; ++i) {
      Lanes r = acc[i];
      if (a.scale) r = E::mul(r, E::load_part(a.scale + r0, rows));
      if (a.bias) r = E::add(r, E::load_part(a.bias + r0, rows));
      E::store_part(a.y + (m0 + i) * a.n + r0, r, rows);
    }
  }

  template <bool I8, int MM>
  static void block_upto(const SparseEllArgs& a, int64_t g, int64_t m0, int64_t mm) {
    if constexpr (MM > 1) {
      if (mm < MM) return block_upto<I8, MM - 1>(a, g, m0, mm);
    }
    block<I8, MM>(a, g, m0);
  }

  // Groups outer, activation-row blocks inner: a group's steps stay in L1/L2 across the blocks.
  template <bool I8>
  static void groups(const SparseEllArgs& a, int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t m0 = 0; m0 < a.m; m0 += E::kMaxRows)
        block_upto<I8, E::kMaxRows>(a, g, m0, std::min<int64_t>(E::kMaxRows, a.m - m0));
  }

  static constexpr SparseEllKernels table() { return SparseEllKernels{&groups<false>, &groups<true>}; }
};

}  // namespace
}  // namespace fastq::cpu
