// CUDA kernels of the sparse masked matmul family: padded CSR (16-bit columns) and 2:4 (2-bit
// codes). Formats: csrc/api.h (SparseLinearArgs), fastq/ops/reference.py.
//
// CUDA cores (csr_kernel, s24_kernel; every architecture, float32 x): one warp computes one weight
// row n for a tile of kRowsPerWarp activation rows: lanes stride over the row's kept entries (so
// the weights are read coalesced, once per tile), gather x, and the partial sums are reduced with
// shuffles. Explicit __fmaf_rn: the module builds with --fmad=false.
//
// Sparse tensor cores (s24_mma_kernel; sm_80+, bfloat16 x): y^T = W_sparse . x^T with the 2:4
// weight as the sparse A operand of mma.sp m16n8k32 and x (row-major [M, K] = column-major B) as B.
// Precision policy (the op's reference is float32 throughout; see fastq/ops/native.py):
//  - bfloat16 x: the kept float32 weights are rounded to bfloat16 (round to nearest even) while
//    they are staged, products are exact, accumulation is float32 (order unspecified, as in any
//    tensor-core GEMM), bias is added in float32 and y is float32 (Python rounds it once to bf16).
//    Relative to the reference each product carries at most one bf16 rounding (2^-8) of its weight.
//  - float32 x stays on s24_kernel, TF32 allowed or not, bit for bit as before: the TF32 mma.sp
//    (m16n8k16 / m16n8k8) takes A at 1:2 granularity (PTX ISA 9.7.14.6.1: one kept value per pair of
//    columns), which a 2:4 weight keeping both values of a pair (columns 0,1 or 2,3) does not meet;
//    splitting every weight into two 1:2 halves costs two TF32 mma.sp per k-step, i.e. the work of a
//    dense TF32 GEMM, so there is nothing to gain over torch's dense matmul.
//
// Speed (nothing here has run on a GPU yet): the weights are converted on load, so no repacked
// copy of the stored format is needed, but the float32 kept values are as many bytes as the dense
// bf16 weight: at small M, where the weight bytes bound the time, this path cannot beat dense bf16;
// a bf16 copy of the kept values made once at pack time (1.78x fewer bytes than dense) would be
// essential there. On sm_90, mma.sp.sync issues below the rate of Hopper's wgmma.sp (sm_90a), which
// cuSPARSELt uses, so matching cuSPARSELt at large M on an H100 may need that instead.
//
// Fragment and metadata mapping of mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 (also in
// mma.cuh), from the PTX ISA (9.x), section 9.7.14.6 "Matrix multiply-accumulate operation using
// mma.sp instruction with sparse matrix A":
//  - 9.7.14.6.1 "Sparse matrix storage": each 4-column chunk of an A row keeps 2 values; their
//    positions are two 2-bit indices in one nibble of the metadata, the first kept (lower) index in
//    the low 2 bits; index pairs 0b0000, 0b0101, 0b1010, 0b1111 (equal indices) are undefined, and
//    for mma.sp::ordered_metadata the two indices must be strictly increasing. For m16n8k32 the
//    sparsity selector must be 0 (threads T0, T1 of each group of four supply metadata) or 1 (T2, T3).
//  - 9.7.14.6.2.2 "Matrix Fragments for sparse mma.m16n8k32 with .f16 and .bf16 types": A is four
//    .b32 registers, two kept values each; row = groupID for a0..a1 and a4..a5, groupID + 8
//    otherwise; the 4 source columns of a_i are threadID_in_group * 4 (+ 16 for i >= 4), i.e. a
//    register holds the 2 kept values of one chunk. B (Figure 121) and the metadata (Figure 122) are
//    given only as pictures; their mapping, below, is the one public kernels use and test against
//    dense GEMMs: XLA's Triton sparse-dot lowering (SharedToSparseDotOperand::convertLayout packs
//    row groupID's 16-bit metadata of k-half (lane % 2) in the low half and row groupID + 8's in the
//    high half of the register), fattorib/cuda-24-sparse and IST-DASLab/Sparse-Marlin (B as two
//    stacked m16n8k16 B fragments: b_q holds k = 8q + 2t, 8q + 2t + 1 of column groupID).
// With g = lane / 4, t = lane % 4 and a k32 step covering 16 kept values (kept index j = 0..15 of
// each row, chunk j / 2):
//    a0 = {row g: kept 2t, 2t+1}   a1 = {row g+8: kept 2t, 2t+1}
//    a2 = {row g: kept 8+2t, 9+2t} a3 = {row g+8: kept 8+2t, 9+2t}
//    b_q = {x[m g][k 8q+2t], x[m g][k 8q+2t+1]}, q = 0..3
//    c0, c1 = y^T[n g][m 2t, 2t+1]; c2, c3 = y^T[n g+8][m 2t, 2t+1]
//    meta (selector 0) of lane 4g+h, h = 0, 1: bits 0..15 = row g, chunks 4h..4h+3; bits 16..31 =
//    row g+8, same chunks; lanes 4g+2, 4g+3: ignored.
// Our meta format stores stored value j's code at bits 2 (j % 4) of byte j / 4, so the 4 bytes of a
// row covering one k32 step read as a little-endian uint32 W put chunk c's (code_2c, code_2c+1) at
// bits 4c..4c+3, low index first: W is exactly a row's 32-bit metadata word in the hardware's
// nibble order. The register of lane 4g+h is then a byte permutation of two rows' words:
// __byte_perm(W[g], W[g+8], h ? 0x7632 : 0x5410).
// Indices are made valid while staging (canonical_pair): sparse_24_pack already writes strictly
// increasing codes, and zero-filled tails (k past K, rows past N) read as codes (0, 0), which
// become (0, 1) with zero values; a hand-made meta with a decreasing pair is swapped (same sum), and
// one with a repeated code c keeps v0 + v1 (rounded once to bf16) at c and 0 at another column.
#include <climits>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"

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

