// CUDA kernels of the sparse masked matmul family: padded CSR (16-bit columns) and 2:4 (2-bit
// codes), on CUDA cores. Formats: csrc/api.h (SparseLinearArgs), fastq/ops/reference.py.
// One warp computes one weight row n for a tile of kRowsPerWarp activation rows: lanes stride over
// the row's kept entries (so the weights are read coalesced, once per tile), gather x, and the
// partial sums are reduced with shuffles. Explicit __fmaf_rn: the module builds with --fmad=false.
// Not yet here: a 2:4 path on the sparse tensor cores (mma.sp); these kernels are the correct
// CUDA-core fallback for every architecture.
#include "cuda/common.cuh"

namespace fastq {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kRowsPerWarp = 4;
constexpr unsigned kMaxGridY = 65535;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ void finish(const SparseLinearArgs& a, int64_t m0, int64_t n, const float* acc, int lane) {
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && m0 + i < a.m) a.y[(m0 + i) * a.n + n] = a.bias ? s + a.bias[n] : s;
  }
}

__global__ void csr_kernel(const SparseLinearArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= a.n) return;
  const float* vals = static_cast<const float*>(a.values);
  const int64_t s = a.row_ptr[n], e = a.row_ptr[n + 1];
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp; m0 < a.m;
       m0 += static_cast<int64_t>(gridDim.y) * kRowsPerWarp) {
    float acc[kRowsPerWarp] = {};
    for (int64_t j = s + lane; j < e; j += 32) {
      const float w = vals[j];
      const int64_t c = a.cols[j];
      for (int i = 0; i < kRowsPerWarp; ++i)
        if (m0 + i < a.m) acc[i] = __fmaf_rn(w, a.x[(m0 + i) * a.k + c], acc[i]);
    }
    finish(a, m0, n, acc, lane);
  }
}

__global__ void s24_kernel(const SparseLinearArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= a.n) return;
  const int64_t kv = a.k / 2, groups = a.k / 4;
  const float* v = static_cast<const float*>(a.values) + n * kv;
  const uint8_t* meta = a.meta + n * ((kv + 3) / 4);
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp; m0 < a.m;
       m0 += static_cast<int64_t>(gridDim.y) * kRowsPerWarp) {
    float acc[kRowsPerWarp] = {};
    for (int64_t g = lane; g < groups; g += 32) {
      const int64_t j = 2 * g;
      const unsigned codes = meta[j >> 2] >> (2 * (j & 3));
      const int64_t c0 = 4 * g + (codes & 3), c1 = 4 * g + ((codes >> 2) & 3);
      const float w0 = v[j], w1 = v[j + 1];
      for (int i = 0; i < kRowsPerWarp; ++i) {
        if (m0 + i < a.m) {
          const float* x = a.x + (m0 + i) * a.k;
          acc[i] = __fmaf_rn(w1, x[c1], __fmaf_rn(w0, x[c0], acc[i]));
        }
      }
    }
    finish(a, m0, n, acc, lane);
  }
}

dim3 grid_of(const SparseLinearArgs& a) {
  const int64_t gx = (a.n + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t gy = (a.m + kRowsPerWarp - 1) / kRowsPerWarp;
  FASTQ_CHECK(gx <= 0x7fffffff, "sparse CUDA: too many output features ", a.n);
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy < kMaxGridY ? gy : kMaxGridY));
}

void check(const SparseLinearArgs& a) {
  FASTQ_CHECK(a.x && a.y && a.values, "null pointer");
  FASTQ_CHECK(a.m > 0 && a.n > 0 && a.k > 0, "empty problem");
  FASTQ_CHECK(!a.x_transposed, "the CUDA kernels take row-major x");
}

}  // namespace

void sparse_csr_linear_cuda(const SparseLinearArgs& a, void* stream) {
  check(a);
  FASTQ_CHECK(a.cols && a.row_ptr, "csr needs cols and row_ptr");
  csr_kernel<<<grid_of(a), kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(a);
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

void sparse_24_linear_cuda(const SparseLinearArgs& a, void* stream) {
  check(a);
  FASTQ_CHECK(a.meta && a.k % 4 == 0, "2:4 needs meta and k divisible by 4");
  s24_kernel<<<grid_of(a), kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(a);
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fastq
