// The worker pool behind parallel_for (thread_pool.h states the contract).
//
// One job slot. Its `state` word packs (epoch << 32 | tasks << 16 | next task): a task is claimed
// by a compare-and-swap that checks epoch, task count and index at once, so a worker that read a
// stale epoch can never claim a task of the next job, and the job's fn/ctx are only read after a
// successful claim, when the job cannot have finished (its submitter is still waiting for that
// task). `done` counts finished tasks; the submitter returns when it reaches the task count.
#include "common/thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fastq {
namespace {

constexpr int kMaxWorkers = 255;
constexpr int64_t kMaxTasks = 0xffff;
constexpr int64_t kWakeWorthNs = 30'000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// How long an idle worker keeps polling (yielding its CPU between polls) before it sleeps:
// FASTQ_SPIN_US, default 50 us. Long enough to bridge the Python between two layers of a model,
// short enough not to hold a CPU that torch's next operator wants for long.
int64_t spin_ns() {
  static const int64_t ns = [] {
    const char* env = std::getenv("FASTQ_SPIN_US");
    const long us = env && *env ? std::strtol(env, nullptr, 10) : 50;
    return static_cast<int64_t>(us < 0 ? 0 : us) * 1000;
  }();
  return ns;
}

thread_local bool t_in_task = false;

uint64_t epoch_of(uint64_t s) { return s >> 32; }
int64_t tasks_of(uint64_t s) { return static_cast<int64_t>((s >> 16) & 0xffff); }
int64_t next_of(uint64_t s) { return static_cast<int64_t>(s & 0xffff); }

struct Pool {
  std::atomic<uint64_t> state{0};
  std::atomic<int64_t> done{0};
  std::atomic<TaskFn> fn{nullptr};
  std::atomic<void*> ctx{nullptr};
  std::atomic<int> helpers{0};  // workers with index < helpers take part in the current job
  std::atomic<bool> busy{false};
  std::atomic<int> sleepers{0};
  std::atomic<int> workers{0};
  std::mutex mu;  // guards sleeping (with cv) and worker creation
  std::condition_variable cv;

  // Claims and runs tasks of `epoch` until none is left.
  void work(uint64_t epoch) {
    uint64_t s = state.load(std::memory_order_acquire);
    while (epoch_of(s) == epoch && next_of(s) < tasks_of(s)) {
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        fn.load(std::memory_order_relaxed)(ctx.load(std::memory_order_relaxed), next_of(s));
        done.fetch_add(1, std::memory_order_release);
        s = state.load(std::memory_order_acquire);
      }
    }
  }

  void wait_new_epoch(uint64_t seen) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto spin = std::chrono::nanoseconds(spin_ns());
    for (int i = 0;; ++i) {
      if (epoch_of(state.load(std::memory_order_acquire)) != seen) return;
      if (i < 64) {
        cpu_relax();
      } else {
        std::this_thread::yield();  // let other runnable threads (torch's pool) have this CPU
        if ((i & 15) == 0 && std::chrono::steady_clock::now() - t0 > spin) break;
      }
    }
    std::unique_lock<std::mutex> lock(mu);
    sleepers.fetch_add(1);
    cv.wait(lock, [&] { return epoch_of(state.load()) != seen; });
    sleepers.fetch_sub(1);
  }

  void worker_main(int index) {
    t_in_task = true;  // a task that calls parallel_for runs it inline
    uint64_t seen = epoch_of(state.load(std::memory_order_acquire));
    for (;;) {
      wait_new_epoch(seen);
      seen = epoch_of(state.load(std::memory_order_acquire));
      if (index < helpers.load(std::memory_order_relaxed)) work(seen);
    }
  }

  void ensure_workers(int n) {
    if (workers.load(std::memory_order_acquire) >= n) return;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = workers.load(); i < n; ++i) {
      std::thread([this, i] { worker_main(i); }).detach();
      workers.store(i + 1, std::memory_order_release);
    }
  }
};

Pool* g_pool = nullptr;
std::once_flag g_atfork;

