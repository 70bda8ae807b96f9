// Prepared layers on CPU: linear_plan_run_cpu runs a LinearPlan (csrc/api.h) on one x. Compiled
// with no ISA flags. Invariants:
//  - this is the one launcher of the CPU linear drivers: module plans and the ops' eager path both
//    come here, so the two can only differ if their inputs differ;
//  - it prepares exactly what fastq/ops/reference.py's sequence needs and nothing else: the sparse
//    and codebook kernels get float32 x (widened exactly; for sparse, transposed and zero-padded for
//    m >= kTransposeMinM, zero-padded to the block width for bsr) and write float32 y, rounded once
//    to y's dtype; the int8 and intx drivers take x and y in any float dtype themselves;
//  - scratch comes from the calling thread's arena (common/arena.h), sized inside the call;
//  - counters and the time spent here are kept for fastq.native_calls and the overhead benchmark.
#include <algorithm>
#include <atomic>
#include <chrono>

#include "api.h"
#include "common/arena.h"
#include "common/error.h"
#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/wo_bf16.h"

namespace fastq {
namespace {

// Batches of this many rows or more reach the sparse kernels transposed ([k, ld], ld = m rounded
// up to 16): each kept weight is then loaded once for all rows (csrc/api.h, SparseLinearArgs).
constexpr int64_t kTransposeMinM = 8;

std::atomic<int64_t> g_calls[2][static_cast<int>(PlanOp::count)];
std::atomic<int64_t> g_run_ns{0};

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
size_t elem_size(DType d) { return d == DType::f32 ? 4 : 2; }

// dst [m, ld] float32 = x [m, k] widened exactly, columns k..ld zero.
void widen_rows(const void* x, DType d, int64_t m, int64_t k, float* dst, int64_t ld) {
  const auto to_f32 = cpu::gemm_kernels().to_f32[static_cast<int>(d)];
  for (int64_t r = 0; r < m; ++r) {
    to_f32(static_cast<const char*>(x) + r * k * elem_size(d), k, dst + r * ld);
    std::fill(dst + r * ld + k, dst + (r + 1) * ld, 0.0f);
  }
}

void narrow(const float* src, void* dst, DType d, int64_t count) {
  if (d == DType::bf16) {
    for (int64_t i = 0; i < count; ++i) store_elem<DType::bf16>(dst, i, src[i]);
  } else {
    for (int64_t i = 0; i < count; ++i) store_elem<DType::f16>(dst, i, src[i]);
  }
}

Int8LinearArgs gemm_args(const LinearPlan& p, const PlanCall& c) {
  Int8LinearArgs a;
  a.x = c.x;
  a.x_dtype = c.x_dtype;
  a.w_packed = p.w_packed;
  a.w_scale = p.w_scale;
  a.scale_groups = p.scale_groups;
  a.bias = p.bias;
  a.y = c.y;
  a.y_dtype = c.y_dtype;
  a.m = c.m;
  a.n = p.n;
  a.k = p.k;
  a.act_symmetric = p.act_symmetric;
  a.num_threads = c.num_threads;
  return a;
}

void run_gemm(const LinearPlan& p, const PlanCall& c, int path) {
  Int8LinearArgs a = gemm_args(p, c);
  if (p.op == PlanOp::int8_weight_only_linear) {
    if (path == kPlanPathBf16Dot && wo_bf16_supports(a) && wo_bf16_available())
      int8_weight_only_linear_bf16dot_cpu(a);
    else
      int8_weight_only_linear_cpu(a);
    return;
  }
  if (p.op == PlanOp::int8_linear_static) {
    Int8StaticLinearArgs s;
    s.lin = a;
    s.act_scale = p.act_scale;
    s.act_zero_point = p.act_zero_point;
    s.act_smooth = p.act_smooth;
    s.lin.workspace_bytes = int8_linear_static_workspace_bytes_cpu(c.m, p.n, p.k);
    s.lin.workspace = scratch(static_cast<size_t>(s.lin.workspace_bytes));
    int8_linear_static_cpu(s);
    return;
  }
  a.workspace_bytes = int8_linear_dynamic_workspace_bytes_cpu(c.m, p.n, p.k);
  a.workspace = scratch(static_cast<size_t>(a.workspace_bytes));
  int8_linear_dynamic_cpu(a);
}

void run_intx(const LinearPlan& p, const PlanCall& c) {
  IntxLinearArgs a;
  a.x = c.x;
  a.x_dtype = c.x_dtype;
  a.packed = p.codes;
  a.bits = p.bits;
  a.asymmetric = p.asymmetric;
  a.groups = p.groups;
  a.bias = p.bias;
  a.y = c.y;
  a.y_dtype = c.y_dtype;
  a.m = c.m;
  a.n = p.n;
  a.k = p.k;
  a.workspace_bytes = intx_linear_workspace_bytes_cpu(c.m, p.k, p.groups);
  a.workspace = scratch(static_cast<size_t>(a.workspace_bytes));
  a.num_threads = c.num_threads;
  if (p.op == PlanOp::intx_linear_dynamic) intx_linear_dynamic_cpu(a);
  else intx_weight_only_linear_cpu(a);
}

// Codebook: float32 x (widened exactly when it is not) and float32 y (rounded once to y's dtype),
// the reference's sequence; lookup tables in scratch after them.
void run_codebook(const LinearPlan& p, const PlanCall& c) {
  const int64_t m = c.m, n = p.n, k = p.k;
  const int64_t x_bytes = c.x_dtype != DType::f32 ? round_up(m * k * 4, 64) : 0;
  const int64_t y_bytes = c.y_dtype != DType::f32 ? round_up(m * n * 4, 64) : 0;
  const int64_t ws_bytes = codebook_linear_workspace_bytes_cpu(m, k, p.bits, p.lut, 0, c.num_threads);
  char* s = static_cast<char*>(scratch(static_cast<size_t>(x_bytes + y_bytes + ws_bytes)));
  CodebookLinearArgs a;
  a.x = static_cast<const float*>(c.x);
  if (x_bytes) {
    widen_rows(c.x, c.x_dtype, m, k, reinterpret_cast<float*>(s), k);
    a.x = reinterpret_cast<const float*>(s);
  }
  a.y = y_bytes ? reinterpret_cast<float*>(s + x_bytes) : static_cast<float*>(c.y);
  a.m = m;
  a.n = n;
  a.k = k;
  a.codes = p.codes;
  a.bits = p.bits;
  a.lut = p.lut;
  a.codebook = p.codebook;
  a.cb_rows = p.cb_rows;
  a.cb_groups = p.cb_groups;
  a.scale = p.scale;
  a.bias = p.bias;
  a.workspace = ws_bytes ? reinterpret_cast<float*>(s + x_bytes + y_bytes) : nullptr;
  a.workspace_bytes = ws_bytes;
  a.num_threads = c.num_threads;
  codebook_linear_cpu(a);
  if (y_bytes) narrow(a.y, c.y, c.y_dtype, m * n);
}

// The sparse family: x widened / transposed / padded into scratch, y through a float32 buffer
// when y is not float32.
void run_sparse(const LinearPlan& p, const PlanCall& c) {
  const int64_t m = c.m, n = p.n, k = p.k;
  const bool ell = p.op == PlanOp::sparse_ell_linear, bsr = p.op == PlanOp::sparse_bsr_linear;
  const int64_t k_pad = bsr ? round_up(k, p.block_cols) : k;
  const bool transposed = !ell && m >= kTransposeMinM;
  const int64_t ld = transposed ? round_up(m, 16) : k_pad;
  const bool bf16_x = c.x_dtype == DType::bf16;
  // float32 copies: f16 x before the transpose (the transpose widens bf16 itself), any x that is
  // not float32 [m, k_pad] on the row-major path, and y when it is not float32
  const bool widen_first = transposed && c.x_dtype == DType::f16;
  const bool copy_rows = !transposed && (c.x_dtype != DType::f32 || k_pad != k);
  const int64_t x_rows_bytes = (widen_first || copy_rows) ? round_up(m * k_pad * 4, 64) : 0;
  const int64_t xt_bytes = transposed ? round_up(k_pad * ld * 4, 64) : 0;
  const int64_t y_bytes = c.y_dtype != DType::f32 ? m * n * 4 : 0;
  char* s = static_cast<char*>(scratch(static_cast<size_t>(x_rows_bytes + xt_bytes + y_bytes)));
  float* x_rows = reinterpret_cast<float*>(s);
  float* xt = reinterpret_cast<float*>(s + x_rows_bytes);
  float* y32 = c.y_dtype == DType::f32 ? static_cast<float*>(c.y) : reinterpret_cast<float*>(s + x_rows_bytes + xt_bytes);

  const float* xk = static_cast<const float*>(c.x);
  if (widen_first || copy_rows) {
    widen_rows(c.x, c.x_dtype, m, k, x_rows, copy_rows ? k_pad : k);
    xk = x_rows;
  }
  if (transposed) {
    sparse_transpose_x_cpu(widen_first ? static_cast<const void*>(x_rows) : c.x, bf16_x && !widen_first, m, k, k_pad,
                           ld, xt, c.num_threads);
    xk = xt;
  }

  if (ell) {
    SparseEllArgs a;
    a.x = xk;
    a.m = m;
    a.n = n;
    a.k = k;
    a.values = p.values;
    a.int8 = p.int8;
    a.offsets = p.offsets;
    a.steps = p.steps;
    a.group_ptr = p.group_ptr;
    a.total_steps = p.entries;
    a.scale = p.int8 ? p.scale : nullptr;
    a.bias = p.bias;
    a.y = y32;
    a.num_threads = c.num_threads;
    sparse_ell_linear_cpu(a);
  } else {
    SparseLinearArgs a;
    a.x = xk;
    a.x_transposed = transposed;
    a.ld_xt = transposed ? ld : 0;
    a.m = m;
    a.n = n;
    a.k = k_pad;
    a.values = p.values;
    a.scale = p.op == PlanOp::sparse_int8_linear ? p.scale : nullptr;
    a.cols = p.cols;
    a.row_ptr = p.row_ptr;
    a.entries = p.entries;
    a.meta = p.meta;
    a.block_rows = p.block_rows;
    a.block_cols = p.block_cols;
    a.bias = p.bias;
    a.y = y32;
    a.num_threads = c.num_threads;
    switch (p.op) {
      case PlanOp::sparse_csr_linear: sparse_csr_linear_cpu(a); break;
      case PlanOp::sparse_int8_linear: sparse_int8_linear_cpu(a); break;
      case PlanOp::sparse_24_linear: sparse_24_linear_cpu(a); break;
      default: sparse_bsr_linear_cpu(a); break;
    }
  }
  if (c.y_dtype != DType::f32) narrow(y32, c.y, c.y_dtype, m * n);
}

PlanRoute route_for(const LinearPlan& p, int64_t m) {
  for (int i = 0; i < p.n_routes; ++i)
    if (m <= p.routes[i].m_max || i + 1 == p.n_routes) return p.routes[i];
  return PlanRoute{};
}

}  // namespace

const char* plan_op_name(PlanOp op) {
  switch (op) {
    case PlanOp::int8_linear_dynamic: return "int8_linear_dynamic";
    case PlanOp::int8_weight_only_linear: return "int8_weight_only_linear";
    case PlanOp::sparse_csr_linear: return "sparse_csr_linear";
    case PlanOp::sparse_int8_linear: return "sparse_int8_linear";
    case PlanOp::sparse_24_linear: return "sparse_24_linear";
    case PlanOp::sparse_bsr_linear: return "sparse_bsr_linear";
    case PlanOp::sparse_ell_linear: return "sparse_ell_linear";
    case PlanOp::int8_linear_static: return "int8_linear_static";
    case PlanOp::intx_weight_only_linear: return "intx_weight_only_linear";
    case PlanOp::intx_linear_dynamic: return "intx_linear_dynamic";
    case PlanOp::codebook_linear: return "codebook_linear";
    default: return "unknown";
  }
}

void linear_plan_run_cpu(const LinearPlan& p, const PlanCall& c) {
  const auto t0 = std::chrono::steady_clock::now();
  FASTQ_CHECK(static_cast<int>(p.op) >= 0 && p.op < PlanOp::count, "unknown plan op");
  FASTQ_CHECK(c.x && c.y && c.m > 0 && p.n > 0 && p.k > 0, "plan run: empty or null x/y (m=", c.m, ")");
  {
    const PlanRoute route = route_for(p, c.m);
    const cpu::ScopedIsaCap cap(route.isa);
    switch (p.op) {
      case PlanOp::int8_linear_dynamic:
      case PlanOp::int8_weight_only_linear:
      case PlanOp::int8_linear_static: run_gemm(p, c, route.path); break;
      case PlanOp::intx_weight_only_linear:
      case PlanOp::intx_linear_dynamic: run_intx(p, c); break;
      case PlanOp::codebook_linear: run_codebook(p, c); break;
      default: run_sparse(p, c); break;
    }
  }
  release_large_scratch();
  g_calls[0][static_cast<int>(p.op)].fetch_add(1, std::memory_order_relaxed);
  g_run_ns.fetch_add(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(),
      std::memory_order_relaxed);
}

int64_t plan_calls(PlanOp op, int device) {
  FASTQ_CHECK(op >= PlanOp::int8_linear_dynamic && op < PlanOp::count && (device == 0 || device == 1),
              "plan_calls: bad op or device");
  return g_calls[device][static_cast<int>(op)].load(std::memory_order_relaxed);
}

int64_t plan_run_ns() { return g_run_ns.load(std::memory_order_relaxed); }

}  // namespace fastq
