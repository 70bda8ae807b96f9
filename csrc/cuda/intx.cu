// CUDA intx linears (layout and arithmetic: csrc/api.h, IntxLinearArgs). One CTA of 256 threads
// computes one 16-row weight block for up to kMT activation rows: thread (r, s) = (row in the block,
// K slice), so the 16 threads of a slice read one 64-byte chunk together (coalesced) and the 16
// slices walk different chunks.
//  - weight-only: each thread sums s * (sum x c - z sum x) over its chunks in float32; the slices
//    are added in a fixed order at the end (the float order is free: reference docstring).
//  - dynamic (W4A8): activations quantized by quantize_int8_cuda (bit-exact with the reference),
//    group sums of the int8 codes by a small kernel; the main kernel walks the groups in windows:
//    slices add exact int32 dp4a partial sums of the window's chunks into shared memory (integer
//    adds: any order), then thread (r, m) applies the reference's float sequence group by group,
//    in order, with _rn intrinsics (no FMA): bit-exact.
#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastq {
namespace {

using cuda::load_elem;
using cuda::store_elem;

constexpr int kRows = 16, kSlices = 16, kThreads = kRows * kSlices;
constexpr int kMT = 8;        // activation rows per CTA
constexpr int kMaxWindow = 32;  // groups per window (dynamic)

struct Layout {
  int64_t rec_bytes, code_bytes, chunks, groups, gs;  // chunks per group, group size
  int slot, ck;                                        // slot bits, k per chunk
  int32_t sym_zero;
};

Layout layout_of(const IntxLinearArgs& a) {
  Layout l;
  l.slot = a.bits <= 2 ? 2 : a.bits <= 4 ? 4 : 8;
  l.ck = 4 * (8 / l.slot);
  l.groups = a.groups;
  l.gs = a.k / a.groups;
  l.chunks = l.gs / l.ck;
  l.code_bytes = l.chunks * 64;
  l.rec_bytes = l.code_bytes + 64 + (a.asymmetric ? 16 : 0);
  l.sym_zero = 1 << (a.bits - 1);
  return l;
}

__device__ __forceinline__ int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ const uint8_t* record(const IntxLinearArgs& a, const Layout& l, int64_t nb, int64_t g) {
  return a.packed + (nb * l.groups + g) * l.rec_bytes;
}

__device__ __forceinline__ int32_t zero_of(const IntxLinearArgs& a, const Layout& l, const uint8_t* rec, int r) {
  return a.asymmetric ? static_cast<int32_t>(rec[l.code_bytes + 64 + r]) : l.sym_zero;
}

template <DType XD, DType YD, int S>
__global__ void __launch_bounds__(kThreads) wo_kernel(IntxLinearArgs a, Layout l) {
  constexpr int CK = 4 * (8 / S);
  constexpr uint32_t kMask = (1u << S) - 1;
  __shared__ float red[kSlices][kMT][kRows];
  const int r = threadIdx.x % kRows, s = threadIdx.x / kRows;
  const int64_t nb = blockIdx.x, m0 = static_cast<int64_t>(blockIdx.y) * kMT;
  const int mt = static_cast<int>(lmin(kMT, a.m - m0));
  float acc[kMT];
#pragma unroll
  for (int i = 0; i < kMT; ++i) acc[i] = 0.0f;
  const int64_t tasks = l.groups * l.chunks;
  for (int64_t t = s; t < tasks; t += kSlices) {
    const int64_t g = t / l.chunks, ch = t % l.chunks;
    const uint8_t* rec = record(a, l, nb, g);
    const uint32_t v = *reinterpret_cast<const uint32_t*>(rec + ch * 64 + 4 * r);
    const float scale = *reinterpret_cast<const float*>(rec + l.code_bytes + 4 * r);
    const float zero = static_cast<float>(zero_of(a, l, rec, r));
    const int64_t k0 = g * l.gs + ch * CK;
#pragma unroll
    for (int i = 0; i < kMT; ++i) {
      if (i >= mt) break;
      const int64_t base = (m0 + i) * a.k + k0;
      float dot = 0.0f, xs = 0.0f;
#pragma unroll
      for (int kk = 0; kk < CK; ++kk) {
        const float xv = load_elem<XD>(a.x, base + kk);
        const uint32_t c = (v >> (8 * (kk & 3) + S * (kk >> 2))) & kMask;
        dot += xv * static_cast<float>(c);
        xs += xv;
      }
      acc[i] += scale * (dot - zero * xs);
    }
  }
#pragma unroll
  for (int i = 0; i < kMT; ++i) red[s][i][r] = acc[i];
  __syncthreads();
  // thread (r, i) adds the slices of row m0 + i in a fixed order
  const int i = s;
  const int64_t n = nb * kRows + r;
  if (i < mt && n < a.n) {
    float y = 0.0f;
    for (int j = 0; j < kSlices; ++j) y += red[j][i][r];
    if (a.bias) y += a.bias[n];
    store_elem<YD>(a.y, (m0 + i) * a.n + n, y);
  }
}

// qsum[m, g] = sum of the int8 codes of row m over group g (exact).
__global__ void group_sums(const int8_t* xq, int64_t m, int64_t k, int64_t groups, int32_t* qsum) {
  const int64_t gs = k / groups;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m * groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int8_t* p = xq + (i / groups) * k + (i % groups) * gs;
    int32_t sum = 0;
    for (int64_t j = 0; j < gs; ++j) sum += p[j];
    qsum[i] = sum;
  }
}

