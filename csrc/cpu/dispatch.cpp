// Picks the active ISA's kernel table. Compiled with NO ISA flags: nothing here may execute an
// instruction the machine lacks.
#include "cpu/kernels.h"

namespace fastq::cpu {

const QuantKernels& quant_kernels() {
  switch (cpu_isa_active()) {
    case kAmx:  // AMX adds tiles only: the vector kernels are AVX-512's
    case kAvx512: return quant_kernels_avx512;
    case kAvx2: return quant_kernels_avx2;
    default: return quant_kernels_scalar;
  }
}

const GemmKernels& gemm_kernels() {
  switch (cpu_isa_active()) {
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
  switch (cpu_isa_active()) {
    case kAmx:
    case kAvx512: return sparse_kernels_avx512;
    case kAvx2: return sparse_kernels_avx2;
    default: return sparse_kernels_scalar;
  }
}

const SparseEllKernels& sparse_ell_kernels() {
  switch (cpu_isa_active()) {
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
  if (cpu_isa_active() != kAmx) return nullptr;
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
  switch (cpu_isa_active()) {
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
  switch (cpu_isa_active()) {
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
  switch (cpu_isa_active()) {
    case kAmx:
    case kAvx512: return intx_kernels_avx512;
    case kAvx2: return intx_kernels_avx2;
    default: return intx_kernels_scalar;
  }
}

}  // namespace fastq::cpu
