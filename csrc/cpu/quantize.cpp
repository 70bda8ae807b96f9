// Drivers for quantize_int8_cpu / dequantize_int8_cpu: validation, threading and the per-row
// scale math; the element loops are the active ISA's micro-kernels (kernels.h). Compiled with no
// ISA flags, so the scale math below is the same whichever ISA runs the loops.
//
// Scale math (mirrors fastq/ops/reference.py exactly):
//   symmetric:  scale = max(amax / 127, FLT_MIN)                        inv = 1 / scale
//   asymmetric: lo = min(min x, 0), hi = max(max x, 0)
//               scale = max((hi - lo) / 255, FLT_MIN)                   inv = 1 / scale
//               zero_point = clamp(round_half_even(-lo * inv), 0, 255)
//               (hi - lo overflowing float32: scale = max(hi, -lo) / 128, zero_point = 128)
//   A row holding NaN or +-Inf is "poisoned": scale = NaN, zero_point = 0, codes = 0.
//
// Work split (none of it changes a result): dynamic rows in ~16 KiB blocks per thread; one long
// row (per tensor) reduced by all threads in one region, then written backwards per thread; static
// and dequantize split the flat range. Large calls write through non-temporal stores (kStreamBytes)
// and every thread that streamed fences before its region ends.
#include <omp.h>  // dynamic_row_split: one region with a barrier (per-tensor scales)
#include <xmmintrin.h>  // _mm_sfence: SSE, part of the x86-64 baseline

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
// Calls moving more bytes than this (input + output) use non-temporal stores for the output: it
// would not survive in the 32 MiB L3 anyway, and streaming skips the read-for-ownership of every
// output line (for dequantize, whose output is 2-4x its input, that is most of the traffic).
constexpr int64_t kStreamBytes = int64_t{24} << 20;
// ... and only when each row's output is mostly whole aligned 64-byte lines: long rows, or rows
// (groups) whose output is a multiple of 64 bytes starting on a line. Short or misaligned groups
// would go through the unaligned head loop instead.
constexpr int64_t kStreamMinCols = 1024;

bool use_stream(int64_t rows, int64_t cols, size_t float_bytes, const void* out, size_t out_bytes) {
  if (rows * cols * static_cast<int64_t>(float_bytes + 1) <= kStreamBytes) return false;
  const bool lines = (cols * static_cast<int64_t>(out_bytes)) % 64 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  return cols >= kStreamMinCols || lines;
}

size_t elem_size(DType d) { return d == DType::f32 ? 4 : 2; }

struct RowQuantizer {
  const QuantizeArgs& a;
  const cpu::QuantKernels& k;
  const int d;
  const size_t esz;
  const bool stream;  // non-temporal stores for the codes

  const void* x_at(int64_t i) const { return static_cast<const char*>(a.x) + i * esz; }
  // After a thread's last streaming store: make its codes visible before the region ends.
  void fence() const {
    if (stream) _mm_sfence();
  }

