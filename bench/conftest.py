"""pytest configuration for bench/: collect bench_*.py files and share a measured copy bandwidth.

Run with ``python -m pytest bench --benchmark-enable`` (pyproject's addopts disable timing by
default, which turns every benchmark into a one-call smoke test).
"""

from __future__ import annotations

import functools

import pytest

from fastq.benchmarking import copy_bandwidth_gbs


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself; pick up the rest of bench/.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def copy_gbs():
    """copy_gbs(nbytes) -> GB/s of a memory copy of an nbytes buffer (read + write), measured once."""
    return functools.lru_cache(maxsize=None)(copy_bandwidth_gbs)
