// Scalar, per-element versions of the quantize/dequantize float-op sequence documented in
// fastq/ops/reference.py. Every ISA's kernels use these for their tails, so they define the
// bit-exact behaviour. Everything here sits in an anonymous namespace on purpose: this header is
// compiled into object libraries with different ISA flags, and internal linkage keeps the linker
// from merging an AVX-512 copy of a function into the scalar path.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "api.h"

namespace fastq {
namespace {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_f32(uint16_t b) { return bits_f32(static_cast<uint32_t>(b) << 16); }

// Round to nearest even, NaN -> quiet NaN 0x7fc0 (as c10::BFloat16 does).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE binary16 -> binary32, exact (subnormals included).
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return bits_f32(bits);
}

// binary32 -> binary16, round to nearest even, overflow -> Inf, NaN -> quiet NaN.
inline uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520 -> Inf
  if (a < 0x38800000u) {                         // result is subnormal or zero
    // Adding 0.5 (as a float) aligns the binary point so the FPU does the RNE shift.
    const float r = bits_f32(a) + 0.5f;
    return sign | static_cast<uint16_t>(f32_bits(r) - f32_bits(0.5f));
  }
  const uint32_t odd = (a >> 13) & 1u;
  const uint32_t rounded = a + 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round
  return sign | static_cast<uint16_t>(rounded >> 13);
}

template <DType D>
inline float load_elem(const void* p, int64_t i);
template <>
inline float load_elem<DType::f32>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <>
inline float load_elem<DType::f16>(const void* p, int64_t i) {
  return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
template <>
inline float load_elem<DType::bf16>(const void* p, int64_t i) {
  return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

template <DType D>
inline void store_elem(void* p, int64_t i, float v);
template <>
inline void store_elem<DType::f32>(void* p, int64_t i, float v) {
  static_cast<float*>(p)[i] = v;
}
template <>
inline void store_elem<DType::f16>(void* p, int64_t i, float v) {
  static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
}
template <>
inline void store_elem<DType::bf16>(void* p, int64_t i, float v) {
  static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
}

// q = clamp(round_half_even(x * inv_scale), -127, 127); NaN -> 0.
inline int8_t quantize_sym_elem(float x, float inv_scale) {
  float v = x * inv_scale;
  if (v != v) return 0;
  v = std::min(std::max(v, -127.0f), 127.0f);
  return static_cast<int8_t>(std::nearbyint(v));
}

// q = clamp(round_half_even(x * inv_scale) + zero_point, 0, 255); NaN -> zero_point.
inline uint8_t quantize_asym_elem(float x, float inv_scale, int32_t zero_point) {
  const float v = x * inv_scale;
  if (v != v) return static_cast<uint8_t>(zero_point);
  float r = std::nearbyint(v) + static_cast<float>(zero_point);
  r = std::min(std::max(r, 0.0f), 255.0f);
  return static_cast<uint8_t>(r);
}

}  // namespace
}  // namespace fastq
