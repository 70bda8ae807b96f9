// Drivers of the sparse masked matmul family: last-line argument checks, then the active ISA's
// micro-kernels (sparse_impl.h; sliced ELL: sparse_ell_impl.h) over disjoint ranges of weight rows
// (block rows, row groups), one pool thread each. The kernels re-check the index buffers as they
// read them (sparse_impl.h) and report through a status word; the drivers raise BufferError.
// Every output element is written by exactly one thread; nothing is allocated here.
#include <algorithm>
#include <cstring>
#include <string>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

// A task gets at least kGrainRows weight rows and at least kMinWorkPerTask multiply-adds (stored
// entries x activation rows): waking a pool worker costs microseconds on a quiet machine and a
// scheduler slice on a loaded one, more than a small layer's whole product.
constexpr int64_t kGrainRows = 16;
constexpr int64_t kMinWorkPerTask = int64_t{1} << 18;

void check(const SparseLinearArgs& a, bool needs_row_ptr) {
  FASTQ_CHECK(a.x && a.y && a.values, "null pointer");
  FASTQ_CHECK(a.m > 0 && a.n > 0 && a.k > 0, "empty problem m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(!needs_row_ptr || (a.row_ptr && a.cols && a.entries >= 0), "row_ptr / cols / entries missing");
  FASTQ_CHECK(!a.x_transposed || (a.ld_xt >= a.m && a.ld_xt % 16 == 0), "x_t leading dimension ", a.ld_xt,
              " must be >= m and a multiple of 16");
}

// Rows (weight rows, block rows or row groups) per task, for a layer of `rows` rows holding
// `entries` stored weights (padding and block zeros included) times m activation rows.
int64_t grain_rows(int64_t rows, int64_t entries, int64_t m, int64_t min_rows) {
  const int64_t work = std::max<int64_t>(1, entries) * m;
  return std::max<int64_t>(min_rows, (kMinWorkPerTask * rows + work - 1) / work);
}

const char* status_message(int32_t status) {
  switch (status) {
    case kSparseBadIndex: return "a stored column index is out of range for K";
    case kSparseBadRowPtr: return "row_ptr is not a valid pointer array over the stored entries";
    default: return "offsets/steps/group_ptr do not describe the stored steps";
  }
}

// Runs the kernels over row ranges with a status word of their own, then raises what they found.
template <class Args, class Fn>
void run_checked(const Args& args, int64_t rows, int64_t grain, Fn fn) {
  int32_t status = kSparseOk;
  Args a = args;
  a.status = &status;
  parallel_for(0, rows, grain, a.num_threads, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  if (status != kSparseOk)
    throw BufferError(std::string("fastq sparse kernel: ") + status_message(status) +
                      " (the packed buffers were changed after validation?)");
}

void run(const SparseLinearArgs& a, int64_t rows, int64_t entries, cpu::SparseRowsFn rm, cpu::SparseRowsFn tr) {
  run_checked(a, rows, grain_rows(rows, entries, a.m, kGrainRows), a.x_transposed ? tr : rm);
}

}  // namespace

void sparse_csr_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, a.entries, k.csr, k.csr_t);
}

void sparse_int8_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  FASTQ_CHECK(a.scale, "sparse_int8_linear needs scale");
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, a.entries, k.int8, k.int8_t_);
}

void sparse_24_linear_cpu(const SparseLinearArgs& a) {
  check(a, false);
  FASTQ_CHECK(a.meta && a.k % 4 == 0, "2:4 needs meta and k divisible by 4, k=", a.k);
  const auto& k = cpu::sparse_kernels();
  run(a, a.n, a.n * (a.k / 2), k.s24, k.s24_t);
}

void sparse_bsr_linear_cpu(const SparseLinearArgs& a) {
  check(a, true);
  const int br = a.block_rows, bc = a.block_cols;
  FASTQ_CHECK((br == 1 || br == 2 || br == 4 || br == 8) && (bc == 1 || bc == 2 || bc == 4 || bc == 8),
              "unsupported block ", br, "x", bc);
  FASTQ_CHECK(a.k % bc == 0, "bsr: k=", a.k, " must be padded to a multiple of the block width ", bc);
  const auto& k = cpu::sparse_kernels();
  const int64_t block_rows = (a.n + br - 1) / br;
  run(a, block_rows, a.entries * br * bc, k.bsr, k.bsr_t);
}

// Sliced ELL (sparse_ell_impl.h): tasks are ranges of 16-row groups.
void sparse_ell_linear_cpu(const SparseEllArgs& a) {
  FASTQ_CHECK(a.x && a.y && a.values && a.offsets && a.steps && a.group_ptr, "null pointer");
  FASTQ_CHECK(a.m > 0 && a.n > 0 && a.k > 0, "empty problem m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(!a.int8 || a.scale, "sparse_ell_linear: int8 values need scale");
  const int64_t groups = (a.n + 15) / 16;
  const auto& kern = cpu::sparse_ell_kernels();
  const cpu::SparseEllGroupsFn fn = a.int8 ? kern.int8 : kern.f32;
  FASTQ_CHECK(a.total_steps >= 0, "sparse_ell_linear: negative step count");
  run_checked(a, groups, grain_rows(groups, a.total_steps * 16, a.m, 1), fn);
}

void sparse_transpose_x_cpu(const void* x, bool x_bf16, int64_t m, int64_t k, int64_t k_pad, int64_t ld, float* xt,
                            int num_threads) {
  FASTQ_CHECK(x && xt, "null pointer");
  FASTQ_CHECK(m > 0 && k > 0 && k_pad >= k && ld >= m && ld % 16 == 0, "bad transpose sizes m=", m, " k=", k,
              " k_pad=", k_pad, " ld=", ld);
  const auto* xf = static_cast<const float*>(x);
  const auto* xb = static_cast<const uint16_t*>(x);
  auto at = [&](int64_t r, int64_t c) -> float {
    if (!x_bf16) return xf[r * k + c];
    const uint32_t bits = static_cast<uint32_t>(xb[r * k + c]) << 16;  // bf16 -> f32 is exact
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  };
  constexpr int64_t kTile = 16;  // 16 x 16 tiles: both sides touch 16 cache lines per tile
  const int64_t grain = std::max<int64_t>(kTile, (int64_t{1} << 15) / ld);  // >= 32K elements per task
  parallel_for(0, (k_pad + kTile - 1) / kTile, (grain + kTile - 1) / kTile, num_threads, [&](int64_t t0, int64_t t1) {
    for (int64_t c0 = t0 * kTile; c0 < std::min(k_pad, t1 * kTile); c0 += kTile) {
      const int64_t c1 = std::min(c0 + kTile, k_pad);
      for (int64_t r0 = 0; r0 < ld; r0 += kTile) {
        if (r0 + kTile <= m && c1 <= k) {
          for (int64_t r = r0; r < r0 + kTile; ++r)
            for (int64_t c = c0; c < c1; ++c) xt[c * ld + r] = at(r, c);
        } else {
          for (int64_t c = c0; c < c1; ++c)
            for (int64_t r = r0; r < r0 + kTile; ++r) xt[c * ld + r] = (r < m && c < k) ? at(r, c) : 0.0f;
        }
      }
    }
  });
}

}  // namespace fastq
