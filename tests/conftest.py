"""Fixtures shared by the whole suite.

``isa``: parametrises a test over every CPU ISA (fastq._native.ISA_NAMES), forcing each in turn
with fastq.set_cpu_isa, skipping ones this machine lacks, and restoring the active ISA after.
``one_thread``: one torch thread for the test, restored after (tests that train, search or time tiny
models: on a shared 2-core machine two threads spin against each other).
"""

import os

import pytest
import torch

# ---- prepared layers: deterministic plan routes (fastq/ops/plans.py) ----
os.environ.setdefault("FASTQ_PLAN_CALIBRATE", "0")

import fastq
from fastq._native import ISA_NAMES


@pytest.fixture(params=ISA_NAMES)
def isa(request):
    if not fastq.native_available():
        pytest.skip("fastq._C is not built")
    name = request.param
    if ISA_NAMES.index(name) > ISA_NAMES.index(fastq.detected_cpu_isa()):
        pytest.skip(f"this CPU lacks {name} (detected {fastq.detected_cpu_isa()})")
    saved = fastq.cpu_isa()
    fastq.set_cpu_isa(name)
    try:
        yield name
    finally:
        fastq.set_cpu_isa(saved)


# ---- CUDA tests ------------------------------------------------------------------------------------
# Every test whose name or file name says "cuda" is a CUDA test: it gets the `cuda` marker, so
# `pytest -m cuda` (bench/gpu_suite.sh) selects all of them without each file repeating the marker.

def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.name.lower() or "cuda" in item.path.name.lower():
            item.add_marker(pytest.mark.cuda)


@pytest.fixture(autouse=True)
def _cuda_context_guard(request):
    """After a CUDA test, a sticky CUDA error (illegal address, launch failure) poisons every later
    CUDA call of the process: stop the process then, so the failures that follow are not blamed on
    innocent tests (under pytest-xdist the worker is replaced and the crash is reported)."""
    yield
    if request.node.get_closest_marker("cuda") is None:
        return
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    try:
        torch.cuda.synchronize()
    except RuntimeError as exc:
        import os
        import sys

        sys.stderr.write(f"\nCUDA context poisoned after {request.node.nodeid}: {exc}\n")
        sys.stderr.flush()
        os._exit(70)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
