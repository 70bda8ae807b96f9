// CPU ISA detection (cpuid + xgetbv, so an OS that does not save AVX-512 state is respected) and
// the process-wide active level. Compiled with no ISA flags. The active level starts at the
// detected one, lowered by FASTQ_CPU_ISA when set; set_cpu_isa may only lower it further.
// AMX also needs the Linux permission request for tile data, made once per process (detect_amx);
// when anything is missing the AVX-512 tier serves and amx_status() keeps the reason.
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cerrno>
#include <string>

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

// ---- AMX ----
struct AmxState {
  bool usable = false, emulated = false;
  std::string status;
};

// Called once, when the vector tier is known. Order: emulation request, CPUID, XCR0, permission.
AmxState detect_amx(int vector_level) {
  AmxState s;
  const char* emu = std::getenv("FASTQ_AMX_EMULATE");
  if (vector_level < cpu::kAvx512) {
    s.status = "not available: needs the avx512 tier (F/BW/DQ/VL/VNNI) first";
    return s;
  }
  if (emu && std::strcmp(emu, "1") == 0) {
    s.usable = s.emulated = true;
    s.status = "emulated in software (FASTQ_AMX_EMULATE=1): for tests only, slow";
    return s;
  }
  unsigned a, b, c, d;
  __get_cpuid_count(7, 0, &a, &b, &c, &d);
  const bool tile = d & (1u << 24), int8 = d & (1u << 25), bf16 = d & (1u << 22);
  if (!(tile && int8 && bf16)) {
    s.status = "not available: this CPU lacks AMX-TILE/AMX-INT8/AMX-BF16";
    return s;
  }
#ifndef FASTQ_WITH_AMX
  s.status = "not available: this build has no AMX kernels (its compiler lacks -mamx-tile/-mamx-int8/-mamx-bf16)";
  return s;
#endif
  if ((xgetbv0() & (3u << 17)) != (3u << 17)) {
    s.status = "not available: the OS does not enable tile state (XCR0 bits 17-18)";
    return s;
  }
#ifdef __linux__
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    const int err = errno;
    s.status = std::string("not available: the kernel refused arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) (") +
               std::strerror(err) + "); AVX-512 VNNI serves instead";
    return s;
  }
  s.usable = true;
  s.status = "available (hardware; tile data permission granted)";
#else
  s.status = "not available: tile data permission is only requested on Linux";
#endif
  return s;
}

const AmxState& amx() {
  static const AmxState s = detect_amx(detect());
  return s;
}

int detect_all() {
  const int level = detect();
  return level == cpu::kAvx512 && amx().usable ? cpu::kAmx : level;
}

int level_from_name(const char* name) {
  for (int l = cpu::kScalar; l <= cpu::kAmx; ++l)
    if (std::strcmp(name, cpu_isa_name(l)) == 0) return l;
  return -1;
}

int initial_level() {
  int level = detect_all();
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
  static const int level = detect_all();
  return level;
}

const char* cpu_amx_status() { return amx().status.c_str(); }
bool cpu_amx_emulated() { return amx().emulated; }

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
    case cpu::kAmx: return "amx";
    default: return "unknown";
  }
}

}  // namespace fastq
