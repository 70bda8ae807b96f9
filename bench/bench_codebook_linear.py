"""bench_codebook_linear: codebook (weight sharing, binary, ternary, power-of-two) layers against fp32
and fastq's int8 (and, when present, int4) weight-only layers, all called as users call them.

Run as a script for the interleaved comparison table (markdown; ``--json`` keeps every sample):

    python bench/bench_codebook_linear.py [--shapes 4096x11008] [--m 1,32] [--rounds 15] [--json out.json]

or under pytest-benchmark (``PYTHONPATH=. python -m pytest bench/bench_codebook_linear.py
--benchmark-enable``; one benchmark per candidate on the quick grid).

Invariants:
  * Per (shape, M) row every candidate is timed in interleaved rounds (``time_round_robin``), so
    load from other processes hits them alike: read the ratios, not the absolute times, on a
    shared machine. All run with ``torch.set_num_threads(THREADS)``.
  * Codebook layers hold random codes and random tables (kernel speed does not depend on the values;
    ``bench/bench_codebook_minilm.py`` measures quality on real weights). They run through the
    module forward (``SharedWeightLinear``), i.e. one ``codebook_linear`` call per forward.
  * int4 weight-only (issue 11) is picked up automatically when fastq has an int4 weight-only
    config and a ``torch.ops.fastq`` op with "int4" in its name, or named with ``--int4``;
    otherwise it is reported missing and the int4 targets are judged as "n/a".
  * Weights: at 4096 x 11008 the fp32 weight (180 MB) streams from DRAM; the 4-bit codes (22.5 MB)
    would fit the 32 MiB L3, but the candidates between two calls of one evict them, so every
    candidate reads its weight from DRAM (what decoding one token at a time sees in a real model).
  * Nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

try:
    import fastq
except ImportError:  # run as `python bench/bench_codebook_linear.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq.benchmarking import copy_bandwidth_gbs, format_table, median, time_round_robin

THREADS = 2
DEFAULT_SHAPES = [(4096, 11008)]  # (K, N): Llama-7B MLP up/gate projection
DEFAULT_M = [1, 32]
QUICK = [(768, 3072)]
# name -> (bits, codebook rows: "row" per output row / "layer" shared, per-row scale, kind)
CODEBOOKS = {
    "cb4-row": (4, "row", False, "kmeans"),
    "cb4-layer": (4, "layer", False, "kmeans"),
    "pow2": (4, "layer", True, "pow2"),
    "cb2-layer": (2, "layer", False, "kmeans"),
    "ternary": (2, "layer", True, "ternary"),
    "binary": (1, "layer", True, "binary"),
    "cb8-layer": (8, "layer", False, "kmeans"),
}


def codebook_layer(k: int, n: int, name: str, gen: torch.Generator) -> nn.Module:
    """A SharedWeightLinear with random codes and tables of the named kind."""
    bits, scope, scale, kind = CODEBOOKS[name]
    rows = n if scope == "row" else 1
    clusters = {"ternary": 3, "binary": 2}.get(kind, 1 << bits)
    layer = fastq.SharedWeightLinear(k, n, True, bits=bits, codebook_rows=rows, scale=scale, clusters=clusters,
                                     kind=kind)
    codes = torch.randint(0, clusters, (n, k), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        layer.codes = torch.ops.fastq.codebook_pack(codes, bits, layer.lut)
        layer.codebook = torch.randn(rows, 1, 1 << bits, generator=gen) / k ** 0.5
        if scale:
            layer.scale = torch.rand(n, generator=gen) + 0.5
        layer.bias = torch.randn(n, generator=gen)
    return layer


def _quantized(lin: nn.Linear, config) -> nn.Module:
    model = nn.Sequential(lin)
    fastq.quantize_(model, config)
    return model[0]


def int4_config(spec: Optional[str]):
    """The int4 weight-only config to compare against: ``spec`` "off", "Name" or "Name:{json kwargs}",
    or (None) auto-detection; returns (config or None, why)."""
    if spec == "off":
        return None, "disabled by --int4 off"
    from fastq.quantization import config_types

    types = {c.__name__: c for c in config_types()}
    if spec is None:
        ops = [name for name in dir(torch.ops.fastq) if "int4" in name]
        names = [n for n in types if "int4" in n.lower() and "weightonly" in n.lower()]
        if not names or not ops:
            return None, "fastq has no int4 weight-only config/op yet (issue 11); pass --int4 NAME to name one"
        spec = names[0]
    name, _, kw = spec.partition(":")
    if name not in types:
        return None, f"--int4 {name!r} is not a fastq config (known: {sorted(types)})"
    kwargs = json.loads(kw) if kw else {}
    for attempt in ({"group_size": 128, **kwargs}, kwargs):
        try:
            return types[name](**attempt), f"{name}({attempt})"
        except TypeError:
            continue
    return None, f"cannot construct {name} with {kwargs}"


def candidates(k: int, n: int, int4, gen: torch.Generator) -> dict[str, nn.Module]:
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) / k ** 0.5)
    out = {"fp32": lin, "int8-wo": _quantized(nn.Linear(k, n), fastq.Int8WeightOnlyConfig())}
    if int4 is not None:
        out["int4-wo"] = _quantized(nn.Linear(k, n), int4)
    for name in CODEBOOKS:
        out[name] = codebook_layer(k, n, name, gen)
    return out


def weight_bytes(module: nn.Module) -> int:
    if hasattr(module, "weight_bytes"):
        return int(module.weight_bytes())
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def run(shapes, ms, rounds: int, int4_spec: Optional[str], threads: int = THREADS) -> dict:
    torch.set_num_threads(threads)
    int4, int4_why = int4_config(int4_spec)
    gen = torch.Generator().manual_seed(0)
    copy_gbs = copy_bandwidth_gbs(64 << 20)
    rows, samples = [], {}
    for k, n in shapes:
        mods = candidates(k, n, int4, gen)
        for m in ms:
            x = torch.randn(m, k, generator=gen)
            fns: dict[str, Callable] = {name: (lambda mod=mod: mod(x)) for name, mod in mods.items()}
            with torch.no_grad():
                t = time_round_robin(fns, rounds=rounds, warmup=2)
            med = {name: median(v) for name, v in t.items()}
            samples[f"{k}x{n}/m{m}"] = t
            for name, sec in med.items():
                row = {"K x N": f"{k}x{n}", "M": m, "candidate": name, "time ms": sec * 1e3,
                       "vs fp32": med["fp32"] / sec, "vs int8-wo": med["int8-wo"] / sec,
                       "weight MB": weight_bytes(mods[name]) / 1e6,
                       "weight GB/s": weight_bytes(mods[name]) / sec / 1e9}
                if "int4-wo" in med:
                    row["vs int4-wo"] = med["int4-wo"] / sec
                rows.append(row)
    return {"rows": rows, "samples": samples, "int4": int4_why, "copy_gbs": copy_gbs}


def targets(rows: list[dict]) -> list[str]:
    """The issue-12 targets at 4096 x 11008, judged from one run's medians."""
    med = {(r["K x N"], r["M"], r["candidate"]): r["time ms"] for r in rows}
    shape = "4096x11008"
    if (shape, 1, "fp32") not in med:
        return ["(targets are judged at 4096x11008; not measured)"]

    def ratio(m, a, b):
        return med[(shape, m, b)] / med[(shape, m, a)]

    out = []
    has4 = (shape, 1, "int4-wo") in med
    for name in ("cb4-row", "cb4-layer"):
        r = ratio(1, name, "fp32")
        out.append(f"M=1 {name}: {r:.2f}x fp32 (target >= 4x: {'met' if r >= 4 else 'not met'})"
                   + (f", {ratio(1, name, 'int4-wo'):.2f}x int4-wo (target >= 0.9x)" if has4 else ", int4-wo n/a"))
    for name, want4, mult in (("cb2-layer", 1.5, "ternary/2-bit"), ("ternary", 1.5, "ternary/2-bit"),
                              ("binary", 2.0, "binary")):
        r4 = ratio(1, name, "cb4-row")
        line = f"M=1 {name}: {r4:.2f}x cb4-row, {ratio(1, name, 'cb4-layer'):.2f}x cb4-layer"
        if has4:
            r = ratio(1, name, "int4-wo")
            line += f", {r:.2f}x int4-wo (target >= {want4}x: {'met' if r >= want4 else 'not met'})"
        else:
            line += f" (target vs int4-wo >= {want4}x: int4-wo n/a)"
        out.append(line)
    if (shape, 32, "fp32") in med:
        for name in list(CODEBOOKS):
            r = ratio(32, name, "fp32")
            out.append(f"M=32 {name}: {r:.2f}x fp32 (target >= 1.0x: {'met' if r >= 1 else 'not met'})")
    return out


