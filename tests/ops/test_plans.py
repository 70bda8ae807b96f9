"""fastq.ops.plans: the prepared-layer seam at op level. Plans run the same native launcher as the
ops' eager path (bit-identical), count their runs in C++ (fastq.native_calls), cap their CPU tier
per range of M (a route to the scalar tier gives the scalar tier's bits), measure the bf16
weight-only threshold once per shape, and refuse bad buffers with a message naming them.
"""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _library, plans

from _gemm_util import forced_isa, random_packed

pytestmark = pytest.mark.skipif(not _native.available(), reason="fastq._C is not built")
BIG = 2 ** 62


def _w8a8(n=40, k=72, seed=0):
    gen = torch.Generator().manual_seed(seed)
    _, packed = random_packed(n, k, gen)
    return packed, torch.rand(n, generator=gen) * 0.01 + 1e-3, torch.randn(n, generator=gen)


def test_plan_run_is_the_op_and_counts_in_cpp():
    packed, scale, bias = _w8a8()
    plan = plans.int8_linear_dynamic(packed, scale, bias, 40, 72, True)
    assert isinstance(plan, plans.CpuPlan) and plan.op == "int8_linear_dynamic"
    x = torch.randn(3, 5, 72)
    before = fastq.native_calls("int8_linear_dynamic", "cpu")
    y = plan.run(x)
    assert fastq.native_calls("int8_linear_dynamic", "cpu") == before + 1
    assert torch.equal(y, _library.int8_linear_dynamic(x, packed, scale, bias, 40, True, torch.float32))
    assert torch.equal(plan.run(x, torch.bfloat16),
                       _library.int8_linear_dynamic(x, packed, scale, bias, 40, True, torch.bfloat16))
    assert plan.forward(x.requires_grad_()) is None, "autograd inputs take the op path"


@pytest.mark.parametrize("capped", ["scalar", "avx2"])
def test_a_route_caps_the_tier(capped):
    """Routes choose the tier per range of M: capping small M at a lower tier gives exactly that
    tier's output there and the active tier's above."""
    packed, scale, bias = _w8a8(seed=1)
    xs = {m: torch.randn(m, 72, generator=torch.Generator().manual_seed(m)) for m in (1, 4, 9)}
    with forced_isa(capped):
        low = {m: _library.int8_weight_only_linear(x, packed, scale.reshape(-1, 1), bias, 40) for m, x in xs.items()}
    plan = plans.int8_weight_only_linear(packed, scale.reshape(-1, 1), bias, 40, 72)
    top = {m: plan.run(x) for m, x in xs.items()}
    plan.native.set_routes([(4, _native.ISA_NAMES.index(capped), 0), (BIG, -1, 0)])
    for m, x in xs.items():
        assert torch.equal(plan.run(x), low[m] if m <= 4 else top[m])


def test_set_routes_rejects_unknown_paths():
    packed, scale, bias = _w8a8()
    plan = plans.int8_linear_dynamic(packed, scale, bias, 40, 72, True)
    with pytest.raises(RuntimeError, match="unknown path"):
        plan.native.set_routes([(BIG, -1, 7)])
    with pytest.raises(RuntimeError, match="at most"):
        plan.native.set_routes([(i, -1, 0) for i in range(9)])


def test_weight_only_routes_are_measured_once_per_shape(monkeypatch):
    if not _native._C.wo_bf16_available():
        pytest.skip("this CPU lacks AVX512-BF16: weight-only has one CPU driver")
    monkeypatch.setenv("FASTQ_PLAN_CALIBRATE", "1")
    monkeypatch.setattr(plans, "_wo_routes", {})
    gen = torch.Generator().manual_seed(3)
    _, packed = random_packed(64, 128, gen)
    scale = torch.rand(64, 1, generator=gen) + 0.01
    a = plans.int8_weight_only_linear(packed, scale, None, 64, 128)
    assert len(plans._wo_routes) == 1
    m_min = next(iter(plans._wo_routes.values()))
    assert m_min in plans._CALIBRATION_M or m_min == 2 * plans._CALIBRATION_M[-1]
    b = plans.int8_weight_only_linear(packed, scale, None, 64, 128)
    assert len(plans._wo_routes) == 1
    x = torch.randn(m_min + 1, 128, dtype=torch.bfloat16)
    assert torch.equal(a.run(x), b.run(x))
    assert torch.equal(a.run(x), _library.int8_weight_only_linear(x, packed, scale, None, 64))


