// parallel_for(begin, end, grain, threads, f): calls f(lo, hi) on disjoint contiguous ranges that
// cover [begin, end), using at most `threads` OpenMP threads and never splitting below `grain`
// items per range. Runs inline (no OpenMP region) when one range suffices, so small calls pay
// nothing. f must not throw.
#pragma once
#include <algorithm>
#include <cstdint>

#include <omp.h>

namespace fastq {

template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, int threads, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, max_chunks)));
  if (nt == 1) {
    f(begin, end);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int64_t lo = begin + n * t / nt;
    const int64_t hi = begin + n * (t + 1) / nt;
    if (lo < hi) f(lo, hi);
  }
}

}  // namespace fastq
