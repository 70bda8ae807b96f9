// The whole native API of fastq. Invariants:
//  - no torch, no allocation: every buffer is owned by the caller (Python allocates with torch);
//  - tensors arrive as raw pointers to contiguous row-major data plus sizes;
//  - one free function per (op, device); CUDA functions take an opaque cudaStream_t as void*;
//  - every function mirrors a torch.library op of the same name in fastq/ops/_library.py, whose
//    pure-PyTorch reference in fastq/ops/reference.py is the specification.
#pragma once
#include <cstdint>
#include <string>

namespace fastq {

// Floating dtypes crossing the seam. Values match fastq/_native.py's DTYPE_CODES.
enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

// ---- int8 quantize / dequantize -------------------------------------------------------------
// Both work on a contiguous [rows, cols] view with one (scale, zero_point) per row; per-tensor,
// per-row/token and per-group granularities are all expressed as such a view by the caller
// (per tensor: rows = 1 or scale_stride = 0; per group: rows = numel / group, cols = group).
struct QuantizeArgs {
  const void* x = nullptr;  // [rows, cols] of x_dtype
  DType x_dtype = DType::f32;
  void* codes = nullptr;          // [rows, cols] int8 (symmetric) or uint8 (asymmetric)
  float* scale = nullptr;         // [rows] (or [1] when scale_stride == 0)
  int32_t* zero_point = nullptr;  // like scale; asymmetric only
  int64_t rows = 0, cols = 0;
  int64_t scale_stride = 1;  // 1: a scale per row; 0: one scale for all rows (static only)
  bool symmetric = true;
  bool dynamic = true;  // true: compute and write scale/zero_point; false: read them
  int num_threads = 1;
};

struct DequantizeArgs {
  const void* codes = nullptr;  // [rows, cols] int8 (symmetric) or uint8 (asymmetric)
  bool symmetric = true;
  const float* scale = nullptr;
  const int32_t* zero_point = nullptr;  // asymmetric only
  void* y = nullptr;                    // [rows, cols] of y_dtype
  DType y_dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  int64_t scale_stride = 1;
  int num_threads = 1;
};

void quantize_int8_cpu(const QuantizeArgs& args);
void dequantize_int8_cpu(const DequantizeArgs& args);

#ifdef FASTQ_WITH_CUDA
// `workspace` holds 4 int32 zero-initialised by the caller (used when rows == 1 and dynamic).
void quantize_int8_cuda(const QuantizeArgs& args, int32_t* workspace, void* stream);
void dequantize_int8_cuda(const DequantizeArgs& args, void* stream);
#endif

// ---- int8 GEMM family (fastq/ops/reference.py: int8_gemm, int8_linear_dynamic, ...) -------------
// Packed weights use reference.int8_pack_weight's layout: int8 blocks [N_pad/16][K_pad/4][16][4]
// followed by N_pad int32 column sums.
struct Int8LinearArgs {
  const void* x = nullptr;  // [m, k] of x_dtype
  DType x_dtype = DType::f32;
  const int8_t* w_packed = nullptr;  // packed [n, k] weight
  const float* w_scale = nullptr;    // [n] (W8A8) or [n, scale_groups] (weight-only)
  int64_t scale_groups = 1;          // weight-only: groups along k (1 = per channel)
  const float* bias = nullptr;       // [n] or nullptr
  void* y = nullptr;                 // [m, n] of y_dtype
  DType y_dtype = DType::f32;
  int64_t m = 0, n = 0, k = 0;
  bool act_symmetric = true;  // W8A8: int8 (true) or uint8 + zero point (false) activations
  void* workspace = nullptr;  // caller-allocated scratch of *_workspace_bytes(m, n, k) bytes
  int64_t workspace_bytes = 0;
  int num_threads = 1;
};

// c[m, n] = a[m, k] . b[n, k] (int32, exact); a, b, c contiguous.
void int8_gemm_cpu(const int8_t* a, const int8_t* b, int32_t* c, int64_t m, int64_t n, int64_t k, int num_threads);
int64_t int8_linear_dynamic_workspace_bytes_cpu(int64_t m, int64_t n, int64_t k);
void int8_linear_dynamic_cpu(const Int8LinearArgs& args);
void int8_weight_only_linear_cpu(const Int8LinearArgs& args);

#ifdef FASTQ_WITH_CUDA
void int8_gemm_cuda(const int8_t* a, const int8_t* b, int32_t* c, int64_t m, int64_t n, int64_t k, void* stream);
int64_t int8_linear_dynamic_workspace_bytes_cuda(int64_t m, int64_t n, int64_t k);
void int8_linear_dynamic_cuda(const Int8LinearArgs& args, void* stream);
void int8_weight_only_linear_cuda(const Int8LinearArgs& args, void* stream);
#endif

// ---- CPU ISA control --------------------------------------------------------------------------
// Levels: 0 scalar, 1 avx2 (AVX2+FMA+F16C), 2 avx512 (F/BW/DQ/VL/VNNI), 3 amx (avx512 + AMX
// TILE/INT8/BF16 tiles, see the AMX section below).
int cpu_isa_detected();
int cpu_isa_active();
void set_cpu_isa(int level);  // may only lower the detected level
const char* cpu_isa_name(int level);

// ---- CPU peak measurement (int8 GEMM family benchmarks) -----------------------------------------
// Register-only multiply-add loops of the active ISA on num_threads threads: the int8 rate the
// int8 tiles use (vpdpbusd / vpmaddwd) in GOP/s and the fp32 FMA rate in GFLOP/s (best of 50
// short bursts).
double cpu_peak_int8_gops(int num_threads);
double cpu_peak_fp32_gflops(int num_threads);

}  // namespace fastq

