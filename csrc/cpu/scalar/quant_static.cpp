// Portable scalar static activation quantization into the kActS16 GEMM format (kernels.h:
// StaticActKernels): the per-element math of quant_math.h with a per-element multiplier. Built
// with no ISA flags; the model the vector versions are tested against.
#include "cpu/kernels.h"
#include "cpu/quant_math.h"

namespace fastq::cpu {
namespace {

template <DType D>
void quant_act_s16__scalar(const void* x, int64_t n, const float* mul, bool symmetric, int32_t zp, void* out) {
  int16_t* q = static_cast<int16_t*>(out);
  if (symmetric) {
    for (int64_t i = 0; i < n; ++i) q[i] = quantize_sym_elem(load_elem<D>(x, i), mul[i]);
  } else {
    for (int64_t i = 0; i < n; ++i)
      q[i] = static_cast<int16_t>(static_cast<int32_t>(quantize_asym_elem(load_elem<D>(x, i), mul[i], zp)) - zp);
  }
}

}  // namespace

const StaticActKernels static_act_kernels_scalar = {
    {quant_act_s16__scalar<DType::f32>, quant_act_s16__scalar<DType::f16>, quant_act_s16__scalar<DType::bf16>},
};

}  // namespace fastq::cpu
