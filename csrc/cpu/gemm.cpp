// Drivers of the int8 GEMM family on CPU: validation, blocking, threading, activation preparation;
// the arithmetic is the active ISA's micro-kernels (kernels.h: GemmKernels). Compiled with no ISA
// flags. Invariants:
//  - never allocates: int8_gemm packs B / converts A chunks into fixed-size stack buffers;
//    int8_linear_dynamic quantizes activations into the caller's workspace; weight-only panels
//    live on the stack;
//  - threads split the output into a grid of N panels x M blocks (N first: each thread streams its
//    own slice of the weight once), at most num_threads OpenMP threads, none left spinning;
//  - W8A8 activations are quantized exactly as quantize_int8 (same micro-kernels, same scale
//    math: cpu/quant_scale.h), and the int32 accumulators never leave registers (or, on AMX, the
//    C tiles) before the float epilogue;
//  - the tier is chosen per call by M (amx_for): on the AMX tier, int8 calls with
//    M >= cpu_amx_min_m(0) run the int8 tiles and weight-only calls with bfloat16 x and
//    M >= cpu_amx_min_m(1) the bf16 tiles; everything else runs the AVX-512 kernels. Every tier
//    gives the same bits for the int8 ops.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/gemm_math.h"
#include "cpu/kernels.h"
#include "cpu/quant_scale.h"

namespace fastq {
namespace {

using cpu::kKR;
using cpu::kNR;

constexpr int64_t kGemmKC = 512;  // int8_gemm: K chunk packed at a time (multiple of 4)
constexpr int64_t kGemmMB = 48;   // int8_gemm: rows converted at a time (a multiple of 16: AMX tiles read 16 rows)
constexpr int64_t kMaxNR = 64;
constexpr int64_t kWoKC = 256;  // weight-only panel path: K chunk
constexpr int64_t kWoMB = 48;   // rows per block (a multiple of every wo_mr)
constexpr int64_t kMaxWoNR = 32;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Runs f(n_lo, n_hi, m_lo, m_hi) over a grid of tasks (up to kChunksPerThread per thread): N units
// split first, M units only when there are fewer N units than tasks wanted.
template <typename F>
void run_grid(int threads, int64_t n_units, int64_t m_units, const F& f) {
  threads = std::max(1, threads);
  const int64_t want = threads == 1 ? 1 : threads * kChunksPerThread;
  int64_t tn = std::min<int64_t>(want, n_units), tm = 1;
  if (tn < want) tm = std::max<int64_t>(1, std::min<int64_t>(want / tn, m_units));
  parallel_for(0, tn * tm, 1, threads, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i = t / tm, j = t % tm;
      f(n_units * i / tn, n_units * (i + 1) / tn, m_units * j / tm, m_units * (j + 1) / tm);
    }
  });
}

cpu::GemmEpilogue offset_epilogue(const cpu::GemmEpilogue& ep, int64_t m, int64_t n) {
  cpu::GemmEpilogue e = ep;
  if (e.c) e.c += m * e.ldc + n;
  if (e.row_off) e.row_off += m;
  if (e.a_scale) e.a_scale += m;
  if (e.w_scale) e.w_scale += n;
  if (e.bias) e.bias += n;
  if (e.y) e.y = static_cast<char*>(e.y) + (m * e.ldy + n) * dtype_size(e.y_dtype);
  return e;
}

void check_linear(const Int8LinearArgs& a) {
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y, "null pointer");
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes m=", a.m, " n=", a.n, " k=", a.k);
}

// ---- AMX tier: M thresholds -----------------------------------------------------------------------
// Defaults from bench/amx_check.py on an Intel Xeon (family 6 model 207, Emerald Rapids; 2 threads):
// int8: the tiles pad M to 16 rows; VNNI (which streams the same weight bytes) is as fast up to M=8
// (AMX/VNNI at 4096x4096 and 4096x11008, two runs: M=8 0.99/1.32 and 0.70/1.06; M=16 1.31/1.35 and
// 1.05/1.52; at 16 threads AMX wins only from M=32). bf16: the AVX-512 in-register decode path
// serves M <= 4 faster; from M = 5 AVX-512 falls to its fp32 panel GEMM, which the bf16 tiles beat
// (M=5: 1.46x and 0.93x, M=8: 1.53x and 1.23x at 4096x4096 and 4096x11008).
constexpr int64_t kAmxMinMDefault[2] = {16, 5};
std::atomic<int64_t> g_amx_min_m[2] = {kAmxMinMDefault[0], kAmxMinMDefault[1]};
std::atomic<int64_t> g_amx_calls[2] = {0, 0};

