// Per-element versions of the int8 GEMM family's epilogue and of the packed-weight indexing
// (fastq/ops/reference.py: int8_linear_dynamic, int8_pack_weight). Every ISA uses these for its
// column tails, so they define the bit-exact behaviour: integer correction, then
// float(acc) * (a_scale * w_scale) (+ bias), each float op rounded on its own (no FMA), then the
// output dtype's rounding. Internal linkage: compiled into objects with different ISA flags.
#pragma once
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"

namespace fastq::cpu {
namespace {

constexpr int kNR = 16;  // columns per packed block
constexpr int kKR = 4;   // consecutive k per column in a block
constexpr int kBlockBytes = kNR * kKR;

// Wrapping int32 a - b * c (the reference's int32 tensor arithmetic), without signed-overflow UB.
inline int32_t sub_mul_wrap(int32_t a, int32_t b, int32_t c) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) - static_cast<uint32_t>(b) * static_cast<uint32_t>(c));
}

inline void store_out(DType d, void* y, int64_t i, float v) {
  switch (d) {
    case DType::f32: store_elem<DType::f32>(y, i, v); break;
    case DType::f16: store_elem<DType::f16>(y, i, v); break;
    default: store_elem<DType::bf16>(y, i, v); break;
  }
}

inline float load_in(DType d, const void* x, int64_t i) {
  switch (d) {
    case DType::f32: return load_elem<DType::f32>(x, i);
    case DType::f16: return load_elem<DType::f16>(x, i);
    default: return load_elem<DType::bf16>(x, i);
  }
}

// The epilogue for one element: acc is the raw dot product of the tile's activation format.
inline void epilogue_elem(const GemmEpilogue& ep, int64_t m, int64_t n, int32_t acc, int32_t colsum) {
  if (ep.row_off) acc = sub_mul_wrap(acc, ep.row_off[m], colsum);
  if (ep.c) {
    int32_t* c = ep.c + m * ep.ldc + n;
    *c = ep.accumulate ? static_cast<int32_t>(static_cast<uint32_t>(*c) + static_cast<uint32_t>(acc)) : acc;
    return;
  }
  const float s = ep.a_scale[m] * ep.w_scale[n];
  float v = static_cast<float>(acc) * s;
  if (ep.bias) v = v + ep.bias[n];
  store_out(ep.y_dtype, ep.y, m * ep.ldy + n, v);
}

// Weight-only: the scale of weight column n at k (groups of K / scale_groups along k).
inline float wo_scale(const Int8LinearArgs& a, int64_t n, int64_t g) { return a.w_scale[n * a.scale_groups + g]; }

}  // namespace
}  // namespace fastq::cpu
