"""intx_linear_dynamic: per-token int8 activations x 2..4-bit weights, bit-exact with the reference.

The reference fixes the whole sequence (quantize_int8 per row, exact int32 group sums with the
zero-point correction, float32(acc) * s summed over groups in order, * a_scale, + bias, one rounding
to the output dtype), so every ISA must agree exactly, NaN rows included.
"""

import functools

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _compare import assert_bits_equal
from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, threads
from _intx_util import DYNAMIC_FORMATS, fmt_id, random_weight
from _intx_util import activations as _x

OP = "intx_linear_dynamic"
CASES = [
    (1, 1, 1, 1), (1, 7, 2, 2), (2, 8, 4, 1), (3, 9, 4, 4), (4, 15, 6, 3), (5, 16, 8, 2), (7, 17, 16, 4),
    (1, 31, 16, 1), (9, 32, 8, 8), (1, 33, 32, 2), (6, 63, 12, 1), (1, 64, 16, 16), (11, 65, 8, 1),
    (1, 127, 24, 3), (17, 129, 16, 2), (33, 40, 16, 1),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@functools.lru_cache(maxsize=None)
def _case(m, n, k, groups, bits, asym):
    gen = torch.Generator().manual_seed(m * 131 + n * 7 + k + groups + 100 * bits + asym)
    packed = random_weight(n, k, groups, bits, asym, gen)[3]
    bias = torch.randn(n, generator=gen)
    x = _x(m, k, m + k)
    refs = {b is None: reference.intx_linear_dynamic(x, packed, b, n, groups, bits, asym, torch.float32)
            for b in (bias, None)}
    return x, packed, bias, refs


@needs_native
@pytest.mark.parametrize("m,n,kc,groups", CASES, ids=[case_id("m", m, "n", n, "kc", kc, "g", g) for m, n, kc, g in CASES])
@pytest.mark.parametrize("fmt", DYNAMIC_FORMATS, ids=fmt_id)
@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference(m, n, kc, groups, fmt, isa):
    bits, asym = fmt
    k = kc * reference.intx_chunk_k(bits)
    if k % groups or (k // groups) % reference.intx_chunk_k(bits):
        groups = 1
    x, packed, bias, refs = _case(m, n, k, groups, bits, asym)
    with forced_isa(isa):
        for b in (bias, None):
            before = fastq.native_calls(OP, "cpu")
            y = _library.intx_linear_dynamic(x, packed, b, n, groups, bits, asym, torch.float32)
            assert_native_ran(OP, before, isa)
            assert_bits_equal(y, refs[b is None], f"{fmt_id(fmt)} bias={b is not None}")


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 4096, 512, 4), (8, 768, 768, 6), (32, 256, 1024, 8)], ids=str)
def test_layer_shapes(isa, shape):
    m, n, k, groups = shape
    x, packed, bias, refs = _case(m, n, k, groups, 4, True)
    with forced_isa(isa):
        assert_bits_equal(_library.intx_linear_dynamic(x, packed, bias, n, groups, 4, True, torch.float32), refs[False])


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_dtypes(isa, x_dtype, out_dtype):
    m, n, k, groups = 13, 40, 64, 2
    gen = torch.Generator().manual_seed(5)
    packed = random_weight(n, k, groups, 4, False, gen)[3]
    bias = torch.randn(n, generator=gen)
    x = _x(m, k, 5, x_dtype)
    with forced_isa(isa):
        y = _library.intx_linear_dynamic(x, packed, bias, n, groups, 4, False, out_dtype)
    assert_bits_equal(y, reference.intx_linear_dynamic(x, packed, bias, n, groups, 4, False, out_dtype))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_poisoned_rows_and_3d(isa):
    gen = torch.Generator().manual_seed(7)
    packed = random_weight(33, 64, 2, 2, True, gen)[3]
    x = _x(6, 64, 7).reshape(2, 3, 64)
    x[0, 1, 3] = float("nan")
    x[1, 2, 0] = float("-inf")
    with forced_isa(isa):
        y = _library.intx_linear_dynamic(x, packed, None, 33, 2, 2, True, torch.float32)
    assert y.shape == (2, 3, 33)
    assert torch.isnan(y[0, 1]).all() and torch.isnan(y[1, 2]).all() and torch.isfinite(y[0, 0]).all()
    assert_bits_equal(y, reference.intx_linear_dynamic(x, packed, None, 33, 2, 2, True, torch.float32))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads(isa, nthreads):
    for m in (1, 70):
        x, packed, bias, refs = _case(m, 150, 96, 3, 4, False)
        with forced_isa(isa), threads(nthreads):
            assert_bits_equal(_library.intx_linear_dynamic(x, packed, bias, 150, 3, 4, False, torch.float32), refs[False])


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    packed = random_weight(19, 32, 2, 4, True, gen)[3]
    x, bias = _x(5, 32, 3), torch.randn(19)
    torch.library.opcheck(_library.intx_linear_dynamic, (x, packed, bias, 19, 2, 4, True, torch.float32))
    torch.library.opcheck(_library.intx_linear_dynamic, (x[:1], packed, None, 19, 2, 4, True, torch.bfloat16))


def test_bad_input():
    gen = torch.Generator().manual_seed(4)
    packed8 = random_weight(16, 32, 2, 8, False, gen)[3]
    packed = random_weight(16, 32, 2, 4, False, gen)[3]
    x = _x(3, 32, 4)
    with pytest.raises(ValueError, match="at most 4 bits"):
        _library.intx_linear_dynamic(x, packed8, None, 16, 2, 8, False, torch.float32)
    with pytest.raises(TypeError, match="out_dtype"):
        _library.intx_linear_dynamic(x, packed, None, 16, 2, 4, False, torch.int32)
    with pytest.raises(ValueError, match="packs to"):
        _library.intx_linear_dynamic(x[:, :16], packed, None, 16, 2, 4, False, torch.float32)