// The AMX table for an int8 (kind 0) or bf16 (kind 1) call of m rows, or nullptr. The caller runs
// the tiles when it gets a table (counted, so tests can prove the tiles ran).
const cpu::GemmKernels* amx_for(int kind, int64_t m) {
  const cpu::GemmKernels* t = cpu::gemm_kernels_amx_tier();
  if (!t || m < g_amx_min_m[kind].load(std::memory_order_relaxed)) return nullptr;
  g_amx_calls[kind].fetch_add(1, std::memory_order_relaxed);
  return t;
}

// Calls tile_begin / tile_end around f on the calling thread (AMX only).
template <typename F>
void with_tiles(const cpu::GemmKernels& kr, const F& f) {
  if (kr.tile_begin) kr.tile_begin();
  f();
  if (kr.tile_end) kr.tile_end();
}

}  // namespace

int64_t cpu_amx_min_m(int kind) {
  FASTQ_CHECK(kind == 0 || kind == 1, "AMX threshold kind must be 0 (int8) or 1 (bf16), got ", kind);
  return g_amx_min_m[kind].load(std::memory_order_relaxed);
}

int64_t cpu_amx_calls(int kind) {
  FASTQ_CHECK(kind == 0 || kind == 1, "AMX kind must be 0 (int8) or 1 (bf16), got ", kind);
  return g_amx_calls[kind].load(std::memory_order_relaxed);
}

void set_cpu_amx_min_m(int kind, int64_t m) {
  FASTQ_CHECK(kind == 0 || kind == 1, "AMX threshold kind must be 0 (int8) or 1 (bf16), got ", kind);
  FASTQ_CHECK(m >= 1, "AMX threshold must be >= 1, got ", m);
  g_amx_min_m[kind].store(m, std::memory_order_relaxed);
}

// ---- int8_gemm ----------------------------------------------------------------------------------

namespace {

constexpr int64_t kSmallM = 4;
constexpr int64_t kSmallKC = 8192;  // multiple of 64

// M <= 4: packing B would cost more than the product, so each thread reads its B rows directly
// and dots them with the (converted, zero-padded) rows of A, kSmallKC of K at a time.
void int8_gemm_small_m(const cpu::GemmKernels& kr, const int8_t* a, const int8_t* b, int32_t* c, int64_t m,
                       int64_t n, int64_t k, int num_threads) {
  const bool u8 = kr.act_format == cpu::kActU8Offset;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / k);
  parallel_for(0, n, grain, std::max(1, num_threads), [&](int64_t n_lo, int64_t n_hi) {
    alignas(64) int16_t ap[kSmallM * kSmallKC];
    for (int64_t k0 = 0; k0 < k; k0 += kSmallKC) {
      const int64_t kc = std::min(kSmallKC, k - k0), kcp = round_up(kc, 64);
      for (int64_t r = 0; r < m; ++r) {
        const int8_t* src = a + r * k + k0;
        if (u8) {
          uint8_t* d8 = reinterpret_cast<uint8_t*>(ap) + r * kcp;
          for (int64_t kk = 0; kk < kc; ++kk) d8[kk] = static_cast<uint8_t>(src[kk]) ^ 0x80u;
          for (int64_t kk = kc; kk < kcp; ++kk) d8[kk] = 0;
        } else {
          int16_t* d16 = ap + r * kcp;
          for (int64_t kk = 0; kk < kc; ++kk) d16[kk] = src[kk];
          for (int64_t kk = kc; kk < kcp; ++kk) d16[kk] = 0;
        }
      }
      for (int64_t j = n_lo; j < n_hi; ++j) {
        int32_t out[kSmallM];
        kr.dot_rows(ap, kcp, static_cast<int>(m), b + j * k + k0, kc, out);
        for (int64_t r = 0; r < m; ++r) {
          int32_t* dst = c + r * n + j;
          *dst = k0 == 0 ? out[r] : static_cast<int32_t>(static_cast<uint32_t>(*dst) + static_cast<uint32_t>(out[r]));
        }
      }
    }
  });
}

}  // namespace


