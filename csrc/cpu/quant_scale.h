// The per-row dynamic scale math of quantize_int8 (see fastq/ops/reference.py), shared by the
// quantize driver and the fused W8A8 linear so both quantize activations identically. Portable
// code only (included by csrc/cpu/*.cpp, compiled without ISA flags); internal linkage.
//   symmetric:  scale = max(amax / 127, FLT_MIN)                        inv = 1 / scale
//   asymmetric: lo = min(min x, 0), hi = max(max x, 0)
//               scale = max((hi - lo) / 255, FLT_MIN)                   inv = 1 / scale
//               zero_point = clamp(round_half_even(-lo * inv), 0, 255)
//               a finite row whose range hi - lo overflows float32 (it spans more than FLT_MAX):
//               scale = max(hi, -lo) / 128, zero_point = 128, so every code dequantizes finite
//   A row holding NaN or +-Inf is "poisoned": scale = NaN, zero_point = 0, codes = 0.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/quant_math.h"

namespace fastq {
namespace {

constexpr float kFltMin = std::numeric_limits<float>::min();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct RowScale {
  float scale, inv;
  int32_t zero_point;
  bool poisoned;
};

inline RowScale symmetric_scale(uint32_t absmax_bits) {
  if (absmax_bits >= 0x7f800000u) return {kNaN, 0.0f, 0, true};
  const float scale = std::max(bits_f32(absmax_bits) / 127.0f, kFltMin);
  return {scale, 1.0f / scale, 0, false};
}

inline RowScale asymmetric_scale(float lo, float hi, bool nan_seen) {
  if (nan_seen || std::isinf(lo) || std::isinf(hi)) return {kNaN, 0.0f, 0, true};
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  const float span = hi - lo;
  if (std::isinf(span)) {  // finite extremes more than FLT_MAX apart (see the header comment)
    const float wide = std::max(hi, -lo) / 128.0f;
    return {wide, 1.0f / wide, 128, false};
  }
  const float scale = std::max(span / 255.0f, kFltMin);
  const float inv = 1.0f / scale;
  const float zp = std::min(std::max(std::nearbyint(-lo * inv), 0.0f), 255.0f);
  return {scale, inv, static_cast<int32_t>(zp), false};
}

}  // namespace
}  // namespace fastq
