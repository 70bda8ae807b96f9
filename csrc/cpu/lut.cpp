// Driver of the codebook (weight sharing) linear: last-line argument checks, the path choice, then
// the active ISA's micro-kernels (lut_impl.h) over disjoint ranges of output rows, one OpenMP
// thread each. Paths (csrc/api.h, CodebookLinearArgs): row layout -> rows kernel; lookup-table
// layout with bits <= 2 -> T-MAC tables (built in the caller's workspace, a block of x rows at a
// time) then lookups; lookup-table layout with 4 bits -> in-register dequantization. Every output
// element is written by exactly one thread; nothing is allocated here.
#include <algorithm>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

// A task gets at least this many multiply-adds: waking an OpenMP worker costs microseconds on a
// quiet machine and a scheduler slice on a loaded one.
constexpr int64_t kMinWorkPerTask = int64_t{1} << 18;
// Tables of at most this many bytes are built per pass (a block of x rows at a time): they are
// re-read for every 16-row block, so they should stay in L2.
constexpr int64_t kTableBudgetBytes = int64_t{768} << 10;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Largest M that still uses tables, by bits (index 1, 2). Measured on Zen 4, one thread, K = 4096,
// M = 1..64 (bench_codebook_linear.py --paths): tables beat in-register dequantization at every M,
// 2.5-4x for 1-bit codes (4 weights per lookup) and 1.1-2x for 2-bit codes (2 per lookup).
constexpr int64_t kTablesMaxM[3] = {0, int64_t{1} << 40, int64_t{1} << 40};

bool uses_tables(int bits, bool lut, int64_t m, int path) {
  if (!lut || bits > 2) return false;
  if (path != 0) return path == 1;
  return m <= kTablesMaxM[bits];
}

// Bytes of the tables of one x row: k_pad / g nibble groups of 16 floats.
int64_t table_bytes_per_row(int64_t k, int bits) {
  const int64_t g = 4 / bits;
  return ceil_div(k, 2 * g) * 2 * 16 * int64_t{sizeof(float)};
}

int64_t table_rows(int64_t m, int64_t k, int bits) {
  return std::max<int64_t>(1, std::min<int64_t>(m, kTableBudgetBytes / table_bytes_per_row(k, bits)));
}

// Items (rows or 16-row blocks) per task for items of `weights_per_item` weights each.
int64_t grain(int64_t weights_per_item, int64_t m, int64_t min_items) {
  const int64_t work = std::max<int64_t>(1, weights_per_item * m);
  return std::max<int64_t>(min_items, ceil_div(kMinWorkPerTask, work));
}

}  // namespace

int64_t codebook_linear_workspace_bytes_cpu(int64_t m, int64_t k, int bits, bool lut, int lut_path, int num_threads) {
  if (m <= 0 || k <= 0 || !uses_tables(bits, lut, m, lut_path)) return 0;
  return std::max(1, num_threads) * table_rows(m, k, bits) * table_bytes_per_row(k, bits);
}

void codebook_linear_cpu(const CodebookLinearArgs& a) {
  FASTQ_CHECK(a.x && a.y && a.codes && a.codebook, "null pointer");
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(a.bits == 1 || a.bits == 2 || a.bits == 4 || (a.bits == 8 && !a.lut), "unsupported bits ", a.bits,
              a.lut ? " for the lookup-table layout" : "");
  FASTQ_CHECK(a.cb_rows == 1 || (a.cb_rows == a.n && !a.lut), "codebook rows ", a.cb_rows, " (n=", a.n, ")");
  const int64_t unit = a.lut ? 2 * (4 / a.bits) : 128 / a.bits;
  FASTQ_CHECK(a.cb_groups >= 1 && a.k % a.cb_groups == 0 && (a.cb_groups == 1 || (a.k / a.cb_groups) % unit == 0),
              "codebook groups ", a.cb_groups, " must split k=", a.k, " into multiples of ", unit);
  if (a.m == 0) return;
  const auto& kr = cpu::lut_kernels();
  const int threads = std::max(1, a.num_threads);
  if (!a.lut) {
    parallel_for(0, a.n, grain(a.k, a.m, 8), threads, [&](int64_t n0, int64_t n1) { kr.rows(a, n0, n1); });
    return;
  }
  const int64_t blocks = ceil_div(a.n, 16);
  FASTQ_CHECK(a.lut_path >= 0 && a.lut_path <= 2, "lut_path must be 0, 1 or 2, got ", a.lut_path);
  if (!uses_tables(a.bits, a.lut, a.m, a.lut_path)) {
    parallel_for(0, blocks, grain(16 * a.k, a.m, 1), threads, [&](int64_t b0, int64_t b1) { kr.dequant(a, b0, b1); });
    return;
  }
  // One parallel region: each thread builds the tables of a pass of x rows in its own slice of the
  // workspace (the build is ~16 k multiply-adds per row, small next to its share of the lookups) and
  // looks up its own 16-row blocks, pass after pass: no barrier, so a thread the OS preempts delays
  // only its own blocks, not every pass of the other threads.
  const int64_t rows = table_rows(a.m, a.k, a.bits), slice = rows * table_bytes_per_row(a.k, a.bits);
  FASTQ_CHECK(a.workspace && a.workspace_bytes >= threads * slice, "workspace of ", a.workspace_bytes,
              " bytes is too small for the lookup tables of ", threads, " threads");
  const int64_t q_total = table_bytes_per_row(a.k, a.bits) / (16 * int64_t{sizeof(float)});
  // One range per part and one workspace slice per part (parts <= threads): parts never share
  // tables, whichever pool thread runs them.
  const int64_t g = grain(16 * a.k, a.m, 4);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, (blocks + g - 1) / g));
  parallel_for(0, parts, 1, static_cast<int>(parts), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* tables = a.workspace + p * (slice / int64_t{sizeof(float)});
      const int64_t b0 = blocks * p / parts, b1 = blocks * (p + 1) / parts;
      for (int64_t m0 = 0; m0 < a.m; m0 += rows) {
        const int64_t m1 = std::min(a.m, m0 + rows);
        kr.build_tables(a, tables, m0, m1, 0, q_total);
        kr.lookup(a, tables, m0, m1, b0, b1);
      }
    }
  });
}

}  // namespace fastq