template <DType YD, int S>
__global__ void __launch_bounds__(kThreads) dyn_kernel(IntxLinearArgs a, Layout l, const int8_t* xq,
                                                        const int32_t* qsum, const float* a_scale, int window) {
  constexpr int P = 8 / S;
  constexpr uint32_t kMask = (S == 2 ? 0x03030303u : 0x0F0F0F0Fu);
  __shared__ int32_t iacc[kMT][kMaxWindow][kRows];
  const int r = threadIdx.x % kRows, s = threadIdx.x / kRows;
  const int64_t nb = blockIdx.x, m0 = static_cast<int64_t>(blockIdx.y) * kMT;
  const int mt = static_cast<int>(lmin(kMT, a.m - m0));
  float racc = 0.0f;  // thread (r, s < mt): output (m0 + s, 16 nb + r)
  for (int64_t g0 = 0; g0 < l.groups; g0 += window) {
    const int w = static_cast<int>(lmin(window, l.groups - g0));
    for (int j = threadIdx.x; j < kMT * kMaxWindow * kRows; j += kThreads) (&iacc[0][0][0])[j] = 0;
    __syncthreads();
    const int64_t tasks = w * l.chunks;
    for (int64_t t = s; t < tasks; t += kSlices) {
      const int gi = static_cast<int>(t / l.chunks);
      const int64_t ch = t % l.chunks;
      const uint32_t v = *reinterpret_cast<const uint32_t*>(record(a, l, nb, g0 + gi) + ch * 64 + 4 * r);
      const int64_t k0 = (g0 + gi) * l.gs + ch * 4 * P;
#pragma unroll
      for (int i = 0; i < kMT; ++i) {
        if (i >= mt) break;
        const int8_t* xp = xq + (m0 + i) * a.k + k0;
        int dot = 0;
#pragma unroll
        for (int p = 0; p < P; ++p)
          dot = __dp4a(static_cast<int>((v >> (S * p)) & kMask), *reinterpret_cast<const int*>(xp + 4 * p), dot);
        atomicAdd(&iacc[i][gi][r], dot);
      }
    }
    __syncthreads();
    if (s < mt) {
      for (int gi = 0; gi < w; ++gi) {
        const uint8_t* rec = record(a, l, nb, g0 + gi);
        const float scale = *reinterpret_cast<const float*>(rec + l.code_bytes + 4 * r);
        const int32_t acc = iacc[s][gi][r] - zero_of(a, l, rec, r) * qsum[(m0 + s) * l.groups + g0 + gi];
        racc = __fadd_rn(racc, __fmul_rn(static_cast<float>(acc), scale));
      }
    }
    __syncthreads();
  }
  const int64_t n = nb * kRows + r;
  if (s < mt && n < a.n) {
    float y = __fmul_rn(racc, a_scale[m0 + s]);
    if (a.bias) y = __fadd_rn(y, a.bias[n]);
    store_elem<YD>(a.y, (m0 + s) * a.n + n, y);
  }
}

int64_t align256(int64_t b) { return (b + 255) / 256 * 256; }

