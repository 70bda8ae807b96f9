// Drivers for quantize_int8_cpu / dequantize_int8_cpu: validation, threading and the per-row
// scale math; the element loops are the active ISA's micro-kernels (kernels.h). Compiled with no
// ISA flags, so the scale math below is the same whichever ISA runs the loops.
//
// Scale math (mirrors fastq/ops/reference.py exactly):
//   symmetric:  scale = max(amax / 127, FLT_MIN)                        inv = 1 / scale
//   asymmetric: lo = min(min x, 0), hi = max(max x, 0)
//               scale = max((hi - lo) / 255, FLT_MIN)                   inv = 1 / scale
//               zero_point = clamp(round_half_even(-lo * inv), 0, 255)
//   A row holding NaN or +-Inf is "poisoned": scale = NaN, zero_point = 0, codes = 0.
#include <algorithm>
#include <cmath>
#include <limits>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"
#include "cpu/quant_math.h"
#include "cpu/quant_scale.h"

namespace fastq {
namespace {

constexpr int64_t kMaxThreads = 256;
// A single row longer than this is split across threads (per-tensor dynamic is one long row).
constexpr int64_t kSplitRowAt = int64_t{1} << 16;
// Elements per thread below which threading costs more than it saves.
constexpr int64_t kGrainElems = int64_t{1} << 14;

size_t elem_size(DType d) { return d == DType::f32 ? 4 : 2; }

struct RowQuantizer {
  const QuantizeArgs& a;
  const cpu::QuantKernels& k;
  const int d;
  const size_t esz;

  const void* x_at(int64_t i) const { return static_cast<const char*>(a.x) + i * esz; }

  void write(int64_t i, int64_t n, const RowScale& s) const {
    if (a.symmetric) {
      int8_t* q = static_cast<int8_t*>(a.codes) + i;
      if (s.poisoned) std::fill(q, q + n, int8_t{0});
      else k.quant_sym[d](x_at(i), n, s.inv, q);
    } else {
      uint8_t* q = static_cast<uint8_t*>(a.codes) + i;
      if (s.poisoned) std::fill(q, q + n, uint8_t{0});
      else k.quant_asym[d](x_at(i), n, s.inv, s.zero_point, q);
    }
  }

  void store_scale(int64_t row, const RowScale& s) const {
    a.scale[row] = s.scale;
    if (!a.symmetric) a.zero_point[row] = s.zero_point;
  }

  // Reduce elements [i, i+n) into `acc` (absmax bits, or lo/hi/nan).
  struct Acc {
    uint32_t bits = 0;
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    bool nan = false;
  };
  void reduce(int64_t i, int64_t n, Acc& acc) const {
    if (a.symmetric) {
      acc.bits = std::max(acc.bits, k.absmax_bits[d](x_at(i), n));
    } else {
      float lo = acc.lo, hi = acc.hi;
      acc.nan |= k.minmax[d](x_at(i), n, &lo, &hi);
      acc.lo = lo;
      acc.hi = hi;
    }
  }
  RowScale scale_of(const Acc& acc) const {
    return a.symmetric ? symmetric_scale(acc.bits) : asymmetric_scale(acc.lo, acc.hi, acc.nan);
  }

  void dynamic_row(int64_t r) const {
    Acc acc;
    reduce(r * a.cols, a.cols, acc);
    const RowScale s = scale_of(acc);
    store_scale(r, s);
    write(r * a.cols, a.cols, s);
  }

  // One long row over all threads: partial reductions, combined in a fixed order.
  void dynamic_row_split(int64_t r, int threads) const {
    const int nt = static_cast<int>(std::min<int64_t>(threads, kMaxThreads));
    Acc partial[kMaxThreads];
    const int64_t base = r * a.cols, n = a.cols;
    parallel_for(0, nt, 1, nt, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) reduce(base + n * t / nt, n * (t + 1) / nt - n * t / nt, partial[t]);
    });
    Acc acc;
    for (int t = 0; t < nt; ++t) {
      acc.bits = std::max(acc.bits, partial[t].bits);
      acc.lo = std::min(acc.lo, partial[t].lo);
      acc.hi = std::max(acc.hi, partial[t].hi);
      acc.nan |= partial[t].nan;
    }
    const RowScale s = scale_of(acc);
    store_scale(r, s);
    parallel_for(base, base + n, kGrainElems, nt, [&](int64_t lo, int64_t hi) { write(lo, hi - lo, s); });
  }
};

}  // namespace

void quantize_int8_cpu(const QuantizeArgs& a) {
  FASTQ_CHECK(a.x && a.codes && a.scale, "null pointer");
  FASTQ_CHECK(a.symmetric || a.zero_point, "asymmetric quantization needs a zero_point buffer");
  FASTQ_CHECK(a.rows >= 0 && a.cols >= 0, "negative size");
  FASTQ_CHECK(a.scale_stride == 0 || a.scale_stride == 1, "scale_stride must be 0 or 1");
  FASTQ_CHECK(!(a.dynamic && a.scale_stride == 0), "dynamic quantization needs a scale per row");
  if (a.rows == 0 || a.cols == 0) return;
  const int threads = std::max(1, a.num_threads);
  const RowQuantizer rq{a, cpu::quant_kernels(), static_cast<int>(a.x_dtype), elem_size(a.x_dtype)};

  if (!a.dynamic) {
    // Elementwise: split the flat range, walking row segments so each gets its own scale.
    parallel_for(0, a.rows * a.cols, kGrainElems, threads, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi;) {
        const int64_t r = i / a.cols, end = std::min(hi, (r + 1) * a.cols);
        const float scale = a.scale[r * a.scale_stride];
        const int32_t zp = a.symmetric ? 0 : a.zero_point[r * a.scale_stride];
        rq.write(i, end - i, RowScale{scale, 1.0f / scale, zp, false});
        i = end;
      }
    });
    return;
  }
  if (a.rows >= threads || a.cols < kSplitRowAt) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / a.cols);
    parallel_for(0, a.rows, grain, threads, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) rq.dynamic_row(r);
    });
  } else {
    for (int64_t r = 0; r < a.rows; ++r) rq.dynamic_row_split(r, threads);
  }
}

void dequantize_int8_cpu(const DequantizeArgs& a) {
  FASTQ_CHECK(a.codes && a.y && a.scale, "null pointer");
  FASTQ_CHECK(a.symmetric || a.zero_point, "asymmetric dequantization needs a zero_point");
  FASTQ_CHECK(a.rows >= 0 && a.cols >= 0, "negative size");
  FASTQ_CHECK(a.scale_stride == 0 || a.scale_stride == 1, "scale_stride must be 0 or 1");
  if (a.rows == 0 || a.cols == 0) return;
  const auto& k = cpu::quant_kernels();
  const int d = static_cast<int>(a.y_dtype);
  const size_t esz = elem_size(a.y_dtype);
  parallel_for(0, a.rows * a.cols, kGrainElems, std::max(1, a.num_threads), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi;) {
      const int64_t r = i / a.cols, end = std::min(hi, (r + 1) * a.cols);
      const float scale = a.scale[r * a.scale_stride];
      void* y = static_cast<char*>(a.y) + i * esz;
      if (a.symmetric) {
        k.dequant_sym[d](static_cast<const int8_t*>(a.codes) + i, end - i, scale, y);
      } else {
        k.dequant_asym[d](static_cast<const uint8_t*>(a.codes) + i, end - i, scale,
                          a.zero_point[r * a.scale_stride], y);
      }
      i = end;
    }
  });
}

}  // namespace fastq
