"""Shared helpers of the int8 GEMM family tests: ISA forcing, thread counts, weight packing.

Invariant: every helper restores what it changes (active ISA, torch thread count), so tests stay
independent of their order.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _library

ISAS = _native.ISA_NAMES
needs_native = pytest.mark.skipif(not _native.available(), reason=f"native extension not loaded: {_native.IMPORT_ERROR}")


@contextlib.contextmanager
def forced_isa(isa: str):
    """Run the body with ``isa`` active; skips the test when the machine lacks it."""
    if not _native.available():
        pytest.skip("native extension not loaded")
    if ISAS.index(isa) > ISAS.index(fastq.detected_cpu_isa()):
        pytest.skip(f"this CPU lacks {isa} (detected {fastq.detected_cpu_isa()})")
    before = fastq.cpu_isa()
    fastq.set_cpu_isa(isa)
    try:
        yield
    finally:
        _native._C.set_cpu_isa(ISAS.index(before))


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def case_id(*parts) -> str:
    return "-".join(str(p).replace("torch.", "") for p in parts)


def random_packed(n: int, k: int, gen: torch.Generator, full_range: bool = False):
    """A random int8 [n, k] weight (symmetric range, or the full range with -128) and its packing."""
    lo = -128 if full_range else -127
    w = torch.randint(lo, 128, (n, k), dtype=torch.int8, generator=gen)
    return w, _library.int8_pack_weight(w)


def assert_native_ran(op: str, before: int, isa: str) -> None:
    assert fastq.native_calls(op, "cpu") > before, f"{op}: the native CPU kernel did not run"
    assert fastq.kernel_for(op, "cpu") == f"native:{isa}"
