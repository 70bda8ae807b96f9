// CUDA int8 GEMM family: int8_gemm, int8_linear_dynamic (W8A8), int8_weight_only_linear.
// Invariants:
//  - integer products are exact: int8 x int8 (or uint8 x int8) tensor-core mma.sync m16n8k32 with
//    int32 accumulation; tails in M, N and K are zero-filled on the way into shared memory, so
//    padding contributes nothing;
//  - int8_linear_dynamic quantizes x with the same device math as quantize.cu (quant_math.cuh) and
//    follows reference.int8_linear_dynamic's float sequence with _rn intrinsics (no FMA):
//    y = float(acc - zp * colsum) * (a_scale * w_scale) [+ bias], rounded once to the output dtype;
//  - packed weights use reference.int8_pack_weight's layout ([N_pad/16][K_pad/4][16][4] int8, then
//    N_pad int32 column sums); a 16-column block's k-range is contiguous, so tiles are copied with
//    16-byte cp.async and read from a swizzled shared layout (conflict-free 32-bit fragment loads);
//  - nothing is allocated: activations are quantized into the caller's workspace; every launch
//    runs on the caller's stream and is checked.
#include <atomic>
#include <climits>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/mma.cuh"
#include "cuda/quant_math.cuh"

namespace fastq {
namespace {

using cuda::aligned;
using cuda::cp_async16;
using cuda::cp_async4;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::ld_shared_u32;
using cuda::ldmatrix_x4;
using cuda::load_elem;
using cuda::mma_s8;
using cuda::set_smem;
using cuda::smem_addr;
using cuda::st_shared_u32;
using cuda::store_elem;

template <DType D>
using DTag = std::integral_constant<DType, D>;
template <bool B>
using BTag = std::integral_constant<bool, B>;
template <int I>
using ITag = std::integral_constant<int, I>;

constexpr int kThreads = 256;  // every kernel here: 8 warps
constexpr int kWarps = kThreads / 32;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int sm_count() { return cuda::device_attribute<cudaDevAttrMultiProcessorCount>(); }

// ---- epilogues ---------------------------------------------------------------------------------

template <DType D>
__device__ __forceinline__ void store_pair(void* y, int64_t i, float a, float b) {
  if constexpr (D == DType::f32) {
    *reinterpret_cast<float2*>(static_cast<float*>(y) + i) = make_float2(a, b);
  } else if constexpr (D == DType::f16) {
    *reinterpret_cast<__half2*>(static_cast<__half*>(y) + i) = __floats2half2_rn(a, b);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(y) + i) = __floats2bfloat162_rn(a, b);
  }
}

// int8_gemm: the int32 accumulators are the result.
struct StoreInt32 {
  int32_t* c;
  int64_t m, n;
  bool pair_ok;  // n even and c 8-byte aligned: (col, col + 1) pairs are one aligned store

  __device__ __forceinline__ void store1(int64_t r, int64_t col, int32_t v) const {
    if (r < m && col < n) c[r * n + col] = v;
  }
  __device__ __forceinline__ void store2(int64_t r, int64_t col, int32_t v0, int32_t v1) const {
    if (r >= m) return;
    if (pair_ok && col + 1 < n) {
      *reinterpret_cast<int2*>(c + r * n + col) = make_int2(v0, v1);
    } else {
      store1(r, col, v0);
      store1(r, col + 1, v1);
    }
  }
};

// int8_linear_dynamic: reference.int8_linear_dynamic's epilogue, op for op.
template <DType YD, bool kAsym>
struct LinearEpi {
  const float* a_scale;  // [m]
  const int32_t* a_zp;   // [m] (asymmetric activations)
  const int32_t* colsum;  // [n] (asymmetric activations)
  const float* w_scale;  // [n]
  const float* bias;     // [n] or nullptr
  void* y;               // [m, n] of YD
  int64_t m, n;
  bool pair_ok;