void int8_gemm_cpu(const int8_t* a, const int8_t* b, int32_t* c, int64_t m, int64_t n, int64_t k, int num_threads) {
  FASTQ_CHECK(a && b && c, "null pointer");
  FASTQ_CHECK(m >= 0 && n >= 0 && k >= 0, "negative size");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(c, c + m * n, 0);
    return;
  }
  if (m <= kSmallM) {
    int8_gemm_small_m(cpu::gemm_kernels(), a, b, c, m, n, k, num_threads);
    return;
  }
  const cpu::GemmKernels* amx = amx_for(0, m);
  const cpu::GemmKernels& kr = amx ? *amx : cpu::gemm_kernels();
  const bool u8 = kr.act_format == cpu::kActU8Offset, s8 = kr.act_format == cpu::kActS8;
  const int64_t nr = kr.nr;
  run_grid(num_threads, ceil_div(n, nr), ceil_div(m, kGemmMB), [&](int64_t p0, int64_t p1, int64_t b0, int64_t b1) {
    alignas(64) int8_t bp[kMaxNR * kGemmKC];
    alignas(64) int32_t colsum[kMaxNR];
    alignas(64) int16_t ap[kGemmMB * kGemmKC];  // int16 rows, or int8/uint8 rows in its first bytes
    int32_t off[kGemmMB];
    std::fill(off, off + kGemmMB, 128);
    with_tiles(kr, [&] {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * nr, nv = std::min(nr, n - n0), nblk = ceil_div(nv, kNR);
        for (int64_t k0 = 0; k0 < k; k0 += kGemmKC) {
          const int64_t kc = std::min(kGemmKC, k - k0), kcp = round_up(kc, kr.act_k_align);
          // Pack this chunk of B into the packed-weight layout (blocks kcp * 16 bytes apart): each
          // column's 4 consecutive k move as one 4-byte word; the column sum is a plain row sum.
          // Quads past kc are zero.
          const int64_t kc4 = kc / kKR * kKR;
          for (int64_t j = 0; j < nblk; ++j) {
            for (int c16 = 0; c16 < kNR; ++c16) {
              const int64_t col = n0 + j * kNR + c16;
              int8_t* dst = bp + j * kcp * kNR + c16 * kKR;
              for (int64_t q = col < n ? round_up(kc, kKR) / kKR : 0; q < kcp / kKR; ++q)
                std::memset(dst + q * cpu::kBlockBytes, 0, kKR);
              if (col >= n) {
                colsum[j * kNR + c16] = 0;
                continue;
              }
              const int8_t* src = b + col * k + k0;
              int32_t s = 0;
              for (int64_t kk = 0; kk < kc; ++kk) s += src[kk];
              colsum[j * kNR + c16] = s;
              for (int64_t kk = 0; kk < kc4; kk += kKR) std::memcpy(dst + kk * kNR, src + kk, kKR);
              if (kc4 < kc) {
                int8_t tail[kKR] = {0, 0, 0, 0};
                std::memcpy(tail, src + kc4, kc - kc4);
                std::memcpy(dst + kc4 * kNR, tail, kKR);
              }
            }
          }
          for (int64_t blk = b0; blk < b1; ++blk) {
            const int64_t r0 = blk * kGemmMB, rows = std::min(kGemmMB, m - r0);
            for (int64_t i = 0; i < round_up(rows, kr.act_m_align); ++i) {
              const int8_t* src = a + (r0 + i) * k + k0;
              const int64_t valid = i < rows ? kc : 0;  // rows past m (AMX tiles read 16) are zeros
              // Straight loops the compiler vectorizes, then the zero pad.
              if (u8 || s8) {
                uint8_t* d8 = reinterpret_cast<uint8_t*>(ap) + i * kcp;
                if (s8) std::memcpy(d8, src, valid);
                else
                  for (int64_t kk = 0; kk < valid; ++kk) d8[kk] = static_cast<uint8_t>(src[kk]) ^ 0x80u;
                std::memset(d8 + valid, 0, kcp - valid);
              } else {
                int16_t* d16 = ap + i * kcp;
                for (int64_t kk = 0; kk < valid; ++kk) d16[kk] = src[kk];
                for (int64_t kk = valid; kk < kcp; ++kk) d16[kk] = 0;
              }
            }
            cpu::GemmEpilogue ep;
            ep.c = c;
            ep.ldc = n;
            ep.accumulate = k0 > 0;
            ep.row_off = u8 ? off : nullptr;
            for (int64_t r = 0; r < rows; r += kr.mr) {
              const int mr = static_cast<int>(std::min<int64_t>(kr.mr, rows - r));
              cpu::GemmEpilogue e = offset_epilogue(ep, r0 + r, n0);
              e.row_off = ep.row_off ? off + r : nullptr;
              const void* act = u8 || s8 ? static_cast<const void*>(reinterpret_cast<const uint8_t*>(ap) + r * kcp)
                                         : static_cast<const void*>(ap + r * kcp);
              kr.gemm_tile(act, kcp, mr, bp, kcp * kNR, colsum, kcp / kKR, static_cast<int>(nv), e, 0, 0);
            }
          }
        }
      }
    });
  });
}

