// Scalar sparse masked matmul micro-kernels: sparse_impl.h over one-lane "vectors". The
// portable fallback and the model the SIMD traits follow.
#include "cpu/kernels.h"
#include "cpu/sparse_impl.h"

namespace fastq::cpu {
namespace {

struct ScalarV {
  static constexpr int W = 1;
  static constexpr int kMaxLanes = 16;
  static constexpr int kBsrLanes = 16;
  using vec = float;
  using ivec = int32_t;
  static vec zero() { return 0.0f; }
  static vec load(const float* p) { return *p; }
  static vec bcast(float v) { return v; }
  static vec fma(vec a, vec b, vec c) { return a * b + c; }
  static vec add(vec a, vec b) { return a + b; }
  static float sum(vec a) { return a; }
  static void store(float* p, vec v) { *p = v; }
  template <int BC>
  static vec repeat(const float* x) { return *x; }  // only BC == 1 reaches here (BC <= W)
  static ivec idx_u16(const uint16_t* p) { return *p; }
  static ivec idx_i32(const int32_t* p) { return *p; }
  static ivec ibcast(int32_t v) { return v; }
  static ivec clamp_idx(ivec i, ivec last, ivec& worst) {
    worst = static_cast<uint32_t>(i) > static_cast<uint32_t>(worst) ? i : worst;
    return static_cast<uint32_t>(i) < static_cast<uint32_t>(last) ? i : last;
  }
  static int64_t hmax(ivec v) { return static_cast<uint32_t>(v); }
  static vec gather(const float* base, ivec i) { return base[i]; }
  static vec load_i8(const int8_t* p) { return static_cast<float>(*p); }
  static float fmas(float a, float b, float c) { return a * b + c; }
  static uint32_t s24_index(uint32_t word) { return word; }
  static vec s24_pick(const float* x32, uint32_t word, int u) { return x32[(u >> 1) * 4 + ((word >> (2 * u)) & 3)]; }
};

}  // namespace

const SparseKernels sparse_kernels_scalar = SparseImpl<ScalarV>::table();

}  // namespace fastq::cpu