// ---- 2:4 on the sparse tensor cores (mma.sp, sm_80+, bf16 x) ---------------------------------

using cuda::aligned;
using cuda::cp_async16;
using cuda::cp_async8;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::ldmatrix_x4;
using cuda::mma_sp_bf16;
using cuda::set_smem;
using cuda::smem_addr;

struct TcParams {
  const __nv_bfloat16* x;  // [m, k] row-major
  const float* values;     // [n, k / 2] kept weights
  const uint8_t* meta;     // [n, ceil(k / 8)] 2-bit codes
  const float* bias;       // [n] or nullptr
  float* y;                // [m, n]
  int64_t m, n, k;
};

// A block computes a kBN (weight rows, outputs) x kBM (x rows) tile of y^T with kWarpsN x kWarpsM
// warps, each owning kTilesN 16-row weight tiles x kTilesM 8-row x tiles. Stages of kBK = 64 inputs
// (two k32 mma steps, 32 kept values per weight row) cycle through kStages shared-memory buffers:
// x arrives by cp.async (kStages - 1 stages ahead), the weights by a register prefetch one stage
// ahead that converts them (canonical_pair) on their way into shared memory. Staged rows are padded
// (weights 80 B, x 144 B) so that the ldmatrix row addresses of a matrix fall in distinct banks.
template <int kWarpsN_, int kWarpsM_, int kTilesN_, int kTilesM_, int kMinBlocks_>
struct TcTile {
  static constexpr int kWarpsN = kWarpsN_, kWarpsM = kWarpsM_, kTilesN = kTilesN_, kTilesM = kTilesM_;
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr int kThreads = 32 * kWarpsN * kWarpsM;
  static constexpr int kBN = 16 * kTilesN * kWarpsN;
  static constexpr int kBM = 8 * kTilesM * kWarpsM;
  static constexpr int kBK = 64;
  static constexpr int kStages = 3;
  static constexpr int kWRow = 40;  // bf16 per staged weight row: 32 kept values + 8 pad
  static constexpr int kXRow = 72;  // bf16 per staged x row: 64 inputs + 8 pad
  static constexpr int kWBytes = kBN * kWRow * 2;
  static constexpr int kMetaBytes = kBN * 8;  // a metadata word per row and k32 step
  static constexpr int kXBytes = kBM * kXRow * 2;
  static constexpr int kStageBytes = kWBytes + kMetaBytes + kXBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes;
  static constexpr int kWLoads = kBN * 8 / kThreads;  // 4-value weight pieces per thread and stage
  static_assert(kBN * 8 % kThreads == 0 && kBM * 8 % kThreads == 0 && kStageBytes % 16 == 0, "tile shape");
};
using TcSmall = TcTile<2, 1, 1, 4, 8>;  // 32 x 32, 2 warps: M <= 64, where the weights' bytes bound time
using TcMid = TcTile<4, 2, 2, 4, 1>;    // 128 x 64, 8 warps
using TcBig = TcTile<4, 2, 2, 8, 1>;    // 128 x 128, 8 warps

