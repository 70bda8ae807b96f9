"""bench_prepared: what a prepared layer's call costs besides its kernel, and where the threads' time goes.

    python bench/bench_prepared.py [--quick] [--json out.json]

Part 1, per-call overhead: every module kind on a tiny layer (64 x 64, M = 1), called as a user
calls it (``module(x)``), many times in a row. ``C++`` is the time spent inside the native plan run
(``fastq._C.plan_run_ns``, measured in C++ around the whole run: scratch, kernel, threads);
``Python + binding`` is the rest of the call's CPU time (``forward_cpu_us``: this thread's CPU time,
``time.thread_time_ns``, which leaves out the time spent waiting for a CPU on a loaded machine):
nn.Module's __call__, the plan's checks of x, the allocation of y, the pybind11 crossing.
``nn.Linear`` (fp32, same shape) is the reference point.

Part 2, threads: W8A8 768x768 and 768x3072 at M = 1..32 (fastq.quantize_ as a user does), with
fastq's pool (the default), with OpenMP regions (``fastq._C.set_parallel_backend(1)``, what fastq
used before) and on one thread, next to torch.ao x86 dynamic int8 (torch's OpenMP pool); each either
back to back or with ``--gap`` microseconds of Python work between calls (as between the layers of
a model: idle workers may fall asleep). All candidates of a row are timed round-robin in one run
(fastq.benchmarking.time_round_robin), medians in microseconds.

Part 3, never slower than float (issue 10 item 4): int8 weight-only (fastq.quantize_ with
Int8WeightOnlyConfig) on float32 x and on bfloat16 x, next to F.linear in float32 and in bfloat16
(oneDNN; AVX512-BF16 / AMX where the CPU has them), M = 1..512, interleaved. ``wo/float`` is the
speed of the faster weight-only call over the faster F.linear (target >= 0.95); the bf16 column
pairs run on the plan's route for that M (csrc/cpu/wo_bf16.h above the measured threshold).

Invariants: nothing asserts on speed; the machine and its load (``os.getloadavg``) are printed with
the tables, because both parts are sensitive to other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

try:
    import fastq
except ImportError:  # run as `python bench/bench_prepared.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq import _native
from fastq.benchmarking import median, time_round_robin

THREADS = 2


def _sparse(two_four: bool = False, **kwargs) -> nn.Module:
    lin = nn.Linear(64, 64)
    g = torch.Generator().manual_seed(0)
    if two_four:
        mask = (torch.rand(64, 16, 4, generator=g).argsort(dim=2) < 2).reshape(64, 64)
    else:
        mask = torch.rand(64, 64, generator=g) > 0.7
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    lin.fastq_prune_pattern = "2:4" if two_four else "unstructured"
    return fastq.nn.SparseLinear.from_float(lin, **kwargs)


def _kinds() -> dict:
    """name -> builder of a 64 x 64 prepared module."""
    quant, intx = fastq.nn.QuantLinear.from_float, fastq.nn.IntxLinear.from_float
    return {"w8a8": lambda: quant(nn.Linear(64, 64), fastq.Int8DynamicConfig()),
            "int8 weight-only": lambda: quant(nn.Linear(64, 64), fastq.Int8WeightOnlyConfig()),
            "sparse csr": lambda: _sparse(), "sparse int8": lambda: _sparse(int8=True),
            "sparse 2:4": lambda: _sparse(two_four=True), "sparse ell": lambda: _sparse(format="ell"),
            "int4 weight-only": lambda: intx(nn.Linear(64, 64), fastq.Int4WeightOnlyConfig(group_size=32)),
            "w4a8": lambda: intx(nn.Linear(64, 64), fastq.Int4DynamicConfig(group_size=32)),
            "static w8a8": lambda: fastq.nn.StaticQuantLinear.from_float(nn.Linear(64, 64), torch.tensor([0.02])),
            "codebook 4-bit": lambda: fastq.nn.SharedWeightLinear.from_float(
                nn.Linear(64, 64), fastq.WeightSharingConfig(scope="layer", method="lloyd"))}


def per_call_overhead(calls: int, rounds: int) -> list[dict]:
    """Wall time per call, and this thread's CPU time per call (``time.thread_time_ns``: it does
    not count the time the thread waits for a CPU, so on a loaded machine it is the better estimate
    of what the call costs; a 64 x 64 layer runs on the calling thread alone)."""
    rows = []
    x = torch.randn(1, 64)
    ref = nn.Linear(64, 64)
    t_ref, cpu_ref, _ = _time_loop(lambda: ref(x), calls, rounds)
    for name, build in _kinds().items():
        mod = build()
        wall, cpu, inside = _time_loop(lambda: mod(x), calls, rounds)
        rows.append({"module": name, "forward_us": wall / 1e3, "forward_cpu_us": cpu / 1e3, "cpp_us": inside / 1e3,
                     "python_binding_us": (cpu - inside) / 1e3, "nn_linear_fp32_us": t_ref / 1e3,
                     "nn_linear_fp32_cpu_us": cpu_ref / 1e3})
    return rows


def _time_loop(fn, calls: int, rounds: int) -> tuple[float, float, float]:
    """Best of ``rounds`` (wall ns, thread CPU ns, ns inside native plan runs) per call."""
    best = (float("inf"), float("inf"), 0.0)
    for _ in range(rounds):
        ns0, c0, t0 = _native._C.plan_run_ns(), time.thread_time_ns(), time.perf_counter_ns()
        for _ in range(calls):
            fn()
        wall, cpu = (time.perf_counter_ns() - t0) / calls, (time.thread_time_ns() - c0) / calls
        if cpu < best[1]:
            best = (wall, cpu, (_native._C.plan_run_ns() - ns0) / calls)
    return best


def _busy(us: float) -> None:
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def threads(shapes, ms, gap_us: float, rounds: int) -> list[dict]:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, n in shapes:
            layer = nn.Sequential(nn.Linear(k, n))
            fq = copy.deepcopy(layer)
            fastq.quantize_(fq, fastq.Int8DynamicConfig())
            ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(layer), {nn.Linear}, dtype=torch.qint8)
            for m in ms:
                x = torch.randn(m, k)

                def with_threads(fn, nt, backend=0):
                    def run():
                        torch.set_num_threads(nt)
                        _native._C.set_parallel_backend(backend)
                        if gap_us:
                            _busy(gap_us)
                        t0 = time.perf_counter()
                        fn()
                        return time.perf_counter() - t0
                    return run

                fns = {"fastq pool 2T": with_threads(lambda: fq(x), THREADS),
                       "fastq OpenMP 2T": with_threads(lambda: fq(x), THREADS, 1),
                       "fastq 1T": with_threads(lambda: fq(x), 1),
                       "torch.ao x86 2T": with_threads(lambda: ao(x), THREADS)}
                samples = {name: [] for name in fns}
                for r in range(rounds):  # each call times itself, so the gap is not counted
                    order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
                    for name in order:
                        samples[name].append(fns[name]())
                rows.append({"k": k, "n": n, "m": m, "gap_us": gap_us,
                             **{name: median(v[2:]) * 1e6 for name, v in samples.items()}})
    _native._C.set_parallel_backend(0)
    torch.set_num_threads(THREADS)
    return rows


def never_slower(shapes, ms, rounds: int) -> list[dict]:
    rows = []
    torch.set_num_threads(THREADS)
    for k, n in shapes:
        lin = nn.Linear(k, n)
        q = nn.Sequential(copy.deepcopy(lin))
        fastq.quantize_(q, fastq.Int8WeightOnlyConfig())
        w, b = lin.weight.detach(), lin.bias.detach()
        wb, bb = w.bfloat16(), b.bfloat16()
        for m in ms:
            x = torch.randn(m, k)
            xb = x.bfloat16()
            fns = {"F.linear fp32": lambda: torch.nn.functional.linear(x, w, b),
                   "F.linear bf16": lambda: torch.nn.functional.linear(xb, wb, bb),
                   "wo fp32 x": lambda: q(x), "wo bf16 x": lambda: q(xb)}
            t = {name: median(v) * 1e6 for name, v in time_round_robin(fns, rounds=rounds, inner=1).items()}
            best_float = min(t["F.linear fp32"], t["F.linear bf16"])
            best_wo = min(t["wo fp32 x"], t["wo bf16 x"])
            rows.append({"k": k, "n": n, "m": m, **t, "wo/float": best_float / best_wo})
    return rows


def _fmt(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gap", type=float, default=200.0, help="microseconds of Python work between calls (part 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every candidate (part 2 also runs 1)")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    parts = set(args.parts.split(","))
    if not _native.available():
        print(f"fastq native extension not loaded ({_native.IMPORT_ERROR})")
        return 1
    torch.set_num_threads(THREADS)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f}; torch {torch.__version__}, "
          f"{THREADS} threads, CPU ISA {_native.cpu_isa()}")
    over, thr, nsf = [], [], []
    if "1" in parts:
        calls, rounds = (2000, 5) if args.quick else (20000, 9)
        over = per_call_overhead(calls, rounds)
        print("\n### Per-call overhead of a prepared layer (64 x 64, M = 1), microseconds\n")
        print(_fmt(over, ["module", "forward_us", "forward_cpu_us", "cpp_us", "python_binding_us", "nn_linear_fp32_us",
                          "nn_linear_fp32_cpu_us"]))
    if "2" in parts:
        shapes = [(768, 768)] if args.quick else [(768, 768), (768, 3072)]
        ms = [1, 8, 32] if args.quick else [1, 2, 4, 8, 16, 32]
        rounds2 = 15 if args.quick else 41
        thr = threads(shapes, ms, 0.0, rounds2) + threads(shapes, ms, args.gap, rounds2)
        print("\n### Threads: W8A8 forward, microseconds (median), back to back (gap 0) and with a gap\n")
        print(_fmt(thr, ["k", "n", "m", "gap_us", "fastq pool 2T", "fastq OpenMP 2T", "fastq 1T", "torch.ao x86 2T"]))
    if "3" not in parts:
        return 0
    ms3 = [1, 32, 128] if args.quick else [1, 8, 32, 128, 512]
    shapes3 = [(768, 3072)] if args.quick else [(768, 768), (768, 3072), (4096, 4096)]
    nsf = never_slower(shapes3, ms3, 7 if args.quick else 15)
    print(f"\n### Weight-only vs F.linear, {THREADS} thread(s), microseconds (median); wo/float = faster F.linear / "
          "faster weight-only\n")
    print(_fmt(nsf, ["k", "n", "m", "F.linear fp32", "F.linear bf16", "wo fp32 x", "wo bf16 x", "wo/float"]))
    if args.json:
        args.json.write_text(json.dumps({"load": load, "overhead": over, "threads": thr, "never_slower": nsf},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