  __device__ __forceinline__ float value(int64_t r, int64_t col, int32_t acc) const {
    if constexpr (kAsym) acc -= a_zp[r] * colsum[col];
    float v = __fmul_rn(__int2float_rn(acc), __fmul_rn(a_scale[r], w_scale[col]));
    if (bias) v = __fadd_rn(v, bias[col]);
    return v;
  }
  __device__ __forceinline__ void store1(int64_t r, int64_t col, int32_t acc) const {
    if (r < m && col < n) store_elem<YD>(y, r * n + col, value(r, col, acc));
  }
  __device__ __forceinline__ void store2(int64_t r, int64_t col, int32_t v0, int32_t v1) const {
    if (r >= m) return;
    if (pair_ok && col + 1 < n) {
      store_pair<YD>(y, r * n + col, value(r, col, v0), value(r, col + 1, v1));
    } else {
      store1(r, col, v0);
      store1(r, col + 1, v1);
    }
  }
};

// ---- tiled tensor-core GEMM (any M; the W8A8 path for M > 16 and int8_gemm) ----------------------
// CTA tile BM x 128 x 64 (BM = 32 * MI), 8 warps as 2 (M) x 4 (N), warp tile (16 * MI) x 32,
// kStages-deep cp.async pipeline. A (and row-major B) rows sit in shared memory with a 16-byte pad
// (80-byte pitch: the 8 rows of an ldmatrix hit 8 distinct 16-byte bank groups).
constexpr int kBN = 128, kBK = 64, kStages = 4, kRasterGroup = 8;
constexpr int kRowPitch = kBK + 16;
constexpr int kBTileBytes = kBN * kRowPitch;  // also holds a packed tile (8 blocks x 1024 bytes)
static_assert((kBN / 16) * (kBK / 4) * 64 <= kBTileBytes, "packed B tile must fit");

template <int MI>
__host__ __device__ constexpr int a_tile_bytes() {
  return 32 * MI * kRowPitch;
}
template <int MI>
__host__ __device__ constexpr int gemm_smem_bytes() {
  return kStages * (a_tile_bytes<MI>() + kBTileBytes);
}

struct GemmParams {
  const int8_t* a;  // [m, lda]: columns >= a_k read as zero
  int64_t lda, a_k;
  const int8_t* b;  // row-major [n, ldb] (columns >= b_k read as zero) or packed
  int64_t ldb, b_k;
  int64_t kg;       // packed: k groups of 4 per 16-column block (K_pad / 4)
  int64_t nblocks;  // packed: 16-column blocks (N_pad / 16)
  int64_t m, n;
  int ktiles;  // ceil(K / kBK)
};

// Packed tile in shared memory: block nbl (1024 bytes) holds 16 k-groups x 4 chunks of 16 bytes;
// chunk q = kg * 4 + c (columns 4c..4c+3) is stored at position swz(q). Fragment loads read, per
// lane (g, t), the word of column c*4 + g%4 at kg = 8kk + 4r + t: without the swizzle lanes t and
// t + 2 would hit the same banks.
__device__ __forceinline__ int swz_gemm(int q) { return q ^ (((q >> 3) & 1) << 1); }

// Rows [row0, row0 + ROWS) x k [k0, k0 + kBK) of a row-major int8 matrix into a padded tile.
// VEC 16: kvalid % 16 == 0 and 16-byte aligned rows; VEC 4: kvalid % 4 == 0 and 4-byte aligned
// rows; VEC 1: anything (synchronous byte loads).
template <int VEC, int ROWS>
__device__ __forceinline__ void load_rows(uint32_t s, const int8_t* g, int64_t ld, int64_t row0, int64_t rows,
                                          int64_t k0, int64_t kvalid) {
  constexpr int kChunks = ROWS * (kBK / 16);
  static_assert(kChunks % kThreads == 0, "whole rounds of chunks");
#pragma unroll
  for (int i = threadIdx.x; i < kChunks; i += kThreads) {
    const int r = i >> 2, kc = i & 3;
    const int64_t gr = row0 + r, gk = k0 + kc * 16;
    const uint32_t dst = s + r * kRowPitch + kc * 16;
    const bool row_ok = gr < rows;
    if constexpr (VEC == 16) {
      const bool ok = row_ok && gk < kvalid;
      cp_async16(dst, ok ? g + gr * ld + gk : g, ok);
    } else if constexpr (VEC == 4) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const bool ok = row_ok && gk + 4 * w < kvalid;
        cp_async4(dst + 4 * w, ok ? g + gr * ld + gk + 4 * w : g, ok);
      }
    } else {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        uint32_t v = 0;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t kk = gk + 4 * w + e;
          if (row_ok && kk < kvalid) v |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(g + gr * ld + kk))) << (8 * e);
        }
        st_shared_u32(dst + 4 * w, v);
      }
    }
  }
}

// Packed blocks [nb0, nb0 + kBN/16) x k-groups [kg0, kg0 + kBK/4) into a swizzled tile.
__device__ __forceinline__ void load_packed(uint32_t s, const int8_t* w, int64_t nb0, int64_t nblocks, int64_t kg0,
                                            int64_t kg_total) {
  constexpr int kChunks = (kBN / 16) * (kBK / 4) * 4;
  static_assert(kChunks % kThreads == 0, "whole rounds of chunks");
#pragma unroll
  for (int i = threadIdx.x; i < kChunks; i += kThreads) {
    const int nbl = i >> 6, q = i & 63;
    const int64_t gnb = nb0 + nbl, gkg = kg0 + (q >> 2);
    const bool ok = gnb < nblocks && gkg < kg_total;
    cp_async16(s + nbl * 1024 + swz_gemm(q) * 16, ok ? w + (gnb * kg_total + gkg) * 64 + (q & 3) * 16 : w, ok);
  }
}

