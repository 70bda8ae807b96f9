// Picks the active ISA's kernel table. Compiled with NO ISA flags: nothing here may execute an
// instruction the machine lacks.
#include "cpu/kernels.h"

// ---- prepared layers: a per-call cap on the tier (plan routes; see ScopedIsaCap) ----
namespace fastq::cpu {
namespace {
thread_local int t_isa_cap = -1;
}  // namespace

ScopedIsaCap::ScopedIsaCap(int cap) : saved_(t_isa_cap) { t_isa_cap = cap; }
ScopedIsaCap::~ScopedIsaCap() { t_isa_cap = saved_; }

int effective_isa() {
  const int active = cpu_isa_active();
  return t_isa_cap >= 0 && t_isa_cap < active ? t_isa_cap : active;
}

}  // namespace fastq::cpu

namespace fastq::cpu {

const QuantKernels& quant_kernels() {
  switch (effective_isa()) {
    case kAmx:  // AMX adds tiles only: the vector kernels are AVX-512's
    case kAvx512: return quant_kernels_avx512;
    case kAvx2: return quant_kernels_avx2;
    default: return quant_kernels_scalar;
  }
}

const GemmKernels& gemm_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return gemm_kernels_avx512;
    case kAvx2: return gemm_kernels_avx2;
    default: return gemm_kernels_scalar;
  }
}

}  // namespace fastq::cpu

// ---- sparse masked matmul ----
namespace fastq::cpu {

const SparseKernels& sparse_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return sparse_kernels_avx512;
    case kAvx2: return sparse_kernels_avx2;
    default: return sparse_kernels_scalar;
  }
}

const SparseEllKernels& sparse_ell_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return sparse_ell_kernels_avx512;
    case kAvx2: return sparse_ell_kernels_avx2;
    default: return sparse_ell_kernels_scalar;
  }
}

}  // namespace fastq::cpu

// ---- AMX tier ----
namespace fastq::cpu {

const GemmKernels* gemm_kernels_amx_tier() {
  if (effective_isa() != kAmx) return nullptr;
  if (cpu_amx_emulated()) return &gemm_kernels_amx_emu;
#ifdef FASTQ_WITH_AMX
  return &gemm_kernels_amx;
#else
  return nullptr;  // unreachable: isa.cpp never detects hardware AMX in such a build
#endif
}

}  // namespace fastq::cpu

// ---- codebook (weight sharing) linear ----
namespace fastq::cpu {

const LutKernels& lut_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return lut_kernels_avx512;
    case kAvx2: return lut_kernels_avx2;
    default: return lut_kernels_scalar;
  }
}

}  // namespace fastq::cpu

// ---- static W8A8 activation quantization (accuracy toolkit) ----
namespace fastq::cpu {

const StaticActKernels& static_act_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return static_act_kernels_avx512;
    case kAvx2: return static_act_kernels_avx2;
    default: return static_act_kernels_scalar;
  }
}

}  // namespace fastq::cpu

// ---- sub-8-bit integer weights ----
namespace fastq::cpu {

const IntxKernels& intx_kernels() {
  switch (effective_isa()) {
    case kAmx:
    case kAvx512: return intx_kernels_avx512;
    case kAvx2: return intx_kernels_avx2;
    default: return intx_kernels_scalar;
  }
}

}  // namespace fastq::cpu
