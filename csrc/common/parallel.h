// parallel_for(begin, end, grain, threads, f): calls f(lo, hi) on disjoint contiguous ranges that
// cover [begin, end), on at most `threads` threads of fastq's pool (common/thread_pool.h) and
// never splitting below `grain` items per range. Runs inline (no pool) when one range suffices,
// so small calls pay nothing. The split depends only on (begin, end, grain, threads), never on
// which thread runs a range, so results cannot depend on scheduling. f must not throw.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/thread_pool.h"

namespace fastq {

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, int threads, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, max_chunks));
  if (nt == 1) {
    f(begin, end);
    return;
  }
  struct Ctx {
    const F* f;
    int64_t begin, n, nt;
  } ctx{&f, begin, n, nt};
  run_tasks(nt, static_cast<int>(nt), [](void* c, int64_t t) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    const int64_t lo = x.begin + x.n * t / x.nt, hi = x.begin + x.n * (t + 1) / x.nt;
    if (lo < hi) (*x.f)(lo, hi);
  }, &ctx);
}

}  // namespace fastq