namespace fastq {

// ---- sparse masked matmul family (fastq/ops/reference.py: sparse_csr_linear, sparse_24_linear,
// sparse_bsr_linear, sparse_int8_linear) -------------------------------------------------------
// y[m, n] = sum over the stored entries of weight row n of x[m, col] * v (float32, any order),
// (* scale[n] for int8) + bias[n]. Formats are those of the reference *_pack ops: padded CSR with
// unsigned 16-bit columns (rows padded to multiples of 16 entries), 2:4 values [n, k/2] + 2-bit
// meta [n, ceil(k/8)], block-CSR [blocks, br, bc] + 16-bit block columns. Only float32
// activations cross the seam (Python widens bf16 exactly and rounds y once). For m >= 8 Python
// passes x transposed and zero-padded, x_t [k, ld_xt] with ld_xt = m rounded up to 16, so each kept
// weight is loaded once and multiplied into m accumulators; otherwise x is row-major [m, k].
// Python validates the indices once (fastq/ops/_checks.py); the CPU kernels still clamp them (see
// `status` below), so no buffer content can make them read out of bounds. bsr's k is x's padded
// width (a multiple of bc) and bsr writes only rows < n.
struct SparseLinearArgs {
  const float* x = nullptr;  // [m, k] (x_transposed false) or [k, ld_xt] (true)
  bool x_transposed = false;
  int64_t ld_xt = 0;
  int64_t m = 0, n = 0, k = 0;
  const void* values = nullptr;      // float32 (csr, 2:4, bsr) or int8 (int8)
  const float* scale = nullptr;      // [n], int8 only
  const uint16_t* cols = nullptr;    // csr / int8 column, bsr block column
  const int64_t* row_ptr = nullptr;  // csr / int8: [n + 1]; bsr: [ceil(n / br) + 1]
  const uint8_t* meta = nullptr;     // 2:4 only
  int block_rows = 1, block_cols = 1;
  const float* bias = nullptr;  // [n] or nullptr
  float* y = nullptr;           // [m, n] float32
  int num_threads = 1;
  // CPU kernels never trust the index buffers (they may have been rewritten in place after
  // Python validated them): a row whose pointers leave [0, entries] or do not cover a multiple of
  // 16 entries (csr/int8) is skipped, indices past k are clamped, and *status gets a
  // SparseStatus code; the driver then throws BufferError. entries: csr/int8 stored entries, bsr
  // stored blocks.
  int64_t entries = 0;
  int32_t* status = nullptr;
};

// What a CPU sparse kernel found wrong in its (trusted-looking) buffers; 0 when nothing.
enum SparseStatus : int32_t { kSparseOk = 0, kSparseBadIndex = 1, kSparseBadRowPtr = 2, kSparseBadEll = 3 };

void sparse_csr_linear_cpu(const SparseLinearArgs& args);
void sparse_24_linear_cpu(const SparseLinearArgs& args);
void sparse_bsr_linear_cpu(const SparseLinearArgs& args);
void sparse_int8_linear_cpu(const SparseLinearArgs& args);

// x_t [k_pad, ld] = x [m, k] transposed (float32, or bfloat16 widened exactly), zero in the
// padding columns k..k_pad and lanes m..ld: the x_transposed input of the kernels above, written
// into a caller-owned buffer (a tiled copy: torch's strided transpose runs at a few GB/s).
void sparse_transpose_x_cpu(const void* x, bool x_bf16, int64_t m, int64_t k, int64_t k_pad, int64_t ld, float* xt,
                            int num_threads);

#ifdef FASTQ_WITH_CUDA
// CUDA takes x row-major [m, k] always (x_transposed must be false).
void sparse_csr_linear_cuda(const SparseLinearArgs& args, void* stream);
void sparse_24_linear_cuda(const SparseLinearArgs& args, void* stream);
// 2:4 on the sparse tensor cores (mma.sp; compute capability >= 8.0): x bfloat16 row-major [m, k],
// values/meta as sparse_24_linear_cuda, y float32 [m, n]. The kept weights are rounded to bfloat16
// on the way in; products are exact and accumulate in float32 (csrc/cuda/sparse.cu). x and values
// must be 8-byte aligned (16 for the widest loads); any m, n and k % 4 == 0.
void sparse_24_linear_tc_cuda(const void* x, int64_t m, int64_t n, int64_t k, const float* values,
                              const uint8_t* meta, const float* bias, float* y, void* stream);
#endif

}  // namespace fastq

