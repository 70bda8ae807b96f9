"""CUDA benchmark of the intx linears (csrc/cuda/intx.cu) against bf16 F.linear (cuBLAS) and fastq's
int8 weight-only kernel.

Run: ``PYTHONPATH=. python bench/gpu_bench_intx_linear.py [--json out.json]``; exits 0 with a note
when no CUDA device is present.

Method: each sample replays a CUDA graph of ``reps`` back-to-back calls (kernel time, no Python or
launch overhead), medians of 7 samples; bf16 activations and outputs; weights rotated through
enough copies that the working set exceeds twice the L2 cache (DRAM-resident, as in decoding);
weight GB/s counts the packed bytes (codes + scales) read per call.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # K x N
MS = [1, 8, 32, 128]


def _graph_time(fns: list, reps: int = 30) -> float:
    """Median seconds per call of fns[i % len(fns)]() replayed from a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(reps):
            fns[i % len(fns)]()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            fns[i % len(fns)]()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(times)


def _copies(nbytes: int) -> int:
    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) or 50 << 20)
    return max(1, min(16, math.ceil(2 * l2 / nbytes) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return
    import fastq
    from fastq.ops import _library as L

    ops = torch.ops.fastq
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"intx kernels: {fastq.kernel_for('intx_linear_dynamic', 'cuda')}")
    rows = []
    for k, n in SHAPES:
        gen = torch.Generator().manual_seed(k + n)

        def intx(bits, group):
            groups = k // group
            codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=gen)
            scale = torch.rand(n, groups, generator=gen) * 0.01 + 1e-3
            return L.intx_pack_weight(codes, scale, None, bits).cuda(), groups

        p4, g4 = intx(4, 128)
        p2, g2 = intx(2, 128)
        w8 = ops.int8_pack_weight(torch.randint(-127, 128, (n, k), dtype=torch.int8)).cuda()
        s8 = (torch.rand(n, 1) * 0.01).cuda()
        wb = (torch.randn(n, k) * 0.01).to(torch.bfloat16).cuda()
        sets = {"int4 wo g128": (p4, p4.numel()), "w4a8 g128": (p4, p4.numel()), "int2 wo g128": (p2, p2.numel()),
                "int8 wo": (w8, w8.numel()), "bf16 F.linear": (wb, wb.numel() * 2)}
        copies = {name: [t] + [t.clone() for _ in range(_copies(nbytes) - 1)] for name, (t, nbytes) in sets.items()}
        for m in MS:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
            cands = {
                "int4 wo g128": [lambda p=p: ops.intx_weight_only_linear(x, p, None, n, g4, 4, False) for p in copies["int4 wo g128"]],
                "w4a8 g128": [lambda p=p: ops.intx_linear_dynamic(x, p, None, n, g4, 4, False, torch.bfloat16) for p in copies["w4a8 g128"]],
                "int2 wo g128": [lambda p=p: ops.intx_weight_only_linear(x, p, None, n, g2, 2, False) for p in copies["int2 wo g128"]],
                "int8 wo": [lambda p=p: ops.int8_weight_only_linear(x, p, s8, None, n) for p in copies["int8 wo"]],
                "bf16 F.linear": [lambda w=w: F.linear(x, w) for w in copies["bf16 F.linear"]],
            }
            row = {"K x N": f"{k}x{n}", "M": m}
            for name, fns in cands.items():
                t = _graph_time(fns)
                row[f"{name} us"] = round(t * 1e6, 1)
                row[f"{name} GB/s"] = round(sets[name][1] / t / 1e9)
            row["int4 wo vs bf16"] = round(row["bf16 F.linear us"] / row["int4 wo g128 us"], 2)
            row["w4a8 vs bf16"] = round(row["bf16 F.linear us"] / row["w4a8 g128 us"], 2)
            rows.append(row)
            print(row, flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