def test_bad_buffers_name_the_buffer():
    packed, scale, bias = _w8a8()
    bad = packed.clone()
    bad[-1] += 1  # a column sum
    with pytest.raises(ValueError, match=r"^my\.layer: w_packed column sums"):
        plans.int8_linear_dynamic(bad, scale, bias, 40, 72, True, where="my.layer")
    with pytest.raises(ValueError, match=r"^my\.layer: .*K mismatch"):
        plans.int8_linear_dynamic(packed, scale, bias, 40, 80, True, where="my.layer")
    values = torch.randn(32)
    cols = torch.arange(32, dtype=torch.int16)
    row_ptr = torch.tensor([0, 16, 32])
    assert plans.sparse_csr_linear(values, cols, row_ptr, None, 2, 32) is not None
    with pytest.raises(ValueError, match="cols holds an index >= K=31"):
        plans.sparse_csr_linear(values, cols, row_ptr, None, 2, 31)
    with pytest.raises(ValueError, match="row_ptr is not a valid pointer array"):
        plans.sparse_csr_linear(values, cols, torch.tensor([0, 17, 32]), None, 2, 32)
    with pytest.raises(ValueError, match="contiguous"):
        plans.sparse_csr_linear(torch.randn(64)[::2], cols, row_ptr, None, 2, 32)


@pytest.mark.parametrize("backend", ["pool", "openmp"])
def test_both_thread_backends_run_nested_and_concurrent_calls(backend):
    """A kernel call made while another thread's call runs (or from inside a task) runs inline:
    results equal, no deadlock, under fastq's pool (FASTQ_THREADS=pool) and OpenMP regions (default)."""
    import threading

    pool, openmp = 0, 1  # csrc/common/thread_pool.h ParallelBackend
    before = _native._C.parallel_backend()
    _native._C.set_parallel_backend(pool if backend == "pool" else openmp)
    try:
        packed, scale, bias = _w8a8(n=512, k=512, seed=4)
        plan = plans.int8_linear_dynamic(packed, scale, bias, 512, 512, True)
        x = torch.randn(64, 512)
        expected = plan.run(x)
        with torch.no_grad():
            single = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert torch.equal(plan.run(x), expected), "the row split must not change the result"
            finally:
                torch.set_num_threads(single)
        results = []
        workers = [threading.Thread(target=lambda: results.append(all(torch.equal(plan.run(x), expected)
                                                                      for _ in range(30)))) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert results == [True] * 4
        if backend == "pool" and torch.get_num_threads() > 1:
            assert _native._C.pool_workers() >= 1, "the pool must have started a worker"
    finally:
        _native._C.set_parallel_backend(before)


def test_the_op_path_reuses_its_plan_until_a_weight_changes():
    packed, scale, bias = _w8a8(seed=5)
    x = torch.randn(4, 72)
    y = _library.int8_linear_dynamic(x, packed, scale, bias, 40, True, torch.float32)
    first = packed._fastq_op_plan[2]
    _library.int8_linear_dynamic(x, packed, scale, bias, 40, True, torch.float32)
    assert packed._fastq_op_plan[2] is first, "same tensors, same versions: the plan is reused"
    scale.mul_(2)  # an in-place change bumps the version: a new plan (and the new values are used)
    y2 = _library.int8_linear_dynamic(x, packed, scale, bias, 40, True, torch.float32)
    assert packed._fastq_op_plan[2] is not first
    torch.testing.assert_close(y2 - bias, 2 * (y - bias), rtol=1e-6, atol=1e-6)
    other = bias.clone()  # another tensor object: another plan
    _library.int8_linear_dynamic(x, packed, scale, other, 40, True, torch.float32)
    assert packed._fastq_op_plan[1][2]() is other
