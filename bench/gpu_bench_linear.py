"""CUDA benchmark of the int8 GEMM family against cuBLAS (torch._int_mm, bf16 torch.mm / F.linear).

Run: ``PYTHONPATH=. python bench/gpu_bench_linear.py [--quick] [--json out.json]``. Prints one
table per section; exits 0 with a note when no CUDA device is present.

Method (invariants): CUDA events around each sample of `reps` back-to-back calls (replayed from a
CUDA graph unless --eager, so launch and Python overhead are excluded), warm-up first, medians;
inputs drawn at random once (never zeros); weights rotated through enough copies that the set
exceeds twice the L2 cache, so memory-bound cases read DRAM and not L2. Every timed op of a row
runs in the same process, interleaved round-robin, so ratios are fair. Sections:
  * copy bandwidth: device-to-device copy of 1 GiB (read + write bytes), the practical roofline;
  * quantize per token: fastq quantize_int8 on 64M elements (fp32 and bf16 rows of 8192), bytes
    read + written over the copy bandwidth, beside the same math as a PyTorch expression;
  * GEMM (M x K x N): fastq int8_gemm (int32 out), fastq int8_linear_dynamic (bf16 in/out, W8A8
    fused), torch._int_mm (int8 cuBLASLt; needs M > 16), "quantize + _int_mm" (fastq's per-token
    quantize then torch._int_mm: the unfused route, without even a dequantize epilogue), bf16
    torch.mm; TOP/s and ratios;
  * weight streaming (M <= 16): int8_linear_dynamic, TB/s of weight bytes, vs bf16 F.linear;
  * weight-only M=1: int8_weight_only_linear (bf16, per channel and group 128) vs bf16 F.linear.
The targets these rows are judged by live in bench/gpu_suite_summary.py.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

ISSUE_SHAPES = [(768, 768), (768, 3072), (4096, 4096), (4096, 11008)]  # K x N
ISSUE_MS = [1, 8, 32, 128, 512]
GRAPHS = True  # time CUDA-graph replays (kernel time); --eager times Python-dispatched calls


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(0)
    return int(getattr(props, "L2_cache_size", 50 * 2**20) or 50 * 2**20)


def _copies(bytes_each: int, cap_bytes: int = 6 * 2**30) -> int:
    """How many rotated copies keep a working set above 2x L2 (at most cap_bytes in all)."""
    want = math.ceil(2 * _l2_bytes() / max(bytes_each, 1)) + 1
    return max(1, min(want, cap_bytes // max(bytes_each, 1)))


def _capture(fn: Callable[[int], object], reps: int) -> "torch.cuda.CUDAGraph":
    """A CUDA graph of fn(0), ..., fn(reps - 1): replaying it runs the kernels back to back with no
    Python or launch overhead in between (kernel time, which is what the roofline speaks to)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(reps):  # warm-up on a side stream, as torch requires before capture
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fn(i)
    return graph


def time_round_robin(fns: Dict[str, Callable[[int], object]], iters: int, warmup: int, reps: int = 10,
                     graphs: bool = True) -> Dict[str, float]:
    """Median milliseconds per fn(i) call (i picks the rotated inputs), the ops interleaved.

    Each sample times ``reps`` consecutive calls between two events (replayed from a CUDA graph
    when ``graphs``; eager calls otherwise, which include the op's Python dispatch cost)."""
    runners: Dict[str, Callable[[], None]] = {}
    for name, fn in fns.items():
        if graphs:
            try:
                graph = _capture(fn, reps)
                runners[name] = graph.replay
                continue
            except RuntimeError as exc:  # an op that cannot be captured: time it eagerly
                print(f"  ({name}: CUDA graph capture failed, timing eagerly: {exc})")
        runners[name] = lambda fn=fn: [fn(i) for i in range(reps)]
    for _ in range(warmup):
        for run in runners.values():
            run()
    torch.cuda.synchronize()
    times: Dict[str, List[float]] = {k: [] for k in runners}
    for _ in range(iters):
        for name, run in runners.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def _fmt(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:8.3f}"


