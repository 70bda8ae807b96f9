// Driver of the bf16 weight-only path (cpu/wo_bf16.h): detection, blocking, threading. Compiled
// with no ISA flags. Invariants:
//  - tasks are (32-column panel, block of rows_per_task rows); a task converts its panel's codes
//    to bf16 once per k-chunk (on the stack) and runs every row of its block on them, so the
//    conversion is amortised over the block; nothing is allocated;
//  - every output element is computed by one task, group by group in k order, so results do not
//    depend on the thread count;
//  - only plans route here (csrc/cpu/plan.cpp), for bf16 x above a measured M.
#include "cpu/wo_bf16.h"

#include <cpuid.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

constexpr int64_t kMB = 192;   // rows per task at most
constexpr int64_t kKC = 256;   // k per converted chunk (a multiple of 4)
constexpr int64_t kNP = 32;    // columns per panel (two packed blocks)

// Rows per task: the task's x rows (rows x K bf16) stay in L2 (half of a 1 MiB L2) while every
// panel of the task streams over them; more rows would send x to L3 once per 32 columns
// (measured on Zen 4: 4096 x 4096 at M = 512 ran ~15% slower with 192-row tasks).
int64_t rows_per_task(int64_t k) {
  const int64_t mr = cpu::kWoBf16MR;
  const int64_t rows = (int64_t{512} << 10) / (2 * k) / mr * mr;
  return std::clamp<int64_t>(rows, 4 * mr, kMB);
}

bool cpu_has_avx512_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 5) & 1u;  // CPUID.(EAX=7, ECX=1):EAX[5] AVX512_BF16
}

}  // namespace

bool wo_bf16_available() {
  static const bool hw = cpu_has_avx512_bf16();
  return hw && cpu::effective_isa() >= cpu::kAvx512;  // the AVX-512 tier checked the OS state
}

bool wo_bf16_supports(const Int8LinearArgs& a) {
  return a.x_dtype == DType::bf16 && a.k % 4 == 0 && a.scale_groups >= 1 && a.k % a.scale_groups == 0 &&
         (a.k / a.scale_groups) % 4 == 0;
}

void int8_weight_only_linear_bf16dot_cpu(const Int8LinearArgs& a) {
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y && a.m >= 0 && a.n > 0 && a.k > 0, "bad arguments");
  FASTQ_CHECK(wo_bf16_supports(a) && wo_bf16_available(), "the bf16 weight-only path does not apply here");
  if (a.m == 0) return;
  const cpu::WoBf16Kernels& kr = cpu::wo_bf16_kernels_avx512bf16;
  const int64_t m = a.m, n = a.n, k = a.k, k_pad = (k + 3) / 4 * 4, G = a.scale_groups, gs = k / G;
  const int64_t mb = rows_per_task(k);
  const int64_t panels = (n + kNP - 1) / kNP, blocks = (m + mb - 1) / mb;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const int64_t work = 2 * mb * kNP * k;  // multiply-adds of a full task
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, work));
  parallel_for(0, panels * blocks, grain, a.num_threads, [&](int64_t t0, int64_t t1) {
    alignas(64) uint16_t panel[kKC / 2 * 64];
    alignas(64) float c[kMB * kNP];
    alignas(64) float acc[kMB * kNP];
    alignas(64) float s[kNP];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / blocks, r0 = (t % blocks) * mb, rows = std::min(mb, m - r0);
      const int64_t n0 = p * kNP, nv = std::min(kNP, n - n0);
      const int nb = nv > 16 ? 2 : 1;
      const int8_t* w = a.w_packed + n0 * k_pad;
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t k0 = g * gs; k0 < (g + 1) * gs; k0 += kKC) {
          const int64_t kc = std::min(kKC, (g + 1) * gs - k0);
          kr.convert(w, k_pad * 16, nb, k0 / 4, kc / 4, panel);
          for (int64_t r = 0; r < rows; r += cpu::kWoBf16MR) {
            const int mr = static_cast<int>(std::min<int64_t>(cpu::kWoBf16MR, rows - r));
            kr.tile(x + (r0 + r) * k + k0, k, mr, panel, kc / 2, c + r * kNP, k0 == g * gs);
          }
        }
        for (int64_t col = 0; col < kNP; ++col) s[col] = col < nv ? a.w_scale[(n0 + col) * G + g] : 0.0f;
        kr.epilogue(c, rows, static_cast<int>(nv), s, acc, g == 0, g + 1 == G, a.bias ? a.bias + n0 : nullptr,
                    static_cast<char*>(a.y) + ((r0 * n) + n0) * static_cast<int64_t>(a.y_dtype == DType::f32 ? 4 : 2),
                    n, a.y_dtype);
      }
    }
  });
}

}  // namespace fastq
