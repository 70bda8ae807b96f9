// Weight-only int8 linear with bfloat16 activations on AVX512-BF16 dot products (vdpbf16ps):
// the large-M path of int8_weight_only_linear for bf16 x on CPUs that have AVX512-BF16 but no AMX
// (AMD Zen 4; Intel Cooper Lake). Driver: csrc/cpu/wo_bf16.cpp; kernels: csrc/cpu/avx512bf16/.
//
// Arithmetic: the int8 codes become bfloat16 exactly and the bf16 x is used as it is, so every
// product code * x is exact in float32; each 16-column x 2-k step adds two products to a float32
// accumulator (vdpbf16ps: round to nearest even, float32 denormals flushed to zero). Per scale
// group: acc_g = sum over the group's k of x * code, then y = sum_g acc_g * scale[n, g] (+ bias),
// rounded once to bf16. Same value as the reference's x @ (code * scale)^T up to float32
// summation order (the reference leaves that order unspecified for weight-only).
#pragma once
#include <cstdint>

#include "api.h"

namespace fastq::cpu {

struct WoBf16Kernels {
  // Quads [q0, q0 + nq) of nb (1 or 2) 16-column blocks (blocks w_bstride bytes apart) into
  // panel[p][64] for the nq * 2 k-pairs p: bf16 (code[col][2p], code[col][2p + 1]) for 32 columns
  // (block 1's columns zero when nb == 1).
  void (*convert)(const int8_t* w, int64_t w_bstride, int nb, int64_t q0, int64_t nq, uint16_t* panel);
  // c[r][0..32) (= when first, else +=) sum over pairs p < np of x[r][2p], x[r][2p + 1] . panel[p]
  // for rows r < mr (<= kWoBf16MR); x rows lda elements apart, c rows 32 floats apart.
  void (*tile)(const uint16_t* x, int64_t lda, int mr, const uint16_t* panel, int64_t np, float* c, bool first);
  // For rows x nv (<= 32) group sums c (rows 32 floats apart) and the group's column scales s:
  // v = c * s; with one group (first && last) y = v (+ bias); else acc = v (first) or acc + v, and
  // when last y = acc (+ bias); y rows ldy elements apart, rounded to y_dtype.
  void (*epilogue)(const float* c, int64_t rows, int nv, const float* s, float* acc, bool first, bool last,
                   const float* bias, void* y, int64_t ldy, DType y_dtype);
};
constexpr int kWoBf16MR = 12;

extern const WoBf16Kernels wo_bf16_kernels_avx512bf16;

}  // namespace fastq::cpu

namespace fastq {

// True when this CPU and OS run AVX512-BF16 and the effective tier is AVX-512 or above.
bool wo_bf16_available();
// Needs x_dtype bf16, k % 4 == 0 and (k / scale_groups) % 4 == 0; y of any float dtype.
bool wo_bf16_supports(const Int8LinearArgs& a);
void int8_weight_only_linear_bf16dot_cpu(const Int8LinearArgs& a);

}  // namespace fastq