template <int MI, int VEC, bool kPacked, bool kU8, class Epi>
__global__ void __launch_bounds__(kThreads, 2) gemm_s8_kernel(GemmParams p, Epi epi) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int BM = 32 * MI;
  constexpr int kStageBytes = a_tile_bytes<MI>() + kBTileBytes;
  const uint32_t s0 = smem_addr(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int wm = (warp >> 2) * 16 * MI, wn = (warp & 3) * 32;
  // Grouped raster: consecutive CTAs sweep kRasterGroup row tiles for each column tile, so the
  // weight tiles they share are still in L2 (the grid is num_n x num_m).
  int64_t tile_m, tile_n;
  {
    const int64_t num_n = gridDim.x, num_m = gridDim.y;
    const int64_t pid = static_cast<int64_t>(blockIdx.y) * num_n + blockIdx.x;
    const int64_t first = pid / (kRasterGroup * num_n) * kRasterGroup;
    const int64_t rows = min(num_m - first, static_cast<int64_t>(kRasterGroup));
    tile_m = first + pid % rows;
    tile_n = pid % (kRasterGroup * num_n) / rows;
  }
  const int64_t m0 = tile_m * BM, n0 = tile_n * kBN;

  auto load_stage = [&](int stage, int kt) {
    const uint32_t sa = s0 + stage * kStageBytes, sb = sa + a_tile_bytes<MI>();
    const int64_t k0 = static_cast<int64_t>(kt) * kBK;
    load_rows<VEC, BM>(sa, p.a, p.lda, m0, p.m, k0, p.a_k);
    if constexpr (kPacked) {
      load_packed(sb, p.b, n0 / 16, p.nblocks, k0 / 4, p.kg);
    } else {
      load_rows<VEC, kBN>(sb, p.b, p.ldb, n0, p.n, k0, p.b_k);
    }
  };

  int32_t acc[MI][4][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < p.ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < p.ktiles; ++kt) {
    // Tile kt has landed (group kt); the barrier also retires every warp's reads of the stage the
    // prefetch below overwrites (it was computed on in iteration kt - 1).
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kStages - 1;
      if (nk < p.ktiles) load_stage(nk % kStages, nk);
      cp_async_commit();
    }
    const uint32_t sa = s0 + (kt % kStages) * kStageBytes, sb = sa + a_tile_bytes<MI>();
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) {
      uint32_t af[MI][4];
#pragma unroll
      for (int i = 0; i < MI; ++i)
        ldmatrix_x4(af[i], sa + (wm + 16 * i + (lane & 15)) * kRowPitch + kk * 32 + (lane >> 4) * 16);
      uint32_t bf[4][2];
      if constexpr (kPacked) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int nbl = (wn >> 4) + (j >> 1), c = (j & 1) * 2 + (g >> 2);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int q = (kk * 8 + r * 4 + t) * 4 + c;
            bf[j][r] = ld_shared_u32(sb + nbl * 1024 + swz_gemm(q) * 16 + (g & 3) * 4);
          }
        }
      } else {
#pragma unroll
        for (int jp = 0; jp < 2; ++jp) {
          uint32_t r4[4];
          ldmatrix_x4(r4, sb + (wn + 16 * jp + (lane & 7) + ((lane >> 4) << 3)) * kRowPitch + kk * 32 +
                              ((lane >> 3) & 1) * 16);
          bf[2 * jp][0] = r4[0];
          bf[2 * jp][1] = r4[1];
          bf[2 * jp + 1][0] = r4[2];
          bf[2 * jp + 1][1] = r4[3];
        }
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_s8<kU8>(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();  // only empty groups can remain; retire them before exit

#pragma unroll
  for (int i = 0; i < MI; ++i) {
    const int64_t r = m0 + wm + 16 * i + g;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + wn + 8 * j + 2 * t;
      epi.store2(r, col, acc[i][j][0], acc[i][j][1]);
      epi.store2(r + 8, col, acc[i][j][2], acc[i][j][3]);
    }
  }
}

template <int VEC, bool kPacked, bool kU8, class Epi>
void launch_gemm(const GemmParams& p, const Epi& epi, cudaStream_t stream) {
  // 64-row tiles when 128-row tiles would leave SMs idle (decode-ish and mid-size M).
  const int64_t ntiles = (p.n + kBN - 1) / kBN;
  const bool small = ((p.m + 127) / 128) * ntiles < sm_count();
  const auto go = [&](auto mi) {
    constexpr int MI = decltype(mi)::value;
    constexpr int BM = 32 * MI;
    const int64_t mtiles = (p.m + BM - 1) / BM;
    FASTQ_CHECK(mtiles <= 65535 && ntiles <= INT32_MAX, "GEMM too large for the grid: m=", p.m, " n=", p.n);
    auto kernel = gemm_s8_kernel<MI, VEC, kPacked, kU8, Epi>;
    static std::atomic<uint64_t> configured{0};
    set_smem(kernel, gemm_smem_bytes<MI>(), configured);
    kernel<<<dim3(static_cast<unsigned>(ntiles), static_cast<unsigned>(mtiles)), kThreads, gemm_smem_bytes<MI>(),
             stream>>>(p, epi);
    FASTQ_CUDA_CHECK(cudaGetLastError());
  };
  if constexpr (VEC == 1) {
    go(ITag<2>{});  // the byte-load fallback is slow anyway, and would spill at 128-row tiles
  } else if (small) {
    go(ITag<2>{});
  } else {
    go(ITag<4>{});
  }
}

// ---- weight streaming (W8A8, M <= 16) ----------------------------------------------------------
// Bandwidth-bound: each CTA owns NBW 16-column blocks; its 8 warps split K into 64-wide tiles
// (warp w takes tiles w, w + 8, ...), each warp running its own kSStages-deep cp.async pipeline
// over its weight tiles, so every weight byte is read once with 16-byte copies. Activations (at
// most 16 rows, L1/L2-resident) are loaded straight into mma A fragments with 16-byte loads; to
// make that possible the 64-wide k tile is permuted: in mma step s, lane t's k slots 4t..4t+3 and
// 16+4t.. hold k-groups 4t+2s and 4t+2s+1 (bytes 16t+8s .. 16t+8s+7 of the row), and the weight
// fragments are read with the same permutation (a dot product does not care about k order).
// Warps' int32 partial sums are added in shared memory (exact) before the fused epilogue.
constexpr int kSStages = 4;