def bench_gemm(m: int, k: int, n: int, iters: int, warmup: int) -> dict:
    ops = torch.ops.fastq
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(m + k + n)
    copies = _copies(n * k)
    w8 = [torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=g) for _ in range(copies)]
    wp = [ops.int8_pack_weight(w) for w in w8]
    wt8 = [w.t() for w in w8]  # [K, N] column-major view: what cuBLASLt int8 wants
    wbf = [w.to(torch.bfloat16) for w in w8]
    ws = torch.rand(n, device=dev, generator=g) * 0.01 + 1e-3
    a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev, generator=g)
    xbf = torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16)
    fns = {
        "fastq_int8_gemm": lambda i: ops.int8_gemm(a8, w8[i % copies]),
        "fastq_w8a8_bf16": lambda i: ops.int8_linear_dynamic(xbf, wp[i % copies], ws, None, n, True, torch.bfloat16),
        "bf16_mm": lambda i: torch.mm(xbf, wbf[i % copies].t()),
    }
    try:
        torch._int_mm(a8, wt8[0])
        fns["torch_int_mm"] = lambda i: torch._int_mm(a8, wt8[i % copies])
        fns["quantize_int_mm"] = lambda i: torch._int_mm(ops.quantize_int8(xbf, -1, True)[0], wt8[i % copies])
    except RuntimeError:
        pass  # cuBLASLt int8 needs M > 16 and multiples of 8
    ms = time_round_robin(fns, iters, warmup, reps=max(10, copies), graphs=GRAPHS)
    ops_count = 2.0 * m * n * k
    row = {"m": m, "k": k, "n": n, **{f"{name}_ms": v for name, v in ms.items()}}
    for name, v in ms.items():
        row[f"{name}_tops"] = ops_count / (v * 1e-3) / 1e12
    if "torch_int_mm" in ms:
        row["int8_gemm_vs_int_mm"] = ms["torch_int_mm"] / ms["fastq_int8_gemm"]
        row["w8a8_vs_quantize_int_mm"] = ms["quantize_int_mm"] / ms["fastq_w8a8_bf16"]
    row["int8_gemm_vs_bf16"] = ms["bf16_mm"] / ms["fastq_int8_gemm"]
    row["w8a8_vs_bf16"] = ms["bf16_mm"] / ms["fastq_w8a8_bf16"]
    return row


def bench_streaming(m: int, k: int, n: int, iters: int, warmup: int) -> dict:
    ops = torch.ops.fastq
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(7 * m + k + n)
    copies = _copies(n * k)
    wp = [ops.int8_pack_weight(torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=g))
          for _ in range(copies)]
    wbf = [torch.randn(n, k, device=dev, generator=g).to(torch.bfloat16) for _ in range(_copies(2 * n * k))]
    ws = torch.rand(n, device=dev, generator=g) * 0.01 + 1e-3
    x = torch.randn(m, k, device=dev, generator=g)
    xbf = x.to(torch.bfloat16)
    fns = {
        "fastq_w8a8": lambda i: ops.int8_linear_dynamic(x, wp[i % copies], ws, None, n, True, torch.float32),
        "bf16_linear": lambda i: F.linear(xbf, wbf[i % len(wbf)]),
    }
    ms = time_round_robin(fns, iters, warmup, reps=max(10, copies, len(wbf)), graphs=GRAPHS)
    return {"m": m, "k": k, "n": n, "fastq_w8a8_ms": ms["fastq_w8a8"], "bf16_linear_ms": ms["bf16_linear"],
            "w8a8_weight_tbps": n * k / (ms["fastq_w8a8"] * 1e-3) / 1e12,
            "bf16_weight_tbps": 2 * n * k / (ms["bf16_linear"] * 1e-3) / 1e12,
            "speedup_vs_bf16": ms["bf16_linear"] / ms["fastq_w8a8"]}