def paths(shapes, ms, rounds: int, threads: int) -> list[dict]:
    """T-MAC tables vs in-register dequantization for 1- and 2-bit lookup-table layers, forced through
    the native entry point (what the automatic policy in csrc/cpu/lut.cpp is based on)."""
    from fastq import _native

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k, n in shapes:
        for bits in (1, 2):
            codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=gen)
            packed = torch.ops.fastq.codebook_pack(codes, bits, True)
            cb, s = torch.randn(1, 1, 1 << bits, generator=gen), torch.rand(n, generator=gen)
            for m in ms:
                x, y = torch.randn(m, k, generator=gen), torch.empty(m, n)
                fns = {}
                for path, name in ((1, "tables"), (2, "dequant")):
                    wsb = _native._C.codebook_linear_workspace_bytes_cpu(m, k, bits, True, path, threads)
                    ws = torch.empty(max(wsb, 1), dtype=torch.uint8)
                    fns[name] = (lambda path=path, ws=ws, wsb=wsb: _native._C.codebook_linear_cpu(
                        x.data_ptr(), m, n, k, packed.data_ptr(), bits, True, cb.data_ptr(), 1, 1, s.data_ptr(), 0,
                        y.data_ptr(), ws.data_ptr(), wsb, threads, path))
                t = time_round_robin(fns, rounds=rounds, warmup=2)
                rows.append({"K x N": f"{k}x{n}", "bits": bits, "M": m, "tables ms": median(t["tables"]) * 1e3,
                             "dequant ms": median(t["dequant"]) * 1e3,
                             "tables speedup": median(t["dequant"]) / median(t["tables"])})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in DEFAULT_SHAPES), help="KxN,KxN,...")
    ap.add_argument("--m", default=",".join(map(str, DEFAULT_M)), help="rows M, comma separated")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--int4", default=None, help="int4 weight-only config: auto (default), off, NAME[:json kwargs]")
    ap.add_argument("--json", default=None, help="write rows and samples here")
    ap.add_argument("--paths", action="store_true", help="only compare the two lookup-table paths (1-2 bit)")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="threads (1 gives steadier ratios on a machine other jobs load: no straggling thread)")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.m.split(",")]
    if args.paths:
        print(format_table(paths(shapes, ms, args.rounds, args.threads)))
        return
    res = run(shapes, ms, args.rounds, args.int4, args.threads)
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads {args.threads}, "
          f"ISA {fastq.cpu_isa()}, copy bandwidth {res['copy_gbs']:.1f} GB/s, load average {load[0]:.1f}")
    print(f"int4 weight-only: {res['int4']}")
    print(format_table(res["rows"]))
    print("\n".join(targets(res["rows"])))
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "load": load}, indent=1))


# ---- pytest-benchmark ---------------------------------------------------------------------------

def _bench_params():
    return [(k, n, name) for k, n in QUICK for name in ["fp32", "int8-wo", *CODEBOOKS]]


try:
    import pytest

    @pytest.mark.parametrize("k,n,name", _bench_params(), ids=lambda v: str(v))
    def test_codebook_linear(benchmark, k, n, name):
        torch.set_num_threads(THREADS)
        gen = torch.Generator().manual_seed(0)
        mod = candidates(k, n, None, gen)[name]
        x = torch.randn(1, k, generator=gen)
        with torch.no_grad():
            benchmark(mod, x)
except ImportError:  # pytest is only needed for the benchmark mode
    pass


if __name__ == "__main__":
    main()
