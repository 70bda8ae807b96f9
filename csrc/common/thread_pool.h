// fastq's own worker pool for the CPU drivers (parallel.h: parallel_for runs on it).
//
// Invariants:
//  - run_tasks(tasks, threads, fn, ctx) calls fn(ctx, t) exactly once for every t in [0, tasks),
//    the calling thread included, on at most `threads` threads, and returns when all have run;
//  - tasks are claimed from a shared counter, so the caller never waits for a worker that has not
//    started: a worker that wakes late (or never gets a CPU on a busy machine) takes only the tasks
//    still unclaimed, and the caller runs the rest itself. It waits only for tasks already running;
//  - one job at a time: a call made while another thread's job is running, or from inside a task,
//    runs its tasks inline on the calling thread (same results: tasks never depend on the thread);
//  - idle workers spin briefly (yielding the CPU to other runnable threads, e.g. torch's OpenMP
//    pool), then sleep on a condition variable; nothing spins between calls for long;
//  - fn must not throw.
// Why not OpenMP: an OpenMP region ends at a barrier that waits for every thread of the team. With
// 2 vCPUs shared with other processes (and with torch's own spinning OpenMP workers), the second
// thread is often not on a CPU, and a 10 us kernel then waits a scheduler slice (measured in
// README "Threads").
#pragma once
#include <cstdint>

namespace fastq {

using TaskFn = void (*)(void* ctx, int64_t task);

void run_tasks(int64_t tasks, int threads, TaskFn fn, void* ctx);

// Workers currently alive (for tests and `fastq doctor`).
int pool_workers();

// Which runtime parallel_for uses: an OpenMP region (default) or the pool (FASTQ_THREADS=pool at
// start-up, or set_parallel_backend; see thread_pool.cpp for why OpenMP is the default).
enum ParallelBackend : int { kParallelPool = 0, kParallelOpenMP = 1 };
int parallel_backend();
void set_parallel_backend(int backend);

}  // namespace fastq