struct StreamParams {
  const int8_t* a;  // quantized activations [m, lda], zero beyond k; lda % 64 == 0
  int64_t lda;
  const int8_t* w;  // packed weight
  int64_t kg, nblocks;
  int64_t m;  // 1..16
  int ktiles;  // lda / 64
};

// Chunk q = kg * 4 + c of a 1024-byte block at swz(q): lanes (g, t) read k-groups 4t + 2s + r, so
// t must spread over the 16-byte bank groups of a 128-byte line.
__device__ __forceinline__ int swz_stream(int q) { return q ^ (((q >> 4) & 3) << 1); }

template <int NBW>
__host__ __device__ constexpr int stream_smem_bytes() {
  return kWarps * kSStages * NBW * 1024;
}

template <int NBW, bool kU8, class Epi>
__global__ void __launch_bounds__(kThreads) linear_stream_kernel(StreamParams p, Epi epi) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int kWarpStage = NBW * 1024;
  constexpr int kCols = NBW * 16;
  static_assert(kWarps * 16 * kCols * 4 <= stream_smem_bytes<NBW>(), "reduction buffer must fit");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t nb0 = static_cast<int64_t>(blockIdx.x) * NBW;
  const uint32_t sw = smem_addr(smem) + warp * (kSStages * kWarpStage);
  const int nt = warp < p.ktiles ? (p.ktiles - 1 - warp) / kWarps + 1 : 0;

  auto load = [&](int stage, int it) {
    const int64_t kg0 = static_cast<int64_t>(warp + it * kWarps) * (kBK / 4);
#pragma unroll
    for (int i = lane; i < NBW * 64; i += 32) {
      const int nbl = i >> 6, q = i & 63;
      const int64_t gnb = nb0 + nbl, gkg = kg0 + (q >> 2);
      const bool ok = gnb < p.nblocks && gkg < p.kg;
      cp_async16(sw + stage * kWarpStage + nbl * 1024 + swz_stream(q) * 16,
                 ok ? p.w + (gnb * p.kg + gkg) * 64 + (q & 3) * 16 : p.w, ok);
    }
  };

  int32_t acc[2 * NBW][4];
