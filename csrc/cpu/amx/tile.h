// The AMX tile operations the kernels in this directory use, as macros over literal tile numbers
// (GCC's intrinsics paste the number into the asm text), in one of two builds of the same source:
//  - the real one (object fastq_amx: -mamx-tile -mamx-int8 -mamx-bf16), the _tile_* intrinsics;
//  - FASTQ_AMX_EMULATE (object fastq_amx_emu: AVX-512 flags only), a software model of the eight
//    tile registers and their configuration, per thread, following the instruction pseudo-code of
//    the Intel SDM (int32 dot products wrap; bf16 products summed one fp32 add at a time, denormal
//    inputs and outputs flushed to zero). It lets the tile kernels and their drivers run on machines
//    without AMX (FASTQ_AMX_EMULATE=1), so their blocking, tails and epilogues are tested everywhere.
// Every kernel here configures all eight tiles as 16 rows x 64 bytes (amx_config).
#pragma once
#include <cstdint>
#include <cstring>

namespace fastq::cpu {
namespace {

// LDTILECFG's 64-byte operand, palette 1.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline AmxTileConfig amx_config() {
  AmxTileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

}  // namespace
}  // namespace fastq::cpu

#ifndef FASTQ_AMX_EMULATE

#include <immintrin.h>

#define AMX_LOADCONFIG(cfg) _tile_loadconfig(cfg)
#define AMX_RELEASE() _tile_release()
#define AMX_ZERO(t) _tile_zero(t)
#define AMX_LOAD(t, p, stride) _tile_loadd(t, p, stride)
#define AMX_STORE(t, p, stride) _tile_stored(t, p, stride)
#define AMX_DPBSSD(c, a, b) _tile_dpbssd(c, a, b)
#define AMX_DPBUSD(c, a, b) _tile_dpbusd(c, a, b)
#define AMX_DPBF16PS(c, a, b) _tile_dpbf16ps(c, a, b)

#else  // software model

#include "cpu/quant_math.h"

namespace fastq::cpu::amx_emu {
namespace {

struct State {
  alignas(64) uint8_t tile[8][16][64];
  uint8_t rows[8];
  uint16_t colsb[8];
  bool configured = false;
};

inline State& state() {
  static thread_local State s;
  return s;
}

inline void check(bool ok) {
  if (!ok) __builtin_trap();  // a tile used unconfigured or with mismatched shapes: #UD on hardware
}

inline void loadconfig(const void* p) {
  const AmxTileConfig* c = static_cast<const AmxTileConfig*>(p);
  State& s = state();
  check(c->palette == 1);
  for (int t = 0; t < 8; ++t) {
    check(c->rows[t] <= 16 && c->colsb[t] <= 64);
    s.rows[t] = c->rows[t];
    s.colsb[t] = c->colsb[t];
  }
  std::memset(s.tile, 0, sizeof(s.tile));
  s.configured = true;
}

inline void release() {
  State& s = state();
  std::memset(s.tile, 0, sizeof(s.tile));
  s.configured = false;
}

inline void zero(int t) {
  check(state().configured);
  std::memset(state().tile[t], 0, sizeof(state().tile[t]));
}

inline void load(int t, const void* p, int64_t stride) {
  State& s = state();
  check(s.configured);
  std::memset(s.tile[t], 0, sizeof(s.tile[t]));
  for (int r = 0; r < s.rows[t]; ++r) std::memcpy(s.tile[t][r], static_cast<const uint8_t*>(p) + r * stride, s.colsb[t]);
}

inline void store(int t, void* p, int64_t stride) {
  State& s = state();
  check(s.configured);
  for (int r = 0; r < s.rows[t]; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.tile[t][r], s.colsb[t]);
}

// TDPB[SU][SU]D: c[m][n] += sum over k, i of a[m][4k + i] * b[k][4n + i] (int32, wrapping).
template <bool AU, bool BU>
inline void dp_int8(int c, int a, int b) {
  State& s = state();
  check(s.configured && s.rows[c] == s.rows[a] && s.colsb[c] == s.colsb[b] && s.rows[b] * 4 == s.colsb[a]);
  for (int m = 0; m < s.rows[c]; ++m)
    for (int n = 0; n < s.colsb[c] / 4; ++n) {
      int32_t acc;
      std::memcpy(&acc, &s.tile[c][m][4 * n], 4);
      uint32_t u = static_cast<uint32_t>(acc);
      for (int k = 0; k < s.colsb[a] / 4; ++k)
        for (int i = 0; i < 4; ++i) {
          const uint8_t av = s.tile[a][m][4 * k + i], bv = s.tile[b][k][4 * n + i];
          const int32_t x = AU ? int32_t{av} : int32_t{static_cast<int8_t>(av)};
          const int32_t y = BU ? int32_t{bv} : int32_t{static_cast<int8_t>(bv)};
          u += static_cast<uint32_t>(x * y);
        }
      acc = static_cast<int32_t>(u);
      std::memcpy(&s.tile[c][m][4 * n], &acc, 4);
    }
}

inline float bf16_daz(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  if ((h & 0x7f80) == 0) h &= 0x8000;  // denormal (or zero) -> signed zero
  return bf16_to_f32(h);
}

inline float ftz(float f) {
  const uint32_t u = f32_bits(f);
  return (u & 0x7f800000u) == 0 ? bits_f32(u & 0x80000000u) : f;
}

// TDPBF16PS: c[m][n] += a[m][2k] * b[k][2n], then += a[m][2k+1] * b[k][2n+1], for k in order (fp32).
inline void dp_bf16(int c, int a, int b) {
  State& s = state();
  check(s.configured && s.rows[c] == s.rows[a] && s.colsb[c] == s.colsb[b] && s.rows[b] * 4 == s.colsb[a]);
  for (int m = 0; m < s.rows[c]; ++m)
    for (int n = 0; n < s.colsb[c] / 4; ++n) {
      float acc;
      std::memcpy(&acc, &s.tile[c][m][4 * n], 4);
      for (int k = 0; k < s.colsb[a] / 4; ++k)
        for (int i = 0; i < 2; ++i)
          acc = ftz(acc + bf16_daz(&s.tile[a][m][4 * k + 2 * i]) * bf16_daz(&s.tile[b][k][4 * n + 2 * i]));
      std::memcpy(&s.tile[c][m][4 * n], &acc, 4);
    }
}

}  // namespace
}  // namespace fastq::cpu::amx_emu

#define AMX_LOADCONFIG(cfg) ::fastq::cpu::amx_emu::loadconfig(cfg)
#define AMX_RELEASE() ::fastq::cpu::amx_emu::release()
#define AMX_ZERO(t) ::fastq::cpu::amx_emu::zero(t)
#define AMX_LOAD(t, p, stride) ::fastq::cpu::amx_emu::load(t, p, stride)
#define AMX_STORE(t, p, stride) ::fastq::cpu::amx_emu::store(t, p, stride)
#define AMX_DPBSSD(c, a, b) ::fastq::cpu::amx_emu::dp_int8<false, false>(c, a, b)
#define AMX_DPBUSD(c, a, b) ::fastq::cpu::amx_emu::dp_int8<true, false>(c, a, b)
#define AMX_DPBF16PS(c, a, b) ::fastq::cpu::amx_emu::dp_bf16(c, a, b)

#endif