// ---- int8_linear_dynamic ------------------------------------------------------------------------

namespace {
// The activation region of the workspace: int16 rows (the widest vector format), or for the AMX
// tiles int8 rows padded to 64 k, 16-row aligned; then per-row scale and offset.
int64_t act_bytes(int64_t m, int64_t k) {
  const int64_t vec = round_up(m * round_up(k, kKR) * 2, 64);
  const int64_t amx = m >= cpu_amx_min_m(0) ? round_up(m, 16) * round_up(k, 64) : 0;
  return std::max(vec, amx);
}
}  // namespace

int64_t int8_linear_dynamic_workspace_bytes_cpu(int64_t m, int64_t n, int64_t k) {
  (void)n;
  return act_bytes(m, k) + 8 * m;
}

void int8_linear_dynamic_cpu(const Int8LinearArgs& a) {
  check_linear(a);
  FASTQ_CHECK(a.workspace && a.workspace_bytes >= int8_linear_dynamic_workspace_bytes_cpu(a.m, a.n, a.k),
              "workspace too small: ", a.workspace_bytes, " < ", int8_linear_dynamic_workspace_bytes_cpu(a.m, a.n, a.k));
  if (a.m == 0) return;
  const cpu::GemmKernels* amx = amx_for(0, a.m);
  const cpu::GemmKernels& kr = amx ? *amx : cpu::gemm_kernels();
  const cpu::QuantKernels& qk = cpu::quant_kernels();
  const bool u8 = kr.act_format == cpu::kActU8Offset, s8 = kr.act_format == cpu::kActS8;
  const int64_t m = a.m, n = a.n, k = a.k, k_pad = round_up(k, kKR), n_pad = round_up(n, kNR);
  const int64_t lda = round_up(k, kr.act_k_align);  // activation row length (k_pad except on AMX)
  const int d = static_cast<int>(a.x_dtype);
  const size_t xsz = dtype_size(a.x_dtype), act_esz = u8 || s8 ? 1 : 2;
  char* act = static_cast<char*>(a.workspace);
  float* a_scale = reinterpret_cast<float*>(act + act_bytes(m, k));
  int32_t* row_off = reinterpret_cast<int32_t*>(a_scale + m);
  const int32_t* colsum = reinterpret_cast<const int32_t*>(a.w_packed + n_pad * k_pad);

  // Per-token quantization (the quantize_int8 sequence), then the ISA's activation format.
  auto prepare_row = [&](int64_t r) {
    const void* x = static_cast<const char*>(a.x) + r * k * xsz;
    RowScale s;
    if (a.act_symmetric) {
      s = symmetric_scale(qk.absmax_bits[d](x, k));
    } else {
      float lo = std::numeric_limits<float>::infinity(), hi = -lo;
      const bool nan = qk.minmax[d](x, k, &lo, &hi);
      s = asymmetric_scale(lo, hi, nan);
    }
    a_scale[r] = s.scale;
    uint8_t* row8 = reinterpret_cast<uint8_t*>(act + r * lda * act_esz);
    if (s.poisoned) std::memset(row8, 0, k);
    else if (a.act_symmetric) qk.quant_sym[d](x, k, s.inv, reinterpret_cast<int8_t*>(row8));
    else qk.quant_asym[d](x, k, s.inv, s.zero_point, row8);
    const int32_t zp = a.act_symmetric ? 0 : s.zero_point;
    if (s8) {
      // AMX: int8 codes as they are (TDPBSSD), uint8 codes with their zero point (TDPBUSD).
      std::memset(row8 + k, 0, lda - k);
      row_off[r] = zp;
    } else if (u8) {
      if (a.act_symmetric)
        for (int64_t i = 0; i < k; ++i) row8[i] ^= 0x80;
      std::memset(row8 + k, 0, k_pad - k);
      row_off[r] = a.act_symmetric ? 128 : zp;
    } else {
      // Widen in place, back to front (element i's two bytes never cover an unread code).
      int16_t* row16 = reinterpret_cast<int16_t*>(row8);
      for (int64_t i = k; i < k_pad; ++i) row16[i] = 0;
      for (int64_t i = k - 1; i >= 0; --i)
        row16[i] = a.act_symmetric ? static_cast<int16_t>(static_cast<int8_t>(row8[i]))
                                   : static_cast<int16_t>(static_cast<int32_t>(row8[i]) - zp);
      row_off[r] = 0;
    }
  };

  const int threads = std::max(1, a.num_threads);
  const int64_t quant_grain = std::max<int64_t>(1, (int64_t{1} << 14) / k);
  parallel_for(0, m, quant_grain, threads, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) prepare_row(r);
  });
  // Rows the AMX tiles read past the last one (they load 16 at a time): zeros.
  std::memset(act + m * lda * act_esz, 0, (round_up(m, kr.act_m_align) - m) * lda * act_esz);

  cpu::GemmEpilogue ep;
  ep.row_off = u8 || (s8 && !a.act_symmetric) ? row_off : nullptr;
  ep.a_scale = a_scale;
  ep.w_scale = a.w_scale;
  ep.bias = a.bias;
  ep.y = a.y;
  ep.ldy = n;
  ep.y_dtype = a.y_dtype;
  const int64_t nr = kr.nr;
  run_grid(threads, ceil_div(n, nr), ceil_div(m, kr.mr), [&](int64_t p0, int64_t p1, int64_t t0, int64_t t1) {
    with_tiles(kr, [&] {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * nr, nv = std::min(nr, n - n0);
        const int8_t* w = a.w_packed + n0 * k_pad;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t r = t * kr.mr;
          const int mr = static_cast<int>(std::min<int64_t>(kr.mr, m - r));
          const cpu::GemmEpilogue e = offset_epilogue(ep, r, n0);
          kr.gemm_tile(act + r * lda * act_esz, lda, mr, w, k_pad * kNR, colsum + n0, k_pad / kKR,
                       static_cast<int>(nv), e, 0, 0);
        }
      }
    });
  });
}

