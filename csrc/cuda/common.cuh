// Shared CUDA helpers. Kernels never allocate; launchers take the caller's stream and check the
// launch. Float math that must match the PyTorch reference uses the _rn intrinsics (and the
// module is built with --fmad=false) so that nothing is contracted into an FMA.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
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

// An attribute of the current device that never changes (SM count, compute capability), queried
// once per device and cached.
template <cudaDeviceAttr kAttr>
int device_attribute() {
  static std::atomic<int> cache[64];
  int dev = 0;
  FASTQ_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  FASTQ_CUDA_CHECK(cudaDeviceGetAttribute(&v, kAttr, dev));
  if (dev >= 0 && dev < 64) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

inline bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Dynamic shared memory above 48 KiB must be opted into; the carveout hint asks for the largest
// shared-memory split so that several CTAs fit on one SM. Done once
// per kernel and device (`done`: one bit per device, a static of the calling instantiation), so
// steady-state launches (and CUDA-graph captures after a warm-up call) make no attribute calls.
template <class Kernel>
void set_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done) {
  int dev = 0;
  FASTQ_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = dev >= 0 && dev < 64 ? (uint64_t{1} << dev) : 0;
  if (bit && (done.load(std::memory_order_acquire) & bit)) return;
  if (bytes > 48 * 1024)
    FASTQ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  FASTQ_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  done.fetch_or(bit, std::memory_order_release);
}

}  // namespace fastq::cuda
