// Per-row dynamic int8 quantization math shared by the CUDA kernels (quantize.cu, gemm.cu).
// Invariant: the exact float-op sequence of fastq/ops/reference.py quantize_int8 (every op an _rn
// intrinsic, no FMA contraction), so every kernel including this header produces identical codes
// and scales. Internal linkage (anonymous namespace): each .cu gets its own copy.
#pragma once
#include <cfloat>

#include "cuda/common.cuh"

namespace fastq::cuda {
namespace {

struct Acc {
  uint32_t bits;  // max |x| as float bits (symmetric)
  float lo, hi;   // min / max (asymmetric)
  bool nan;
};

__device__ __forceinline__ Acc acc_init() { return {0u, 0.0f, 0.0f, false}; }

__device__ __forceinline__ void acc_add_value(Acc& a, float v) {
  a.bits = max(a.bits, __float_as_uint(v) & 0x7fffffffu);
  a.nan |= v != v;
  a.lo = fminf(a.lo, v);  // lo starts at 0: the reference clamps lo <= 0 <= hi anyway
  a.hi = fmaxf(a.hi, v);
}

template <DType D>
__device__ __forceinline__ void acc_add(Acc& a, const void* x, int64_t i) {
  acc_add_value(a, load_elem<D>(x, i));
}

__device__ __forceinline__ Acc acc_merge(Acc a, const Acc& b) {
  a.bits = max(a.bits, b.bits);
  a.lo = fminf(a.lo, b.lo);
  a.hi = fmaxf(a.hi, b.hi);
  a.nan |= b.nan;
  return a;
}

__device__ __forceinline__ Acc warp_reduce(Acc a) {
  for (int off = 16; off > 0; off >>= 1) {
    Acc b;
    b.bits = __shfl_xor_sync(0xffffffffu, a.bits, off);
    b.lo = __shfl_xor_sync(0xffffffffu, a.lo, off);
    b.hi = __shfl_xor_sync(0xffffffffu, a.hi, off);
    b.nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(a.nan), off) != 0;
    a = acc_merge(a, b);
  }
  return a;
}

struct RowScale {
  float scale, inv;
  int32_t zp;
  bool poisoned;
};

__device__ __forceinline__ RowScale scale_of(const Acc& a, bool symmetric) {
  if (symmetric) {
    if (a.bits >= 0x7f800000u) return {__int_as_float(0x7fc00000), 0.0f, 0, true};
    const float s = fmaxf(__fdiv_rn(__uint_as_float(a.bits), 127.0f), FLT_MIN);
    return {s, __fdiv_rn(1.0f, s), 0, false};
  }
  if (a.nan || isinf(a.lo) || isinf(a.hi)) return {__int_as_float(0x7fc00000), 0.0f, 0, true};
  const float lo = fminf(a.lo, 0.0f), hi = fmaxf(a.hi, 0.0f);
  const float span = __fsub_rn(hi, lo);
  if (isinf(span)) {  // finite extremes more than FLT_MAX apart: the reference's "wide" row
    const float w = __fdiv_rn(fmaxf(hi, -lo), 128.0f);
    return {w, __fdiv_rn(1.0f, w), 128, false};
  }
  const float s = fmaxf(__fdiv_rn(span, 255.0f), FLT_MIN);
  const float inv = __fdiv_rn(1.0f, s);
  const float zp = fminf(fmaxf(rintf(__fmul_rn(-lo, inv)), 0.0f), 255.0f);
  return {s, inv, static_cast<int32_t>(zp), false};
}

// One code from x and its row's scale: clamp(round(x * inv), -127, 127); NaN and poisoned rows give 0.
__device__ __forceinline__ int8_t quantize_sym(float x, const RowScale& s) {
  int8_t q = 0;
  if (!s.poisoned) {
    const float v = __fmul_rn(x, s.inv);
    if (v == v) q = static_cast<int8_t>(__float2int_rn(fminf(fmaxf(v, -127.0f), 127.0f)));
  }
  return q;
}

// clamp(round(x * inv) + zp, 0, 255); NaN gives the zero point, poisoned rows give 0.
__device__ __forceinline__ uint8_t quantize_asym(float x, const RowScale& s) {
  uint8_t q = 0;
  if (!s.poisoned) {
    const float v = __fmul_rn(x, s.inv);
    float r = static_cast<float>(s.zp);
    if (v == v) r = __fadd_rn(rintf(v), r);
    q = static_cast<uint8_t>(__float2int_rn(fminf(fmaxf(r, 0.0f), 255.0f)));
  }
  return q;
}

// Block-wide merge of every thread's Acc; every thread gets the total. kThreads % 32 == 0.
template <int kThreads>
__device__ __forceinline__ Acc block_reduce(Acc acc) {
  __shared__ Acc partial[kThreads / 32];
  acc = warp_reduce(acc);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  Acc total = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) total = acc_merge(total, partial[w]);
  return total;
}

}  // namespace
}  // namespace fastq::cuda
