"""int8_linear_static: the static (calibrated) W8A8 linear matches the reference bit for bit.

The reference fixes the whole sequence (element-wise quantization with a per-column multiplier
1/scale or (1/smooth) * (1/scale), exact int32 GEMM with zero-point correction, the dynamic op's
epilogue), so every ISA must agree exactly, for every input and output dtype, symmetric and
asymmetric activations, with and without SmoothQuant divisors.
"""

import functools

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, random_packed, threads

CASES = [
    (1, 1, 1), (1, 7, 9), (7, 8, 15), (8, 9, 16), (9, 15, 17), (15, 16, 31), (16, 17, 32), (17, 31, 33),
    (31, 63, 63), (33, 65, 64), (63, 127, 65), (65, 129, 127), (129, 33, 129), (2, 3072, 768), (32, 576, 576),
    (8, 1536, 576),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VARIANTS = [(sym, smooth, has_bias) for sym in (True, False) for smooth in (False, True) for has_bias in (True, False)]


def _inputs(m, n, k, x_dtype, seed, full_range=False):
    gen = torch.Generator().manual_seed(seed)
    w, packed = random_packed(n, k, gen, full_range)
    w_scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 3 + 0.5).to(x_dtype)
    act_scale = torch.tensor([0.02 + 0.03 * float(torch.rand((), generator=gen))])  # clips some values: saturation
    zp = torch.randint(0, 256, (1,), dtype=torch.int32, generator=gen)
    smooth = torch.rand(k, generator=gen) * 4 + 0.25
    return x, packed, w_scale, bias, act_scale, zp, smooth


def _args(inp, sym, smooth, has_bias):
    x, packed, w_scale, bias, act_scale, zp, sm = inp
    return (x, packed, w_scale, bias if has_bias else None, w_scale.numel(), act_scale, None if sym else zp,
            sm if smooth else None)


@functools.lru_cache(maxsize=None)
def _case(m, n, k):
    inp = _inputs(m, n, k, torch.float32, m * 131 + n * 7 + k)
    refs = {v: reference.int8_linear_static(*_args(inp, *v), torch.float32) for v in VARIANTS}
    return inp, refs


