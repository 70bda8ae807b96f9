// CPU ISA detection (cpuid + xgetbv, so an OS that does not save AVX-512 state is respected) and
// the process-wide active level. Compiled with no ISA flags. The active level starts at the
// detected one, lowered by FASTQ_CPU_ISA when set; set_cpu_isa may only lower it further.
#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "api.h"
#include "common/error.h"
#include "cpu/kernels.h"

namespace fastq {
namespace {

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

int detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return cpu::kScalar;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return cpu::kScalar;
  const uint64_t xcr0 = xgetbv0();
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return cpu::kScalar;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), avx512vnni = c & (1u << 11);
  if (os_avx512 && avx2 && fma && f16c && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni)
    return cpu::kAvx512;
  if (os_avx && avx2 && fma && f16c) return cpu::kAvx2;
  return cpu::kScalar;
}

int level_from_name(const char* name) {
  for (int l = cpu::kScalar; l <= cpu::kAvx512; ++l)
    if (std::strcmp(name, cpu_isa_name(l)) == 0) return l;
  return -1;
}

int initial_level() {
  int level = detect();
  if (const char* env = std::getenv("FASTQ_CPU_ISA"); env && *env) {
    const int wanted = level_from_name(env);
    // Unknown names and requests above the hardware are ignored here; fastq/_native.py reports them.
    if (wanted >= 0 && wanted < level) level = wanted;
  }
  return level;
}

std::atomic<int>& active() {
  static std::atomic<int> level{initial_level()};
  return level;
}

}  // namespace

int cpu_isa_detected() {
  static const int level = detect();
  return level;
}

int cpu_isa_active() { return active().load(std::memory_order_relaxed); }

void set_cpu_isa(int level) {
  FASTQ_CHECK(level >= cpu::kScalar && level <= cpu_isa_detected(), "ISA level ", level,
              " is not available (detected ", cpu_isa_name(cpu_isa_detected()), ")");
  active().store(level, std::memory_order_relaxed);
}

const char* cpu_isa_name(int level) {
  switch (level) {
    case cpu::kScalar: return "scalar";
    case cpu::kAvx2: return "avx2";
    case cpu::kAvx512: return "avx512";
    default: return "unknown";
  }
}

}  // namespace fastq
