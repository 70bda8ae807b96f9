// Portable scalar int8 GEMM family micro-kernels: int16 activations (code - zero point) times the
// packed int8 weight in int32, the shared per-element epilogue, and a plain float32 path for the
// weight-only linear. Built with no ISA flags; the model the vector kernels are tested against.
#include <chrono>

#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kMR = 4;
constexpr int kWoMR = 4, kWoNR = 16;

void gemm_tile__scalar(const void* act, int64_t lda, int mr, const int8_t* w, int64_t w_bstride,
                       const int32_t* colsum, int64_t kq, int n_valid, const GemmEpilogue& ep, int64_t m0, int64_t n0) {
  const int16_t* a = static_cast<const int16_t*>(act);
  for (int nb = 0; nb * kNR < n_valid; ++nb) {
    const int8_t* wb = w + nb * w_bstride;
    int32_t acc[kMR][kNR] = {};
    for (int64_t q = 0; q < kq; ++q) {
      const int8_t* blk = wb + q * kBlockBytes;
      for (int r = 0; r < mr; ++r) {
        const int16_t* ar = a + r * lda + q * kKR;
        for (int c = 0; c < kNR; ++c) {
          int32_t s = 0;
          for (int kk = 0; kk < kKR; ++kk) s += static_cast<int32_t>(ar[kk]) * blk[c * kKR + kk];
          acc[r][c] += s;
        }
      }
    }
    const int cols = n_valid - nb * kNR < kNR ? n_valid - nb * kNR : kNR;
    for (int r = 0; r < mr; ++r)
      for (int c = 0; c < cols; ++c)
        epilogue_elem(ep, m0 + r, n0 + nb * kNR + c, acc[r][c], colsum[nb * kNR + c]);
  }
}

void wo_direct__scalar(const Int8LinearArgs& a, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  const int64_t k_pad = (a.k + kKR - 1) / kKR * kKR, gs = a.k / a.scale_groups;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    const int8_t* wb = a.w_packed + nb * k_pad * kNR;
    for (int r = 0; r < mr; ++r) {
      const int64_t m = m0 + r;
      for (int c = 0; c < kNR; ++c) {
        const int64_t n = nb * kNR + c;
        if (n >= a.n) break;
        float total = 0.0f;
        for (int64_t g = 0; g < a.scale_groups; ++g) {
          float part = 0.0f;
          for (int64_t k = g * gs; k < (g + 1) * gs; ++k)
            part += load_in(a.x_dtype, a.x, m * a.k + k) * static_cast<float>(wb[(k / kKR) * kBlockBytes + c * kKR + k % kKR]);
          total += part * wo_scale(a, n, g);
        }
        if (a.bias) total += a.bias[n];
        store_out(a.y_dtype, a.y, m * a.n + n, total);
      }
    }
  }
}

void wo_dequant_quad__scalar(const int8_t* w, int64_t w_bstride, int nb, const float* const s[4], float* dst) {
  for (int r = 0; r < kKR; ++r)
    for (int c = 0; c < kWoNR; ++c)
      dst[r * kWoNR + c] = c / kNR < nb ? static_cast<float>(w[(c / kNR) * w_bstride + (c % kNR) * kKR + r]) * s[r][c] : 0.0f;
}

void sgemm_tile__scalar(const float* a, int64_t lda, int mr, const float* panel, int64_t kc, float* c, bool first) {
  for (int r = 0; r < mr; ++r) {
    float acc[kWoNR];
    for (int j = 0; j < kWoNR; ++j) acc[j] = first ? 0.0f : c[r * kWoNR + j];
    for (int64_t k = 0; k < kc; ++k) {
      const float x = a[r * lda + k];
      for (int j = 0; j < kWoNR; ++j) acc[j] += x * panel[k * kWoNR + j];
    }
    for (int j = 0; j < kWoNR; ++j) c[r * kWoNR + j] = acc[j];
  }
}

template <DType D>
void to_f32__scalar(const void* x, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_elem<D>(x, i);
}

// Scalar "peaks": dependent-chain-free integer and float multiply-adds the compiler keeps in registers.
double peak_int8__scalar(int64_t iters) {
  volatile int32_t seed = 3;
  int32_t a0 = seed, a1 = seed + 1, a2 = seed + 2, a3 = seed + 3;
  const int32_t m = seed * 7;
  for (int64_t i = 0; i < iters; ++i) {
    a0 = a0 * m + 1; a1 = a1 * m + 2; a2 = a2 * m + 3; a3 = a3 * m + 4;
  }
  seed = a0 + a1 + a2 + a3;
  return 8.0 * static_cast<double>(iters);
}

double peak_fp32__scalar(int64_t iters) {
  volatile float seed = 0.5f;
  float a0 = seed, a1 = seed, a2 = seed, a3 = seed;
  const float m = seed * 1.0001f;
  for (int64_t i = 0; i < iters; ++i) {
    a0 = a0 * m + 0.1f; a1 = a1 * m + 0.2f; a2 = a2 * m + 0.3f; a3 = a3 * m + 0.4f;
  }
  seed = a0 + a1 + a2 + a3;
  return 8.0 * static_cast<double>(iters);
}

}  // namespace

const GemmKernels gemm_kernels_scalar = {
    kActS16, kMR, kNR, gemm_tile__scalar,
    4, wo_direct__scalar,
    kWoMR, kWoNR, wo_dequant_quad__scalar, sgemm_tile__scalar,
    {to_f32__scalar<DType::f32>, to_f32__scalar<DType::f16>, to_f32__scalar<DType::bf16>},
    peak_int8__scalar, peak_fp32__scalar,
};

}  // namespace fastq::cpu
