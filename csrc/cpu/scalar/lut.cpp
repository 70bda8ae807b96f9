// Scalar codebook linear micro-kernels: lut_impl.h over plain 16-element arrays. The portable
// fallback and the model the SIMD traits follow (fma is a * b + c with two roundings here: the
// contract is the reference's error bound, not bit equality).
#include "cpu/kernels.h"
#include "cpu/lut_impl.h"

namespace fastq::cpu {
namespace {

struct ScalarLut {
  struct V {
    float v[16];
  };
  struct I {
    int32_t v[16];
  };
  using Tab = V;
  static constexpr int kMaxMR = 4;
  static constexpr int nr(int mr) { return mr == 1 ? 8 : 4; }
  static constexpr int kDqMR = 4, kDqNB = 1, kDqNB1 = 2;
  static constexpr int kLutMR = 4, kLutNB = 1, kLutNB1 = 2;
  static V zero() { return V{}; }
  static V load(const float* p) { return load_part(p, 16); }
  static V load_part(const float* p, int valid) {
    V r{};
    for (int l = 0; l < valid; ++l) r.v[l] = p[l];
    return r;
  }
  static void store_part(float* p, const V& v, int valid) {
    for (int l = 0; l < valid; ++l) p[l] = v.v[l];
  }
  static V bcast(float x) {
    V r;
    for (float& e : r.v) e = x;
    return r;
  }
  static V add(V a, const V& b) {
    for (int l = 0; l < 16; ++l) a.v[l] = a.v[l] + b.v[l];
    return a;
  }
  static V mul(V a, const V& b) {
    for (int l = 0; l < 16; ++l) a.v[l] = a.v[l] * b.v[l];
    return a;
  }
  static V fma(const V& a, const V& b, V c) {
    for (int l = 0; l < 16; ++l) c.v[l] = a.v[l] * b.v[l] + c.v[l];
    return c;
  }
  static V keep_first(V v, int valid) {
    for (int l = valid; l < 16; ++l) v.v[l] = 0.0f;
    return v;
  }
  static float hsum(const V& v) {
    float s = 0.0f;
    for (float e : v.v) s = s + e;
    return s;
  }
  static I expand(const uint8_t* p) {
    I r;
    for (int l = 0; l < 16; ++l) r.v[l] = p[l];
    return r;
  }
  static I srl(I v, int s) {
    for (int32_t& e : v.v) e = static_cast<int32_t>(static_cast<uint32_t>(e) >> s);
    return v;
  }
  static Tab table(const float* p) { return load(p); }
  static V lookup(const I& idx, const Tab& t) {
    V r;
    for (int l = 0; l < 16; ++l) r.v[l] = t.v[idx.v[l] & 15];
    return r;
  }
  static V gather(const float* base, const I& idx) {
    V r;
    for (int l = 0; l < 16; ++l) r.v[l] = base[idx.v[l] & 255];
    return r;
  }
};

}  // namespace

const LutKernels lut_kernels_scalar = LutImpl<ScalarLut>::table();

}  // namespace fastq::cpu
