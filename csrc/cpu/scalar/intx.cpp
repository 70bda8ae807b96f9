// Scalar intx micro-kernels (layout and arithmetic: csrc/api.h, IntxLinearArgs): the portable
// fallback and the model the SIMD kernels follow. Weight-only: per group, acc = sum x * c in
// float32, y += s * (acc - z * sum x). Dynamic: the reference's exact sequence, per output element.
#include <cstring>

#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

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

// Code of row r (0..15), input i of the group (chunk i / ck, k kk = i % ck within it: quad kk / 4,
// byte kk % 4 of the row's 4 bytes).
inline int32_t code_at(const uint8_t* codes, int r, int64_t i, int ck, int slot) {
  const int kk = static_cast<int>(i % ck);
  return (codes[(i / ck) * 64 + 4 * r + (kk & 3)] >> (slot * (kk >> 2))) & ((1 << slot) - 1);
}

// One output element (row m, weight row 16 nb + r).
template <bool kDynamic>
float element(const IntxTask& t, int64_t nb, int r, int64_t m) {
  const int ck = 4 * (8 / t.slot);
  const int64_t gs = t.chunks * ck;
  float y = 0.0f;
  for (int64_t g = 0; g < t.groups; ++g) {
    const Record rc = record(t, nb, g, r);
    const int64_t base = m * t.k + g * gs;
    if constexpr (kDynamic) {
      int32_t acc = 0;
      for (int64_t i = 0; i < gs; ++i) acc += t.xq[base + i] * code_at(rc.codes, r, i, ck, t.slot);
      y = y + static_cast<float>(acc - rc.zero * t.qsum[m * t.groups + g]) * rc.scale;
    } else {
      float acc = 0.0f;
      for (int64_t i = 0; i < gs; ++i) acc += t.xf[base + i] * static_cast<float>(code_at(rc.codes, r, i, ck, t.slot));
      y += rc.scale * (acc - static_cast<float>(rc.zero) * t.xsum[m * t.groups + g]);
    }
  }
  if constexpr (kDynamic) y = y * t.a_scale[m];
  if (t.bias) y = y + t.bias[nb * 16 + r];
  return y;
}

template <bool kDynamic>
void tile(const IntxTask& t, int64_t m0, int mr, int64_t nb0, int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; ++nb)
    for (int r = 0; r < 16 && nb * 16 + r < t.n; ++r)
      for (int64_t m = m0; m < m0 + mr; ++m) store_out(t.y_dtype, t.y, m * t.n + nb * 16 + r, element<kDynamic>(t, nb, r, m));
}

}  // namespace

const IntxKernels intx_kernels_scalar = {4, 1, tile<false>, tile<true>, 0, nullptr};

}  // namespace fastq::cpu
