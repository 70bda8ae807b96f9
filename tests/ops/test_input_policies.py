"""The input policies the README states, at their boundaries, on every path (native under each ISA,
the reference, the fake used by torch.compile): the int32 accumulator limits, wide asymmetric rows,
argument types, out= aliasing and output dtypes (quantize_'s side: tests/quantization).
"""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _checks, _library as L, cpu as native, reference

from _compare import assert_bits_equal

ISAS = [i for i in _native.ISA_NAMES if _native.available()
        and _native.ISA_NAMES.index(i) <= _native.ISA_NAMES.index(fastq.detected_cpu_isa())]


def _every_isa(fn):
    """[fn() under each ISA the machine has]; the active ISA is restored."""
    saved = fastq.cpu_isa()
    try:
        out = []
        for isa in ISAS:
            fastq.set_cpu_isa(isa)
            out.append(fn())
        return out
    finally:
        if ISAS:
            fastq.set_cpu_isa(saved)


# ---- int32 accumulators: exact up to the limit, refused beyond it ----------------------------------

@pytest.mark.parametrize("sign", [1, -1])
def test_int8_gemm_at_the_k_limit_is_exact(sign):
    k = _checks.INT8_GEMM_MAX_K
    a = torch.full((2, k), -128, dtype=torch.int8)
    b = torch.full((17, k), -128 if sign > 0 else 127, dtype=torch.int8)
    exact = int(a[0, 0]) * int(b[0, 0]) * k  # 2147467264 or -2147352576: inside int32, no wrap
    want = torch.full((2, 17), exact, dtype=torch.int32)
    assert torch.equal(reference.int8_gemm(a, b), want)
    for got in _every_isa(lambda: native.int8_gemm(a, b)):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="exceeds 131071"):
        L.int8_gemm(torch.ones(1, k + 1, dtype=torch.int8), torch.ones(1, k + 1, dtype=torch.int8))


@pytest.mark.parametrize("act_symmetric", [False, True])
def test_w8a8_at_the_k_limit_is_exact(act_symmetric):
    """The largest sums W8A8 can form at K = 66311 (all codes 255 or 127 against weights of 127)."""
    k, n = _checks.W8A8_MAX_K, 16
    x = torch.full((3, k), 2.0)
    x[1] = -2.0  # asymmetric: lo = -2, hi = 0, every code 0 against zero point 255
    w = torch.full((n, k), 127, dtype=torch.int8)
    packed = reference.int8_pack_weight(w)
    scale = torch.full((n,), 1e-3)
    args = (x, packed, scale, None, n, act_symmetric, torch.float32)
    ref = L.OPS["int8_linear_dynamic"]._init_fn(*args)
    qa, a_scale, zp = reference.quantize_int8(x, -1, act_symmetric)
    acc = (qa.double() - zp.double()) @ w.double().T  # exact: |acc| <= 255 * 127 * K < 2^31
    assert 2 ** 29 < float(acc.abs().max()) < 2 ** 31  # asymmetric: 255 x 127 x K = 2147483... - 42
    expected = (acc.float() * (a_scale.reshape(-1, 1) * scale)).float()
    assert torch.equal(ref, expected)
    for got in _every_isa(lambda: native.int8_linear_dynamic(*args)):
        assert_bits_equal(got, ref)
    bigger = (torch.ones(1, k + 1), reference.int8_pack_weight(torch.ones(n, k + 1, dtype=torch.int8)), scale, None, n,
              act_symmetric, torch.float32)
    for fn in (native.int8_linear_dynamic, L.OPS["int8_linear_dynamic"]._init_fn, L._int8_linear_dynamic_fake):
        with pytest.raises(ValueError, match="exceeds 66311"):
            fn(*bigger)


# ---- wide asymmetric rows --------------------------------------------------------------------------

@pytest.mark.parametrize("row", [[-3.4e38, 3.4e38, 1.0, -1.0], [3.4e38, -1e38, 2e38, 0.0],
                                 [-torch.finfo(torch.float32).max, torch.finfo(torch.float32).max]])
def test_wide_asymmetric_row_gets_a_finite_scale(row):
    x = torch.tensor([row, [1.0] * len(row)])
    codes, scale, zp = reference.quantize_int8(x, -1, False)
    assert torch.isfinite(scale).all() and int(zp[0]) == 128
    assert torch.equal(scale[0], x[0].abs().max().reshape(1) / 128)
    deq = reference.dequantize_int8(codes, scale, zp, torch.float32)
    assert torch.isfinite(deq).all()
    assert float((deq[0].double() - x[0].double()).abs().max()) <= float(scale[0]) * (1 + 1e-6)  # <= one step
    for got in _every_isa(lambda: native.quantize_int8(x, -1, False)):
        for g, r in zip(got, (codes, scale, zp)):
            assert_bits_equal(g, r)
    w8a8 = (x, reference.int8_pack_weight(torch.ones(16, x.shape[1], dtype=torch.int8)), torch.ones(16), None, 16,
            False, torch.float32)
    want = reference.int8_linear_dynamic(*w8a8)
    for got in _every_isa(lambda: native.int8_linear_dynamic(*w8a8)):
        assert_bits_equal(got, want)


