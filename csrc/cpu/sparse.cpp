// Drivers of the sparse masked matmul family: last-line argument checks, then the active ISA's
// micro-kernels (sparse_impl.h) over disjoint ranges of weight rows, one OpenMP thread each.
// Every output element is written by exactly one thread; nothing is allocated here.
#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

// Weight rows per task: enough kept weights that a thread's start-up cost is amortised.
constexpr int64_t kGrainRows = 16;

void check(const SparseLinearArgs& a, bool needs_row_ptr) {
  FASTQ_CHECK(a.x && a.y && a.values, "null pointer");
  FASTQ_CHECK(a.m > 0 && a.n > 0 && a.k > 0, "empty problem m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(!needs_row_ptr || (a.row_ptr && a.cols), "row_ptr / cols missing");
  FASTQ_CHECK(!a.x_transposed || (a.ld_xt >= a.m && a.ld_xt % 16 == 0), "x_t leading dimension ", a.ld_xt,
              " must be >= m and a multiple of 16");
}

void run(const SparseLinearArgs& a, int64_t rows, cpu::SparseRowsFn rm, cpu::SparseRowsFn tr) {
  const cpu::SparseRowsFn fn = a.x_transposed ? tr : rm;
  parallel_for(0, rows, kGrainRows, a.num_threads, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

}  // namespace

void sparse_csr_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, k.csr, k.csr_t);
}

void sparse_int8_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  FASTQ_CHECK(a.scale, "sparse_int8_linear needs scale");
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, k.int8, k.int8_t_);
}

void sparse_24_linear_cpu(const SparseLinearArgs& a) {
  check(a, false);
  FASTQ_CHECK(a.meta && a.k % 4 == 0, "2:4 needs meta and k divisible by 4, k=", a.k);
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, k.s24, k.s24_t);
}

void sparse_bsr_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  const int br = a.block_rows, bc = a.block_cols;
  FASTQ_CHECK((br == 1 || br == 2 || br == 4 || br == 8) && (bc == 1 || bc == 2 || bc == 4 || bc == 8),
              "unsupported block ", br, "x", bc);
  FASTQ_CHECK(a.k % bc == 0, "bsr: k=", a.k, " must be padded to a multiple of the block width ", bc);
  const auto& k = cpu::sparse_kernels();
  run(a, (a.n + br - 1) / br, k.bsr, k.bsr_t);
}

}  // namespace fastq
