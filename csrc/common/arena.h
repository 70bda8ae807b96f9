// scratch(bytes): a 64-byte-aligned buffer of at least `bytes` owned by the calling thread, valid
// until its next scratch() call. The one exception to "C++ never allocates" (csrc/README.md says
// why): a prepared layer's workspace (W8A8 activations, a transposed or widened x, a float32 y
// before rounding) depends on M, which only the call knows, and asking Python for it would cost a
// second crossing per call. The buffer grows to the largest request seen and is kept for reuse;
// above kArenaKeepBytes it is released again when the call ends (release_large_scratch), so a
// one-off huge batch does not pin memory. Contents are undefined; nothing but bytes lives there.
#pragma once
#include <cstddef>

namespace fastq {

constexpr size_t kArenaKeepBytes = size_t{64} << 20;

void* scratch(size_t bytes);
void release_large_scratch();

}  // namespace fastq
