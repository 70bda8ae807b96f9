// Thread-local scratch arena (arena.h). Memory from aligned operator new; a failed allocation
// throws std::bad_alloc, which pybind11 turns into MemoryError.
#include "common/arena.h"

#include <new>

namespace fastq {
namespace {

struct Arena {
  void* p = nullptr;
  size_t cap = 0;
  ~Arena() { reset(); }
  void reset() {
    if (p) ::operator delete(p, std::align_val_t{64});
    p = nullptr;
    cap = 0;
  }
};

thread_local Arena t_arena;

}  // namespace

void* scratch(size_t bytes) {
  Arena& a = t_arena;
  if (bytes > a.cap) {
    a.reset();
    const size_t want = bytes + bytes / 4 + 4096;  // headroom: M grows a little between calls
    a.p = ::operator new(want, std::align_val_t{64});
    a.cap = want;
  }
  return a.p;
}

void release_large_scratch() {
  if (t_arena.cap > kArenaKeepBytes) t_arena.reset();
}

}  // namespace fastq
