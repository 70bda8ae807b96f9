// Drivers of the intx linears on CPU (intx_weight_only_linear_cpu, intx_linear_dynamic_cpu):
// validation, activation preparation, threading; the arithmetic is the active ISA's micro-kernels
// (kernels.h: IntxKernels). Compiled with no ISA flags. Invariants:
//  - never allocates: prepared activations live in the caller's workspace, laid out as
//    [x as float32 or int8: m * k * 4 bytes][per-group sums: m * groups * 4][per-row scales: m * 4]
//    [weight-only pair tables, m <= kPairTablesMaxM: m * k * 32], each part 64-byte aligned;
//  - dynamic activations are quantized exactly as quantize_int8 (symmetric, per row: the same
//    micro-kernels and scale math, cpu/quant_scale.h), so results are bit-exact with the reference;
//  - threads split the 16-row weight blocks first (each unit of blocks is streamed once), rows only
//    when there are fewer units than threads; one pool task per unit (see run), so that a worker
//    that joins late still takes its share.
#include <algorithm>
#include <cstring>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "cpu/quant_scale.h"

namespace fastq {
namespace {

int64_t align64(int64_t b) { return (b + 63) / 64 * 64; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Pair tables (weight-only 2-bit slots, IntxTask::lut) fit in the workspace up to this many rows.
constexpr int64_t kPairTablesMaxM = 32;

int64_t pair_table_bytes(int64_t m, int64_t k) { return m <= kPairTablesMaxM ? align64(m * k * 32) : 0; }

struct Workspace {
  char* rows;        // float32 or int8 activations [m, k]
  char* group_sums;  // float32 or int32 [m, groups]
  float* row_scale;  // [m]
  float* pair;       // weight-only pair tables [m, 8 k] (m <= kPairTablesMaxM)
};

Workspace carve(const IntxLinearArgs& a) {
  FASTQ_CHECK(a.workspace && a.workspace_bytes >= intx_linear_workspace_bytes_cpu(a.m, a.k, a.groups),
              "workspace too small: ", a.workspace_bytes, " < ", intx_linear_workspace_bytes_cpu(a.m, a.k, a.groups));
  char* p = static_cast<char*>(a.workspace);
  const int64_t rows = align64(a.m * a.k * 4), sums = align64(a.m * a.groups * 4);
  return {p, p + rows, reinterpret_cast<float*>(p + rows + sums),
          reinterpret_cast<float*>(p + rows + sums + align64(a.m * 4))};
}

cpu::IntxTask make_task(const IntxLinearArgs& a) {
  FASTQ_CHECK(a.x && a.packed && a.y, "null pointer");
  FASTQ_CHECK(a.bits >= 2 && a.bits <= 8, "bits must be in 2..8, got ", a.bits);
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0 && a.groups > 0 && a.k % a.groups == 0, "bad sizes m=", a.m,
              " n=", a.n, " k=", a.k, " groups=", a.groups);
  cpu::IntxTask t;
  t.slot = a.bits <= 2 ? 2 : a.bits <= 4 ? 4 : 8;
  const int64_t chunk_k = 4 * (8 / t.slot), gs = a.k / a.groups;
  FASTQ_CHECK(gs % chunk_k == 0, "group size ", gs, " is not a multiple of ", chunk_k);
  t.w = a.packed;
  t.groups = a.groups;
  t.chunks = gs / chunk_k;
  t.code_bytes = t.chunks * 64;
  t.asym = a.asymmetric;
  t.rec_bytes = t.code_bytes + 64 + (a.asymmetric ? 16 : 0);
  t.sym_zero = 1 << (a.bits - 1);
  t.n = a.n;
  t.k = a.k;
  t.bias = a.bias;
  t.y = a.y;
  t.y_dtype = a.y_dtype;
  return t;
}

// Calls fn over rows [0, m) x 16-row blocks, max_nb blocks (a unit) and max_mr rows per call.
// One pool task per unit (x row part, only when units are fewer than threads): the pool wakes a
// sleeping worker only after the caller's first task, so the first task must be short. With one
// range per thread the caller ran the whole M=1 call alone (int4 4096x11008, 2 threads: 1.90 ms,
// 1.03 ms under FASTQ_THREADS=openmp); parallel_for's 4 ranges per thread gave 0.95 ms, one task
// per unit 0.80 ms (Zen 4, L3-resident weights). Each unit's weights serve every row tile before
// the next unit is read.
void run(const cpu::IntxKernels& kr, cpu::IntxTileFn fn, const cpu::IntxTask& t, int64_t m, int num_threads) {
  const int64_t nblk = ceil_div(t.n, 16), units = ceil_div(nblk, kr.max_nb), tiles = ceil_div(m, kr.max_mr);
  const int threads = std::max(1, num_threads);
  const int64_t tm = units < threads ? std::max<int64_t>(1, std::min<int64_t>(threads / units, tiles)) : 1;
  const auto body = [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t u = w / tm, j = w % tm;
      const int64_t r0 = tiles * j / tm, r1 = tiles * (j + 1) / tm;
      const int64_t nb0 = u * kr.max_nb, nb1 = std::min(nblk, nb0 + kr.max_nb);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t m0 = r * kr.max_mr;
        fn(t, m0, static_cast<int>(std::min<int64_t>(kr.max_mr, m - m0)), nb0, nb1);
      }
    }
  };
  if (parallel_backend() == kParallelOpenMP || units * tm > 0xffff) {
    parallel_for(0, units * tm, 1, threads, body);
    return;
  }
  run_tasks(units * tm, threads, [](void* c, int64_t w) { (*static_cast<const decltype(body)*>(c))(w, w + 1); },
            const_cast<void*>(static_cast<const void*>(&body)));
}

