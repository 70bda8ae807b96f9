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
  // The same four with non-temporal stores for the 64-byte-aligned body: for outputs too large to
  // stay in cache, they skip the read-for-ownership of every output line. Same results. They do
  // not fence (a fence per short row is expensive): the calling thread must _mm_sfence() once
  // after its last call, before other threads read the output.
  void (*quant_sym_stream[3])(const void* x, int64_t n, float inv_scale, int8_t* q);
  void (*quant_asym_stream[3])(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q);
  void (*dequant_sym_stream[3])(const int8_t* q, int64_t n, float scale, void* y);
  void (*dequant_asym_stream[3])(const uint8_t* q, int64_t n, float scale, int32_t zp, void* y);
  // quant_sym for a dynamic row that is not poisoned: every x is finite and |x * inv_scale| <=
  // 127 (+ rounding), so the NaN and clamp steps are no-ops and are skipped. Same results.
  void (*quant_sym_dyn[3])(const void* x, int64_t n, float inv_scale, int8_t* q);
  void (*quant_sym_dyn_stream[3])(const void* x, int64_t n, float inv_scale, int8_t* q);
  // quant_asym for a dynamic row that is not poisoned: x finite, so the NaN step is skipped.
  void (*quant_asym_dyn[3])(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q);
  void (*quant_asym_dyn_stream[3])(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q);
};

extern const QuantKernels quant_kernels_scalar;
extern const QuantKernels quant_kernels_avx2;
extern const QuantKernels quant_kernels_avx512;

// The active ISA's table (dispatch.cpp).
const QuantKernels& quant_kernels();

}  // namespace fastq::cpu
