// CUDA quantize_int8 / dequantize_int8. Same float-op sequence as fastq/ops/reference.py and
// csrc/cpu/quantize.cpp (see there), written with _rn intrinsics so results are bit-identical.
// Layout: dynamic rows get one warp each (short rows) or one block each (long rows); a single
// long row (per-tensor) is reduced grid-wide through the caller's zeroed 4-int workspace. Long rows
// whose length is a multiple of the 16-byte vector and whose data is aligned take the vector kernel:
// 16-byte loads, packed code stores, and the row kept in registers between the max pass and the
// code pass, so x is read from memory once.
#include <cfloat>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/quant_math.cuh"

namespace fastq {
namespace {

using cuda::load_elem;
using cuda::store_elem;
using cuda::Acc;
using cuda::acc_add;
using cuda::acc_init;
using cuda::RowScale;
using cuda::scale_of;
using cuda::warp_reduce;

constexpr int kBlock = 256;

template <DType D>
__device__ __forceinline__ void quantize_elem(const QuantizeArgs& a, int64_t i, const RowScale& s) {
  if (a.symmetric) {
    static_cast<int8_t*>(a.codes)[i] = cuda::quantize_sym(load_elem<D>(a.x, i), s);
  } else {
    static_cast<uint8_t*>(a.codes)[i] = cuda::quantize_asym(load_elem<D>(a.x, i), s);
  }
}

__device__ __forceinline__ void store_scale(const QuantizeArgs& a, int64_t row, const RowScale& s) {
  a.scale[row] = s.scale;
  if (!a.symmetric) a.zero_point[row] = s.zp;
}

// One warp per row.
template <DType D>
__global__ void quantize_rows_warp(QuantizeArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / 32) + threadIdx.x / 32;
  if (row >= a.rows) return;
  const int64_t base = row * a.cols;
  Acc acc = acc_init();
  for (int64_t c = lane; c < a.cols; c += 32) acc_add<D>(acc, a.x, base + c);
  const RowScale s = scale_of(warp_reduce(acc), a.symmetric);
  if (lane == 0) store_scale(a, row, s);
  for (int64_t c = lane; c < a.cols; c += 32) quantize_elem<D>(a, base + c, s);
}

// One block per row.
template <DType D>
__global__ void quantize_rows_block(QuantizeArgs a) {
  const int64_t row = blockIdx.x;
  const int64_t base = row * a.cols;
  Acc acc = acc_init();
  for (int64_t c = threadIdx.x; c < a.cols; c += kBlock) acc_add<D>(acc, a.x, base + c);
  const RowScale s = scale_of(cuda::block_reduce<kBlock>(acc), a.symmetric);
  if (threadIdx.x == 0) store_scale(a, row, s);
  for (int64_t c = threadIdx.x; c < a.cols; c += kBlock) quantize_elem<D>(a, base + c, s);
}

// 16 bytes of x as floats: 4 float32 or 8 float16/bfloat16.
template <DType D>
struct Vec16 {
  static constexpr int kElems = D == DType::f32 ? 4 : 8;
  __device__ __forceinline__ static void unpack(const uint4& u, float (&f)[kElems]) {
    if constexpr (D == DType::f32) {
      f[0] = __uint_as_float(u.x), f[1] = __uint_as_float(u.y), f[2] = __uint_as_float(u.z), f[3] = __uint_as_float(u.w);
    } else {
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 p = D == DType::bf16 ? __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]))
                                          : __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        f[2 * i] = p.x, f[2 * i + 1] = p.y;
      }
    }
  }
};

// The codes of one vector, packed little-endian into 4 (float32 x) or 8 bytes, stored at once.
template <DType D>
__device__ __forceinline__ void store_codes(const QuantizeArgs& a, int64_t first, const uint4& u, const RowScale& s) {
  constexpr int V = Vec16<D>::kElems;
  float f[V];
  Vec16<D>::unpack(u, f);
  uint32_t word[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const uint32_t c = a.symmetric ? static_cast<uint8_t>(cuda::quantize_sym(f[i], s)) : cuda::quantize_asym(f[i], s);
    word[i / 4] |= c << (8 * (i % 4));
  }
  if constexpr (V == 4) {
    *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(a.codes) + first) = word[0];
  } else {
    *reinterpret_cast<uint2*>(static_cast<uint8_t*>(a.codes) + first) = make_uint2(word[0], word[1]);
  }
}

// One block per row, 16-byte vectors; the first kCached vectors of each thread stay in registers.
template <DType D, int kCached>
__global__ void __launch_bounds__(kBlock) quantize_rows_block_vec(QuantizeArgs a) {
  constexpr int V = Vec16<D>::kElems;
  const int64_t row = blockIdx.x, nvec = a.cols / V;
  const uint4* xv = reinterpret_cast<const uint4*>(static_cast<const char*>(a.x) + row * a.cols * (16 / V));
  uint4 cache[kCached];
  Acc acc = acc_init();
#pragma unroll
  for (int r = 0; r < kCached; ++r) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(r) * kBlock;
    if (j < nvec) cache[r] = xv[j];
  }
#pragma unroll
  for (int r = 0; r < kCached; ++r) {
    if (threadIdx.x + static_cast<int64_t>(r) * kBlock < nvec) {
      float f[V];
      Vec16<D>::unpack(cache[r], f);
#pragma unroll
      for (int i = 0; i < V; ++i) cuda::acc_add_value(acc, f[i]);
    }
  }
  for (int64_t j = threadIdx.x + static_cast<int64_t>(kCached) * kBlock; j < nvec; j += kBlock) {
    float f[V];
    Vec16<D>::unpack(xv[j], f);
#pragma unroll
    for (int i = 0; i < V; ++i) cuda::acc_add_value(acc, f[i]);
  }
  const RowScale s = scale_of(cuda::block_reduce<kBlock>(acc), a.symmetric);
  if (threadIdx.x == 0) store_scale(a, row, s);