def bench_weight_only(m: int, k: int, n: int, group: int, iters: int, warmup: int) -> dict:
    ops = torch.ops.fastq
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(11 * m + k + n + group)
    copies = _copies(n * k)
    wp = [ops.int8_pack_weight(torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=g))
          for _ in range(copies)]
    wbf = [torch.randn(n, k, device=dev, generator=g).to(torch.bfloat16) for _ in range(_copies(2 * n * k))]
    groups = 1 if group == 0 else k // group
    ws = torch.rand(n, groups, device=dev, generator=g) * 0.01 + 1e-3
    xbf = torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16)
    fns = {
        "fastq_wo": lambda i: ops.int8_weight_only_linear(xbf, wp[i % copies], ws, None, n),
        "bf16_linear": lambda i: F.linear(xbf, wbf[i % len(wbf)]),
    }
    ms = time_round_robin(fns, iters, warmup, reps=max(10, copies, len(wbf)), graphs=GRAPHS)
    return {"m": m, "k": k, "n": n, "group": group, "fastq_wo_ms": ms["fastq_wo"], "bf16_linear_ms": ms["bf16_linear"],
            "wo_weight_tbps": n * k / (ms["fastq_wo"] * 1e-3) / 1e12,
            "speedup_vs_bf16": ms["bf16_linear"] / ms["fastq_wo"]}


def bench_quantize(rows: int, cols: int, dtype: torch.dtype, iters: int, warmup: int) -> dict:
    """Per-token symmetric dynamic quantize of a [rows, cols] tensor: bytes = x + codes + scales."""
    ops = torch.ops.fastq
    g = torch.Generator(device="cuda").manual_seed(rows + cols)
    x = torch.randn(rows, cols, device="cuda", generator=g).to(dtype)
    codes = torch.empty(rows, cols, dtype=torch.int8, device="cuda")
    scale = torch.empty(rows, 1, device="cuda")
    zp = torch.zeros(rows, 1, dtype=torch.int32, device="cuda")

    def torch_expr(i):
        s = x.float().abs().amax(dim=1, keepdim=True) / 127
        return torch.round(x.float() / s).clamp_(-127, 127).to(torch.int8)

    fns = {"fastq": lambda i: ops.quantize_int8_out(x, codes, scale, zp, -1, True, True), "torch_expr": torch_expr}
    ms = time_round_robin(fns, iters, warmup, reps=5, graphs=GRAPHS)
    nbytes = x.numel() * x.element_size() + codes.numel() + 4 * rows
    return {"rows": rows, "cols": cols, "dtype": str(dtype).replace("torch.", ""), "bytes": nbytes,
            "fastq_ms": ms["fastq"], "torch_expr_ms": ms["torch_expr"],
            "fastq_tbps": nbytes / (ms["fastq"] * 1e-3) / 1e12, "torch_expr_tbps": nbytes / (ms["torch_expr"] * 1e-3) / 1e12}


