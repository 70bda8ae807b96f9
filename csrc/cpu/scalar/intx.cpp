// Scalar intx micro-kernels (layout and arithmetic: csrc/api.h, IntxLinearArgs): the portable
// fallback and the model the SIMD kernels follow. Weight-only: per group, acc = sum x * c in
// float32, y += s * (acc - z * sum x). Dynamic: the reference's exact sequence, per output element.
#include <cstring>

#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

// Code of row r (0..15), k kk (0..4P-1) of a 64-byte chunk.
inline int32_t code_at(const uint8_t* chunk, int r, int kk, int slot) {
  return (chunk[4 * r + (kk & 3)] >> (slot * (kk >> 2))) & ((1 << slot) - 1);
}

struct Record {
  const uint8_t* codes;
  float scale;
  int32_t zero;
};

inline Record record(const IntxTask& t, int64_t nb, int64_t g, int r) {
  const uint8_t* rec = t.w + (nb * t.groups + g) * t.rec_bytes;
  float s;
  std::memcpy(&s, rec + t.code_bytes + 4 * r, 4);
  return {rec, s, t.asym ? static_cast<int32_t>(rec[t.code_bytes + 64 + r]) : t.sym_zero};
}

void weight_only(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  const int ck = 4 * (8 / t.slot);
  const int64_t gs = t.chunks * ck;
  for (int64_t nb = nb0; nb < nb1; ++nb)
    for (int r = 0; r < 16 && nb * 16 + r < t.n; ++r) {
      const int64_t n = nb * 16 + r;
      for (int64_t m = m0; m < m0 + mr; ++m) {
        float y = 0.0f;
        for (int64_t g = 0; g < t.groups; ++g) {
          const Record rc = record(t, nb, g, r);
          const float* x = t.xf + m * t.k + g * gs;
          float acc = 0.0f;
          for (int64_t ch = 0; ch < t.chunks; ++ch)
            for (int kk = 0; kk < ck; ++kk)
              acc += x[ch * ck + kk] * static_cast<float>(code_at(rc.codes + ch * 64, r, kk, t.slot));
          y += rc.scale * (acc - static_cast<float>(rc.zero) * t.xsum[m * t.groups + g]);
        }
        if (t.bias) y += t.bias[n];
        store_out(t.y_dtype, t.y, m * t.n + n, y);
      }
    }
}

void dynamic(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  const int ck = 4 * (8 / t.slot);
  const int64_t gs = t.chunks * ck;
  for (int64_t nb = nb0; nb < nb1; ++nb)
    for (int r = 0; r < 16 && nb * 16 + r < t.n; ++r) {
      const int64_t n = nb * 16 + r;
      for (int64_t m = m0; m < m0 + mr; ++m) {
        float sum = 0.0f;
        for (int64_t g = 0; g < t.groups; ++g) {
          const Record rc = record(t, nb, g, r);
          const int8_t* q = t.xq + m * t.k + g * gs;
          int32_t acc = 0;
          for (int64_t ch = 0; ch < t.chunks; ++ch)
            for (int kk = 0; kk < ck; ++kk) acc += q[ch * ck + kk] * code_at(rc.codes + ch * 64, r, kk, t.slot);
          acc -= rc.zero * t.qsum[m * t.groups + g];
          sum = sum + static_cast<float>(acc) * rc.scale;
        }
        float y = sum * t.a_scale[m];
        if (t.bias) y = y + t.bias[n];
        store_out(t.y_dtype, t.y, m * t.n + n, y);
      }
    }
}

}  // namespace

const IntxKernels intx_kernels_scalar = {4, 1, weight_only, dynamic};

}  // namespace fastq::cpu