// The two kept values of one 4-input chunk and their nibble of codes (first code in bits 0-1) ->
// the bf16 pair (first value in the low half) and the nibble mma.sp accepts: strictly increasing
// indices. Valid packed weights pass unchanged; see the file comment for the other cases.
__device__ __forceinline__ uint32_t canonical_pair(float v0, float v1, uint32_t nib, uint32_t& out) {
  const uint32_t c0 = nib & 3u, c1 = nib >> 2;
  float lo = v0, hi = v1;
  out = nib;
  if (c0 > c1) {
    lo = v1;
    hi = v0;
    out = c1 | (c0 << 2);
  } else if (c0 == c1) {
    const float sum = __fadd_rn(v0, v1);
    lo = c0 == 3u ? 0.0f : sum;
    hi = c0 == 3u ? sum : 0.0f;
    out = c0 == 3u ? (2u | (3u << 2)) : (c0 | ((c0 + 1u) << 2));
  }
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

template <class T, bool kVec16>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocks) s24_mma_kernel(const TcParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % T::kWarpsN, wm = warp / T::kWarpsN;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * T::kBN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * T::kBM;
  const int64_t kv = p.k / 2, meta_ld = (kv + 3) / 4;
  const int k_tiles = static_cast<int>((p.k + T::kBK - 1) / T::kBK);
  const uint32_t smem0 = smem_addr(smem);
  const auto w_off = [](int s) { return s * T::kStageBytes; };
  const auto meta_off = [](int s) { return s * T::kStageBytes + T::kWBytes; };
  const auto x_off = [](int s) { return s * T::kStageBytes + T::kWBytes + T::kMetaBytes; };

  // Weights: thread tid holds kept values 4 wf..4 wf + 3 (metadata byte wf) of stage rows
  // wr0 + i * kRowStep, i < kWLoads; 8 consecutive threads read a row's 128 bytes.
  constexpr int kRowStep = T::kThreads / 8;
  const int wf = tid & 7, wr0 = tid >> 3;
  float4 wv[T::kWLoads];
  uint32_t wc[T::kWLoads];
  const auto load_w = [&](int kt) {  // global -> registers, zero past n and k
    const int64_t j = static_cast<int64_t>(kt) * 32 + 4 * wf;
#pragma unroll
    for (int i = 0; i < T::kWLoads; ++i) {
      const int64_t row = n0 + wr0 + i * kRowStep;
      const bool ok = row < p.n && j < kv;
      const float* src = p.values + row * kv + j;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if constexpr (kVec16) {
        if (ok) v = __ldg(reinterpret_cast<const float4*>(src));
      } else {  // 8-byte aligned rows (k % 8 == 4): kv % 4 == 2, so the last piece may be half
        if (ok) {
          const float2 lo = __ldg(reinterpret_cast<const float2*>(src));
          v.x = lo.x;
          v.y = lo.y;
        }
        if (ok && j + 2 < kv) {
          const float2 hi = __ldg(reinterpret_cast<const float2*>(src + 2));
          v.z = hi.x;
          v.w = hi.y;
        }
      }
      wv[i] = v;
      wc[i] = ok ? __ldg(p.meta + row * meta_ld + j / 4) : 0u;
    }
  };
  const auto store_w = [&](int s) {  // registers -> canonical bf16 pairs and codes in shared memory
#pragma unroll
    for (int i = 0; i < T::kWLoads; ++i) {
      const int row = wr0 + i * kRowStep;
      uint32_t nib0, nib1;
      const uint32_t lo = canonical_pair(wv[i].x, wv[i].y, wc[i] & 15u, nib0);
      const uint32_t hi = canonical_pair(wv[i].z, wv[i].w, wc[i] >> 4, nib1);
      *reinterpret_cast<uint2*>(smem + w_off(s) + (row * T::kWRow + 4 * wf) * 2) = make_uint2(lo, hi);
      smem[meta_off(s) + row * 8 + wf] = static_cast<unsigned char>(nib0 | (nib1 << 4));
    }
  };
  const auto load_x = [&](int kt, int s) {  // cp.async, zero-filled past m and k
    constexpr int kElems = kVec16 ? 8 : 4;
    constexpr int kPerRow = T::kBK / kElems;
    const int64_t k0 = static_cast<int64_t>(kt) * T::kBK;
#pragma unroll
    for (int i = 0; i < T::kBM * kPerRow / T::kThreads; ++i) {
      const int c = tid + i * T::kThreads, r = c / kPerRow, q = c % kPerRow;
      const int64_t row = m0 + r, col = k0 + q * kElems;
      const bool ok = row < p.m && col < p.k;
      const __nv_bfloat16* src = ok ? p.x + row * p.k + col : p.x;
      const uint32_t dst = smem0 + x_off(s) + (r * T::kXRow + q * kElems) * 2;
      if constexpr (kVec16) {
        cp_async16(dst, src, ok);
      } else {
        cp_async8(dst, src, ok);
      }
    }
  };

  float acc[T::kTilesN][T::kTilesM][4] = {};
  const int g = lane >> 2, h = lane & 1;
  const auto compute = [&](int s) {
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t a[T::kTilesN][4], e[T::kTilesN];
#pragma unroll
      for (int i = 0; i < T::kTilesN; ++i) {
        const int nb = (wn * T::kTilesN + i) * 16;
        const int arow = nb + (lane & 7) + 8 * ((lane >> 3) & 1), acol = 16 * kk + 8 * (lane >> 4);
        ldmatrix_x4(a[i], smem0 + w_off(s) + (arow * T::kWRow + acol) * 2);
        const unsigned char* words = smem + meta_off(s) + 4 * kk;
        const uint32_t lo = *reinterpret_cast<const uint32_t*>(words + (nb + g) * 8);
        const uint32_t hi = *reinterpret_cast<const uint32_t*>(words + (nb + g + 8) * 8);
        e[i] = __byte_perm(lo, hi, h ? 0x7632 : 0x5410);
      }
#pragma unroll
      for (int j = 0; j < T::kTilesM; ++j) {
        const int mb = (wm * T::kTilesM + j) * 8;
        uint32_t b[4];
        ldmatrix_x4(b, smem0 + x_off(s) + ((mb + (lane & 7)) * T::kXRow + 32 * kk + 8 * (lane >> 3)) * 2);
#pragma unroll
        for (int i = 0; i < T::kTilesN; ++i) mma_sp_bf16(acc[i][j], a[i], b, e[i]);
      }
    }
  };

  // Pipeline. Buffer reuse: x of stage kt + kStages - 1 and the weights of stage kt + 1 go into
  // buffers last read in iteration kt - 1 (kStages >= 3 keeps them apart from stage kt's), and
  // every thread has finished iteration kt - 1 once it passes iteration kt's barrier.
