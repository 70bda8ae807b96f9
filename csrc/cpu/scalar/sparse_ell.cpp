// Scalar sliced-ELL micro-kernels: sparse_ell_impl.h over plain 16-float arrays. The portable
// fallback and the model the SIMD traits follow: a tile is a zero-padded copy of the 32 x, an index
// the step's 16 offset bytes (their low 5 bits pick, as in the SIMD tiers).
#include "cpu/kernels.h"
#include "cpu/sparse_ell_impl.h"

namespace fastq::cpu {
namespace {

struct ScalarEll {
  static constexpr int kMaxRows = 4;
  struct Lanes {
    float v[16];
  };
  struct Tile {
    float v[32];
  };
  using Weights = Lanes;
  using Index = const uint8_t*;
  static Lanes zero() { return Lanes{}; }
  static Tile load_tile(const float* p, int valid) {  // zero past `valid`, as the SIMD tiles
    Tile t{};
    for (int c = 0; c < valid; ++c) t.v[c] = p[c];
    return t;
  }
  template <class T>
  static Lanes load_weights(const T* p) {
    Lanes r;
    for (int l = 0; l < 16; ++l) r.v[l] = static_cast<float>(p[l]);
    return r;
  }
  static Index load_index(const uint8_t* p) { return p; }
  static Lanes pick(Tile t, Index i) {
    Lanes r;
    for (int l = 0; l < 16; ++l) r.v[l] = t.v[i[l] & 31];  // low 5 bits, like vpermt2ps
    return r;
  }
  static Lanes mul_nz(const Weights& w, const Lanes& x) {
    Lanes r;
    for (int l = 0; l < 16; ++l) r.v[l] = w.v[l] != 0.0f ? w.v[l] * x.v[l] : 0.0f;
    return r;
  }
  static Lanes add(Lanes a, const Lanes& b) {
    for (int l = 0; l < 16; ++l) a.v[l] = a.v[l] + b.v[l];
    return a;
  }
  static Lanes mul(Lanes a, const Lanes& b) {
    for (int l = 0; l < 16; ++l) a.v[l] = a.v[l] * b.v[l];
    return a;
  }
  static Lanes load_part(const float* p, int valid) {
    Lanes r{};
    for (int l = 0; l < valid; ++l) r.v[l] = p[l];
    return r;
  }
  static void store_part(float* p, const Lanes& v, int valid) {
    for (int l = 0; l < valid; ++l) p[l] = v.v[l];
  }
};

}  // namespace

const SparseEllKernels sparse_ell_kernels_scalar = SparseEllImpl<ScalarEll>::table();

}  // namespace fastq::cpu
