"""intx_weight_only_linear: float activations x 2..8-bit codes expanded in registers.

The float summation order is free (reference docstring), so native results are compared with the
float32 bound of the kernels' arithmetic (``_intx_util.weight_only_bound``), which the reference
itself is checked to respect. Every ISA, every slot width (2, 4, 8 bits), symmetric and asymmetric,
row counts hitting every vector tail, group sizes down to one chunk, and real layer shapes.
"""

import functools

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, threads
from _intx_util import FORMATS, assert_within, check_reference_bound, fmt_id, random_weight, weight_only_bound
from _intx_util import activations as _x

OP = "intx_weight_only_linear"
# (m, n, k_chunks, groups): k = k_chunks * the format's chunk (8 k for int4, 16 for int2, 4 for 8-bit)
CASES = [
    (1, 1, 1, 1), (1, 7, 2, 2), (2, 8, 4, 1), (3, 9, 4, 4), (4, 15, 6, 3), (5, 16, 8, 2), (7, 17, 16, 4),
    (1, 31, 16, 1), (9, 32, 8, 8), (1, 33, 32, 2), (6, 63, 12, 1), (1, 64, 16, 16), (11, 65, 8, 1),
    (1, 127, 24, 3), (17, 129, 16, 2), (33, 40, 16, 1),
]
SHAPES = [(1, 768, 768, 6), (1, 3072, 768, 6), (4, 768, 3072, 24), (1, 576, 1536, 12)]  # real layers, g128


@functools.lru_cache(maxsize=None)
def _case(m, n, k, groups, bits, asym):
    gen = torch.Generator().manual_seed(m * 977 + n * 13 + k + groups + 100 * bits + asym)
    codes, scale, zero, packed = random_weight(n, k, groups, bits, asym, gen)
    bias = torch.randn(n, generator=gen)
    x = _x(m, k, m + k)
    parts = {b is None: weight_only_bound(x, codes, scale, zero, b, n) for b in (bias, None)}
    check_reference_bound(x, packed, bias, n, groups, bits, asym, parts[False])
    return x, packed, bias, parts


def _run(m, n, k, groups, fmt, isa):
    bits, asym = fmt
    x, packed, bias, parts = _case(m, n, k, groups, bits, asym)
    with forced_isa(isa):
        for b in (bias, None):
            before = fastq.native_calls(OP, "cpu")
            y = _library.intx_weight_only_linear(x, packed, b, n, groups, bits, asym)
            assert_native_ran(OP, before, isa)
            assert y.dtype == x.dtype and y.shape == (m, n)
            assert_within(y, *parts[b is None])


@needs_native
@pytest.mark.parametrize("m,n,kc,groups", CASES, ids=[case_id("m", m, "n", n, "kc", kc, "g", g) for m, n, kc, g in CASES])
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference(m, n, kc, groups, fmt, isa):
    k = kc * reference.intx_chunk_k(fmt[0])
    if k % groups or (k // groups) % reference.intx_chunk_k(fmt[0]):
        groups = 1
    _run(m, n, k, groups, fmt, isa)


@needs_native
@pytest.mark.parametrize("m,n,k,groups", SHAPES, ids=[case_id("m", *s) for s in SHAPES])
@pytest.mark.parametrize("fmt", [(4, False), (4, True), (2, True)], ids=fmt_id)
@pytest.mark.parametrize("isa", ISAS)
def test_layer_shapes(m, n, k, groups, fmt, isa):
    _run(m, n, k, groups, fmt, isa)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 3, 20])
def test_dtypes(isa, x_dtype, m):
    n, k, groups = 40, 64, 2
    gen = torch.Generator().manual_seed(m)
    codes, scale, zero, packed = random_weight(n, k, groups, 4, True, gen)
    bias = torch.randn(n, generator=gen)
    x = _x(m, k, m, x_dtype)
    with forced_isa(isa):
        y = _library.intx_weight_only_linear(x, packed, bias, n, groups, 4, True)
    assert y.dtype == x_dtype
    assert_within(y, *weight_only_bound(x, codes, scale, zero, bias, n))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads_and_3d(isa, nthreads):
    # 150 rows = 10 blocks: block groups split unevenly; m = 70 also splits rows across threads
    for m in (1, 70):
        gen = torch.Generator().manual_seed(nthreads + m)
        codes, scale, zero, packed = random_weight(150, 96, 3, 4, False, gen)
        x = _x(m, 96, m).reshape(1, m, 96)
        with forced_isa(isa), threads(nthreads):
            y = _library.intx_weight_only_linear(x, packed, None, 150, 3, 4, False)
        assert y.shape == (1, m, 150)
        assert_within(y, *weight_only_bound(x, codes, scale, zero, None, 150))


@needs_native
def test_non_finite_activations_propagate():
    gen = torch.Generator().manual_seed(2)
    codes, scale, zero, packed = random_weight(33, 64, 2, 4, False, gen)
    x = _x(3, 64, 1)
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    y = _library.intx_weight_only_linear(x, packed, None, 33, 2, 4, False)
    assert torch.isnan(y[1]).all() and not torch.isfinite(y[2]).any() and torch.isfinite(y[0]).all()


@needs_native
def test_empty_m():
    gen = torch.Generator().manual_seed(1)
    packed = random_weight(5, 16, 1, 4, False, gen)[3]
    y = _library.intx_weight_only_linear(torch.randn(0, 16, dtype=torch.bfloat16), packed, None, 5, 1, 4, False)
    assert y.shape == (0, 5) and y.dtype == torch.bfloat16


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    packed = random_weight(19, 32, 2, 4, True, gen)[3]
    x, bias = _x(5, 32, 3), torch.randn(19)
    torch.library.opcheck(_library.intx_weight_only_linear, (x, packed, bias, 19, 2, 4, True))
    torch.library.opcheck(_library.intx_weight_only_linear, (x[:1], packed, None, 19, 2, 4, True))


def test_bad_input():
    gen = torch.Generator().manual_seed(4)
    packed = random_weight(16, 32, 2, 4, False, gen)[3]
    x = _x(3, 32, 4)
    f = _library.intx_weight_only_linear
    with pytest.raises(ValueError, match="packs to"):
        f(x[:, :24], packed, None, 16, 1, 4, False)  # K mismatch
    with pytest.raises(ValueError, match="packs to"):
        f(x, packed, None, 16, 2, 4, True)  # asymmetric flag mismatch
    with pytest.raises(TypeError, match="x"):
        f(x.to(torch.int8), packed, None, 16, 2, 4, False)
    with pytest.raises(ValueError, match="divisor"):
        f(x, packed, None, 16, 3, 4, False)
    with pytest.raises(ValueError, match="bits"):
        f(x, packed, None, 16, 2, 9, False)
    with pytest.raises(ValueError, match="bias"):
        f(x, packed, torch.zeros(3), 16, 2, 4, False)
    with pytest.raises(TypeError, match="packed"):
        f(x, packed.to(torch.int8), None, 16, 2, 4, False)