#pragma unroll
  for (int s = 0; s < T::kStages - 1; ++s) {
    if (s < k_tiles) load_x(s, s);
    cp_async_commit();
  }
  load_w(0);
  store_w(0);
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<T::kStages - 2>();  // x of stage kt has landed (this thread's copies) ...
    __syncthreads();                  // ... everyone's, and the weights stored in iteration kt - 1
    const int pre = kt + T::kStages - 1;
    if (pre < k_tiles) load_x(pre, pre % T::kStages);
    cp_async_commit();
    if (kt + 1 < k_tiles) load_w(kt + 1);
    compute(kt % T::kStages);
    if (kt + 1 < k_tiles) store_w((kt + 1) % T::kStages);
  }
  cp_async_wait<0>();

  const auto store = [&](int64_t n, int64_t m, float v) {
    if (n < p.n && m < p.m) p.y[m * p.n + n] = p.bias ? __fadd_rn(v, p.bias[n]) : v;
  };
#pragma unroll
  for (int i = 0; i < T::kTilesN; ++i) {
#pragma unroll
    for (int j = 0; j < T::kTilesM; ++j) {
      const int64_t n = n0 + (wn * T::kTilesN + i) * 16 + g;
      const int64_t m = m0 + (wm * T::kTilesM + j) * 8 + 2 * (lane & 3);
      store(n, m, acc[i][j][0]);
      store(n, m + 1, acc[i][j][1]);
      store(n + 8, m, acc[i][j][2]);
      store(n + 8, m + 1, acc[i][j][3]);
    }
  }
}

