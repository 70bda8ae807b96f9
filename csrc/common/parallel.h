// parallel_for(begin, end, grain, threads, f): calls f(lo, hi) on disjoint contiguous ranges that
// cover [begin, end), on at most `threads` threads of fastq's pool (common/thread_pool.h) and
// never splitting below `grain` items per range (up to kChunksPerThread ranges per thread). Runs inline (no pool) when one range suffices,
// so small calls pay nothing. The split depends only on (begin, end, grain, threads), never on
// which thread runs a range, so results cannot depend on scheduling. f must not throw.
// FASTQ_THREADS=openmp (or set_parallel_backend(1)) runs the ranges in an OpenMP region instead, as
// before the pool existed: kept so benchmarks can compare the two in one process.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common/thread_pool.h"

namespace fastq {

constexpr int64_t kChunksPerThread = 4;

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
  if (parallel_backend() == kParallelOpenMP) {  // one range per thread, as before the pool
#pragma omp parallel num_threads(static_cast<int>(nt))
    {
      const int64_t t = omp_get_thread_num();
      const int64_t lo = begin + n * t / nt, hi = begin + n * (t + 1) / nt;
      if (lo < hi) f(lo, hi);
    }
    return;
  }
  // Up to kChunksPerThread ranges per thread: a worker that starts late then leaves the caller
  // waiting for at most one small range, and the others are taken by whoever is running.
  struct Ctx {
    const F* f;
    int64_t begin, n, chunks;
  } ctx{&f, begin, n, std::min<int64_t>(max_chunks, nt * kChunksPerThread)};
  run_tasks(ctx.chunks, static_cast<int>(nt), [](void* c, int64_t t) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    const int64_t lo = x.begin + x.n * t / x.chunks, hi = x.begin + x.n * (t + 1) / x.chunks;
    if (lo < hi) (*x.f)(lo, hi);
  }, &ctx);
}

}  // namespace fastq
