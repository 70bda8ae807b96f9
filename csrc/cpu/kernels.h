// Tables of CPU micro-kernels, one per ISA. Each csrc/cpu/<isa>/ file fills its table with
// functions compiled under that ISA's flags only; dispatch.cpp (no ISA flags) picks a table at
// call time from the active ISA. Micro-kernels never allocate and never spawn threads: the
// drivers in csrc/cpu/*.cpp split the work and call them on contiguous ranges.
#pragma once
#include <cstdint>

#include "api.h"

namespace fastq::cpu {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

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
//   kActS8:       (AMX) int8 codes as they are (TDPBSSD), or uint8 codes plus a per-row zero point in
//                 row_off (TDPBUSD) when the epilogue has row_off; rows act_k_align bytes long.
// Rows are K_pad long and zero padded (padded weights are 0, so the pad value only needs to be finite).
enum ActFormat : int { kActS16 = 0, kActU8Offset = 1, kActS8 = 2 };

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
  // ---- AMX tier only (csrc/cpu/amx/); the other tables keep these defaults ----
  // Activation rows are padded with zeros to a multiple of act_k_align k, and the buffer holds rows
  // up to a multiple of act_m_align past the last real one (tiles always load 16 rows).
  int act_k_align = 4;
  int act_m_align = 1;
  // Each thread calls tile_begin before its first tile call and tile_end after its last (LDTILECFG
  // / TILERELEASE): no tile state outlives a parallel region.
  void (*tile_begin)() = nullptr;
  void (*tile_end)() = nullptr;
  // Weight-only with bfloat16 x on bf16 tiles (TDPBF16PS), csrc/cpu/gemm.cpp's amx driver:
  // wo_bf16_dequant: k-quads [q0, q0 + nq) (nq a multiple of 8) of nb (<= 2) 16-column blocks into
  //   bf16 B tiles, dst[j][t] = 16 rows (k pairs) x 32 bf16 (16 columns x 2 k); int8 -> bf16 is exact,
  //   quads at or past kq become 0.
  void (*wo_bf16_dequant)(const int8_t* w, int64_t w_bstride, int nb, int64_t q0, int64_t nq, int64_t kq,
                          uint16_t* dst) = nullptr;
  // wo_bf16_tile: c[16 mt x 16 nt] (fp32, rows 32 floats apart; = if first, else +=) over nk32 k-tiles of
  //   a (bf16 rows lda bytes apart, 16 mt rows readable) and the dequantized tiles b.
  void (*wo_bf16_tile)(const uint16_t* a, int64_t lda, int mt, const uint16_t* b, int nt, int64_t nk32, float* c,
                       bool first) = nullptr;
  // wo_bf16_epilogue: for rows x nv (<= 32) group sums c (rows 32 floats apart) and the group's column
  //   scales s: acc = c * s (first) or acc + c * s; when last, y[r][col] = acc (+ bias[col]) rounded to
  //   y_dtype (rows ldy apart). With first && last acc is not touched (one group).
  void (*wo_bf16_epilogue)(const float* c, int64_t rows, int nv, const float* s, float* acc, bool first, bool last,
                           const float* bias, void* y, int64_t ldy, DType y_dtype) = nullptr;
};

extern const GemmKernels gemm_kernels_scalar;
extern const GemmKernels gemm_kernels_avx2;
extern const GemmKernels gemm_kernels_avx512;
// AMX: only act_format, mr, nr, gemm_tile and the AMX fields are set; everything else comes from
// the AVX-512 table (gemm_kernels() on the AMX tier). _emu: the same source on a software tile
// model (csrc/cpu/amx/tile.h), selected by FASTQ_AMX_EMULATE=1, for tests on machines without AMX.
extern const GemmKernels gemm_kernels_amx;
extern const GemmKernels gemm_kernels_amx_emu;

// The active ISA's table; on the AMX tier this is the AVX-512 table (the tier below every M threshold).
const GemmKernels& gemm_kernels();
// The AMX tile table when the AMX tier is active, else nullptr. The drivers use it per call from
// M = cpu_amx_min_m() up.
const GemmKernels* gemm_kernels_amx_tier();

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