int64_t row_grain(int64_t k) { return std::max<int64_t>(1, (int64_t{1} << 14) / k); }

}  // namespace

int64_t intx_linear_workspace_bytes_cpu(int64_t m, int64_t k, int64_t groups) {
  return align64(m * k * 4) + align64(m * groups * 4) + align64(m * 4) + pair_table_bytes(m, k);
}

void intx_weight_only_linear_cpu(const IntxLinearArgs& a) {
  cpu::IntxTask t = make_task(a);
  if (a.m == 0) return;
  const Workspace ws = carve(a);
  const int64_t k = a.k, G = a.groups, gs = k / G;
  const int d = static_cast<int>(a.x_dtype);
  const size_t xsz = dtype_size(a.x_dtype);
  float* xconv = reinterpret_cast<float*>(ws.rows);
  const float* xf = a.x_dtype == DType::f32 ? static_cast<const float*>(a.x) : xconv;
  float* xsum = reinterpret_cast<float*>(ws.group_sums);
  const cpu::GemmKernels& gk = cpu::gemm_kernels();
  const cpu::IntxKernels& kr = cpu::intx_kernels();
  const bool pair = t.slot == 2 && kr.wo_pair_tables && a.m <= std::min<int64_t>(kPairTablesMaxM, kr.wo_pair_max_m);
  const float zero = a.asymmetric ? 0.0f : static_cast<float>(t.sym_zero);
  parallel_for(0, a.m, row_grain(k), std::max(1, a.num_threads), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      if (a.x_dtype != DType::f32) gk.to_f32[d](static_cast<const char*>(a.x) + r * k * xsz, k, xconv + r * k);
      for (int64_t g = 0; g < G; ++g) {
        // 8 partial sums (any order is allowed) rather than one serial chain of k float adds
        const float* p = xf + r * k + g * gs;
        float part[8] = {};
        int64_t i = 0;
        for (; i + 8 <= gs; i += 8)
          for (int l = 0; l < 8; ++l) part[l] += p[i + l];
        float s = 0.0f;
        for (; i < gs; ++i) s += p[i];
        for (int l = 0; l < 8; ++l) s += part[l];
        xsum[r * G + g] = s;
      }
      if (pair) kr.wo_pair_tables(xf + r * k, k, zero, ws.pair + r * 8 * k);
    }
  });
  t.xf = xf;
  t.xsum = xsum;
  if (pair) {
    t.lut = ws.pair;
    t.lut_ld = 8 * k;
  }
  run(kr, kr.weight_only, t, a.m, a.num_threads);
}

void intx_linear_dynamic_cpu(const IntxLinearArgs& a) {
  cpu::IntxTask t = make_task(a);
  FASTQ_CHECK(a.bits <= 4, "dynamic int8 activations need codes of at most 4 bits, got ", a.bits);
  if (a.m == 0) return;
  const Workspace ws = carve(a);
  const int64_t k = a.k, G = a.groups, gs = k / G;
  const int d = static_cast<int>(a.x_dtype);
  const size_t xsz = dtype_size(a.x_dtype);
  int8_t* xq = reinterpret_cast<int8_t*>(ws.rows);
  int32_t* qsum = reinterpret_cast<int32_t*>(ws.group_sums);
  const cpu::QuantKernels& qk = cpu::quant_kernels();
  // Per-token symmetric quantization: quantize_int8(x, PER_ROW, symmetric=True) exactly.
  parallel_for(0, a.m, row_grain(k), std::max(1, a.num_threads), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const void* x = static_cast<const char*>(a.x) + r * k * xsz;
      const RowScale s = symmetric_scale(qk.absmax_bits[d](x, k));
      ws.row_scale[r] = s.scale;
      int8_t* q = xq + r * k;
      if (s.poisoned) std::memset(q, 0, k);
      else qk.quant_sym[d](x, k, s.inv, q);
      for (int64_t g = 0; g < G; ++g) {
        int32_t sum = 0;
        for (int64_t i = 0; i < gs; ++i) sum += q[g * gs + i];
        qsum[r * G + g] = sum;
      }
    }
  });
  t.xq = xq;
  t.qsum = qsum;
  t.a_scale = ws.row_scale;
  const cpu::IntxKernels& kr = cpu::intx_kernels();
  run(kr, kr.dynamic, t, a.m, a.num_threads);
}

}  // namespace fastq
