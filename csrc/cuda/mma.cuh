// Thin wrappers over the sm_80+ PTX the int8 GEMM and 2:4 sparse kernels use: cp.async (16-, 8-
// and 4-byte, with zero fill), ldmatrix, 32-bit shared loads and stores, mma.sync m16n8k32 with
// int8/uint8 operands and the sparse mma.sp m16n8k32 with bf16 operands.
// Invariants: every wrapper that touches shared memory carries a "memory" clobber so the compiler
// never moves ordinary accesses across it; predicated-off copies read nothing (src-size 0) and
// zero-fill their destination, and callers still pass an in-bounds address.
#pragma once
#include <cstdint>

namespace fastq::cuda {
namespace {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared (L2 only: streamed data); zero-filled when !pred.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0)
               : "memory");
}

// 8 bytes global -> shared (through L1); zero-filled when !pred.
__device__ __forceinline__ void cp_async8(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 8 : 0)
               : "memory");
}

// 4 bytes global -> shared; zero-filled when !pred.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}

// Four 8x8 b16 matrices (= four 8-row x 16-byte int8 tiles); lanes 8q..8q+7 address matrix q's
// rows; lane l receives word (l % 4) of row (l / 4) of matrix q in r[q].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// 16-byte global load that bypasses L1 (each weight byte is read once).
__device__ __forceinline__ uint4 ldg_stream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// c += a . b over a 16x8x32 tile: A row-major [16][32] (int8, or uint8 when kU8), B column-major
// [32][8] int8, C int32. Fragments (g = lane / 4, t = lane % 4):
//   a[0]: row g,   k 4t..4t+3     a[1]: row g+8, k 4t..4t+3
//   a[2]: row g,   k 16+4t..      a[3]: row g+8, k 16+4t..
//   b[0]: col g,   k 4t..4t+3     b[1]: col g,   k 16+4t..
//   c[0], c[1]: row g, cols 2t, 2t+1     c[2], c[3]: row g+8, cols 2t, 2t+1
template <bool kU8>
__device__ __forceinline__ void mma_s8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (kU8) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// c += A . B over a 16x8x32 tile with A 2:4 sparse (PTX ISA 9.7.14.6: mma.sp): A row-major
// [16][32] given as its 16 kept bf16 per row plus 2-bit column indices (`meta`, sparsity selector
// 0: lanes 4g and 4g + 1 supply it), B column-major [32][8] bf16, C float32. Fragments
// (g = lane / 4, t = lane % 4; A columns are positions among a row's 16 kept values):
//   a[0]: row g,   kept 2t, 2t+1 (4-column chunk t)     a[1]: row g+8, kept 2t, 2t+1
//   a[2]: row g,   kept 8+2t, 9+2t (chunk 4+t)           a[3]: row g+8, kept 8+2t, 9+2t
//   b[q]: col g, k 8q+2t, 8q+2t+1 (q = 0..3)             (low half = lower index, everywhere)
//   c[0], c[1]: row g, cols 2t, 2t+1                     c[2], c[3]: row g+8, cols 2t, 2t+1
//   meta, lane 4g+h (h = 0, 1): bits 0..15 = row g's 8 index pairs of k 16h..16h+15, bits
//   16..31 = row g+8's; each pair is a nibble (lower index in bits 0-1, strictly greater index in
//   bits 2-3), chunk order from the least significant nibble. See sparse.cu for the sources.
// The ::ordered_metadata form (PTX ISA 8.5, CUDA 12.5) is the one the ISA recommends; both forms
// compute the same product for sorted indices, which is all the callers pass.
__device__ __forceinline__ void mma_sp_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                            uint32_t meta) {
#if defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5))
#define FASTQ_MMA_SP "mma.sp::ordered_metadata"
#else
#define FASTQ_MMA_SP "mma.sp"
#endif
  asm volatile(FASTQ_MMA_SP
               ".sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
#undef FASTQ_MMA_SP
}

}  // namespace
}  // namespace fastq::cuda