#pragma unroll
  for (int j = 0; j < 2 * NBW; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[j][e] = 0;

#pragma unroll
  for (int s = 0; s < kSStages - 1; ++s) {
    if (s < nt) load(s, s);
    cp_async_commit();
  }
  const bool row0_ok = g < p.m, row1_ok = g + 8 < p.m;
  const int8_t* arow0 = p.a + (row0_ok ? g : 0) * p.lda + 16 * t;
  const int8_t* arow1 = p.a + (row1_ok ? g + 8 : 0) * p.lda + 16 * t;

  for (int it = 0; it < nt; ++it) {
    const int64_t k0 = static_cast<int64_t>(warp + it * kWarps) * kBK;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    const uint4 va = row0_ok ? __ldg(reinterpret_cast<const uint4*>(arow0 + k0)) : zero;
    const uint4 vb = row1_ok ? __ldg(reinterpret_cast<const uint4*>(arow1 + k0)) : zero;
    // This lane's copies of tile `it` are done; __syncwarp publishes every lane's copies and
    // retires every lane's reads of the stage the prefetch below overwrites.
    cp_async_wait<kSStages - 2>();
    __syncwarp();
    {
      const int nx = it + kSStages - 1;
      if (nx < nt) load(nx % kSStages, nx);
      cp_async_commit();
    }
    const uint32_t st = sw + (it % kSStages) * kWarpStage;
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const uint32_t af[4] = {s ? va.z : va.x, s ? vb.z : vb.x, s ? va.w : va.y, s ? vb.w : vb.y};
#pragma unroll
      for (int nbl = 0; nbl < NBW; ++nbl) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int c = 2 * j + (g >> 2);
          uint32_t bf[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int q = (4 * t + 2 * s + r) * 4 + c;
            bf[r] = ld_shared_u32(st + nbl * 1024 + swz_stream(q) * 16 + (g & 3) * 4);
          }
          mma_s8<kU8>(acc[nbl * 2 + j], af, bf);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its pipeline buffers: reuse them for the reduction

  int32_t* red = reinterpret_cast<int32_t*>(smem);  // [kWarps][16][kCols]
#pragma unroll
  for (int jj = 0; jj < 2 * NBW; ++jj) {
    const int col = jj * 8 + 2 * t;
    red[(warp * 16 + g) * kCols + col] = acc[jj][0];
    red[(warp * 16 + g) * kCols + col + 1] = acc[jj][1];
    red[(warp * 16 + g + 8) * kCols + col] = acc[jj][2];
    red[(warp * 16 + g + 8) * kCols + col + 1] = acc[jj][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * kCols; i += kThreads) {
    const int r = i / kCols, col = i % kCols;
    if (r >= p.m) continue;
    int32_t sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[(w * 16 + r) * kCols + col];
    epi.store1(r, nb0 * 16 + col, sum);
  }
}

// ---- per-token activation quantization into the workspace ----------------------------------------
// Exactly quantize_int8(x, PER_ROW, symmetric) (quant_math.cuh), written with a row pitch of lda
// and zeros in [k, lda) so the GEMMs need no K predication on A.
struct ActQuantParams {
  const void* x;  // [m, k]
  int64_t m, k, lda;
  bool symmetric;
  uint8_t* codes;  // [m, lda]
  float* scale;    // [m]
  int32_t* zp;     // [m]
};

template <DType D>
__device__ __forceinline__ void write_row(const ActQuantParams& p, int64_t row, const cuda::RowScale& s, int first,
                                          int stride) {
  if (first == 0) {
    p.scale[row] = s.scale;
    p.zp[row] = s.zp;  // 0 when symmetric or poisoned
  }
  const int64_t base = row * p.k;
  uint8_t* out = p.codes + row * p.lda;
#pragma unroll 4
  for (int64_t c = first; c < p.lda; c += stride) {
    uint8_t q = 0;
    if (c < p.k) {
      const float v = load_elem<D>(p.x, base + c);
      q = p.symmetric ? static_cast<uint8_t>(cuda::quantize_sym(v, s)) : cuda::quantize_asym(v, s);
    }
    out[c] = q;
  }
}

// One warp per row (short rows).
template <DType D>
__global__ void __launch_bounds__(kThreads) quantize_act_warp(ActQuantParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= p.m) return;
  cuda::Acc acc = cuda::acc_init();
#pragma unroll 4
  for (int64_t c = lane; c < p.k; c += 32) cuda::acc_add<D>(acc, p.x, row * p.k + c);
  write_row<D>(p, row, cuda::scale_of(cuda::warp_reduce(acc), p.symmetric), lane, 32);
}

// One block per row (long rows).
template <DType D>
__global__ void __launch_bounds__(kThreads) quantize_act_block(ActQuantParams p) {
  const int64_t row = blockIdx.x;
  cuda::Acc acc = cuda::acc_init();
#pragma unroll 4  // independent loads in flight: one row is latency-bound at decode sizes
  for (int64_t c = threadIdx.x; c < p.k; c += kThreads) cuda::acc_add<D>(acc, p.x, row * p.k + c);
  write_row<D>(p, row, cuda::scale_of(cuda::block_reduce<kThreads>(acc), p.symmetric), threadIdx.x, kThreads);
}

// Workspace of int8_linear_dynamic: codes [m, lda] | a_scale [m] | zero points [m], 256-aligned.
struct LinearLayout {
  int64_t n_pad, k_pad, lda, scale_off, zp_off, total;
};

LinearLayout linear_layout(int64_t m, int64_t n, int64_t k) {
  LinearLayout l;
  l.n_pad = round_up(n, 16);
  l.k_pad = round_up(k, 4);
  l.lda = round_up(k, kBK);
  l.scale_off = round_up(m * l.lda, 256);
  l.zp_off = l.scale_off + round_up(4 * m, 256);
  l.total = l.zp_off + round_up(4 * m, 256);
  return l;
}

// ---- weight-only linear ------------------------------------------------------------------------
// Bandwidth-bound on the weight: a CTA owns one 16-column block and MT rows of x; its 8 warps
// split the k-groups (512 contiguous bytes per warp per step, 16-byte streaming loads, U steps in
// flight per lane). A lane holds 4 columns x 4 k of one k-group, dequantizes in registers
// (int8 -> float exactly via the 2^23 trick, times the scale: per element when grouped, once at
// the end when per channel) and accumulates x * w with FMA. Lanes, then warps, are summed.
// GM: 0 per channel, 1 groups with group_size % 4 == 0, 2 any group size.
struct WoParams {
  const void* x;  // [m, k]
  const int8_t* w;
  const float* scale;  // [n, groups]
  const float* bias;   // [n] or nullptr
  void* y;             // [m, n], x's dtype
  int64_t m, n, k, kg;
  int groups, group_size;
  bool x_vec;  // k % 4 == 0 and x aligned: 4 elements per vector load
};

__device__ __forceinline__ float s8_to_f32(uint32_t biased, int i) {
  // biased = word ^ 0x80808080: byte i + 128 as the low mantissa bits of 2^23.
  return __fsub_rn(__int_as_float(static_cast<int>(__byte_perm(biased, 0x4B000000u, 0x7440u | i))), 8388736.0f);
}

template <DType D>
__device__ __forceinline__ void load_x4(const WoParams& p, int64_t row, int64_t k, float (&v)[4]) {
  const int64_t i = row * p.k + k;
  if (p.x_vec) {  // then k + 4 <= p.k
    if constexpr (D == DType::f32) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(p.x) + i));
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.x) + i));
      float2 lo, hi;
      if constexpr (D == DType::f16) {
        lo = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
        hi = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
      } else {
        lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
        hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
      }
      v[0] = lo.x, v[1] = lo.y, v[2] = hi.x, v[3] = hi.y;
    }
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = k + e < p.k ? load_elem<D>(p.x, i + e) : 0.0f;
  }
}