// ---- int8_weight_only_linear --------------------------------------------------------------------

namespace {

constexpr int64_t kAmxWoMB = 256;  // AMX weight-only: rows per block (8 row tiles; fewer re-dequantized chunks)
constexpr int64_t kAmxWoKC = 256;  // k per dequantized chunk (8 bf16 tiles; a multiple of 32)

// Weight-only on the bf16 tiles, bfloat16 x, (G == 1 or K / G % 32 == 0): per 32-column panel and
// chunk of K, the int8 weights widen to bf16 tiles once and every row tile of the block runs over
// them; each scale group's sums leave the tiles once, times its scale. y = sum_g C_g * s_g + bias.
void weight_only_amx(const cpu::GemmKernels& kr, const Int8LinearArgs& a, int threads) {
  const int64_t m = a.m, n = a.n, k = a.k, k_pad = round_up(k, kKR), G = a.scale_groups, gs = k / G;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  run_grid(threads, ceil_div(n, 32), ceil_div(m, kAmxWoMB), [&](int64_t p0, int64_t p1, int64_t b0, int64_t b1) {
    alignas(64) uint16_t bt[2 * (kAmxWoKC / 32) * 512];
    alignas(64) uint16_t at[32 * kAmxWoKC];  // rows copied where a tile would read past x
    alignas(64) float cg[kAmxWoMB * 32];     // this group's sums
    alignas(64) float acc[kAmxWoMB * 32];    // the scaled sum over groups
    with_tiles(kr, [&] {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * 32, nv = std::min<int64_t>(32, n - n0);
        const int nb = static_cast<int>(ceil_div(nv, kNR));
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t r0 = blk * kAmxWoMB, rows = std::min(kAmxWoMB, m - r0);
          for (int64_t g = 0; g < G; ++g) {
            const int64_t kg0 = g * gs, kg1 = kg0 + gs;
            for (int64_t kc0 = kg0; kc0 < kg1; kc0 += kAmxWoKC) {
              const int64_t kc = std::min(kAmxWoKC, kg1 - kc0), nk32 = ceil_div(kc, 32);
              kr.wo_bf16_dequant(a.w_packed + n0 * k_pad, k_pad * kNR, nb, kc0 / kKR, nk32 * 8, k_pad / kKR, bt);
              for (int64_t r = 0; r < rows; r += 32) {
                const int64_t row0 = r0 + r, mrows = std::min<int64_t>(32, rows - r);
                const int mt = static_cast<int>(ceil_div(mrows, 16));
                const uint16_t* ap = x + row0 * k + kc0;
                int64_t lda = k * 2;
                if (row0 + 16 * mt > m || kc0 + nk32 * 32 > k) {
                  for (int64_t i = 0; i < 16 * mt; ++i) {
                    uint16_t* dst = at + i * kAmxWoKC;
                    const int64_t valid = i < mrows ? kc : 0;
                    if (valid) std::memcpy(dst, x + (row0 + i) * k + kc0, valid * 2);
                    std::memset(dst + valid, 0, (nk32 * 32 - valid) * 2);
                  }
                  ap = at;
                  lda = kAmxWoKC * 2;
                }
                kr.wo_bf16_tile(ap, lda, mt, bt, nb, nk32, cg + r * 32, kc0 == kg0);
              }
            }
            float sg[32];
            for (int64_t c = 0; c < nv; ++c) sg[c] = a.w_scale[(n0 + c) * G + g];
            kr.wo_bf16_epilogue(cg, rows, static_cast<int>(nv), sg, acc, g == 0, g == G - 1, a.bias ? a.bias + n0 : nullptr,
                                static_cast<char*>(a.y) + (r0 * n + n0) * dtype_size(a.y_dtype), n, a.y_dtype);
          }
        }
      }
    });
  });
}

}  // namespace