#pragma unroll
  for (int r = 0; r < kCached; ++r) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(r) * kBlock;
    if (j < nvec) store_codes<D>(a, row * a.cols + j * V, cache[r], s);
  }
  for (int64_t j = threadIdx.x + static_cast<int64_t>(kCached) * kBlock; j < nvec; j += kBlock)
    store_codes<D>(a, row * a.cols + j * V, xv[j], s);
}

// Map a float to an int whose signed order is the float order (for atomicMin/atomicMax).
__device__ __forceinline__ int ordered(float f) {
  const int i = __float_as_int(f);
  return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float unordered(int i) { return __int_as_float(i >= 0 ? i : i ^ 0x7fffffff); }

// Single long row, pass 1: grid-wide reduction into ws = {absmax bits, lo, hi, nan}.
template <DType D>
__global__ void reduce_row_grid(QuantizeArgs a, int32_t* ws) {
  Acc acc = acc_init();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x; i < a.cols;
       i += static_cast<int64_t>(gridDim.x) * kBlock)
    acc_add<D>(acc, a.x, i);
  acc = cuda::block_reduce<kBlock>(acc);
  if (threadIdx.x == 0) {
    atomicMax(reinterpret_cast<unsigned*>(ws), acc.bits);
    atomicMin(ws + 1, ordered(acc.lo));
    atomicMax(ws + 2, ordered(acc.hi));
    if (acc.nan) atomicOr(ws + 3, 1);
  }
}

// Single long row, pass 2: every block derives the same scale from the workspace.
template <DType D>
__global__ void quantize_row_grid(QuantizeArgs a, const int32_t* ws) {
  const Acc acc = {static_cast<uint32_t>(ws[0]), unordered(ws[1]), unordered(ws[2]), ws[3] != 0};
  const RowScale s = scale_of(acc, a.symmetric);
  if (blockIdx.x == 0 && threadIdx.x == 0) store_scale(a, 0, s);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x; i < a.cols;
       i += static_cast<int64_t>(gridDim.x) * kBlock)
    quantize_elem<D>(a, i, s);
}

// Static scales: elementwise.
template <DType D>
__global__ void quantize_static(QuantizeArgs a) {
  const int64_t n = a.rows * a.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kBlock) {
    const int64_t r = (i / a.cols) * a.scale_stride;
    const float scale = a.scale[r];
    const RowScale s{scale, __fdiv_rn(1.0f, scale), a.symmetric ? 0 : a.zero_point[r], false};
    quantize_elem<D>(a, i, s);
  }
}

template <DType D>
__global__ void dequantize_kernel(DequantizeArgs a) {
  const int64_t n = a.rows * a.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kBlock) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kBlock) {
    const int64_t r = (i / a.cols) * a.scale_stride;
    const int32_t q = a.symmetric ? static_cast<const int8_t*>(a.codes)[i]
                                  : static_cast<int32_t>(static_cast<const uint8_t*>(a.codes)[i]) - a.zero_point[r];
    store_elem<D>(a.y, i, __fmul_rn(static_cast<float>(q), a.scale[r]));
  }
}

}  // namespace

void quantize_int8_cuda(const QuantizeArgs& a, int32_t* workspace, void* stream) {
  FASTQ_CHECK(a.x && a.codes && a.scale, "null pointer");
  FASTQ_CHECK(a.symmetric || a.zero_point, "asymmetric quantization needs a zero_point buffer");
  FASTQ_CHECK(!(a.dynamic && a.scale_stride == 0), "dynamic quantization needs a scale per row");
  if (a.rows == 0 || a.cols == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  cuda::dispatch_dtype(a.x_dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    if (!a.dynamic) {
      quantize_static<D><<<cuda::grid_for(a.rows * a.cols, kBlock), kBlock, 0, s>>>(a);
    } else if (a.rows == 1 && a.cols > 4 * 1024) {
      FASTQ_CHECK(workspace, "a single-row dynamic quantize needs the workspace");
      const int grid = cuda::grid_for(a.cols, kBlock, 4096);
      reduce_row_grid<D><<<grid, kBlock, 0, s>>>(a, workspace);
      quantize_row_grid<D><<<grid, kBlock, 0, s>>>(a, workspace);
    } else if (a.cols <= 1024) {
      const int64_t blocks = (a.rows + kBlock / 32 - 1) / (kBlock / 32);
      FASTQ_CHECK(blocks <= 0x7fffffff, "too many rows");
      quantize_rows_warp<D><<<static_cast<unsigned>(blocks), kBlock, 0, s>>>(a);
    } else {
      FASTQ_CHECK(a.rows <= 0x7fffffff, "too many rows");
      constexpr int V = Vec16<D>::kElems;
      if (a.cols % V == 0 && cuda::aligned(a.x, 16) && cuda::aligned(a.codes, V)) {
        quantize_rows_block_vec<D, 8><<<static_cast<unsigned>(a.rows), kBlock, 0, s>>>(a);
      } else {
        quantize_rows_block<D><<<static_cast<unsigned>(a.rows), kBlock, 0, s>>>(a);
      }
    }
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

void dequantize_int8_cuda(const DequantizeArgs& a, void* stream) {
  FASTQ_CHECK(a.codes && a.y && a.scale, "null pointer");
  if (a.rows == 0 || a.cols == 0) return;
  cuda::dispatch_dtype(a.y_dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    dequantize_kernel<D><<<cuda::grid_for(a.rows * a.cols, kBlock), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(a);
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fastq