namespace fastq {

// ---- sliced-ELL sparse linear (fastq/ops/reference.py: sparse_ell_pack, sparse_ell_linear) -------
// Layout (ISA-independent): output rows in groups of 16 (lane = row within its group; the last
// group is zero-padded), inputs in tiles of 32 columns; G = ceil(n / 16), T = ceil(k / 32). Group g
// and tile t own steps[g * T + t] (<= 32) consecutive "steps", stored in (g, t, step) order from
// step group_ptr[g]; step j holds, per lane r, values[j * 16 + r] (float32 or int8) and
// offsets[j * 16 + r] (its column within the tile, < 32), the r-th row's kept weights of the tile
// in column order, then padding (value 0, offset 0). Every lane computes, in step order,
//     acc = acc + (v != 0 ? v * x[m, 32 t + offset] : +0.0f)      (float32, two roundings, no FMA)
// then y = acc (* scale[n] for int8) (+ bias[n]): bit-exact with the reference. Zero slots are
// skipped so padding never lets a NaN/Inf of x reach a row that does not keep its column. Offsets,
// steps and group_ptr are validated by Python and re-checked cheaply by the kernels (status).
struct SparseEllArgs {
  const float* x = nullptr;  // [m, k] row-major float32
  int64_t m = 0, n = 0, k = 0;
  const void* values = nullptr;  // [total_steps, 16] float32, or int8 when int8
  bool int8 = false;
  const uint8_t* offsets = nullptr;    // [total_steps, 16]
  const uint8_t* steps = nullptr;      // [G, T]
  const int64_t* group_ptr = nullptr;  // [G + 1], group_ptr[0] == 0
  const float* scale = nullptr;        // [n], int8 only
  const float* bias = nullptr;         // [n] or nullptr
  float* y = nullptr;                  // [m, n] float32
  int num_threads = 1;
  // As SparseLinearArgs: the kernel checks group_ptr/steps against total_steps and the offsets,
  // never reads outside the buffers, and reports kSparseBadEll through *status.
  int64_t total_steps = 0;
  int32_t* status = nullptr;
};

void sparse_ell_linear_cpu(const SparseEllArgs& args);

}  // namespace fastq

