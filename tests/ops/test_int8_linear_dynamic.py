"""int8_linear_dynamic (+ _out): the fused W8A8 linear matches the reference bit for bit.

The reference fixes the whole sequence (per-token quantize_int8, exact int32 GEMM with zero-point
correction, float32(acc) * (a_scale * w_scale), + bias, one rounding to the output dtype), so
every ISA must agree exactly, for float16/bfloat16 outputs too (same float32 value, same rounding).
"""

import functools

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, random_packed, threads

# (m, n, k): tails in every dimension and real layer shapes at small M.
CASES = [
    (1, 1, 1), (1, 7, 9), (7, 8, 15), (8, 9, 16), (9, 15, 17), (15, 16, 31), (16, 17, 32), (17, 31, 33),
    (31, 63, 63), (33, 65, 64), (63, 127, 65), (65, 129, 127), (129, 33, 129), (2, 3072, 768), (8, 768, 768),
    (2, 4096, 4096),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(m, n, k, x_dtype, seed, full_range=False):
    gen = torch.Generator().manual_seed(seed)
    w, packed = random_packed(n, k, gen, full_range)
    w_scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 3 + 0.5).to(x_dtype)
    return x, packed, w_scale, bias


@functools.lru_cache(maxsize=None)
def _case(m, n, k):
    """Inputs and references of a CASES entry, shared by the ISAs (never modified by the tests)."""
    x, packed, w_scale, bias = _inputs(m, n, k, torch.float32, m * 131 + n * 7 + k)
    refs = {(sym, b is None): reference.int8_linear_dynamic(x, packed, w_scale, b, n, sym, torch.float32)
            for sym in (True, False) for b in (bias, None)}
    return x, packed, w_scale, bias, refs


@needs_native
@pytest.mark.parametrize("m,n,k", CASES, ids=[case_id("m", m, "n", n, "k", k) for m, n, k in CASES])
@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference(m, n, k, isa):
    x, packed, w_scale, bias, refs = _case(m, n, k)
    with forced_isa(isa):
        for sym in (True, False):
            for b in (bias, None):
                before = fastq.native_calls("int8_linear_dynamic", "cpu")
                y = _library.int8_linear_dynamic(x, packed, w_scale, b, n, sym, torch.float32)
                assert_native_ran("int8_linear_dynamic", before, isa)
                assert torch.equal(y, refs[(sym, b is None)])


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_dtypes(isa, x_dtype, out_dtype):
    m, n, k = 13, 40, 70
    x, packed, w_scale, bias = _inputs(m, n, k, x_dtype, 5)
    with forced_isa(isa):
        for sym in (True, False):
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, n, sym, out_dtype)
            assert y.dtype == out_dtype
            assert torch.equal(y, reference.int8_linear_dynamic(x, packed, w_scale, bias, n, sym, out_dtype))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_full_range_weight_and_3d_input(isa):
    # Weights holding -128 (not produced by symmetric quantization, still exact) and x of shape [B, T, K].
    x, packed, w_scale, bias = _inputs(2 * 5, 33, 47, torch.float32, 11, full_range=True)
    x = x.reshape(2, 5, 47)
    with forced_isa(isa):
        for sym in (True, False):
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, 33, sym, torch.float32)
            assert y.shape == (2, 5, 33)
            assert torch.equal(y, reference.int8_linear_dynamic(x, packed, w_scale, bias, 33, sym, torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_nonfinite_rows_poison_only_their_row(isa):
    x, packed, w_scale, bias = _inputs(4, 20, 24, torch.float32, 12)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    with forced_isa(isa):
        for sym in (True, False):
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, 20, sym, torch.float32)
            ref = reference.int8_linear_dynamic(x, packed, w_scale, bias, 20, sym, torch.float32)
            torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
            assert torch.isnan(y[1:3]).all() and torch.isfinite(y[[0, 3]]).all()


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads(isa, nthreads):
    for m in (1, 50):
        x, packed, w_scale, bias = _inputs(m, 200, 96, torch.float32, nthreads + m)
        with forced_isa(isa), threads(nthreads):
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, 200, False, torch.float32)
        assert torch.equal(y, reference.int8_linear_dynamic(x, packed, w_scale, bias, 200, False, torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_out_variant(isa, out_dtype):
    x, packed, w_scale, bias = _inputs(6, 37, 41, torch.bfloat16, 21)
    x = x.reshape(2, 3, 41)
    out = torch.full((2, 3, 37), float("nan"), dtype=out_dtype)  # poisoned
    with forced_isa(isa):
        before = fastq.native_calls("int8_linear_dynamic_out", "cpu")
        _library.int8_linear_dynamic_out(x, packed, w_scale, bias, 37, True, out)
        assert_native_ran("int8_linear_dynamic_out", before, isa)
    assert torch.equal(out, reference.int8_linear_dynamic(x, packed, w_scale, bias, 37, True, out_dtype))


@needs_native
def test_empty_m():
    x, packed, w_scale, bias = _inputs(1, 5, 8, torch.float32, 1)
    y = _library.int8_linear_dynamic(x[:0], packed, w_scale, bias, 5, True, torch.float16)
    assert y.shape == (0, 5) and y.dtype == torch.float16


def test_opcheck():
    x, packed, w_scale, bias = _inputs(5, 19, 23, torch.float32, 2)
    torch.library.opcheck(_library.int8_linear_dynamic, (x, packed, w_scale, bias, 19, True, torch.float32))
    torch.library.opcheck(_library.int8_linear_dynamic, (x, packed, w_scale, None, 19, False, torch.bfloat16))
    out = torch.empty(5, 19)
    torch.library.opcheck(_library.int8_linear_dynamic_out, (x, packed, w_scale, bias, 19, True, out))


def test_bad_input():
    x, packed, w_scale, bias = _inputs(3, 16, 32, torch.float32, 4)
    f = _library.int8_linear_dynamic
    with pytest.raises(ValueError, match="K mismatch"):
        f(x[:, :28], packed, w_scale, bias, 16, True, torch.float32)
    with pytest.raises(TypeError, match="x"):
        f(x.to(torch.int32), packed, w_scale, bias, 16, True, torch.float32)
    with pytest.raises(TypeError, match="w_packed"):
        f(x, packed.view(torch.uint8), w_scale, bias, 16, True, torch.float32)
    with pytest.raises(TypeError, match="w_scale"):
        f(x, packed, w_scale.double(), bias, 16, True, torch.float32)
    with pytest.raises(ValueError, match="w_scale"):
        f(x, packed, w_scale[:15], bias, 16, True, torch.float32)
    with pytest.raises(ValueError, match="bias"):
        f(x, packed, w_scale, bias[:15], 16, True, torch.float32)
    with pytest.raises(ValueError, match="bias"):
        f(x, packed, w_scale, bias.double(), 16, True, torch.float32)
    with pytest.raises(ValueError, match="out"):
        _library.int8_linear_dynamic_out(x, packed, w_scale, bias, 16, True, torch.empty(3, 15))
    with pytest.raises(TypeError, match="out"):
        _library.int8_linear_dynamic_out(x, packed, w_scale, bias, 16, True, torch.empty(3, 16, dtype=torch.int32))