// ---- codebook (weight sharing) linear micro-kernels (lut_impl.h, one instantiation per ISA) ------
namespace fastq::cpu {

struct LutKernels {
  // Row layout: y[:, n0:n1) for all m.
  void (*rows)(const CodebookLinearArgs& a, int64_t n0, int64_t n1);
  // Lookup-table layout, bits <= 2: tables[(i - m0) * (k_pad / g) + q][16] for x rows [m0, m1) and
  // nibble groups [q0, q1), then y[m0:m1, 16 b0 : 16 b1) from them.
  void (*build_tables)(const CodebookLinearArgs& a, float* tables, int64_t m0, int64_t m1, int64_t q0, int64_t q1);
  void (*lookup)(const CodebookLinearArgs& a, const float* tables, int64_t m0, int64_t m1, int64_t b0, int64_t b1);
  // Lookup-table layout, any bits: entries dequantized in registers, y[:, 16 b0 : 16 b1) for all m.
  void (*dequant)(const CodebookLinearArgs& a, int64_t b0, int64_t b1);
};

extern const LutKernels lut_kernels_scalar;
extern const LutKernels lut_kernels_avx2;
extern const LutKernels lut_kernels_avx512;

const LutKernels& lut_kernels();

}  // namespace fastq::cpu

// ---- static W8A8 activation quantization (accuracy toolkit; csrc/cpu/gemm_static.cpp drives it) --
namespace fastq::cpu {

// quant_act[dtype](x, n, mul, symmetric, zp, out): the codes of int8_linear_static's activations,
//   symmetric:  q = clamp(round_half_even(x[i] * mul[i]), -127, 127), NaN -> 0
//   asymmetric: q = clamp(round_half_even(x[i] * mul[i]) + zp, 0, 255), NaN -> zp
// written straight in the ISA's GEMM activation format (GemmKernels::act_format of the same ISA):
// kActU8Offset: uint8 q + 128 (symmetric) or q (asymmetric); kActS16: int16 q (symmetric) or q - zp.
// Indexed by the DType of x.
struct StaticActKernels {
  void (*quant_act[3])(const void* x, int64_t n, const float* mul, bool symmetric, int32_t zp, void* out);
};

extern const StaticActKernels static_act_kernels_scalar;
extern const StaticActKernels static_act_kernels_avx2;
extern const StaticActKernels static_act_kernels_avx512;

const StaticActKernels& static_act_kernels();

}  // namespace fastq::cpu

// ---- sub-8-bit integer weights (csrc/cpu/intx.cpp drives these; layout: api.h) -----------------
namespace fastq::cpu {

// One intx linear call, prepared by the driver: activations already in the kernels' format.
struct IntxTask {
  const uint8_t* w = nullptr;  // packed weight: record (nb, g) at w + (nb * groups + g) * rec_bytes
  int64_t rec_bytes = 0, code_bytes = 0;  // per record: all, and the codes' (chunks * 64)
  int64_t groups = 1, chunks = 0;         // chunks per group
  int slot = 4;                           // bits per code slot: 2, 4 or 8
  bool asym = false;
  int32_t sym_zero = 8;  // zero point of symmetric weights (2^(bits - 1))
  int64_t n = 0, k = 0;
  // weight-only: x as float32 rows (k apart) and their per-group sums [m, groups]
  const float* xf = nullptr;
  const float* xsum = nullptr;
  // weight-only, 2-bit slots, m <= IntxKernels::wo_pair_max_m: pair tables, lut_ld floats per row
  // (else nullptr). Chunk c (= g * chunks + ch) and nibble e (bits [4e, 4e + 4) of every row's lane,
  // the codes of the chunk's k = ka = 8 (e % 2) + e / 2 and ka + 4) own the 16 floats at
  // 128 c + 16 e: T[i] = x[ka] f(i & 3) + x[ka + 4] f(i >> 2), f(c) = c - z (symmetric) or c.
  const float* lut = nullptr;
  int64_t lut_ld = 0;
  // dynamic: int8 rows (k apart), their per-group sums [m, groups] and per-row scales
  const int8_t* xq = nullptr;
  const int32_t* qsum = nullptr;
  const float* a_scale = nullptr;
  const float* bias = nullptr;
  void* y = nullptr;  // [m, n], rows n apart
  DType y_dtype = DType::f32;
};

// Each computes rows [m0, m0 + mr) (mr <= max_mr) x 16-row weight blocks [nb0, nb1) (nb1 - nb0 <=
// max_nb) of y; blocks past n are partial (stores are masked).
using IntxTileFn = void (*)(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1);

struct IntxKernels {
  int max_mr, max_nb;
  IntxTileFn weight_only, dynamic;
  // Weight-only 2-bit slots use pair tables (IntxTask::lut) for m <= wo_pair_max_m (0: never);
  // wo_pair_tables builds one row's (k a multiple of 16, out 64-byte aligned, 8 k floats).
  int wo_pair_max_m;
  void (*wo_pair_tables)(const float* x, int64_t k, float zero, float* out);
};

extern const IntxKernels intx_kernels_scalar;
extern const IntxKernels intx_kernels_avx2;
extern const IntxKernels intx_kernels_avx512;

const IntxKernels& intx_kernels();

}  // namespace fastq::cpu