@needs_native
@pytest.mark.parametrize("m,n,k", CASES, ids=[case_id("m", m, "n", n, "k", k) for m, n, k in CASES])
@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference(m, n, k, isa):
    inp, refs = _case(m, n, k)
    with forced_isa(isa):
        for v in VARIANTS:
            before = fastq.native_calls("int8_linear_static", "cpu")
            y = _library.int8_linear_static(*_args(inp, *v), torch.float32)
            assert_native_ran("int8_linear_static", before, isa)
            assert torch.equal(y, refs[v]), f"sym, smooth, bias = {v}"


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_dtypes(isa, x_dtype, out_dtype):
    inp = _inputs(13, 40, 70, x_dtype, 5)
    with forced_isa(isa):
        for v in VARIANTS[::3]:
            y = _library.int8_linear_static(*_args(inp, *v), out_dtype)
            assert y.dtype == out_dtype
            assert torch.equal(y, reference.int8_linear_static(*_args(inp, *v), out_dtype))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_full_range_weight_and_3d_input(isa):
    x, *rest = _inputs(2 * 5, 33, 47, torch.float32, 11, full_range=True)
    inp = (x.reshape(2, 5, 47), *rest)
    with forced_isa(isa):
        for v in VARIANTS:
            y = _library.int8_linear_static(*_args(inp, *v), torch.float32)
            assert y.shape == (2, 5, 33)
            assert torch.equal(y, reference.int8_linear_static(*_args(inp, *v), torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_nonfinite_inputs_saturate_per_element(isa):
    # Static scales: NaN becomes code 0 (or the zero point) and +-Inf the extreme codes; nothing is
    # poisoned, so every output stays finite and equal to the reference.
    x, *rest = _inputs(4, 20, 40, torch.float32, 12)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3, 39] = -float("inf")
    inp = (x, *rest)
    with forced_isa(isa):
        for v in VARIANTS:
            y = _library.int8_linear_static(*_args(inp, *v), torch.float32)
            assert torch.isfinite(y).all()
            assert torch.equal(y, reference.int8_linear_static(*_args(inp, *v), torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads(isa, nthreads):
    for m in (1, 50, 300):
        inp = _inputs(m, 200, 96, torch.float32, nthreads + m)
        with forced_isa(isa), threads(nthreads):
            y = _library.int8_linear_static(*_args(inp, False, True, True), torch.float32)
        assert torch.equal(y, reference.int8_linear_static(*_args(inp, False, True, True), torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_equals_dynamic_with_the_same_scale(isa):
    # One token: per-token dynamic quantization of that row with its own scale is exactly static
    # quantization with that scale, so both fused ops give the same bits.
    x, packed, w_scale, bias, *_ = _inputs(1, 70, 130, torch.float32, 3)
    _, scale, _ = reference.quantize_int8(x, -1, True)
    with forced_isa(isa):
        y_static = _library.int8_linear_static(x, packed, w_scale, bias, 70, scale.reshape(1), None, None,
                                               torch.float32)
        y_dynamic = _library.int8_linear_dynamic(x, packed, w_scale, bias, 70, True, torch.float32)
    assert torch.equal(y_static, y_dynamic)


@needs_native
def test_empty_m():
    x, packed, w_scale, bias, act_scale, zp, smooth = _inputs(1, 5, 8, torch.float32, 1)
    y = _library.int8_linear_static(x[:0], packed, w_scale, bias, 5, act_scale, zp, smooth, torch.float16)
    assert y.shape == (0, 5) and y.dtype == torch.float16


def test_opcheck():
    inp = _inputs(5, 19, 23, torch.float32, 2)
    for v in VARIANTS[::2]:
        torch.library.opcheck(_library.int8_linear_static, (*_args(inp, *v), torch.float32))
    torch.library.opcheck(_library.int8_linear_static, (*_args(inp, False, True, False), torch.bfloat16))


def test_compile_fullgraph():
    inp = _inputs(6, 24, 40, torch.float32, 8)
    args = _args(inp, False, True, True)
    f = torch.compile(lambda *a: torch.ops.fastq.int8_linear_static(*a, torch.float32), fullgraph=True,
                      backend="eager")
    assert torch.equal(f(*args), reference.int8_linear_static(*args, torch.float32))


def test_bad_input():
    x, packed, w_scale, bias, act_scale, zp, smooth = _inputs(3, 16, 32, torch.float32, 4)
    f = _library.int8_linear_static

    def call(**over):
        a = dict(x=x, w_packed=packed, w_scale=w_scale, bias=bias, n=16, act_scale=act_scale, act_zero_point=zp,
                 act_smooth=smooth, out_dtype=torch.float32)
        a.update(over)
        return f(**a)

    with pytest.raises(ValueError, match="K mismatch"):
        call(x=x[:, :28], act_smooth=None)
    with pytest.raises(TypeError, match="act_scale"):
        call(act_scale=act_scale.double())
    with pytest.raises(ValueError, match="act_scale"):
        call(act_scale=torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="act_zero_point"):
        call(act_zero_point=zp.long())
    with pytest.raises(ValueError, match="act_smooth"):
        call(act_smooth=smooth[:31])
    with pytest.raises(TypeError, match="out_dtype"):
        call(out_dtype=torch.int32)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-40):
        with pytest.raises(ValueError, match="act_scale"):
            call(act_scale=torch.tensor([bad]))
    with pytest.raises(ValueError, match="act_zero_point"):
        call(act_zero_point=torch.tensor([256], dtype=torch.int32))
    bad_smooth = smooth.clone()
    bad_smooth[5] = 0.0
    with pytest.raises(ValueError, match="act_smooth"):
        call(act_smooth=bad_smooth)