template <DType XD, int MT, int GM>
__global__ void __launch_bounds__(kThreads) wo_linear_kernel(WoParams p) {
  constexpr int U = (MT >= 8 || GM == 2) ? 2 : 4;  // 16-byte weight loads in flight per lane (register-bound)
  constexpr int kStep = kWarps * 8;      // k-groups per CTA step
  __shared__ float red[kWarps][MT][16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int c = lane & 3, kl = lane >> 2;
  const int64_t nb = blockIdx.x, m0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int8_t* wb = p.w + nb * p.kg * 64 + c * 16;
  int64_t ncol[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) ncol[j] = nb * 16 + 4 * c + j;

  float acc[MT][4];
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[mm][j] = 0.0f;

  for (int64_t base = warp * 8; base < p.kg; base += kStep * U) {
    uint4 wv[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t kg = base + u * kStep + kl;
      wv[u] = kg < p.kg ? cuda::ldg_stream16(wb + kg * 64) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t kg = base + u * kStep + kl;
      if (kg >= p.kg) continue;
      const int64_t k = kg * 4;
      float xv[MT][4];
#pragma unroll
      for (int mm = 0; mm < MT; ++mm) {
        if (m0 + mm < p.m) {
          load_x4<XD>(p, m0 + mm, k, xv[mm]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) xv[mm][e] = 0.0f;
        }
      }
      const uint32_t words[4] = {wv[u].x ^ 0x80808080u, wv[u].y ^ 0x80808080u, wv[u].z ^ 0x80808080u,
                                 wv[u].w ^ 0x80808080u};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float wf[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) wf[e] = s8_to_f32(words[j], e);
        if constexpr (GM == 1) {
          const int grp = static_cast<int>(k) / p.group_size;
          const float s = ncol[j] < p.n ? __ldg(p.scale + ncol[j] * p.groups + grp) : 0.0f;
#pragma unroll
          for (int e = 0; e < 4; ++e) wf[e] = __fmul_rn(wf[e], s);
        } else if constexpr (GM == 2) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const bool ok = ncol[j] < p.n && k + e < p.k;
            const int grp = static_cast<int>(k + e) / p.group_size;
            wf[e] = __fmul_rn(wf[e], ok ? __ldg(p.scale + ncol[j] * p.groups + grp) : 0.0f);
          }
        }
#pragma unroll
        for (int mm = 0; mm < MT; ++mm)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mm][j] = __fmaf_rn(xv[mm][e], wf[e], acc[mm][j]);
      }
    }
  }

  // Lanes with the same c (same 4 columns) differ in bits 2..4.
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float v = acc[mm][j];
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 4));
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 8));
      v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, 16));
      if (kl == 0) red[warp][mm][4 * c + j] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < MT * 16; i += kThreads) {
    const int mm = i / 16, col = i % 16;
    const int64_t row = m0 + mm, n = nb * 16 + col;
    if (row >= p.m || n >= p.n) continue;
    float s = red[0][mm][col];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) s = __fadd_rn(s, red[w][mm][col]);
    if constexpr (GM == 0) s = __fmul_rn(s, p.scale[n]);
    if (p.bias) s = __fadd_rn(s, p.bias[n]);
    store_elem<XD>(p.y, row * p.n + n, s);
  }
}

size_t dtype_size(DType d) { return d == DType::f32 ? 4 : 2; }

}  // namespace

// ---- entry points (csrc/api.h) -----------------------------------------------------------------

void int8_gemm_cuda(const int8_t* a, const int8_t* b, int32_t* c, int64_t m, int64_t n, int64_t k, void* stream) {
  FASTQ_CHECK(m >= 0 && n >= 0 && k >= 0, "negative size: m=", m, " n=", n, " k=", k);
  if (m == 0 || n == 0) return;
  FASTQ_CHECK(a && b && c, "null pointer");
  auto s = static_cast<cudaStream_t>(stream);
  if (k == 0) {
    FASTQ_CUDA_CHECK(cudaMemsetAsync(c, 0, static_cast<size_t>(m * n) * sizeof(int32_t), s));
    return;
  }
  FASTQ_CHECK(k <= INT32_MAX - kBK, "k too large: ", k);
  GemmParams p{};
  p.a = a;
  p.lda = k;
  p.a_k = k;
  p.b = b;
  p.ldb = k;
  p.b_k = k;
  p.m = m;
  p.n = n;
  p.ktiles = static_cast<int>((k + kBK - 1) / kBK);
  const StoreInt32 epi{c, m, n, n % 2 == 0 && aligned(c, 8)};
  if (k % 16 == 0 && aligned(a, 16) && aligned(b, 16)) {
    launch_gemm<16, false, false>(p, epi, s);
  } else if (k % 4 == 0 && aligned(a, 4) && aligned(b, 4)) {
    launch_gemm<4, false, false>(p, epi, s);
  } else {
    launch_gemm<1, false, false>(p, epi, s);
  }
}

int64_t int8_linear_dynamic_workspace_bytes_cuda(int64_t m, int64_t n, int64_t k) {
  FASTQ_CHECK(m >= 0 && n >= 0 && k >= 0, "negative size: m=", m, " n=", n, " k=", k);
  return linear_layout(m, n, k).total;
}

