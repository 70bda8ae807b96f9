// The whole native API of fastq. Invariants:
//  - no torch, no allocation: every buffer is owned by the caller (Python allocates with torch);
//  - tensors arrive as raw pointers to contiguous row-major data plus sizes;
//  - one free function per (op, device); CUDA functions take an opaque cudaStream_t as void*;
//  - every function mirrors a torch.library op of the same name in fastq/ops/_library.py, whose
//    pure-PyTorch reference in fastq/ops/reference.py is the specification.
#pragma once
#include <cstdint>
#include <string>

namespace fastq {

// Floating dtypes crossing the seam. Values match fastq/_native.py's DTYPE_CODES.
enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

// ---- int8 quantize / dequantize -------------------------------------------------------------
// Both work on a contiguous [rows, cols] view with one (scale, zero_point) per row; per-tensor,
// per-row/token and per-group granularities are all expressed as such a view by the caller
// (per tensor: rows = 1 or scale_stride = 0; per group: rows = numel / group, cols = group).
struct QuantizeArgs {
  const void* x = nullptr;  // [rows, cols] of x_dtype
  DType x_dtype = DType::f32;
  void* codes = nullptr;          // [rows, cols] int8 (symmetric) or uint8 (asymmetric)
  float* scale = nullptr;         // [rows] (or [1] when scale_stride == 0)
  int32_t* zero_point = nullptr;  // like scale; asymmetric only
  int64_t rows = 0, cols = 0;
  int64_t scale_stride = 1;  // 1: a scale per row; 0: one scale for all rows (static only)
  bool symmetric = true;
  bool dynamic = true;  // true: compute and write scale/zero_point; false: read them
  int num_threads = 1;
};

struct DequantizeArgs {
  const void* codes = nullptr;  // [rows, cols] int8 (symmetric) or uint8 (asymmetric)
  bool symmetric = true;
  const float* scale = nullptr;
  const int32_t* zero_point = nullptr;  // asymmetric only
  void* y = nullptr;                    // [rows, cols] of y_dtype
  DType y_dtype = DType::f32;
  int64_t rows = 0, cols = 0;
  int64_t scale_stride = 1;
  int num_threads = 1;
};

void quantize_int8_cpu(const QuantizeArgs& args);
void dequantize_int8_cpu(const DequantizeArgs& args);

#ifdef FASTQ_WITH_CUDA
// `workspace` holds 4 int32 zero-initialised by the caller (used when rows == 1 and dynamic).
void quantize_int8_cuda(const QuantizeArgs& args, int32_t* workspace, void* stream);
void dequantize_int8_cuda(const DequantizeArgs& args, void* stream);
#endif

// ---- CPU ISA control --------------------------------------------------------------------------
// Levels: 0 scalar, 1 avx2 (AVX2+FMA+F16C), 2 avx512 (F/BW/DQ/VL/VNNI).
int cpu_isa_detected();
int cpu_isa_active();
void set_cpu_isa(int level);  // may only lower the detected level
const char* cpu_isa_name(int level);

}  // namespace fastq
