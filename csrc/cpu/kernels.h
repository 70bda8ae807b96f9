// Tables of CPU micro-kernels, one per ISA. Each csrc/cpu/<isa>/ file fills its table with
// functions compiled under that ISA's flags only; dispatch.cpp (no ISA flags) picks a table at
// call time from the active ISA. Micro-kernels never allocate and never spawn threads: the
// drivers in csrc/cpu/*.cpp split the work and call them on contiguous ranges.
#pragma once
#include <cstdint>

#include "api.h"

namespace fastq::cpu {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The tier the *_kernels() tables below come from: the active one, lowered on this thread while a
// ScopedIsaCap lives (a plan route's tier; -1 = no cap). Drivers fetch their tables on the calling
// thread before they split work, so the cap covers the whole call.
int effective_isa();
struct ScopedIsaCap {
  explicit ScopedIsaCap(int cap);
  ~ScopedIsaCap();
  ScopedIsaCap(const ScopedIsaCap&) = delete;
  ScopedIsaCap& operator=(const ScopedIsaCap&) = delete;

 private:
  int saved_;
};

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

// ---- int8 GEMM family (csrc/cpu/gemm.cpp drives these) ------------------------------------------
// Weights are always in reference.int8_pack_weight's layout: 16-column blocks, each K_pad/4 groups of
// 64 bytes (16 columns x 4 consecutive k), zero padded, column sums after the blocks.
// Activations reach the int8 tiles in the ISA's own format, prepared by the driver:
//   kActS16:      int16 (code - zero_point), exact for int8 and uint8 codes (pmaddwd);
//   kActU8Offset: uint8 (code + 128 for int8 codes, code for uint8) plus a per-row offset (128 or
//                 zero_point) the epilogue removes exactly as offset * colsum (vpdpbusd).
// Rows are K_pad long and zero padded (padded weights are 0, so the pad value only needs to be finite).
enum ActFormat : int { kActS16 = 0, kActU8Offset = 1 };

// What a tile does with its int32 accumulators.
struct GemmEpilogue {
  // int8_gemm: c[m, n] = acc (or += acc when accumulating over K chunks).
  int32_t* c = nullptr;
  int64_t ldc = 0;
  bool accumulate = false;
  const int32_t* row_off = nullptr;  // kActU8Offset: acc -= row_off[m] * colsum[n]
  // linear: y[m, n] = float(acc) * (a_scale[m] * w_scale[n]) (+ bias[n]), rounded to y_dtype.
  const float* a_scale = nullptr;
  const float* w_scale = nullptr;
  const float* bias = nullptr;
  void* y = nullptr;
  int64_t ldy = 0;
  DType y_dtype = DType::f32;
};

struct GemmKernels {
  int act_format;  // ActFormat
  int mr, nr;      // int8 tile: at most mr rows, nr columns (a multiple of 16)
  // Rows [m0, m0 + mr) x columns [n0, n0 + n_valid) (n_valid <= nr): act rows at `lda` elements
  // apart (K_pad long); w points at the panel's first 16-column block, blocks w_bstride bytes
  // apart; colsum at the panel's first column; kq = K_pad / 4. Accumulates, then the epilogue.
  void (*gemm_tile)(const void* act, int64_t lda, int mr, const int8_t* w, int64_t w_bstride,
                    const int32_t* colsum, int64_t kq, int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0);
  // int8_gemm, small M (B unpacked): out[r] = sum_k act[r][k] * b[k] for r < mr (<= 4), k < kc;
  // act in act_format (zero padded to a multiple of 64), uint8 rows include the +128 offset,
  // which this function removes (out is the true int8 dot product).
  void (*dot_rows)(const void* act, int64_t lda, int mr, const int8_t* b, int64_t kc, int32_t* out);
  // Weight-only, small M: rows [m0, m0 + mr) (mr <= wo_direct_max_m) x 16-column blocks [nb0, nb1),
  // dequantizing in registers. Needs (K / scale_groups) % 4 == 0.
  int wo_direct_max_m;
  void (*wo_direct)(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1);
  // Weight-only, larger M: a float32 GEMM on dequantized panels of wo_nr columns.
  int wo_mr, wo_nr;
  // Dequantize one k-quad of nb (<= wo_nr / 16) blocks: dst row r (wo_nr floats) = w[k + r, :] * s[r][:];
  // columns past nb * 16 become 0.
  void (*wo_dequant_quad)(const int8_t* w, int64_t w_bstride, int nb, const float* const s[4], float* dst);
  // c[mr x wo_nr] (= if first, else +=) a[mr x kc] (rows lda apart) . panel[kc x wo_nr].
  void (*sgemm_tile)(const float* a, int64_t lda, int mr, const float* panel, int64_t kc, float* c, bool first);
  void (*to_f32[3])(const void* x, int64_t n, float* dst);  // indexed by DType
  // Register-only peak loops: run `iters` iterations, return the integer / float ops done.
  double (*peak_int8)(int64_t iters);
  double (*peak_fp32)(int64_t iters);
};

extern const GemmKernels gemm_kernels_scalar;
extern const GemmKernels gemm_kernels_avx2;
extern const GemmKernels gemm_kernels_avx512;

const GemmKernels& gemm_kernels();

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

// ---- sliced-ELL sparse linear micro-kernels (sparse_ell_impl.h, one instantiation per ISA) -----
namespace fastq::cpu {

// Each computes y for row groups [g0, g1) of args (16 output rows each), all m activation rows.
using SparseEllGroupsFn = void (*)(const SparseEllArgs& args, int64_t g0, int64_t g1);

struct SparseEllKernels {
  SparseEllGroupsFn f32, int8;  // by the values' dtype
};

extern const SparseEllKernels sparse_ell_kernels_scalar;
extern const SparseEllKernels sparse_ell_kernels_avx2;
extern const SparseEllKernels sparse_ell_kernels_avx512;

const SparseEllKernels& sparse_ell_kernels();

}  // namespace fastq::cpu