void check_args(const IntxLinearArgs& a) {
  FASTQ_CHECK(a.x && a.packed && a.y, "null pointer");
  FASTQ_CHECK(a.bits >= 2 && a.bits <= 8, "bits must be in 2..8, got ", a.bits);
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0 && a.groups > 0 && a.k % a.groups == 0, "bad sizes");
  FASTQ_CHECK(reinterpret_cast<uintptr_t>(a.packed) % 16 == 0, "packed weight must be 16-byte aligned");
  FASTQ_CHECK(a.m <= int64_t{65535} * kMT, "too many rows for one launch: m=", a.m);
}

dim3 grid_of(const IntxLinearArgs& a) {
  return dim3(static_cast<unsigned>((a.n + kRows - 1) / kRows), static_cast<unsigned>((a.m + kMT - 1) / kMT));
}

template <int S>
void launch_wo(const IntxLinearArgs& a, const Layout& l, cudaStream_t st) {
  cuda::dispatch_dtype(a.x_dtype, [&](auto xt) {
    cuda::dispatch_dtype(a.y_dtype, [&](auto yt) {
      wo_kernel<decltype(xt)::value, decltype(yt)::value, S><<<grid_of(a), kThreads, 0, st>>>(a, l);
    });
  });
}

}  // namespace

int64_t intx_linear_workspace_bytes_cuda(int64_t m, int64_t k, int64_t groups) {
  return align256(m * k) + align256(m * groups * 4) + align256(m * 4) + 256;
}

void intx_weight_only_linear_cuda(const IntxLinearArgs& a, void* stream) {
  check_args(a);
  if (a.m == 0) return;
  const Layout l = layout_of(a);
  auto st = static_cast<cudaStream_t>(stream);
  switch (l.slot) {
    case 2: launch_wo<2>(a, l, st); break;
    case 4: launch_wo<4>(a, l, st); break;
    default: launch_wo<8>(a, l, st); break;
  }
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

void intx_linear_dynamic_cuda(const IntxLinearArgs& a, void* stream) {
  check_args(a);
  FASTQ_CHECK(a.bits <= 4, "dynamic int8 activations need codes of at most 4 bits, got ", a.bits);
  if (a.m == 0) return;
  FASTQ_CHECK(a.workspace && a.workspace_bytes >= intx_linear_workspace_bytes_cuda(a.m, a.k, a.groups),
              "workspace too small");
  const Layout l = layout_of(a);
  auto st = static_cast<cudaStream_t>(stream);
  char* ws = static_cast<char*>(a.workspace);
  int8_t* xq = reinterpret_cast<int8_t*>(ws);
  int32_t* qsum = reinterpret_cast<int32_t*>(ws + align256(a.m * a.k));
  float* a_scale = reinterpret_cast<float*>(ws + align256(a.m * a.k) + align256(a.m * a.groups * 4));
  int32_t* reduce_ws = reinterpret_cast<int32_t*>(reinterpret_cast<char*>(a_scale) + align256(a.m * 4));
  FASTQ_CUDA_CHECK(cudaMemsetAsync(reduce_ws, 0, 4 * sizeof(int32_t), st));
  // Per-token symmetric quantization: quantize_int8's CUDA kernels (bit-exact with the reference).
  QuantizeArgs q;
  q.x = a.x;
  q.x_dtype = a.x_dtype;
  q.codes = xq;
  q.scale = a_scale;
  q.rows = a.m;
  q.cols = a.k;
  q.symmetric = true;
  q.dynamic = true;
  quantize_int8_cuda(q, reduce_ws, stream);
  group_sums<<<cuda::grid_for(a.m * a.groups, 256), 256, 0, st>>>(xq, a.m, a.k, a.groups, qsum);
  const int window = static_cast<int>(std::min<int64_t>(kMaxWindow, std::max<int64_t>(1, 2 * kSlices / l.chunks)));
  cuda::dispatch_dtype(a.y_dtype, [&](auto yt) {
    constexpr DType YD = decltype(yt)::value;
    if (l.slot == 2) dyn_kernel<YD, 2><<<grid_of(a), kThreads, 0, st>>>(a, l, xq, qsum, a_scale, window);
    else dyn_kernel<YD, 4><<<grid_of(a), kThreads, 0, st>>>(a, l, xq, qsum, a_scale, window);
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fastq
