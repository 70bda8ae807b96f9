// AMX micro-kernels of the int8 GEMM family (built twice: real tiles, and FASTQ_AMX_EMULATE's
// software tiles; cpu/amx/tile.h). Invariants:
//  - all eight tiles are 16 rows x 64 bytes: C in tmm0-3 (2 x 2 blocks of 16 x 16), A in tmm4-5,
//    B in tmm6-7, so one call covers up to 32 rows x 32 columns (K-blocking so that 4 row blocks
//    share each 512-k block of B from L1 was measured no faster on an Emerald Rapids Xeon, so the
//    whole K runs in the C tiles);
//  - int8: the packed-weight layout (16-column blocks of K_pad/4 rows of 16 columns x 4 k) *is* the
//    B tile layout, so 16 quads of a block load as one tile, 64 bytes apart; no repacking, and what
//    is saved on disk stays ISA-independent. The whole K accumulates in the int32 C tiles (exact,
//    wrapping), then the AVX-512 epilogue (cpu/avx512/gemm_epilogue.h) gives the VNNI tier's bits;
//  - activations: s8 codes (TDPBSSD) or u8 codes with a per-row zero point removed in the epilogue
//    (TDPBUSD); rows padded with zeros to 64 bytes, 16 rows readable. A K tail shorter than a tile
//    reads B from a zero-padded copy (the packed weight ends at K_pad);
//  - bf16 (weight-only): int8 weights widen to bf16 exactly; x is bf16 already, so every product is
//    exact in fp32 and only the fp32 summation order differs from the reference.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/amx/tile.h"
#include "cpu/avx512/gemm_epilogue.h"
#include "cpu/gemm_math.h"
#include "cpu/kernels.h"