namespace {

// The GEMM half of the W8A8 linears (int8_linear_dynamic, int8_linear_static): codes [m, lda] at ws
// (zero-padded), per-row a_scale / a_zp, then the streaming (M <= 16) or tiled kernel with the fused
// epilogue.
void launch_linear_gemm(const Int8LinearArgs& a, const LinearLayout& l, const uint8_t* ws, const float* a_scale,
                        const int32_t* a_zp, cudaStream_t s) {
  const int64_t nblocks = l.n_pad / 16, kg = l.k_pad / 4;
  const auto* colsum = reinterpret_cast<const int32_t*>(a.w_packed + l.n_pad * l.k_pad);
  const bool pair_ok = a.n % 2 == 0 && aligned(a.y, 2 * dtype_size(a.y_dtype));
  const auto run = [&](auto ytag, auto asym_tag) {
    constexpr DType YD = decltype(ytag)::value;
    constexpr bool kAsym = decltype(asym_tag)::value;
    const LinearEpi<YD, kAsym> epi{a_scale, a_zp, colsum, a.w_scale, a.bias, a.y, a.m, a.n, pair_ok};
    if (a.m <= 16) {
      StreamParams sp{reinterpret_cast<const int8_t*>(ws), l.lda, a.w_packed, kg, nblocks, a.m,
                      static_cast<int>(l.lda / kBK)};
      // Two blocks per CTA only when that still gives every SM a couple of CTAs.
      const bool wide = (nblocks + 1) / 2 >= 2 * static_cast<int64_t>(sm_count());
      const auto go = [&](auto nbw) {
        constexpr int NBW = decltype(nbw)::value;
        const int64_t grid = (nblocks + NBW - 1) / NBW;
        FASTQ_CHECK(grid <= INT32_MAX, "n too large: ", a.n);
        auto kernel = linear_stream_kernel<NBW, kAsym, LinearEpi<YD, kAsym>>;
        static std::atomic<uint64_t> configured{0};
        set_smem(kernel, stream_smem_bytes<NBW>(), configured);
        kernel<<<static_cast<unsigned>(grid), kThreads, stream_smem_bytes<NBW>(), s>>>(sp, epi);
        FASTQ_CUDA_CHECK(cudaGetLastError());
      };
      if (wide) {
        go(ITag<2>{});
      } else {
        go(ITag<1>{});
      }
    } else {
      GemmParams p{};
      p.a = reinterpret_cast<const int8_t*>(ws);
      p.lda = l.lda;
      p.a_k = l.lda;  // zero-padded up to lda
      p.b = a.w_packed;
      p.kg = kg;
      p.nblocks = nblocks;
      p.m = a.m;
      p.n = a.n;
      p.ktiles = static_cast<int>(l.lda / kBK);
      launch_gemm<16, true, kAsym>(p, epi, s);
    }
  };
  cuda::dispatch_dtype(a.y_dtype, [&](auto ytag) {
    if (a.act_symmetric) {
      run(ytag, BTag<false>{});
    } else {
      run(ytag, BTag<true>{});
    }
  });
}

}  // namespace

void int8_linear_dynamic_cuda(const Int8LinearArgs& a, void* stream) {
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes: m=", a.m, " n=", a.n, " k=", a.k);
  if (a.m == 0) return;
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y && a.workspace, "null pointer");
  const LinearLayout l = linear_layout(a.m, a.n, a.k);
  FASTQ_CHECK(a.workspace_bytes >= l.total, "workspace of ", a.workspace_bytes, " bytes, need ", l.total);
  FASTQ_CHECK(aligned(a.workspace, 16) && aligned(a.w_packed, 16),
              "workspace and packed weight must be 16-byte aligned (pass freshly allocated tensors)");
  FASTQ_CHECK(a.k <= INT32_MAX - kBK, "k too large: ", a.k);
  auto s = static_cast<cudaStream_t>(stream);

  auto* ws = static_cast<uint8_t*>(a.workspace);
  ActQuantParams q{a.x, a.m, a.k, l.lda, a.act_symmetric, ws, reinterpret_cast<float*>(ws + l.scale_off),
                   reinterpret_cast<int32_t*>(ws + l.zp_off)};
  cuda::dispatch_dtype(a.x_dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    if (a.k <= 1024) {
      const int64_t blocks = (a.m + kWarps - 1) / kWarps;
      FASTQ_CHECK(blocks <= INT32_MAX, "too many rows: ", a.m);
      quantize_act_warp<D><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(q);
    } else {
      FASTQ_CHECK(a.m <= INT32_MAX, "too many rows: ", a.m);
      quantize_act_block<D><<<static_cast<unsigned>(a.m), kThreads, 0, s>>>(q);
    }
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());

  launch_linear_gemm(a, l, ws, q.scale, q.zp, s);
}

void int8_weight_only_linear_cuda(const Int8LinearArgs& a, void* stream) {
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes: m=", a.m, " n=", a.n, " k=", a.k);
  if (a.m == 0) return;
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y, "null pointer");
  FASTQ_CHECK(a.y_dtype == a.x_dtype, "weight-only linear writes x's dtype");
  FASTQ_CHECK(a.scale_groups >= 1 && a.k % a.scale_groups == 0, "scale_groups ", a.scale_groups,
              " must divide k=", a.k);
  FASTQ_CHECK(aligned(a.w_packed, 16), "packed weight must be 16-byte aligned (pass a freshly allocated tensor)");
  FASTQ_CHECK(a.k <= INT32_MAX - 4 && a.scale_groups <= INT32_MAX, "k too large: ", a.k);
  auto s = static_cast<cudaStream_t>(stream);
  const int64_t n_pad = round_up(a.n, 16), k_pad = round_up(a.k, 4);
  WoParams p{};
  p.x = a.x;
  p.w = a.w_packed;
  p.scale = a.w_scale;
  p.bias = a.bias;
  p.y = a.y;
  p.m = a.m;
  p.n = a.n;
  p.k = a.k;
  p.kg = k_pad / 4;
  p.groups = static_cast<int>(a.scale_groups);
  p.group_size = static_cast<int>(a.k / a.scale_groups);
  p.x_vec = a.k % 4 == 0 && aligned(a.x, 4 * dtype_size(a.x_dtype));
  const int gm = a.scale_groups == 1 ? 0 : (p.group_size % 4 == 0 ? 1 : 2);
  const int mt = a.m == 1 ? 1 : (a.m <= 4 ? 4 : 8);
  const int64_t grid_y = (a.m + mt - 1) / mt;
  FASTQ_CHECK(grid_y <= 65535 && n_pad / 16 <= INT32_MAX, "too large: m=", a.m, " n=", a.n);
  const dim3 grid(static_cast<unsigned>(n_pad / 16), static_cast<unsigned>(grid_y));
  cuda::dispatch_dtype(a.x_dtype, [&](auto xtag) {
    constexpr DType XD = decltype(xtag)::value;
    const auto go_gm = [&](auto mt_tag) {
      constexpr int MT = decltype(mt_tag)::value;
      if (gm == 0) {
        wo_linear_kernel<XD, MT, 0><<<grid, kThreads, 0, s>>>(p);
      } else if (gm == 1) {
        wo_linear_kernel<XD, MT, 1><<<grid, kThreads, 0, s>>>(p);
      } else {
        wo_linear_kernel<XD, MT, 2><<<grid, kThreads, 0, s>>>(p);
      }
    };
    if (mt == 1) {
      go_gm(ITag<1>{});
    } else if (mt == 4) {
      go_gm(ITag<4>{});
    } else {
      go_gm(ITag<8>{});
    }
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());
}


