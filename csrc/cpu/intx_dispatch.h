// Run-time -> compile-time dispatch shared by the SIMD intx micro-kernels (csrc/cpu/<isa>/intx.cpp):
// slot width (2, 4 or 8 bits), rows per tile (1..K::kMaxMR) and blocks per tile (K::wide_nb<MR>()
// at a time, then single blocks). K provides kMaxMR, kEight (whether 8-bit slots are supported),
// wide_nb<MR>() and tile<S, MR, NB>(task, m0, nb0). Include only from an ISA file (internal linkage).
#pragma once
#include <cstdint>

#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

template <class K, int S, int MR>
void intx_blocks(const IntxTask& t, int64_t m0, int64_t nb0, int64_t nb1) {
  constexpr int NB = K::template wide_nb<MR>();
  int64_t nb = nb0;
  for (; nb + NB <= nb1; nb += NB) K::template tile<S, MR, NB>(t, m0, nb);
  for (; nb < nb1; ++nb) K::template tile<S, MR, 1>(t, m0, nb);
}

template <class K, int S>
void intx_rows(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  if constexpr (K::kMaxMR >= 4) {
    if (mr >= 4) return intx_blocks<K, S, 4>(t, m0, nb0, nb1);
    if (mr == 3) return intx_blocks<K, S, 3>(t, m0, nb0, nb1);
  }
  if (mr >= 2) return intx_blocks<K, S, 2>(t, m0, nb0, nb1);
  intx_blocks<K, S, 1>(t, m0, nb0, nb1);
}

template <class K>
void intx_slots(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  if (t.slot == 2) return intx_rows<K, 2>(t, m0, mr, nb0, nb1);
  if constexpr (K::kEight) {
    if (t.slot == 8) return intx_rows<K, 8>(t, m0, mr, nb0, nb1);
  }
  intx_rows<K, 4>(t, m0, mr, nb0, nb1);
}

}  // namespace
}  // namespace fastq::cpu