namespace fastq::cpu {
namespace {

constexpr int kTileK = 64;                // int8 k per tile row
constexpr int kQuadsPerTile = kTileK / kKR;  // 16 packed quads per B tile
constexpr int kTileBytes = 16 * 64;

void tile_begin() {
  static const AmxTileConfig cfg = amx_config();
  AMX_LOADCONFIG(&cfg);
}

void tile_end() { AMX_RELEASE(); }

// ---- int8 -------------------------------------------------------------------------------------

// C tiles for MT x NT blocks, whole K. b0/b1: first B tile of each column block.
template <int MT, int NT, bool U8>
__attribute__((always_inline)) inline void int8_step(const uint8_t* a, int64_t lda, const int8_t* b0, const int8_t* b1) {
  AMX_LOAD(4, a, lda);
  if constexpr (MT == 2) AMX_LOAD(5, a + 16 * lda, lda);
  AMX_LOAD(6, b0, 64);
  if constexpr (NT == 2) AMX_LOAD(7, b1, 64);
  if constexpr (U8) {
    AMX_DPBUSD(0, 4, 6);
    if constexpr (NT == 2) AMX_DPBUSD(1, 4, 7);
    if constexpr (MT == 2) AMX_DPBUSD(2, 5, 6);
    if constexpr (MT == 2 && NT == 2) AMX_DPBUSD(3, 5, 7);
  } else {
    AMX_DPBSSD(0, 4, 6);
    if constexpr (NT == 2) AMX_DPBSSD(1, 4, 7);
    if constexpr (MT == 2) AMX_DPBSSD(2, 5, 6);
    if constexpr (MT == 2 && NT == 2) AMX_DPBSSD(3, 5, 7);
  }
}

template <int MT, int NT, bool U8>
void int8_tiles(const uint8_t* a, int64_t lda, const int8_t* w, int64_t w_bstride, int64_t kq, int32_t* c) {
  AMX_ZERO(0);
  if constexpr (NT == 2) AMX_ZERO(1);
  if constexpr (MT == 2) AMX_ZERO(2);
  if constexpr (MT == 2 && NT == 2) AMX_ZERO(3);
  const int64_t full = kq / kQuadsPerTile, tail = kq % kQuadsPerTile;
  for (int64_t t = 0; t < full; ++t)
    int8_step<MT, NT, U8>(a + t * kTileK, lda, w + t * kTileBytes, w + w_bstride + t * kTileBytes);
  if (tail) {
    alignas(64) int8_t bt[2][kTileBytes];
    for (int j = 0; j < NT; ++j) {
      std::memcpy(bt[j], w + j * w_bstride + full * kTileBytes, tail * 64);
      std::memset(bt[j] + tail * 64, 0, kTileBytes - tail * 64);
    }
    int8_step<MT, NT, U8>(a + full * kTileK, lda, bt[0], bt[1]);
  }
  AMX_STORE(0, c, 128);
  if constexpr (NT == 2) AMX_STORE(1, c + 16, 128);
  if constexpr (MT == 2) AMX_STORE(2, c + 16 * 32, 128);
  if constexpr (MT == 2 && NT == 2) AMX_STORE(3, c + 16 * 32 + 16, 128);
}

template <bool U8>
void int8_dispatch(int mt, int nt, const uint8_t* a, int64_t lda, const int8_t* w, int64_t w_bstride, int64_t kq,
                   int32_t* c) {
  if (mt == 1) {
    if (nt == 1) int8_tiles<1, 1, U8>(a, lda, w, w_bstride, kq, c);
    else int8_tiles<1, 2, U8>(a, lda, w, w_bstride, kq, c);
  } else {
    if (nt == 1) int8_tiles<2, 1, U8>(a, lda, w, w_bstride, kq, c);
    else int8_tiles<2, 2, U8>(a, lda, w, w_bstride, kq, c);
  }
}

// GemmKernels::gemm_tile: rows [m0, m0 + mr) (mr <= 32) x columns [n0, n0 + n_valid) (<= 32).
void gemm_s8s8s32_32x32__amx(const void* act, int64_t lda, int mr, const int8_t* w, int64_t w_bstride,
                             const int32_t* colsum, int64_t kq, int n_valid, const GemmEpilogue& ep, int64_t m0,
                             int64_t n0) {
  alignas(64) int32_t c[32 * 32];
  const int mt = (mr + 15) / 16, nt = (n_valid + 15) / 16;
  const uint8_t* a = static_cast<const uint8_t*>(act);
  if (ep.row_off) int8_dispatch<true>(mt, nt, a, lda, w, w_bstride, kq, c);
  else int8_dispatch<false>(mt, nt, a, lda, w, w_bstride, kq, c);
  for (int r = 0; r < mr; ++r)
    for (int j = 0; j < nt; ++j)
      epilogue16(ep, m0 + r, n0 + 16 * j, _mm512_load_si512(c + r * 32 + 16 * j), colsum + 16 * j, n_valid - 16 * j);
}

// ---- bf16 (weight-only) -----------------------------------------------------------------------

// GemmKernels::wo_bf16_dequant. A quad row of a packed block holds, per column c (32-bit lane c),
// w[c][4q .. 4q+3]; the bf16 tile rows of the k pairs (4q, 4q+1) and (4q+2, 4q+3) hold, per lane,
// two bf16 of those. int8 -> float is exact and leaves the low 16 bits zero, so bf16 = float >> 16.
void dequant_s8bf16_32x32__amx(const int8_t* w, int64_t w_bstride, int nb, int64_t q0, int64_t nq, int64_t kq,
                               uint16_t* dst) {
  const int64_t tiles = nq / 8;
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int j = 0; j < nb; ++j)
    for (int64_t q = 0; q < nq; ++q) {
      uint16_t* row = dst + (j * tiles + q / 8) * 512 + (q % 8) * 2 * 32;
      if (q0 + q >= kq) {
        _mm512_store_si512(row, _mm512_setzero_si512());
        _mm512_store_si512(row + 32, _mm512_setzero_si512());
        continue;
      }
      const __m512i v = _mm512_loadu_si512(w + j * w_bstride + (q0 + q) * kBlockBytes);
      __m512i f[4];
      for (int i = 0; i < 4; ++i)
        f[i] = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * i), 24)));
      _mm512_store_si512(row, _mm512_or_si512(_mm512_srli_epi32(f[0], 16), _mm512_and_si512(f[1], hi_mask)));
      _mm512_store_si512(row + 32, _mm512_or_si512(_mm512_srli_epi32(f[2], 16), _mm512_and_si512(f[3], hi_mask)));
    }
}