def bench_copy(iters: int, warmup: int) -> dict:
    src = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_round_robin({"copy": lambda i: dst.copy_(src)}, iters, warmup, reps=3, graphs=False)["copy"]
    return {"bytes": 2 * src.numel(), "ms": ms, "tbps": 2 * src.numel() / (ms * 1e-3) / 1e12}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and iterations")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--eager", action="store_true", help="time eager calls (with Python dispatch), not graphs")
    args = ap.parse_args(argv)
    global GRAPHS
    GRAPHS = not args.eager
    if not torch.cuda.is_available():
        print("gpu_bench_linear: skipped (no CUDA device)")
        return 0
    import fastq  # noqa: F401  (registers torch.ops.fastq)

    iters, warmup = (10, 3) if args.quick else (30, 5)
    print(f"device: {torch.cuda.get_device_name(0)}, L2 {_l2_bytes() / 2**20:.0f} MiB, torch {torch.__version__}")
    for op in ("int8_gemm", "int8_linear_dynamic", "int8_weight_only_linear"):
        print(f"  {op}: {fastq.kernel_for(op, 'cuda')}")
    results: Dict[str, list] = {"copy": [], "quantize": [], "gemm": [], "streaming": [], "weight_only": []}

    results["copy"].append(bench_copy(iters, warmup))
    copy_tbps = results["copy"][0]["tbps"]
    print(f"\ncopy bandwidth (1 GiB d2d, read+write): {copy_tbps:.2f} TB/s")

    print("\nquantize per token, 64M elements (8192 x 8192): ms, TB/s (x + codes + scales), fraction of copy")
    for dtype in (torch.float32, torch.bfloat16):
        r = bench_quantize(8192, 8192, dtype, iters, warmup)
        results["quantize"].append(r)
        print(f"  {r['dtype']:8s} fastq {r['fastq_ms']:.4f} ms {r['fastq_tbps']:.2f} TB/s "
              f"({r['fastq_tbps'] / copy_tbps:.0%} of copy) | torch expression {r['torch_expr_ms']:.4f} ms")

    shapes = [(8192, 8192, 8192)] + [(m, k, n) for k, n in ISSUE_SHAPES for m in ISSUE_MS]
    shapes += [(m, k, k) for k in (4096, 8192) for m in (256, 1024, 4096)]
    if args.quick:
        shapes = [(m, k, k) for k in (4096, 8192) for m in (256, 1024, 4096)] + [(512, 4096, 11008),
                                                                                  (32, 4096, 4096)]
    print("\nGEMM (ms; TOP/s)                 int8_gemm          w8a8 bf16           _int_mm            bf16 mm"
          "        x_int_mm  x_bf16  w8a8_x_bf16  w8a8_x_quant+int_mm")
    for m, k, n in shapes:
        r = bench_gemm(m, k, n, iters, warmup)
        results["gemm"].append(r)
        cols = []
        for name in ("fastq_int8_gemm", "fastq_w8a8_bf16", "torch_int_mm", "bf16_mm"):
            cols.append(f"{_fmt(r.get(name + '_ms', float('nan')))} {_fmt(r.get(name + '_tops', float('nan')))}")
        print(f"  M={m:5d} K={k:5d} N={n:5d}  " + "  ".join(cols)
              + f"  {_fmt(r.get('int8_gemm_vs_int_mm', float('nan')))} {_fmt(r['int8_gemm_vs_bf16'])}"
              f" {_fmt(r['w8a8_vs_bf16'])} {_fmt(r.get('w8a8_vs_quantize_int_mm', float('nan')))}")

    print("\nweight streaming, W8A8 (M <= 16): ms, weight TB/s, vs bf16 F.linear")
    stream_shapes = [(4096, 11008), (8192, 8192)]
    for k, n in stream_shapes:
        for m in ([1, 2, 4, 8, 16] if (k, n) == (4096, 11008) or not args.quick else [1, 16]):
            r = bench_streaming(m, k, n, iters, warmup)
            results["streaming"].append(r)
            print(f"  M={m:2d} K={k} N={n}: fastq {r['fastq_w8a8_ms']:.4f} ms {r['w8a8_weight_tbps']:.2f} TB/s | "
                  f"bf16 {r['bf16_linear_ms']:.4f} ms {r['bf16_weight_tbps']:.2f} TB/s | x{r['speedup_vs_bf16']:.2f}")

    print("\nweight-only int8 (bf16 activations): ms, weight TB/s, vs bf16 F.linear")
    for m, group in ((1, 0), (1, 128), (8, 0)):
        r = bench_weight_only(m, 8192, 8192, group, iters, warmup)
        results["weight_only"].append(r)
        print(f"  M={m} 8192x8192 group={group or 'channel'}: fastq {r['fastq_wo_ms']:.4f} ms "
              f"{r['wo_weight_tbps']:.2f} TB/s | bf16 {r['bf16_linear_ms']:.4f} ms | x{r['speedup_vs_bf16']:.2f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