// After fork() only the forking thread exists: start a fresh pool (the old one is leaked; its
// mutex may have been held by a worker that no longer exists).
void reset_after_fork() { g_pool = nullptr; }

Pool& pool() {
  std::call_once(g_atfork, [] { pthread_atfork(nullptr, nullptr, reset_after_fork); });
  if (g_pool == nullptr) g_pool = new Pool();  // never destroyed: workers are detached
  return *g_pool;
}

}  // namespace

void run_tasks(int64_t tasks, int threads, TaskFn fn, void* ctx) {
  if (tasks <= 0) return;
  const int64_t want = std::min<int64_t>({static_cast<int64_t>(threads), tasks, kMaxWorkers + 1});
  Pool* p = want > 1 && tasks <= kMaxTasks && !t_in_task ? &pool() : nullptr;
  if (p == nullptr || p->busy.exchange(true, std::memory_order_acquire)) {
    for (int64_t t = 0; t < tasks; ++t) fn(ctx, t);  // nested, concurrent or single-threaded
    return;
  }
  p->ensure_workers(static_cast<int>(want - 1));
  p->fn.store(fn, std::memory_order_relaxed);
  p->ctx.store(ctx, std::memory_order_relaxed);
  p->helpers.store(static_cast<int>(want - 1), std::memory_order_relaxed);
  p->done.store(0, std::memory_order_relaxed);
  const uint64_t epoch = epoch_of(p->state.load(std::memory_order_relaxed)) + 1;
  p->state.store(epoch << 32 | static_cast<uint64_t>(tasks) << 16);  // seq_cst: publishes the fields above
  t_in_task = true;
  // Spinning workers join at once. Sleeping ones are woken only when the job looks long enough to
  // repay a wake-up (tens of microseconds on a busy machine): after the caller's first task, if the
  // tasks left would take longer than kWakeWorthNs at that task's pace.
  const auto t0 = std::chrono::steady_clock::now();
  bool woken = p->sleepers.load() == 0;
  uint64_t s = p->state.load(std::memory_order_acquire);
  while (epoch_of(s) == epoch && next_of(s) < tasks_of(s)) {
    if (!p->state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    fn(ctx, next_of(s));
    p->done.fetch_add(1, std::memory_order_release);
    s = p->state.load(std::memory_order_acquire);
    if (!woken) {
      woken = true;
      const int64_t left = tasks_of(s) - next_of(s);
      const int64_t per_task = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - t0).count();
      if (left > 0 && left * per_task > kWakeWorthNs && p->sleepers.load() > 0) {
        std::lock_guard<std::mutex> lock(p->mu);
        p->cv.notify_all();
      }
    }
  }
  t_in_task = false;
  for (int i = 0; p->done.load(std::memory_order_acquire) < tasks; ++i) {
    if (i < 256) cpu_relax();
    else std::this_thread::yield();  // a claimed task is running on a thread that may need this CPU
  }
  p->busy.store(false, std::memory_order_release);
}

int pool_workers() { return g_pool ? g_pool->workers.load() : 0; }

namespace {
std::atomic<int>& backend() {
  // OpenMP regions by default: torch loads the same libgomp, so after a torch op its workers are
  // still spinning and take the region at once, while the pool's worker would compete with them
  // for a CPU (quiet 2-vCPU Zen 4: the 6 x (768->3072->768) MLP at 128 tokens 11.9 ms with OpenMP,
  // 21.2 ms with the pool; README "Threads"). FASTQ_THREADS=pool selects the pool, which holds up
  // better when other processes oversubscribe the CPUs (a region's barrier then waits a slice).
  static std::atomic<int> b{[] {
    const char* env = std::getenv("FASTQ_THREADS");
    return env && std::string(env) == "pool" ? static_cast<int>(kParallelPool) : static_cast<int>(kParallelOpenMP);
  }()};
  return b;
}
}  // namespace

int parallel_backend() { return backend().load(std::memory_order_relaxed); }
void set_parallel_backend(int b) { backend().store(b == kParallelOpenMP ? kParallelOpenMP : kParallelPool); }

}  // namespace fastq
