// CUDA codebook (weight sharing) linear: a GEMV-shaped kernel for both packed layouts (csrc/api.h,
// CodebookLinearArgs). One warp per output row, lanes striding over k (consecutive lanes read
// consecutive codes), up to kTileM x rows per warp (blockIdx.y walks further tiles of x rows);
// each code is decoded with integer shifts and its entry read from the codebook (L1-cached);
// float32 products are accumulated per lane (fused multiply-add) and reduced across the warp.
// Invariants: padding codes (past k, rows past n) are never decoded into a result; nothing is
// allocated; the caller's stream is used and the launch is checked.
#include "cuda/common.cuh"

namespace fastq {
namespace {

constexpr int kWarps = 8;  // output rows per block
constexpr int kTileM = 8;  // x rows per warp

struct CodebookGeom {
  int bits, g;              // code width; codes per nibble (lookup-table layout)
  int64_t row_bytes;        // row layout: bytes per row
  int64_t units;            // lookup-table layout: 16-byte units per 16-row block
  int64_t gs, groups;       // inputs per codebook group, groups
};

__device__ __forceinline__ int code_at(const CodebookLinearArgs& a, const CodebookGeom& q, int64_t n, int64_t k) {
  const int mask = (1 << q.bits) - 1;
  if (!a.lut) {
    const int64_t chunk = 128 / q.bits;  // codes per 16-byte chunk: byte j holds inputs j + 16 s
    const int64_t c = k / chunk, r = k % chunk;
    const int byte = a.codes[n * q.row_bytes + c * 16 + (r % 16)];
    return (byte >> (q.bits * static_cast<int>(r / 16))) & mask;
  }
  const int64_t u = k / (2 * q.g);
  const int p = static_cast<int>(k % (2 * q.g));  // nibble p / g, code p % g
  const int byte = a.codes[((n / 16) * q.units + u) * 16 + (n % 16)];
  const int nib = p < q.g ? (byte & 15) : (byte >> 4);
  return (nib >> (q.bits * (p % q.g))) & mask;
}

__global__ void codebook_gemv_kernel(const CodebookLinearArgs a, const CodebookGeom q) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  if (n >= a.n) return;
  const int mt = static_cast<int>(min(static_cast<int64_t>(kTileM), a.m - m0));
  const int entries = 1 << q.bits;
  const float* cb_row = a.codebook + (a.cb_rows == 1 ? 0 : n) * q.groups * entries;
  float acc[kTileM];
#pragma unroll
  for (int i = 0; i < kTileM; ++i) acc[i] = 0.0f;
  for (int64_t k = lane; k < a.k; k += 32) {
    const float w = cb_row[(k / q.gs) * entries + code_at(a, q, n, k)];
#pragma unroll
    for (int i = 0; i < kTileM; ++i)
      if (i < mt) acc[i] = __fmaf_rn(a.x[(m0 + i) * a.k + k], w, acc[i]);
  }
#pragma unroll
  for (int i = 0; i < kTileM; ++i) {
    float v = acc[i];
    for (int off = 16; off > 0; off /= 2) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (lane == 0 && i < mt) {
      if (a.scale) v = __fmul_rn(v, a.scale[n]);
      if (a.bias) v = __fadd_rn(v, a.bias[n]);
      a.y[(m0 + i) * a.n + n] = v;
    }
  }
}

}  // namespace

void codebook_linear_cuda(const CodebookLinearArgs& a, void* stream) {
  FASTQ_CHECK(a.x && a.y && a.codes && a.codebook, "null pointer");
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(a.bits == 1 || a.bits == 2 || a.bits == 4 || (a.bits == 8 && !a.lut), "unsupported bits ", a.bits);
  FASTQ_CHECK(a.cb_rows == 1 || (a.cb_rows == a.n && !a.lut), "codebook rows ", a.cb_rows, " (n=", a.n, ")");
  FASTQ_CHECK(a.cb_groups >= 1 && a.k % a.cb_groups == 0, "codebook groups ", a.cb_groups, " must divide k=", a.k);
  if (a.m == 0) return;
  CodebookGeom q;
  q.bits = a.bits;
  q.g = a.lut ? 4 / a.bits : 1;
  const int64_t chunk = 128 / a.bits;
  q.row_bytes = (a.k + chunk - 1) / chunk * 16;
  q.units = a.lut ? (a.k + 2 * q.g - 1) / (2 * q.g) : 0;
  q.groups = a.cb_groups;
  q.gs = a.k / a.cb_groups;
  const int64_t tiles_m = (a.m + kTileM - 1) / kTileM;
  FASTQ_CHECK(tiles_m <= 65535, "codebook_linear_cuda: m=", a.m, " exceeds ", 65535 * kTileM, " rows per call");
  const dim3 grid(static_cast<unsigned>((a.n + kWarps - 1) / kWarps), static_cast<unsigned>(tiles_m));
  codebook_gemv_kernel<<<grid, kWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(a, q);
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fastq