namespace fastq {

// ---- AMX tier (csrc/cpu/isa.cpp, csrc/cpu/amx/) ---------------------------------------------------
// Level 3 is detected when CPUID reports AMX-TILE, AMX-INT8 and AMX-BF16, XCR0 enables tile state
// and Linux grants arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (asked once per process);
// otherwise the AVX-512 tier serves and cpu_amx_status() says why. FASTQ_AMX_EMULATE=1 makes level 3
// available on any AVX-512 machine with a software model of the tiles (tests only; slow).
const char* cpu_amx_status();
bool cpu_amx_emulated();
// The AMX tier runs its tiles from M = cpu_amx_min_m(kind) rows up; below, the AVX-512 kernels run
// (VNNI for int8, fp32 FMA for weight-only). kind 0: int8 tiles (int8_gemm, int8_linear_dynamic);
// kind 1: bf16 tiles (int8_weight_only_linear with bfloat16 x). m >= 1; set for benchmarks.
int64_t cpu_amx_min_m(int kind);
void set_cpu_amx_min_m(int kind, int64_t m);
// How many calls of each kind ran on the AMX tiles (the tests' proof that they did).
int64_t cpu_amx_calls(int kind);
// ---- codebook (weight sharing) linear (fastq/ops/reference.py: codebook_pack, codebook_linear) ----
// W[n, k] = codebook[r(n), k / gs, code[n, k]] (* scale[n]); y = x . W^T (+ bias), float32. Codes
// come in reference.codebook_pack's row layout (lut = false: any bits in {1, 2, 4, 8}, codebook
// rows 1 or n) or lookup-table layout (lut = true: bits in {1, 2, 4}, one codebook row shared by
// all output rows). cb_groups (G) tables along k, gs = k / G, a multiple of the layout's chunk
// (row layout: 128 / bits codes; lookup-table layout: 8 / bits). The sum over k is float32 in an
// order of the kernel's choosing (the reference states the error bound the tests check):
//   row layout: codes -> entries by a 16-entry in-register lookup (vpermps; a gather for 8 bits),
//               fused multiply-add with x, tiles of up to 4 x-rows by 8 weight rows;
//   lookup-table layout, bits <= 2: per x row and group of g = 4 / bits inputs, a 16-entry table of
//               the sums of g products x * entry (each thread's own, in the workspace), then one
//               lookup per nibble adds g weights of 16 output rows at once (T-MAC);
//   lookup-table layout, 4 bits: entries of 16 output rows looked up in registers, multiply-add with
//               the broadcast x (a float GEMM on weights dequantized in registers).
// Padding codes (past k, past n) never enter a result. workspace: caller-owned, at least
// codebook_linear_workspace_bytes_cpu(m, k, bits, lut, lut_path, num_threads) bytes, 64-byte aligned
// (0 when unused).
struct CodebookLinearArgs {
  const float* x = nullptr;  // [m, k] row-major float32
  int64_t m = 0, n = 0, k = 0;
  const uint8_t* codes = nullptr;  // packed codes
  int bits = 4;
  bool lut = false;
  const float* codebook = nullptr;  // [cb_rows, cb_groups, 1 << bits]
  int64_t cb_rows = 1, cb_groups = 1;
  const float* scale = nullptr;  // [n] or nullptr
  const float* bias = nullptr;   // [n] or nullptr
  float* y = nullptr;            // [m, n] float32
  float* workspace = nullptr;
  int64_t workspace_bytes = 0;
  int num_threads = 1;
  // Lookup-table layout on CPU: 0 = the measured policy (tables for bits <= 2 up to a per-bits M),
  // 1 = T-MAC tables (bits <= 2), 2 = in-register dequantization. Tests and benchmarks force paths.
  int lut_path = 0;
};

// 0 when the call will not build tables (row layout, or the dequantization path); else tables of a
// pass of x rows for each of num_threads threads.
int64_t codebook_linear_workspace_bytes_cpu(int64_t m, int64_t k, int bits, bool lut, int lut_path, int num_threads);
void codebook_linear_cpu(const CodebookLinearArgs& args);

#ifdef FASTQ_WITH_CUDA
// Same arguments (workspace and num_threads unused); x, codes, codebook, scale, bias, y on the device.
void codebook_linear_cuda(const CodebookLinearArgs& args, void* stream);
#endif

// ---- static W8A8 linear (accuracy toolkit; fastq/ops/reference.py: int8_linear_static) --------
// int8_linear_dynamic with calibrated activation quantization: no run-time max pass. Per element
//   mul[k] = 1 / act_scale, or (1 / act_smooth[k]) * (1 / act_scale)      (float32 roundings)
//   q = clamp(round_half_even(x[m, k] * mul[k]), -127, 127)               (symmetric; NaN -> 0)
//   q = clamp(round_half_even(x[m, k] * mul[k]) + zp, 0, 255)             (asymmetric; NaN -> zp)
// then the int8_linear_dynamic epilogue with a_scale[m] = act_scale for every row. act_scale (and
// act_zero_point) are device pointers to one value, so a call never reads them on the host side.
struct Int8StaticLinearArgs {
  Int8LinearArgs lin;                       // act_symmetric selects the zero-point form
  const float* act_scale = nullptr;         // [1], finite normal > 0 (Python checks)
  const int32_t* act_zero_point = nullptr;  // [1] in [0, 255]; asymmetric only
  const float* act_smooth = nullptr;        // [k] SmoothQuant divisors, or nullptr
};

int64_t int8_linear_static_workspace_bytes_cpu(int64_t m, int64_t n, int64_t k);
void int8_linear_static_cpu(const Int8StaticLinearArgs& args);

#ifdef FASTQ_WITH_CUDA
int64_t int8_linear_static_workspace_bytes_cuda(int64_t m, int64_t n, int64_t k);
void int8_linear_static_cuda(const Int8StaticLinearArgs& args, void* stream);
#endif

// ---- sub-8-bit integer weights (fastq/ops/reference.py: intx_pack_weight, intx_weight_only_linear,
// intx_linear_dynamic) ---------------------------------------------------------------------------
// Packed layout (ISA-independent, little endian; the reference's intx_pack_weight): codes of `bits`
// bits (2..8) in slots of S = 2 / 4 / 8 bits (bits 2 / 3-4 / 5-8), P = 8 / S per byte. Output rows
// in blocks of 16 (padding rows: code 0, scale 0), K in `groups` groups of gs = K / groups (a
// multiple of 4P). One record per (block nb, group g), in (nb, g) order:
//     [gs / 4P chunks of 64 bytes][16 float32 scales][16 uint8 zero points, asymmetric only]
// In a chunk, byte 4r + j (r = row in the block, j = 0..3) holds for p = 0..P-1 the code of
// W[16 nb + r, g gs + 4P ch + 4p + j] in bits [S p, S p + S). Masking (v >> S p) & (2^S - 1) per
// byte gives a 16-row x 4-k int8 block, one row per 32-bit lane (a vpdpbusd operand).
// W[n, k] = (c - z[n, g]) * s[n, g]; symmetric weights have z = 2^(bits - 1).
//   weight-only: y = x @ W^T + bias in float32 (any summation order; codes expanded in registers);
//   dynamic (bits <= 4): per-token int8 activations (quantize_int8's symmetric per-row sequence),
//     acc = sum qa * c - z * sum qa per group (int32), r = 0; r = r + float(acc) * s[n, g] in g
//     order; y = r * a_scale[m]; y = y + bias[n]: bit-exact with the reference (no FMA).
struct IntxLinearArgs {
  const void* x = nullptr;  // [m, k] of x_dtype
  DType x_dtype = DType::f32;
  const uint8_t* packed = nullptr;
  int bits = 4;
  bool asymmetric = false;
  int64_t groups = 1;
  const float* bias = nullptr;  // [n] or nullptr
  void* y = nullptr;            // [m, n] of y_dtype
  DType y_dtype = DType::f32;
  int64_t m = 0, n = 0, k = 0;
  void* workspace = nullptr;  // caller-allocated, intx_linear_workspace_bytes_*(m, k, groups) bytes
  int64_t workspace_bytes = 0;
  int num_threads = 1;
};

int64_t intx_linear_workspace_bytes_cpu(int64_t m, int64_t k, int64_t groups);
void intx_weight_only_linear_cpu(const IntxLinearArgs& args);
void intx_linear_dynamic_cpu(const IntxLinearArgs& args);

#ifdef FASTQ_WITH_CUDA
int64_t intx_linear_workspace_bytes_cuda(int64_t m, int64_t k, int64_t groups);
void intx_weight_only_linear_cuda(const IntxLinearArgs& args, void* stream);
void intx_linear_dynamic_cuda(const IntxLinearArgs& args, void* stream);
#endif

}  // namespace fastq

