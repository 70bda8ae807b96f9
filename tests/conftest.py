"""Fixtures shared by the whole suite.

``isa``: parametrises a test over every CPU ISA (fastq._native.ISA_NAMES), forcing each in turn
with fastq.set_cpu_isa, skipping ones this machine lacks, and restoring the active ISA after.
"""

import os

import pytest

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
