"""Concurrency and determinism: one module called from several Python threads at once gives, bit for
bit, what a single-threaded run gives; integer-math ops (and the bit-exact ELL kernel) give the same
bits for every torch thread count; thousands of calls do not grow the process; ``set_cpu_isa``
racing with forwards is safe (each native call reads the active ISA once, at its start, and every
ISA is bit-exact for these ops).
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from torch import nn

import fastq
from fastq import _native
from fastq.nn import QuantLinear, SparseLinear

N_THREADS = 4
CALLS_PER_THREAD = 25


def _quant(cfg, k=96, n=72):
    torch.manual_seed(11)
    return QuantLinear.from_float(nn.Linear(k, n), cfg).eval()


def _sparse(fmt, k=96, n=72):
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(k, n))
    pattern = {"24": "2:4", "bsr": (4, 4)}.get(fmt, "unstructured")
    fastq.prune_(model, fastq.PruneConfig(sparsity=None if fmt == "24" else 0.8, pattern=pattern))
    storage = {"csr": "csr", "int8": "csr", "ell": "ell", "ell_int8": "ell"}.get(fmt)
    return SparseLinear.from_float(model[0], int8=fmt in ("int8", "ell_int8"), format=storage).eval()


MODULES = {
    "w8a8-sym": lambda: _quant(fastq.Int8DynamicConfig()),
    "w8a8-asym": lambda: _quant(fastq.Int8DynamicConfig(act_symmetric=False)),
    "weight-only": lambda: _quant(fastq.Int8WeightOnlyConfig()),
    "weight-only-g32": lambda: _quant(fastq.Int8WeightOnlyConfig(group_size=32)),
    **{f"sparse-{f}": (lambda f=f: _sparse(f)) for f in ("csr", "int8", "24", "bsr", "ell", "ell_int8")},
}


def _inputs(count: int, k: int = 96):
    gen = torch.Generator().manual_seed(count)
    # several batch sizes: the small-M and large-M kernels, and the sparse transposed path (M >= 8)
    return [torch.randn((1, 3, 8, 17, 64)[i % 5], k, generator=gen) for i in range(count)]


def _in_threads(fn, n_threads: int = N_THREADS):
    """Run fn(i) on n_threads Python threads released together; returns their results (re-raises)."""
    barrier = threading.Barrier(n_threads)
    results, errors = [None] * n_threads, []

    def work(i):
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("name", list(MODULES))
def test_module_shared_by_threads_matches_single_thread(name):
    module = MODULES[name]()
    xs = _inputs(CALLS_PER_THREAD * N_THREADS)
    with torch.inference_mode():
        want = [module(x) for x in xs]
        # every thread walks all inputs, each from a different starting point, at the same time
        got = _in_threads(lambda t: [(j, module(xs[j])) for j in
                                     [(t * CALLS_PER_THREAD + i) % len(xs) for i in range(len(xs))]])
    for per_thread in got:
        for j, y in per_thread:
            assert torch.equal(y, want[j]), f"{name}: input {j} differs when threads share the module"


def _with_torch_threads(n, fn):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("name", ["w8a8-sym", "w8a8-asym", "sparse-ell", "sparse-ell_int8", "quantize", "gemm"])
def test_integer_math_is_identical_for_every_thread_count(name):
    gen = torch.Generator().manual_seed(5)
    if name == "quantize":
        x = torch.randn(300, 1024, generator=gen)
        run = lambda: fastq.quantize_int8(x, 64, False)  # noqa: E731
    elif name == "gemm":
        a = torch.randint(-128, 128, (130, 700), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (260, 700), dtype=torch.int8, generator=gen)
        run = lambda: torch.ops.fastq.int8_gemm(a, b)  # noqa: E731
    else:
        module = MODULES[name]() if name in MODULES else None
        if name.startswith("sparse"):
            module = _sparse(name.split("-", 1)[1], k=1024, n=512)  # enough work to split across threads
            x = torch.randn(20, 1024, generator=gen)
        else:
            module = MODULES[name]()
            x = torch.randn(200, 96, generator=gen)
        run = lambda: module(x)  # noqa: E731
    results = [_with_torch_threads(t, run) for t in (1, 2, 3, 4)]
    for r in results[1:]:
        for a, b in zip(results[0] if isinstance(results[0], tuple) else (results[0],),
                        r if isinstance(r, tuple) else (r,)):
            assert torch.equal(a, b), f"{name}: the result depends on the thread count"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_no_memory_growth_over_thousands_of_calls():
    modules = [MODULES[n]() for n in ("w8a8-asym", "weight-only", "sparse-csr", "sparse-ell_int8")]
    xs = _inputs(20)

    def burst(calls):
        with torch.inference_mode():
            for i in range(calls):
                x = xs[i % len(xs)]
                modules[i % len(modules)](x)
                q = fastq.quantize_int8(x, -1, i % 2 == 0)
                fastq.dequantize_int8(q.codes, q.scale, None if i % 2 == 0 else q.zero_point)

    def measure():
        burst(300)  # warm-up: allocator caches, thread-local workspaces, per-tensor check caches
        before = _rss_mb()
        burst(3000)  # 3000 forwards + 3000 quantize + 3000 dequantize calls
        return _rss_mb() - before

    growth = _with_torch_threads(1, measure)  # one thread: the same allocations, less time on a busy machine
    assert growth < 24, f"RSS grew by {growth:.1f} MB over 9000 calls"


@pytest.mark.skipif(not _native.available(), reason="native extension not loaded")
def test_set_cpu_isa_racing_with_forwards():
    isas = [i for i in _native.ISA_NAMES if _native.ISA_NAMES.index(i) <= _native.ISA_NAMES.index(
        fastq.detected_cpu_isa())]
    names = ["w8a8-sym", "w8a8-asym", "sparse-ell", "sparse-ell_int8"]  # bit-exact on every ISA
    modules = {n: MODULES[n]() for n in names}
    xs = _inputs(16)
    with torch.inference_mode():
        want = {n: [modules[n](x) for x in xs] for n in names}
    saved = fastq.cpu_isa()
    stop = threading.Event()

    def toggle():
        i = 0
        while not stop.is_set():
            fastq.set_cpu_isa(isas[i % len(isas)])
            i += 1

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        def work(t):
            with torch.inference_mode():
                for rep in range(10):
                    for n in names:
                        for j, x in enumerate(xs):
                            assert torch.equal(modules[n](x), want[n][j]), (n, j)
        _in_threads(work, 3)
    finally:
        stop.set()
        toggler.join()
        fastq.set_cpu_isa(saved)
