// Shared CUDA helpers. Kernels never allocate; launchers take the caller's stream and check the
// launch. Float math that must match the PyTorch reference uses the _rn intrinsics (and the
// module is built with --fmad=false) so that nothing is contracted into an FMA.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "api.h"
#include "common/error.h"

#define FASTQ_CUDA_CHECK(expr)                                                        \
  do {                                                                                \
    const cudaError_t err_ = (expr);                                                  \
    FASTQ_CHECK(err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(err_));       \
  } while (0)

namespace fastq::cuda {

template <DType D>
__device__ __forceinline__ float load_elem(const void* p, int64_t i);
template <>
__device__ __forceinline__ float load_elem<DType::f32>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <>
__device__ __forceinline__ float load_elem<DType::f16>(const void* p, int64_t i) {
  return __half2float(static_cast<const __half*>(p)[i]);
}
template <>
__device__ __forceinline__ float load_elem<DType::bf16>(const void* p, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

template <DType D>
__device__ __forceinline__ void store_elem(void* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store_elem<DType::f32>(void* p, int64_t i, float v) {
  static_cast<float*>(p)[i] = v;
}
template <>
__device__ __forceinline__ void store_elem<DType::f16>(void* p, int64_t i, float v) {
  static_cast<__half*>(p)[i] = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_elem<DType::bf16>(void* p, int64_t i, float v) {
  static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// Calls f with a std::integral_constant-like tag for the runtime dtype.
template <typename F>
void dispatch_dtype(DType d, const F& f) {
  switch (d) {
    case DType::f32: f(std::integral_constant<DType, DType::f32>{}); break;
    case DType::f16: f(std::integral_constant<DType, DType::f16>{}); break;
    case DType::bf16: f(std::integral_constant<DType, DType::bf16>{}); break;
    default: FASTQ_CHECK(false, "unknown dtype code ", static_cast<int>(d));
  }
}

inline int grid_for(int64_t n, int block, int max_blocks = 65535 * 8) {
  const int64_t g = (n + block - 1) / block;
  return static_cast<int>(g < 1 ? 1 : (g > max_blocks ? max_blocks : g));
}

}  // namespace fastq::cuda
