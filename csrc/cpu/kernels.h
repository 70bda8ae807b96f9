// Tables of CPU micro-kernels, one per ISA. Each csrc/cpu/<isa>/ file fills its table with
// functions compiled under that ISA's flags only; dispatch.cpp (no ISA flags) picks a table at
// call time from the active ISA. Micro-kernels never allocate and never spawn threads: the
// drivers in csrc/cpu/*.cpp split the work and call them on contiguous ranges.
#pragma once
#include <cstdint>

#include "api.h"

namespace fastq::cpu {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Indexed by DType (f32, f16, bf16) of the float side.
struct QuantKernels {
  // max |x| as the bit pattern of a float32; >= 0x7f800000 means a NaN or Inf was seen.
  uint32_t (*absmax_bits[3])(const void* x, int64_t n);
  // min and max of x; returns true when a NaN was seen (Inf shows up in mn/mx).
  bool (*minmax[3])(const void* x, int64_t n, float* mn, float* mx);
  void (*quant_sym[3])(const void* x, int64_t n, float inv_scale, int8_t* q);
  void (*quant_asym[3])(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q);
  // Indexed by the output dtype.
  void (*dequant_sym[3])(const int8_t* q, int64_t n, float scale, void* y);
  void (*dequant_asym[3])(const uint8_t* q, int64_t n, float scale, int32_t zp, void* y);
};

extern const QuantKernels quant_kernels_scalar;
extern const QuantKernels quant_kernels_avx2;
extern const QuantKernels quant_kernels_avx512;

// The active ISA's table (dispatch.cpp).
const QuantKernels& quant_kernels();

}  // namespace fastq::cpu

// ---- sparse masked matmul micro-kernels (sparse_impl.h, one instantiation per ISA) ------------
namespace fastq::cpu {

// Each computes y for weight rows [r0, r1) (block rows for bsr) of args, all m activation rows.
// "_t" variants read x transposed ([k, ld_xt], ld_xt a multiple of 16).
using SparseRowsFn = void (*)(const SparseLinearArgs& args, int64_t r0, int64_t r1);

struct SparseKernels {
  SparseRowsFn csr, csr_t;
  SparseRowsFn int8, int8_t_;
  SparseRowsFn s24, s24_t;
  SparseRowsFn bsr, bsr_t;
};

extern const SparseKernels sparse_kernels_scalar;
extern const SparseKernels sparse_kernels_avx2;
extern const SparseKernels sparse_kernels_avx512;

const SparseKernels& sparse_kernels();

}  // namespace fastq::cpu
