// Portable scalar quantize/dequantize micro-kernels: the per-element math of quant_math.h in
// plain loops. Built with no ISA flags; also the model the vector kernels are checked against.
#include <algorithm>

#include "cpu/kernels.h"
#include "cpu/quant_math.h"

namespace fastq::cpu {
namespace {

template <DType D>
uint32_t absmax_bits__scalar(const void* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, f32_bits(load_elem<D>(x, i)) & 0x7fffffffu);
  return m;
}

template <DType D>
bool minmax__scalar(const void* x, int64_t n, float* mn, float* mx) {
  float lo = *mn, hi = *mx;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i) {
    const float v = load_elem<D>(x, i);
    nan |= v != v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  *mn = lo;
  *mx = hi;
  return nan;
}

template <DType D>
void quant_sym__scalar(const void* x, int64_t n, float inv_scale, int8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), inv_scale);
}

template <DType D>
void quant_asym__scalar(const void* x, int64_t n, float inv_scale, int32_t zp, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = quantize_asym_elem(load_elem<D>(x, i), inv_scale, zp);
}

template <DType D>
void dequant_sym__scalar(const int8_t* q, int64_t n, float scale, void* y) {
  for (int64_t i = 0; i < n; ++i) store_elem<D>(y, i, static_cast<float>(q[i]) * scale);
}

template <DType D>
void dequant_asym__scalar(const uint8_t* q, int64_t n, float scale, int32_t zp, void* y) {
  for (int64_t i = 0; i < n; ++i)
    store_elem<D>(y, i, static_cast<float>(static_cast<int32_t>(q[i]) - zp) * scale);
}

}  // namespace

#define FASTQ_BY_DTYPE(fn) {fn<DType::f32>, fn<DType::f16>, fn<DType::bf16>}
const QuantKernels quant_kernels_scalar = {
    FASTQ_BY_DTYPE(absmax_bits__scalar), FASTQ_BY_DTYPE(minmax__scalar),
    FASTQ_BY_DTYPE(quant_sym__scalar),   FASTQ_BY_DTYPE(quant_asym__scalar),
    FASTQ_BY_DTYPE(dequant_sym__scalar), FASTQ_BY_DTYPE(dequant_asym__scalar),
    // No portable non-temporal store: the streaming entries are the plain loops.
    FASTQ_BY_DTYPE(quant_sym__scalar),   FASTQ_BY_DTYPE(quant_asym__scalar),
    FASTQ_BY_DTYPE(dequant_sym__scalar), FASTQ_BY_DTYPE(dequant_asym__scalar),
    FASTQ_BY_DTYPE(quant_sym__scalar),   FASTQ_BY_DTYPE(quant_sym__scalar),
    FASTQ_BY_DTYPE(quant_asym__scalar),  FASTQ_BY_DTYPE(quant_asym__scalar),
};
#undef FASTQ_BY_DTYPE

}  // namespace fastq::cpu
