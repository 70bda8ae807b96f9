"""int8_linear_static vs int8_linear_dynamic (and fp32 F.linear) on real layer shapes.

Run:  PYTHONPATH=. python bench/bench_int8_linear_static.py [--rounds 30] [--json out.json]

Each row times, round-robin in one run (medians), the calls a module makes: QuantLinear's
``int8_linear_dynamic`` (per-token max pass + quantize + GEMM), StaticQuantLinear's
``int8_linear_static`` (symmetric, and asymmetric with a SmoothQuant vector: the slowest static
form) and fp32 ``F.linear``. Shapes: SmolLM2-135M's four linear shapes (K x N) and BERT-base's.
Weights are L2/L3-resident (SmolLM2 layers are 0.1-0.9 MB packed). Issue 13's target: static >= 1.1x
dynamic at M >= 32 on the SmolLM2 shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastq  # noqa: E402
from fastq.ops import call_op  # noqa: E402

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (768, 3072), (3072, 768)]  # K x N
MS = [1, 8, 32, 128, 512]


def _time(fns: dict, rounds: int) -> dict:
    for f in fns.values():  # warm-up (workspace, caches)
        f()
        f()
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 shapes, M in {32, 128} only")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    shapes = SHAPES[:4] if args.quick else SHAPES
    ms = [32, 128] if args.quick else MS
    print(f"threads {torch.get_num_threads()}, ISA {fastq.cpu_isa()}, kernels: dynamic "
          f"{fastq.kernel_for('int8_linear_dynamic', 'cpu')}, static {fastq.kernel_for('int8_linear_static', 'cpu')}")
    print("| K x N | M | fp32 us | dynamic us | static us | static asym+smooth us | static / dynamic speed |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    rows = []
    g = torch.Generator().manual_seed(0)
    for k, n in shapes:
        w = torch.randn(n, k, generator=g) * 0.05
        b = torch.randn(n, generator=g)
        codes, scale, _ = fastq.quantize_int8(w)
        packed = torch.ops.fastq.int8_pack_weight(codes)
        w_scale = scale.reshape(n)
        a_scale = torch.tensor([0.03])
        zp = torch.tensor([7], dtype=torch.int32)
        smooth = torch.rand(k, generator=g) + 0.5
        for m in ms:
            x = torch.randn(m, k, generator=g)
            fns = {
                "fp32": lambda: F.linear(x, w, b),
                "dynamic": lambda: call_op("int8_linear_dynamic", x, packed, w_scale, b, n, True, x.dtype),
                "static": lambda: call_op("int8_linear_static", x, packed, w_scale, b, n, a_scale, None, None,
                                          x.dtype),
                "static_asym_smooth": lambda: call_op("int8_linear_static", x, packed, w_scale, b, n, a_scale, zp,
                                                      smooth, x.dtype),
            }
            t = _time(fns, args.rounds)
            ratio = t["dynamic"] / t["static"]
            rows.append({"k": k, "n": n, "m": m, **{f"{key}_us": v for key, v in t.items()}, "static_speedup": ratio})
            print(f"| {k}x{n} | {m} | {t['fp32']:.1f} | {t['dynamic']:.1f} | {t['static']:.1f} | "
                  f"{t['static_asym_smooth']:.1f} | {ratio:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
