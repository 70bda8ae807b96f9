// Picks the active ISA's kernel table. Compiled with NO ISA flags: nothing here may execute an
// instruction the machine lacks.
#include "cpu/kernels.h"

namespace fastq::cpu {

const QuantKernels& quant_kernels() {
  switch (cpu_isa_active()) {
    case kAvx512: return quant_kernels_avx512;
    case kAvx2: return quant_kernels_avx2;
    default: return quant_kernels_scalar;
  }
}

const GemmKernels& gemm_kernels() {
  switch (cpu_isa_active()) {
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
    case kAvx512: return sparse_kernels_avx512;
    case kAvx2: return sparse_kernels_avx2;
    default: return sparse_kernels_scalar;
  }
}

const SparseEllKernels& sparse_ell_kernels() {
  switch (cpu_isa_active()) {
    case kAvx512: return sparse_ell_kernels_avx512;
    case kAvx2: return sparse_ell_kernels_avx2;
    default: return sparse_ell_kernels_scalar;
  }
}

}  // namespace fastq::cpu

// ---- sub-8-bit integer weights ----
namespace fastq::cpu {

const IntxKernels& intx_kernels() {
  switch (cpu_isa_active()) {
    case kAvx512: return intx_kernels_avx512;
    case kAvx2: return intx_kernels_avx2;
    default: return intx_kernels_scalar;
  }
}

}  // namespace fastq::cpu
