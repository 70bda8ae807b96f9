"""Every fastq CUDA kernel once, on small shapes, for compute-sanitizer (memcheck / racecheck).

Run: ``compute-sanitizer --tool memcheck python bench/gpu_sanitize.py`` (bench/gpu_suite.sh does this).
Invariants: each case calls the op as users do (``torch.ops.fastq``) on fresh random inputs, checks
that the native CUDA kernel ran (``fastq.native_calls``) and compares with the reference run on
the CPU copies of the inputs (the specification, whatever the GPU's own float library does; exact
where the math is integer, a loose relative bound otherwise: correctness is the CUDA tests' job,
this script is about memory accesses and races). Shapes are small (the sanitizer slows kernels
100x) but cover every launch path: warp/block/grid quantize rows, static scales, M <= 16 weight
streaming and M > 16 tiled GEMM, vector tails, misaligned views, the mma.sp tensor-core path.
Exit 0 when every case ran and matched, 1 otherwise; no CUDA device: a message and exit 3.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Tuple

import torch

DEV = "cuda"


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double().cpu(), ref.double().cpu()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _cpu(*args):
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def _cases() -> List[Tuple[str, str, Callable[[], bool]]]:
    """(name, op whose native CUDA call count must grow, run -> matched) for every kernel path."""
    import fastq  # noqa: F401  (registers torch.ops.fastq)
    from fastq.ops import _library as L
    from fastq.ops import reference as R

    ops = torch.ops.fastq
    g = torch.Generator().manual_seed(20261204)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype).to(DEV)

    def int8(*shape):
        return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g).to(DEV)

    def quant(shape, group, sym, static, dtype=torch.float32):
        def run():
            x = randn(*shape, dtype=dtype)
            scale = zp = None
            if static:
                q = R.quantize_int8(x, group, sym)
                scale, zp = q[1], (None if sym else q[2])
            got = ops.quantize_int8(x, group, sym, scale, zp)
            want = R.quantize_int8(*_cpu(x, group, sym, scale, zp))
            return all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(got, want))
        return run

    def dequant(shape, sym):
        def run():
            codes, scale, zp = R.quantize_int8(randn(*shape), -1, sym)
            zp = None if sym else zp
            return torch.equal(ops.dequantize_int8(codes, scale, zp, torch.bfloat16).cpu(),
                               R.dequantize_int8(*_cpu(codes, scale, zp, torch.bfloat16)))
        return run

    def gemm(m, n, k, offset=0):
        def run():
            a = int8(m * k + offset)[offset:].view(m, k)
            b = int8(n * k + offset)[offset:].view(n, k)
            return torch.equal(ops.int8_gemm(a, b).cpu(), R.int8_gemm(a.cpu(), b.cpu()))
        return run

    def w8a8(m, n, k, sym, dtype=torch.float32):
        def run():
            x, wp = randn(m, k, dtype=dtype), ops.int8_pack_weight(int8(n, k))
            ws, bias = randn(n).abs() * 0.01 + 1e-3, randn(n)
            y = ops.int8_linear_dynamic(x, wp, ws, bias, n, sym, dtype)
            return torch.equal(y.cpu(), R.int8_linear_dynamic(*_cpu(x, wp, ws, bias, n, sym, dtype)))
        return run

    def weight_only(m, n, k, groups, dtype=torch.bfloat16):
        def run():
            x, wp = randn(m, k, dtype=dtype), ops.int8_pack_weight(int8(n, k))
            ws, bias = randn(n, groups).abs() * 0.01 + 1e-3, randn(n)
            y = ops.int8_weight_only_linear(x, wp, ws, bias, n)
            return _rel_err(y, R.int8_weight_only_linear(x, wp, ws, bias, n)) < 2e-2
        return run

    def mask24(n, k):
        return (torch.rand(n, k // 4, 4, generator=g).argsort(dim=2) < 2).reshape(n, k)

    def sparse_csr(m, n, k):
        def run():
            w, mask = torch.randn(n, k, generator=g), torch.rand(n, k, generator=g) > 0.7
            packed = [t.to(DEV) for t in L.sparse_csr_pack(w, mask)]
            x, bias = randn(m, k), randn(n)
            return _rel_err(ops.sparse_csr_linear(x, *packed, bias, n),
                            R.sparse_csr_linear(x, *packed, bias, n)) < 1e-5
        return run

    def sparse_24(m, n, k, dtype):
        def run():
            w = torch.randn(n, k, generator=g)
            values, meta = (t.to(DEV) for t in L.sparse_24_pack(w, mask24(n, k)))
            x, bias = randn(m, k, dtype=dtype), randn(n)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            return _rel_err(ops.sparse_24_linear(x, values, meta, bias),
                            R.sparse_24_linear(x, values, meta, bias)) < tol
        return run

    cases = [
        ("quantize per row, warp per row", "quantize_int8", quant((37, 200), -1, True, False)),
        ("quantize per row asym bf16", "quantize_int8", quant((9, 65), -1, False, False, torch.bfloat16)),
        ("quantize per row, block per row", "quantize_int8", quant((3, 5001), -1, True, False)),
        ("quantize per row, vector kernel", "quantize_int8", quant((3, 9000), -1, False, False)),
        ("quantize per row, vector kernel bf16", "quantize_int8", quant((2, 20000), -1, True, False, torch.bfloat16)),
        ("quantize per tensor, grid reduction", "quantize_int8", quant((1, 70001), 0, False, False)),
        ("quantize groups of 32", "quantize_int8", quant((5, 128), 32, True, False)),
        ("quantize static per row", "quantize_int8", quant((7, 33), -1, False, True)),
        ("dequantize sym", "dequantize_int8", dequant((11, 130), True)),
        ("dequantize asym", "dequantize_int8", dequant((3, 77), False)),
        ("int8_gemm tails", "int8_gemm", gemm(17, 33, 65)),
        ("int8_gemm tiles", "int8_gemm", gemm(300, 260, 200)),
        ("int8_gemm misaligned", "int8_gemm", gemm(37, 45, 64, offset=1)),
        ("w8a8 M=1 streaming", "int8_linear_dynamic", w8a8(1, 300, 2000, True)),
        ("w8a8 M=16 streaming asym", "int8_linear_dynamic", w8a8(16, 130, 1100, False)),
        ("w8a8 M=90 tiled bf16", "int8_linear_dynamic", w8a8(90, 72, 200, True, torch.bfloat16)),
        ("w8a8 M=600 tiled asym", "int8_linear_dynamic", w8a8(600, 700, 300, False)),
        ("weight-only M=1 per channel", "int8_weight_only_linear", weight_only(1, 1000, 2050, 1)),
        ("weight-only M=9 groups", "int8_weight_only_linear", weight_only(9, 20, 36, 3, torch.float32)),
        ("weight-only M=33 fp16", "int8_weight_only_linear", weight_only(33, 300, 1000, 1, torch.float16)),
        ("sparse csr M=1", "sparse_csr_linear", sparse_csr(1, 65, 132)),
        ("sparse csr M=33", "sparse_csr_linear", sparse_csr(33, 65, 132)),
        ("sparse 2:4 fp32 cuda cores", "sparse_24_linear", sparse_24(33, 40, 260, torch.float32)),
        ("sparse 2:4 bf16 mma.sp small", "sparse_24_linear", sparse_24(7, 65, 132, torch.bfloat16)),
        ("sparse 2:4 bf16 mma.sp tiles", "sparse_24_linear", sparse_24(300, 260, 1028, torch.bfloat16)),
    ]
    return cases


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device; nothing to check")
        return 3
    import fastq

    if not fastq._native.build_info().get("cuda"):
        print(f"gpu_sanitize: fastq was built without CUDA ({fastq._native.IMPORT_ERROR or 'CPU-only build'})")
        return 1
    failed = []
    cases = _cases()
    for name, op, run in cases:
        before = fastq.native_calls(op, "cuda")
        t0 = time.perf_counter()
        try:
            ok = run()
            torch.cuda.synchronize()
            ran = fastq.native_calls(op, "cuda") > before
            status = "ok" if ok and ran else ("mismatch" if ran else "native kernel did not run")
        except Exception as exc:  # report every case; a sticky CUDA error fails the rest too
            status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        print(f"  {name:40s} {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if status != "ok":
            failed.append(name)
    print(f"gpu_sanitize: {len(failed)} of {len(cases)} cases failed" + (f": {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