// ==== prepared layers ("two speeds", DESIGN.md "The native seam"; csrc/plan.cpp) ================
// A LinearPlan is a module op prepared once: which op, its sizes, non-owning pointers to its
// validated buffers (Python keeps them alive and rebuilds the plan when they change) and the CPU
// tier to use per range of M. Running it is one crossing: x in, y out; scratch comes from the
// calling thread's arena (common/arena.h). The ops' eager path builds the same plan for each call,
// so a module and a direct op call run the same code and give bit-identical results.
namespace fastq {

enum class PlanOp : int32_t {
  int8_linear_dynamic = 0,
  int8_weight_only_linear = 1,
  sparse_csr_linear = 2,
  sparse_int8_linear = 3,
  sparse_24_linear = 4,
  sparse_bsr_linear = 5,
  sparse_ell_linear = 6,
  int8_linear_static = 7,
  intx_weight_only_linear = 8,
  intx_linear_dynamic = 9,
  codebook_linear = 10,
  count = 11,
};
const char* plan_op_name(PlanOp op);

// Rows m <= m_max (the first route that fits; the last route takes any m) run with the CPU tier
// min(isa, active tier); isa = -1 means the active tier. The drivers pick their micro-kernels
// (and, inside a tier, paths such as AMX tiles above a threshold) from that tier. `path` picks a
// driver where an op has more than one: kPlanPathDriver (the op's *_cpu driver) or
// kPlanPathBf16Dot (int8_weight_only_linear with bf16 x on AVX512-BF16 dot products, cpu/wo_bf16.h;
// ignored where it does not apply).
enum PlanPath : int32_t { kPlanPathDriver = 0, kPlanPathBf16Dot = 1 };
struct PlanRoute {
  int64_t m_max = INT64_MAX;
  int32_t isa = -1;
  int32_t path = kPlanPathDriver;
};
constexpr int kPlanMaxRoutes = 8;

struct LinearPlan {
  PlanOp op = PlanOp::int8_linear_dynamic;
  int64_t n = 0, k = 0;
  const float* bias = nullptr;  // [n] or nullptr
  // int8 GEMM family (Int8LinearArgs' weight side)
  const int8_t* w_packed = nullptr;
  const float* w_scale = nullptr;
  int64_t scale_groups = 1;
  bool act_symmetric = true;
  // sparse family (SparseLinearArgs' / SparseEllArgs' weight side)
  const void* values = nullptr;
  const float* scale = nullptr;
  const uint16_t* cols = nullptr;
  const int64_t* row_ptr = nullptr;
  int64_t entries = 0;  // csr/int8 entries, bsr blocks, ell steps
  const uint8_t* meta = nullptr;
  int block_rows = 1, block_cols = 1;
  bool int8 = false;  // ell: int8 values
  const uint8_t* offsets = nullptr;
  const uint8_t* steps = nullptr;
  const int64_t* group_ptr = nullptr;
  // static W8A8 (Int8StaticLinearArgs' activation side; the weight side is the int8 GEMM's)
  const float* act_scale = nullptr;
  const int32_t* act_zero_point = nullptr;  // asymmetric only
  const float* act_smooth = nullptr;        // or nullptr
  // intx (IntxLinearArgs' weight side) and codebook (CodebookLinearArgs'; `scale` above is its
  // per-row scale): `codes` is the packed buffer of either
  const uint8_t* codes = nullptr;
  int bits = 0;
  bool asymmetric = false;
  int64_t groups = 1;
  bool lut = false;
  const float* codebook = nullptr;
  int64_t cb_rows = 1, cb_groups = 1;
  int n_routes = 0;
  PlanRoute routes[kPlanMaxRoutes];
};

// x [m, k] row-major of x_dtype, y [m, n] row-major of y_dtype, both contiguous; m >= 1. Float32,
// float16 and bfloat16 are accepted on both sides by every op (the sparse kernels widen x to
// float32 exactly and round y once, as fastq/ops/reference.py does).
struct PlanCall {
  const void* x = nullptr;
  DType x_dtype = DType::f32;
  int64_t m = 0;
  void* y = nullptr;
  DType y_dtype = DType::f32;
  int num_threads = 1;
};

void linear_plan_run_cpu(const LinearPlan& plan, const PlanCall& call);
// Runs per (op, device) of plans (and of the ops' eager path, which runs plans): fastq.native_calls.
int64_t plan_calls(PlanOp op, int device);  // device 0 cpu, 1 cuda
// Wall time spent inside linear_plan_run_cpu since the start, in nanoseconds (overhead benchmarks).
int64_t plan_run_ns();

}  // namespace fastq