template <class T, bool kVec16>
void launch_tc(const TcParams& p, cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};
  const auto kernel = s24_mma_kernel<T, kVec16>;
  set_smem(kernel, T::kSmemBytes, configured);
  const int64_t gx = (p.n + T::kBN - 1) / T::kBN, gy = (p.m + T::kBM - 1) / T::kBM;
  FASTQ_CHECK(gx <= INT_MAX, "sparse_24 tensor cores: too many output features ", p.n);
  FASTQ_CHECK(gy <= static_cast<int64_t>(kMaxGridY), "sparse_24 tensor cores: too many rows of x ", p.m,
              " (at most ", kMaxGridY * T::kBM, ")");
  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), T::kThreads, T::kSmemBytes, stream>>>(p);
  FASTQ_CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_tc(const TcParams& p, bool vec16, cudaStream_t stream) {
  if (vec16) {
    launch_tc<T, true>(p, stream);
  } else {
    launch_tc<T, false>(p, stream);
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

void sparse_24_linear_tc_cuda(const void* x, int64_t m, int64_t n, int64_t k, const float* values,
                              const uint8_t* meta, const float* bias, float* y, void* stream) {
  FASTQ_CHECK(x && values && meta && y, "null pointer");
  FASTQ_CHECK(m > 0 && n > 0 && k > 0, "empty problem");
  FASTQ_CHECK(k % 4 == 0, "2:4 needs k divisible by 4, got ", k);
  FASTQ_CHECK(aligned(x, 8) && aligned(values, 8), "sparse_24 tensor cores: x and values must be 8-byte aligned");
  FASTQ_CHECK(cuda::device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 8,
              "sparse_24 tensor cores (mma.sp) need compute capability 8.0 or newer");
  const TcParams p{static_cast<const __nv_bfloat16*>(x), values, meta, bias, y, m, n, k};
  const bool vec16 = k % 8 == 0 && aligned(x, 16) && aligned(values, 16);
  const auto s = static_cast<cudaStream_t>(stream);
  if (m <= 64) {
    launch_tc<TcSmall>(p, vec16, s);
  } else if (m <= 512) {
    launch_tc<TcMid>(p, vec16, s);
  } else {
    launch_tc<TcBig>(p, vec16, s);
  }
}

}  // namespace fastq
