// Driver of int8_linear_static on CPU (csrc/api.h): the W8A8 GEMM with calibrated activation
// scales. Compiled with no ISA flags; the arithmetic is the active ISA's micro-kernels
// (kernels.h: StaticActKernels for the activations, GemmKernels::gemm_tile for the product).
// Invariants:
//  - one OpenMP region per call: threads quantize disjoint row ranges straight into the ISA's
//    activation format in the caller's workspace (one pass over x: no max pass, no separate
//    int8 copy), meet at a barrier, then run the int8_linear_dynamic tile grid (N panels first)
//    over the codes while they are still cache-resident;
//  - the epilogue is int8_linear_dynamic's (a_scale[m] = act_scale for every row), so with the
//    same codes both ops give the same bits;
//  - never allocates; never throws inside the parallel region.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "api.h"
#include "common/error.h"
#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

using cpu::kKR;
using cpu::kNR;

constexpr int64_t kQuantGrainElems = int64_t{1} << 12;  // below this per thread, fewer threads quantize

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

struct StaticLayout {
  int64_t k_pad, act, mul, a_scale, row_off, total;  // byte offsets into the workspace
};

StaticLayout static_layout(int64_t m, int64_t k) {
  StaticLayout l;
  l.k_pad = round_up(k, kKR);
  l.act = 0;
  l.mul = round_up(m * l.k_pad * 2, 64);  // int16 rows: the widest format any ISA uses
  l.a_scale = l.mul + round_up(4 * l.k_pad, 64);
  l.row_off = l.a_scale + round_up(4 * m, 64);
  l.total = l.row_off + round_up(4 * m, 64);
  return l;
}

// Thread t of T: its part of the tile grid (N panels split first, as int8_linear_dynamic does).
template <typename F>
void grid_part(int t, int T, int64_t n_units, int64_t m_units, const F& f) {
  const int64_t tn = std::min<int64_t>(T, n_units);
  const int64_t tm = std::max<int64_t>(1, std::min<int64_t>(T / tn, m_units));
  if (t >= tn * tm) return;
  const int64_t i = t / tm, j = t % tm;
  f(n_units * i / tn, n_units * (i + 1) / tn, m_units * j / tm, m_units * (j + 1) / tm);
}

}  // namespace

int64_t int8_linear_static_workspace_bytes_cpu(int64_t m, int64_t n, int64_t k) {
  (void)n;
  FASTQ_CHECK(m >= 0 && k >= 0, "negative size: m=", m, " k=", k);
  return static_layout(m, k).total;
}

void int8_linear_static_cpu(const Int8StaticLinearArgs& s) {
  const Int8LinearArgs& a = s.lin;
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y && s.act_scale, "null pointer");
  FASTQ_CHECK(a.act_symmetric || s.act_zero_point, "asymmetric activations need act_zero_point");
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes m=", a.m, " n=", a.n, " k=", a.k);
  const StaticLayout l = static_layout(a.m, a.k);
  FASTQ_CHECK(a.workspace && a.workspace_bytes >= l.total, "workspace too small: ", a.workspace_bytes, " < ", l.total);
  if (a.m == 0) return;
  const cpu::GemmKernels& kr = cpu::gemm_kernels();
  const cpu::StaticActKernels& qk = cpu::static_act_kernels();
  const bool u8 = kr.act_format == cpu::kActU8Offset;
  const int64_t m = a.m, n = a.n, k = a.k, k_pad = l.k_pad, n_pad = round_up(n, kNR);
  const int d = static_cast<int>(a.x_dtype);
  const size_t xsz = dtype_size(a.x_dtype), act_esz = u8 ? 1 : 2;
  char* ws = static_cast<char*>(a.workspace);
  char* act = ws + l.act;
  float* mul = reinterpret_cast<float*>(ws + l.mul);
  float* a_scale = reinterpret_cast<float*>(ws + l.a_scale);
  int32_t* row_off = reinterpret_cast<int32_t*>(ws + l.row_off);
  const int32_t* colsum = reinterpret_cast<const int32_t*>(a.w_packed + n_pad * k_pad);

  const float scale = *s.act_scale, inv = 1.0f / scale;
  const int32_t zp = a.act_symmetric ? 0 : *s.act_zero_point;
  if (s.act_smooth) {
    for (int64_t i = 0; i < k; ++i) mul[i] = (1.0f / s.act_smooth[i]) * inv;
  } else {
    std::fill(mul, mul + k, inv);
  }
  std::fill(a_scale, a_scale + m, scale);
  std::fill(row_off, row_off + m, u8 ? (a.act_symmetric ? 128 : zp) : 0);

  auto quantize_rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      char* row = act + r * k_pad * act_esz;
      qk.quant_act[d](static_cast<const char*>(a.x) + r * k * xsz, k, mul, a.act_symmetric, zp, row);
      std::memset(row + k * act_esz, 0, (k_pad - k) * act_esz);  // padded weights are 0: any finite pad
    }
  };
  cpu::GemmEpilogue ep;
  ep.row_off = u8 ? row_off : nullptr;
  ep.a_scale = a_scale;
  ep.w_scale = a.w_scale;
  ep.bias = a.bias;
  ep.y = a.y;
  ep.ldy = n;
  ep.y_dtype = a.y_dtype;
  const int64_t nr = kr.nr, n_units = ceil_div(n, nr), m_units = ceil_div(m, kr.mr);
  auto tiles = [&](int64_t p0, int64_t p1, int64_t t0, int64_t t1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * nr, nv = std::min(nr, n - n0);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r = t * kr.mr;
        const int mr = static_cast<int>(std::min<int64_t>(kr.mr, m - r));
        cpu::GemmEpilogue e = ep;
        e.row_off = ep.row_off ? ep.row_off + r : nullptr;
        e.a_scale += r;
        e.w_scale += n0;
        if (e.bias) e.bias += n0;
        e.y = static_cast<char*>(e.y) + (r * n + n0) * dtype_size(e.y_dtype);
        kr.gemm_tile(act + r * k_pad * act_esz, k_pad, mr, a.w_packed + n0 * k_pad, k_pad * kNR, colsum + n0,
                     k_pad / kKR, static_cast<int>(nv), e, 0, 0);
      }
    }
  };

  const int nt = static_cast<int>(std::min<int64_t>(std::max(1, a.num_threads), n_units * m_units));
  const int64_t quant_threads = std::max<int64_t>(1, std::min<int64_t>(nt, m * k / kQuantGrainElems));
  if (nt == 1) {
    quantize_rows(0, m);
    grid_part(0, 1, n_units, m_units, tiles);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t q = std::min<int64_t>(quant_threads, T);
    if (t < q) quantize_rows(m * t / q, m * (t + 1) / q);
#pragma omp barrier
    grid_part(t, T, n_units, m_units, tiles);
  }
}

}  // namespace fastq