void int8_weight_only_linear_cpu(const Int8LinearArgs& a) {
  check_linear(a);
  FASTQ_CHECK(a.scale_groups >= 1 && a.k % a.scale_groups == 0, "scale_groups ", a.scale_groups,
              " must divide k=", a.k);
  if (a.m == 0) return;
  const cpu::GemmKernels& kr = cpu::gemm_kernels();
  const int64_t m = a.m, n = a.n, k = a.k, k_pad = round_up(k, kKR), G = a.scale_groups, gs = k / G;
  const int threads = std::max(1, a.num_threads);

  // AMX bf16 tiles: bfloat16 x only, so every product stays exact (x is bf16, int8 weights widen to
  // bf16 exactly) and only the fp32 summation order differs; float32/float16 x would be rounded.
  if (const cpu::GemmKernels* amx = a.x_dtype == DType::bf16 && (G == 1 || gs % 32 == 0) ? amx_for(1, m) : nullptr) {
    weight_only_amx(*amx, a, threads);
    return;
  }

  if (m <= kr.wo_direct_max_m && gs % kKR == 0) {
    // Decode path: stream each weight block once, all rows at a time, threads over N.
    const int64_t nblk = ceil_div(n, kNR);
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / (k_pad * kNR));
    parallel_for(0, nblk, grain, threads, [&](int64_t lo, int64_t hi) {
      kr.wo_direct(a, 0, static_cast<int>(m), lo, hi);
    });
    return;
  }

  const int64_t nr = kr.wo_nr, xsz = static_cast<int64_t>(dtype_size(a.x_dtype));
  const int d = static_cast<int>(a.x_dtype);
  run_grid(threads, ceil_div(n, nr), ceil_div(m, kWoMB), [&](int64_t p0, int64_t p1, int64_t b0, int64_t b1) {
    alignas(64) float panel[kWoKC * kMaxWoNR];
    alignas(64) float cbuf[kWoMB * kMaxWoNR];
    alignas(64) float abuf[kWoMB * kWoKC];
    alignas(64) float sbuf[(kWoKC + 1) * kMaxWoNR];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * nr, nv = std::min(nr, n - n0);
      const int nb = static_cast<int>(ceil_div(nv, kNR));
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * kWoMB, rows = std::min(kWoMB, m - r0);
        for (int64_t k0 = 0; k0 < k; k0 += kWoKC) {
          const int64_t kc = std::min(kWoKC, k - k0), kcq = ceil_div(kc, kKR);
          // Scale rows of the groups this chunk touches (0 for columns past n).
          const int64_t g_lo = k0 / gs, g_hi = std::min(G - 1, (k0 + kcq * kKR - 1) / gs);
          for (int64_t g = g_lo; g <= g_hi; ++g)
            for (int64_t c = 0; c < nr; ++c) sbuf[(g - g_lo) * nr + c] = c < nv ? a.w_scale[(n0 + c) * G + g] : 0.0f;
          for (int64_t q = 0; q < kcq; ++q) {
            const int64_t kk = k0 + q * kKR;
            const float* s[4];
            for (int r = 0; r < kKR; ++r) s[r] = sbuf + (std::min(G - 1, (kk + r) / gs) - g_lo) * nr;
            kr.wo_dequant_quad(a.w_packed + n0 * k_pad + (kk / kKR) * cpu::kBlockBytes, k_pad * kNR, nb, s,
                               panel + q * kKR * nr);
          }
          const float* ap;
          int64_t lda;
          if (a.x_dtype == DType::f32) {
            ap = static_cast<const float*>(a.x) + r0 * k + k0;
            lda = k;
          } else {
            for (int64_t i = 0; i < rows; ++i)
              kr.to_f32[d](static_cast<const char*>(a.x) + ((r0 + i) * k + k0) * xsz, kc, abuf + i * kWoKC);
            ap = abuf;
            lda = kWoKC;
          }
          for (int64_t r = 0; r < rows; r += kr.wo_mr) {
            const int mr = static_cast<int>(std::min<int64_t>(kr.wo_mr, rows - r));
            kr.sgemm_tile(ap + r * lda, lda, mr, panel, kc, cbuf + r * nr, k0 == 0);
          }
        }
        // Bias and store: straight loops (vectorized by the compiler) for the float32 case.
        for (int64_t i = 0; i < rows; ++i) {
          float* crow = cbuf + i * nr;
          if (a.bias)
            for (int64_t c = 0; c < nv; ++c) crow[c] += a.bias[n0 + c];
          if (a.y_dtype == DType::f32) {
            std::memcpy(static_cast<float*>(a.y) + (r0 + i) * n + n0, crow, nv * sizeof(float));
          } else {
            for (int64_t c = 0; c < nv; ++c) cpu::store_out(a.y_dtype, a.y, (r0 + i) * n + n0 + c, crow[c]);
          }
        }
      }
    }
  });
}

// ---- register-only peaks (for benchmarks) -------------------------------------------------------

namespace {
double measure_peak(int num_threads, bool int8) {
  // Many short bursts (~1 ms each), best one kept: on a shared machine a long run is mostly
  // measuring preemption.
  const cpu::GemmKernels& kr = cpu::gemm_kernels();
  const int threads = std::max(1, std::min(num_threads, 256));
  const int64_t iters = int64_t{1} << 16;
  auto run = [&]() {
    double ops[256] = {};
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(0, threads, 1, threads, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) ops[t] = int8 ? kr.peak_int8(iters) : kr.peak_fp32(iters);
    });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double total = 0;
    for (int t = 0; t < threads; ++t) total += ops[t];
    return total / sec * 1e-9;
  };
  double best = 0;
  for (int rep = 0; rep < 50; ++rep) best = std::max(best, run());
  return best;
}
}  // namespace

double cpu_peak_int8_gops(int num_threads) { return measure_peak(num_threads, true); }
double cpu_peak_fp32_gflops(int num_threads) { return measure_peak(num_threads, false); }

}  // namespace fastq