  void write(int64_t i, int64_t n, const RowScale& s) const {
    if (a.symmetric) {
      int8_t* q = static_cast<int8_t*>(a.codes) + i;
      if (s.poisoned) std::fill(q, q + n, int8_t{0});
      else if (a.dynamic) (stream ? k.quant_sym_dyn_stream : k.quant_sym_dyn)[d](x_at(i), n, s.inv, q);
      else (stream ? k.quant_sym_stream : k.quant_sym)[d](x_at(i), n, s.inv, q);
    } else {
      uint8_t* q = static_cast<uint8_t*>(a.codes) + i;
      if (s.poisoned) std::fill(q, q + n, uint8_t{0});
      else if (a.dynamic) (stream ? k.quant_asym_dyn_stream : k.quant_asym_dyn)[d](x_at(i), n, s.inv, s.zero_point, q);
      else (stream ? k.quant_asym_stream : k.quant_asym)[d](x_at(i), n, s.inv, s.zero_point, q);
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

  // Rows [r0, r1), in blocks of about 16 KiB of input: all reductions of a block first, then its
  // scales, then its codes. For short rows (groups) this keeps the divisions of one row off the
  // critical path of the next, and the block is still in L1 when its codes are written.
  void dynamic_rows(int64_t r0, int64_t r1) const {
    constexpr int64_t kMaxBlock = 64;
    const int64_t block = std::clamp<int64_t>(16384 / std::max<int64_t>(1, a.cols * static_cast<int64_t>(esz)), 1,
                                              kMaxBlock);
    RowScale s[kMaxBlock];
    for (int64_t b = r0; b < r1; b += block) {
      const int64_t e = std::min(r1, b + block);
      for (int64_t r = b; r < e; ++r) {
        Acc acc;
        reduce(r * a.cols, a.cols, acc);
        s[r - b] = scale_of(acc);
      }
      for (int64_t r = b; r < e; ++r) {
        store_scale(r, s[r - b]);
        write(r * a.cols, a.cols, s[r - b]);
      }
    }
  }

  // One long row over all threads, in ONE parallel region (a fork/join is costly when the machine
  // is busy): each thread reduces its chunk, all meet at a barrier, each combines the partials in
  // the same fixed order (so all derive the same scale), then writes its own chunk backwards: the
  // most recently read part of the chunk is still in L2/L3, so part of this pass skips DRAM.
  void dynamic_row_split(int64_t r, int threads) const {
    const int64_t base = r * a.cols, n = a.cols;
    Acc partial[kMaxThreads];
    const auto run = [&](int t, int nt) {
      const int64_t b = base + n * t / nt, end = base + n * (t + 1) / nt;
      reduce(b, end - b, partial[t]);
#pragma omp barrier
      Acc acc;
      for (int u = 0; u < nt; ++u) {
        acc.bits = std::max(acc.bits, partial[u].bits);
        acc.lo = std::min(acc.lo, partial[u].lo);
        acc.hi = std::max(acc.hi, partial[u].hi);
        acc.nan |= partial[u].nan;
      }
      const RowScale s = scale_of(acc);
      if (t == 0) store_scale(r, s);
      constexpr int64_t kBackBlock = int64_t{1} << 14;
      for (int64_t e = end; e > b; e -= kBackBlock) {
        const int64_t start = std::max(b, e - kBackBlock);
        write(start, e - start, s);
      }
      fence();
    };
    const int want = static_cast<int>(std::min<int64_t>(threads, kMaxThreads));
    if (want == 1) {
      run(0, 1);
      return;
    }
#pragma omp parallel num_threads(want)
    run(omp_get_thread_num(), omp_get_num_threads());
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
  const size_t esz = elem_size(a.x_dtype);
  const bool stream = use_stream(a.rows, a.cols, esz, a.codes, 1);
  const RowQuantizer rq{a, cpu::quant_kernels(), static_cast<int>(a.x_dtype), esz, stream};

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
      rq.fence();
    });
    return;
  }
  // One long row (per tensor) takes the split path even on one thread, for its backward write.
  if (a.cols < kSplitRowAt || (a.rows >= threads && a.rows > 1)) {
    const int64_t grain = std::max<int64_t>(1, kGrainElems / a.cols);
    parallel_for(0, a.rows, grain, threads, [&](int64_t lo, int64_t hi) {
      rq.dynamic_rows(lo, hi);
      rq.fence();
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
  const bool stream = use_stream(a.rows, a.cols, esz, a.y, esz);
  const auto dequant_sym = stream ? k.dequant_sym_stream[d] : k.dequant_sym[d];
  const auto dequant_asym = stream ? k.dequant_asym_stream[d] : k.dequant_asym[d];
  parallel_for(0, a.rows * a.cols, kGrainElems, std::max(1, a.num_threads), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi;) {
      const int64_t r = i / a.cols, end = std::min(hi, (r + 1) * a.cols);
      const float scale = a.scale[r * a.scale_stride];
      void* y = static_cast<char*>(a.y) + i * esz;
      if (a.symmetric) {
        dequant_sym(static_cast<const int8_t*>(a.codes) + i, end - i, scale, y);
      } else {
        dequant_asym(static_cast<const uint8_t*>(a.codes) + i, end - i, scale,
                          a.zero_point[r * a.scale_stride], y);
      }
      i = end;
    }
    if (stream) _mm_sfence();
  });
}

}  // namespace fastq