// ---- static W8A8 linear (accuracy toolkit; reference.int8_linear_static) ----------------------
// Codes from the calibrated scale (no row statistics): one block per row writes codes [lda] (zeros
// past k), a_scale[row] = act_scale and a_zp[row] = the zero point, so the dynamic op's GEMMs and
// epilogue (launch_linear_gemm) finish the job. Float ops as the reference: inv = 1 / scale,
// mul = (1 / smooth[c]) * inv, v = x * mul, each _rn (no FMA; the module builds with --fmad=false).
namespace {

struct StaticQuantParams {
  const void* x;  // [m, k]
  int64_t m, k, lda;
  bool symmetric;
  const float* act_scale;        // [1]
  const int32_t* act_zp;         // [1] (asymmetric)
  const float* act_smooth;       // [k] or nullptr
  uint8_t* codes;                // [m, lda]
  float* scale;                  // [m]
  int32_t* zp;                   // [m]
};

template <DType D>
__global__ void __launch_bounds__(kThreads) quantize_act_static(StaticQuantParams p) {
  const int64_t row = blockIdx.x;
  const float scale = *p.act_scale, inv = __fdiv_rn(1.0f, scale);
  const int32_t zp = p.symmetric ? 0 : *p.act_zp;
  if (threadIdx.x == 0) {
    p.scale[row] = scale;
    p.zp[row] = zp;
  }
  uint8_t* out = p.codes + row * p.lda;
  for (int64_t c = threadIdx.x; c < p.lda; c += kThreads) {
    uint8_t q = 0;
    if (c < p.k) {
      const float mul = p.act_smooth ? __fmul_rn(__fdiv_rn(1.0f, p.act_smooth[c]), inv) : inv;
      const cuda::RowScale s{scale, mul, zp, false};
      const float v = load_elem<D>(p.x, row * p.k + c);
      q = p.symmetric ? static_cast<uint8_t>(cuda::quantize_sym(v, s)) : cuda::quantize_asym(v, s);
    }
    out[c] = q;
  }
}

}  // namespace

int64_t int8_linear_static_workspace_bytes_cuda(int64_t m, int64_t n, int64_t k) {
  return int8_linear_dynamic_workspace_bytes_cuda(m, n, k);
}

void int8_linear_static_cuda(const Int8StaticLinearArgs& sa, void* stream) {
  const Int8LinearArgs& a = sa.lin;
  FASTQ_CHECK(a.m >= 0 && a.n > 0 && a.k > 0, "bad sizes: m=", a.m, " n=", a.n, " k=", a.k);
  if (a.m == 0) return;
  FASTQ_CHECK(a.x && a.w_packed && a.w_scale && a.y && a.workspace && sa.act_scale, "null pointer");
  FASTQ_CHECK(a.act_symmetric || sa.act_zero_point, "asymmetric activations need act_zero_point");
  const LinearLayout l = linear_layout(a.m, a.n, a.k);
  FASTQ_CHECK(a.workspace_bytes >= l.total, "workspace of ", a.workspace_bytes, " bytes, need ", l.total);
  FASTQ_CHECK(aligned(a.workspace, 16) && aligned(a.w_packed, 16),
              "workspace and packed weight must be 16-byte aligned (pass freshly allocated tensors)");
  FASTQ_CHECK(a.k <= INT32_MAX - kBK, "k too large: ", a.k);
  FASTQ_CHECK(a.m <= INT32_MAX, "too many rows: ", a.m);
  auto s = static_cast<cudaStream_t>(stream);
  auto* ws = static_cast<uint8_t*>(a.workspace);
  StaticQuantParams q{a.x, a.m, a.k, l.lda, a.act_symmetric, sa.act_scale, sa.act_zero_point, sa.act_smooth, ws,
                      reinterpret_cast<float*>(ws + l.scale_off), reinterpret_cast<int32_t*>(ws + l.zp_off)};
  cuda::dispatch_dtype(a.x_dtype, [&](auto tag) {
    quantize_act_static<decltype(tag)::value><<<static_cast<unsigned>(a.m), kThreads, 0, s>>>(q);
  });
  FASTQ_CUDA_CHECK(cudaGetLastError());
  launch_linear_gemm(a, l, ws, q.scale, q.zp, s);
}

}  // namespace fastq
