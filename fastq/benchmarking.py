"""Small timing helpers shared by bench/ and `fastq` tooling.

Invariants: timings are wall-clock seconds per call from ``time.perf_counter``; candidates are
interleaved round by round (``time_round_robin``) so that noise from other processes on a shared
machine hits every candidate alike, which makes *ratios* measured in one run trustworthy even
when absolute numbers drift. Nothing here asserts on speed.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Iterable

import torch

__all__ = [
    "LINEAR_M",
    "LINEAR_SHAPES",
    "QUANTIZE_SIZES",
    "copy_bandwidth_gbs",
    "format_table",
    "gbs",
    "median",
    "time_round_robin",
]

# (K, N) of real linear layers: BERT-base / MiniLM attention and MLP, Llama-7B attention and MLP.
LINEAR_SHAPES = [(768, 768), (768, 3072), (4096, 4096), (4096, 11008)]
# Rows (tokens) fed through those layers: decode, small and large batches.
LINEAR_M = [1, 8, 32, 128, 512]
# Element counts of the memory-bound benchmarks: 1M float32 (4 MiB) stays in the 32 MiB L3;
# 16M (64 MiB) streams from DRAM.
QUANTIZE_SIZES = {"1M": 1 << 20, "16M": 1 << 24}


def time_round_robin(fns: dict[str, Callable[[], object]], *, rounds: int = 20, warmup: int = 3,
                     inner: int = 1) -> dict[str, list[float]]:
    """Time several candidates interleaved: every round runs each candidate once, in turn.

    Args:
        fns: name -> zero-argument callable (the work to time; its result is discarded).
        rounds: number of samples per candidate.
        warmup: untimed calls per candidate before the first round (page faults, caches, JIT).
        inner: calls per sample; the sample is their mean (use > 1 for calls of a few microseconds).

    Returns:
        name -> ``rounds`` samples of seconds per call. Each round runs the candidates in a fresh
        order (a seeded shuffle: the same orders in every run), so none always runs first or right
        after a particular other one. A rotation of one fixed order, used before, kept each
        candidate's predecessor fixed, and the predecessor matters: in bench/bench_intx_linear.py
        fastq int4 always ran right after fp32 ``F.linear`` (8 ms in which fastq's idle pool worker
        falls asleep), so it alone paid the worker's wake-up in every round.
    """
    if rounds < 1 or inner < 1 or warmup < 0:
        raise ValueError(f"rounds and inner must be >= 1 and warmup >= 0, got {rounds}, {inner}, {warmup}")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner)
    return samples


def median(xs: Iterable[float]) -> float:
    """The median of ``xs`` (the mean of the middle two for an even count)."""
    s = sorted(xs)
    if not s:
        raise ValueError("median of an empty sequence")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def gbs(nbytes: int, seconds: float) -> float:
    """Bytes moved per second, in GB/s (1e9 bytes)."""
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf


def copy_bandwidth_gbs(nbytes: int, *, rounds: int = 20, warmup: int = 3) -> float:
    """Measured memory-copy bandwidth for a buffer of ``nbytes``: (read + write bytes) / time.

    Copies one preallocated uint8 buffer into another with ``Tensor.copy_`` (torch's threaded
    memcpy) and reports ``2 * nbytes / median time``. To compare a kernel that moves B bytes in
    total with a copy moving the same bytes, call this with ``B // 2``.
    """
    if nbytes < 1:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    t = time_round_robin({"copy": lambda: dst.copy_(src)}, rounds=rounds, warmup=warmup,
                         inner=_inner_for(nbytes))["copy"]
    return gbs(2 * nbytes, median(t))


def _inner_for(nbytes: int) -> int:
    """Calls per sample so that one sample lasts roughly >= 100 us at ~20 GB/s."""
    return max(1, min(100, (2 << 20) // max(nbytes, 1)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        a = abs(v)
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    """A markdown table of ``rows``; columns are the keys in order of first appearance.

    Floats get 3 significant-ish digits; missing cells are blank.
    """
    if not rows:
        return ""
    cols: list[str] = []
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    cells = [[_fmt(row.get(c, "")) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows if c in row) for c in cols]

    def line(vals: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(vals, widths, numeric)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cols), sep] + [line(r) for r in cells])
