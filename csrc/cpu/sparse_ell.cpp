// Driver of the sliced-ELL sparse linear: last-line argument checks, then the active ISA's
// micro-kernels (sparse_ell_impl.h) over disjoint ranges of 16-row groups, one OpenMP thread each.
// Every output element is written by exactly one thread; nothing is allocated here.
#include <algorithm>

#include "api.h"
#include "common/error.h"
#include "common/parallel.h"
#include "cpu/kernels.h"

namespace fastq {

// A task gets at least kMinWorkPerTask multiply-adds (stored slots x activation rows), the policy
// of sparse.cpp: waking an OpenMP worker costs more than a small layer's whole product.
constexpr int64_t kEllMinWorkPerTask = int64_t{1} << 18;

void sparse_ell_linear_cpu(const SparseEllArgs& a) {
  FASTQ_CHECK(a.x && a.y && a.values && a.offsets && a.steps && a.group_ptr, "null pointer");
  FASTQ_CHECK(a.m > 0 && a.n > 0 && a.k > 0, "empty problem m=", a.m, " n=", a.n, " k=", a.k);
  FASTQ_CHECK(!a.int8 || a.scale, "sparse_ell_linear: int8 values need scale");
  const int64_t groups = (a.n + 15) / 16;
  const auto& kern = cpu::sparse_ell_kernels();
  const cpu::SparseEllGroupsFn fn = a.int8 ? kern.int8 : kern.f32;
  const int64_t work = std::max<int64_t>(1, (a.group_ptr[groups] - a.group_ptr[0]) * 16) * a.m;
  const int64_t grain = std::max<int64_t>(1, (kEllMinWorkPerTask * groups + work - 1) / work);
  parallel_for(0, groups, grain, a.num_threads, [&](int64_t g0, int64_t g1) { fn(a, g0, g1); });
}

}  // namespace fastq