# ---- argument types, aliasing, output dtypes --------------------------------------------------------

@pytest.mark.parametrize("group_size", [None, "a", 2.0, True, [32]])
def test_group_size_must_be_an_int(group_size):
    x = torch.randn(4, 64)
    with pytest.raises(TypeError, match="group_size must be an int"):
        fastq.quantize_int8(x, group_size)
    with pytest.raises(TypeError, match="group_size must be an int"):
        fastq.quantize_int8(x, group_size, out=torch.empty(4, 64, dtype=torch.int8))
    for fn in (L.OPS["quantize_int8"]._init_fn, native.quantize_int8):
        with pytest.raises(TypeError, match="group_size must be an int"):
            fn(x, group_size, True)


def test_symmetric_must_be_a_bool():
    with pytest.raises(TypeError, match="symmetric"):
        fastq.quantize_int8(torch.randn(2, 8), -1, 1)


def test_dequantize_dtype_must_be_a_torch_dtype():
    q = fastq.quantize_int8(torch.randn(2, 8))
    with pytest.raises(TypeError, match="torch.dtype"):
        fastq.dequantize_int8(q.codes, q.scale, dtype="float32")


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float64])
def test_linear_output_dtype_is_checked_on_every_path(dtype):
    x = torch.randn(3, 32)
    packed = reference.int8_pack_weight(torch.ones(16, 32, dtype=torch.int8))
    args = (x, packed, torch.ones(16), None, 16, True)
    for fn in (native.int8_linear_dynamic, L.OPS["int8_linear_dynamic"]._init_fn, L._int8_linear_dynamic_fake):
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            fn(*args, dtype)
    for fn in (native.int8_linear_dynamic_out, L.OPS["int8_linear_dynamic_out"]._init_fn):
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            fn(*args, torch.zeros(3, 16, dtype=dtype))


def test_linear_out_aliasing_x_is_refused():
    x = torch.randn(4, 16)
    packed = reference.int8_pack_weight(torch.ones(16, 16, dtype=torch.int8))
    for fn in (native.int8_weight_only_linear_out, L.OPS["int8_weight_only_linear_out"]._init_fn):
        with pytest.raises(ValueError, match="overlaps"):
            fn(x, packed, torch.ones(16, 1), None, 16, x)


def test_a_weight_packed_for_a_larger_k_is_refused():
    """K = 62 and 63 pack to the same size as 64: the padding columns tell them apart."""
    w = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    packed = reference.int8_pack_weight(w)
    x = torch.randn(2, 62)
    args_w8a8 = (x, packed, torch.ones(16), None, 16, True, torch.float32)
    for fn in (native.int8_linear_dynamic, L.OPS["int8_linear_dynamic"]._init_fn):
        with pytest.raises(ValueError, match="packed for a larger K"):
            fn(*args_w8a8)
    for fn in (native.int8_weight_only_linear, L.OPS["int8_weight_only_linear"]._init_fn):
        with pytest.raises(ValueError, match="packed for a larger K"):
            fn(x, packed, torch.ones(16, 1), None, 16)
    narrow = reference.int8_pack_weight(w[:, :62])  # the right packing works
    assert native.int8_linear_dynamic(x, narrow, torch.ones(16), None, 16, True, torch.float32).shape == (2, 16)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and _native.has("quantize_int8_cuda")),
                    reason="needs a CUDA device and the CUDA kernels")
def test_wide_asymmetric_rows_on_cuda():
    """The CUDA kernels compute the wide-row scale like the reference (csrc/cuda/quant_math.cuh)."""
    x = torch.tensor([[-3.4e38, 3.4e38, 1.0, -1.0] * 8, [3.4e38, -1e38, 2e38, 0.0] * 8, [0.5, -0.25, 1.0, 2.0] * 8])
    want = reference.quantize_int8(x, -1, False)
    for g, r in zip(L.quantize_int8(x.cuda(), -1, False), want):
        assert_bits_equal(g.cpu(), r)
    packed = reference.int8_pack_weight(torch.ones(16, 32, dtype=torch.int8))
    args = (x, packed, torch.ones(16), None, 16, False, torch.float32)
    y = L.int8_linear_dynamic(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    assert_bits_equal(y.cpu(), reference.int8_linear_dynamic(*args))