template <int MT, int NT>
void bf16_tiles(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t nk32, float* c, bool first) {
  if (first) {
    AMX_ZERO(0);
    if constexpr (NT == 2) AMX_ZERO(1);
    if constexpr (MT == 2) AMX_ZERO(2);
    if constexpr (MT == 2 && NT == 2) AMX_ZERO(3);
  } else {
    AMX_LOAD(0, c, 128);
    if constexpr (NT == 2) AMX_LOAD(1, c + 16, 128);
    if constexpr (MT == 2) AMX_LOAD(2, c + 16 * 32, 128);
    if constexpr (MT == 2 && NT == 2) AMX_LOAD(3, c + 16 * 32 + 16, 128);
  }
  const char* a8 = reinterpret_cast<const char*>(a);
  for (int64_t t = 0; t < nk32; ++t) {
    AMX_LOAD(4, a8 + t * 64, lda);
    if constexpr (MT == 2) AMX_LOAD(5, a8 + 16 * lda + t * 64, lda);
    AMX_LOAD(6, b + t * 512, 64);
    if constexpr (NT == 2) AMX_LOAD(7, b + (nk32 + t) * 512, 64);
    AMX_DPBF16PS(0, 4, 6);
    if constexpr (NT == 2) AMX_DPBF16PS(1, 4, 7);
    if constexpr (MT == 2) AMX_DPBF16PS(2, 5, 6);
    if constexpr (MT == 2 && NT == 2) AMX_DPBF16PS(3, 5, 7);
  }
  AMX_STORE(0, c, 128);
  if constexpr (NT == 2) AMX_STORE(1, c + 16, 128);
  if constexpr (MT == 2) AMX_STORE(2, c + 16 * 32, 128);
  if constexpr (MT == 2 && NT == 2) AMX_STORE(3, c + 16 * 32 + 16, 128);
}

// GemmKernels::wo_bf16_tile.
void gemm_bf16bf16f32_32x32__amx(const uint16_t* a, int64_t lda, int mt, const uint16_t* b, int nt, int64_t nk32,
                                 float* c, bool first) {
  if (mt == 1) {
    if (nt == 1) bf16_tiles<1, 1>(a, lda, b, nk32, c, first);
    else bf16_tiles<1, 2>(a, lda, b, nk32, c, first);
  } else {
    if (nt == 1) bf16_tiles<2, 1>(a, lda, b, nk32, c, first);
    else bf16_tiles<2, 2>(a, lda, b, nk32, c, first);
  }
}

// GemmKernels::wo_bf16_epilogue (each float op rounded on its own: mul, add, add).
void epilogue_f32bf16_32__amx(const float* c, int64_t rows, int nv, const float* s, float* acc, bool first, bool last,
                              const float* bias, void* y, int64_t ldy, DType y_dtype) {
  for (int j = 0; j * 16 < nv; ++j) {
    const __mmask16 k = tail_mask(nv - 16 * j);
    const __m512 sv = _mm512_maskz_loadu_ps(k, s + 16 * j);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + 16 * j) : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      float* ar = acc + r * 32 + 16 * j;
      __m512 v = _mm512_mul_ps(_mm512_load_ps(c + r * 32 + 16 * j), sv);
      if (!first) v = _mm512_add_ps(_mm512_load_ps(ar), v);
      if (!last) {
        _mm512_store_ps(ar, v);
        continue;
      }
      if (bias) v = _mm512_add_ps(v, bv);
      store_y16(y_dtype, y, r * ldy + 16 * j, v, k);
    }
  }
}

GemmKernels make_table() {
  GemmKernels t{};
  t.act_format = kActS8;
  t.mr = 32;
  t.nr = 32;
  t.gemm_tile = gemm_s8s8s32_32x32__amx;
  t.act_k_align = kTileK;
  t.act_m_align = 16;
  t.tile_begin = tile_begin;
  t.tile_end = tile_end;
  t.wo_bf16_dequant = dequant_s8bf16_32x32__amx;
  t.wo_bf16_tile = gemm_bf16bf16f32_32x32__amx;
  t.wo_bf16_epilogue = epilogue_f32bf16_32__amx;
  return t;
}

}  // namespace

#ifdef FASTQ_AMX_EMULATE
const GemmKernels gemm_kernels_amx_emu = make_table();
#else
const GemmKernels gemm_kernels_amx = make_table();
#endif

}  // namespace fastq::cpu
