"""int8_weight_only_linear (+ _out): float activations x int8 weights dequantized in registers.

Float accumulation order is free (the reference says so), so results are compared with a bound
derived from the arithmetic: both sides compute sum_k x[k] * (w[k] * s) in float32 over K terms,
so each differs from the exact value by at most about (K + 2) * eps32 * sum_k |x[k] * w[k] * s|
(the classic gamma_K bound of a recursive sum, plus the dequantization rounding). We allow twice
that, plus one unit in the last place of the output dtype on each side when it is 16-bit.

That worst case grows with K and at K = 4096 it would let a 1% scale error or a dropped bias pass,
so every result must also meet the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 2019,
"A new approach to probabilistic rounding error analysis"): with rounding errors that are
independent and of mean zero, |error| <= lambda * sqrt(K + 2) * eps32 * sum_k |x w s| except with
probability at most 2 (K + 2) exp(-lambda^2 / 2) per output; lambda = 7 makes that < 1e-6 at
K = 4096. The kernels measure at 0.03-0.27 of sqrt(K) * eps32 * sum |x w s| (RMS).
"""

import functools
import math

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, random_packed, threads

EPS32 = torch.finfo(torch.float32).eps
PROB_LAMBDA = 7.0  # see the module docstring

# (m, n, k, groups): M 1-4 take the in-register decode path, larger M the dequantized-panel GEMM;
# group sizes that are and are not multiples of 4; tails everywhere; real layer shapes.
CASES = [
    (1, 1, 4, 1), (1, 7, 9, 1), (1, 17, 64, 2), (2, 31, 128, 4), (3, 33, 96, 3), (4, 65, 129, 1),
    (1, 16, 12, 3), (5, 15, 9, 3), (7, 8, 16, 1), (9, 63, 31, 1), (16, 64, 256, 8), (17, 127, 300, 1),
    (33, 129, 520, 13), (48, 32, 33, 1), (49, 40, 64, 16), (65, 17, 257, 1), (129, 9, 17, 17),
    (1, 3072, 768, 1), (1, 768, 768, 24), (8, 768, 768, 1), (1, 4096, 4096, 32), (64, 3072, 768, 1),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(m, n, k, groups, x_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    w, packed = random_packed(n, k, gen)
    w_scale = torch.rand(n, groups, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 2 + 0.25).to(x_dtype)
    return x, w, packed, w_scale, bias


def bound_parts(x, w, w_scale, bias, n, k):
    """(exact result in float64, its float32 error bound); checks the reference respects the bound."""
    groups = w_scale.shape[1]
    w_f = (w.double().reshape(n, groups, k // groups) * w_scale.double().reshape(n, groups, 1)).reshape(n, k)
    xd = x.reshape(-1, k).double()
    exact = xd @ w_f.T + (bias.double() if bias is not None else 0)
    abs_sum = xd.abs() @ w_f.abs().T
    bound = torch.minimum(2 * (k + 2) * EPS32 * abs_sum, PROB_LAMBDA * math.sqrt(k + 2) * EPS32 * abs_sum)
    if bias is not None:  # the bias is added once: one more rounding of the result
        bound = bound + EPS32 * (exact.abs() + bias.double().abs())
    if x.dtype != torch.float32:
        bound = bound + 2 * torch.finfo(x.dtype).eps * exact.abs()  # one ulp each side, relative
    ref = reference.int8_weight_only_linear(x, _library.int8_pack_weight(w), w_scale, bias, n)
    ref_err = (ref.reshape(-1, n).double() - exact).abs()
    assert bool((ref_err <= bound + 1e-30).all()), "the bound is wrong: the reference itself exceeds it"
    return exact, bound


def assert_within_bound(y, x, w, w_scale, bias, n, k, parts=None):
    """|y - exact| <= 2 (K + 2) eps32 sum|x w s| (+ the output dtype's rounding)."""
    exact, bound = parts if parts is not None else bound_parts(x, w, w_scale, bias, n, k)
    err = (y.reshape(-1, n).double() - exact).abs()
    worst = float((err / (bound + 1e-30)).max())
    assert bool((err <= bound + 1e-30).all()), f"error exceeds the float32 bound (worst ratio {worst:.2f})"


@functools.lru_cache(maxsize=None)
def _case(m, n, k, groups):
    x, w, packed, w_scale, bias = _inputs(m, n, k, groups, torch.float32, m * 977 + n * 13 + k + groups)
    parts = {b is None: bound_parts(x, w, w_scale, b, n, k) for b in (bias, None)}
    return x, w, packed, w_scale, bias, parts


@needs_native
@pytest.mark.parametrize("m,n,k,groups", CASES, ids=[case_id("m", m, "n", n, "k", k, "g", g) for m, n, k, g in CASES])
@pytest.mark.parametrize("isa", ISAS)
def test_matches_reference(m, n, k, groups, isa):
    x, w, packed, w_scale, bias, parts = _case(m, n, k, groups)
    with forced_isa(isa):
        for b in (bias, None):
            before = fastq.native_calls("int8_weight_only_linear", "cpu")
            y = _library.int8_weight_only_linear(x, packed, w_scale, b, n)
            assert_native_ran("int8_weight_only_linear", before, isa)
            assert y.dtype == x.dtype and y.shape == (m, n)
            assert_within_bound(y, x, w, w_scale, b, n, k, parts[b is None])


@needs_native
@pytest.mark.parametrize("m,n,k,groups", [(1, 4096, 4096, 32), (64, 3072, 768, 1), (16, 64, 256, 8)])
def test_the_bound_catches_a_1pct_scale_error_and_a_dropped_bias(m, n, k, groups):
    """The bound must be tight enough to fail a 1% scale error and a dropped bias at large K."""
    x, w, packed, w_scale, bias, parts = _case(m, n, k, groups)
    with pytest.raises(AssertionError):
        assert_within_bound(_library.int8_weight_only_linear(x, packed, w_scale * 1.01, bias, n), x, w, w_scale,
                            bias, n, k, parts[False])
    with pytest.raises(AssertionError):
        assert_within_bound(_library.int8_weight_only_linear(x, packed, w_scale, None, n), x, w, w_scale, bias, n, k,
                            parts[False])


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 20])
def test_dtypes(isa, x_dtype, m):
    n, k, groups = 40, 64, 2
    x, w, packed, w_scale, bias = _inputs(m, n, k, groups, x_dtype, m)
    with forced_isa(isa):
        y = _library.int8_weight_only_linear(x, packed, w_scale, bias, n)
    assert y.dtype == x_dtype
    assert_within_bound(y, x, w, w_scale, bias, n, k)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads(isa, nthreads):
    for m in (1, 70):
        x, w, packed, w_scale, bias = _inputs(m, 150, 96, 3, torch.float32, nthreads + m)
        with forced_isa(isa), threads(nthreads):
            y = _library.int8_weight_only_linear(x, packed, w_scale, bias, 150)
        assert_within_bound(y, x, w, w_scale, bias, 150, 96)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 6])
def test_out_variant_and_3d(isa, m):
    x, w, packed, w_scale, bias = _inputs(2 * m, 37, 44, 1, torch.float16, 9)
    x3 = x.reshape(2, m, 44)
    out = torch.full((2, m, 37), float("nan"), dtype=torch.float16)  # poisoned
    with forced_isa(isa):
        before = fastq.native_calls("int8_weight_only_linear_out", "cpu")
        _library.int8_weight_only_linear_out(x3, packed, w_scale, bias, 37, out)
        assert_native_ran("int8_weight_only_linear_out", before, isa)
    assert torch.isfinite(out).all()
    assert_within_bound(out, x3, w, w_scale, bias, 37, 44)


@needs_native
def test_empty_m():
    x, w, packed, w_scale, bias = _inputs(1, 5, 8, 1, torch.bfloat16, 1)
    y = _library.int8_weight_only_linear(x[:0], packed, w_scale, bias, 5)
    assert y.shape == (0, 5) and y.dtype == torch.bfloat16


def test_opcheck():
    x, w, packed, w_scale, bias = _inputs(5, 19, 24, 2, torch.float32, 2)
    torch.library.opcheck(_library.int8_weight_only_linear, (x, packed, w_scale, bias, 19))
    torch.library.opcheck(_library.int8_weight_only_linear, (x[:1], packed, w_scale, None, 19))
    torch.library.opcheck(_library.int8_weight_only_linear_out, (x, packed, w_scale, bias, 19, torch.empty(5, 19)))


def test_bad_input():
    x, w, packed, w_scale, bias = _inputs(3, 16, 32, 4, torch.float32, 4)
    f = _library.int8_weight_only_linear
    with pytest.raises(ValueError, match="K mismatch"):
        f(x[:, :28], packed, w_scale, bias, 16)
    with pytest.raises(TypeError, match="x"):
        f(x.to(torch.int8), packed, w_scale, bias, 16)
    with pytest.raises(ValueError, match="w_scale"):
        f(x, packed, w_scale[:, :3], bias, 16)  # 3 groups do not divide K=32
    with pytest.raises(ValueError, match="w_scale"):
        f(x, packed, w_scale.reshape(-1), bias, 16)
    with pytest.raises(TypeError, match="w_scale"):
        f(x, packed, w_scale.half(), bias, 16)
    with pytest.raises(ValueError, match="bias"):
        f(x, packed, w_scale, bias[:3], 16)
    with pytest.raises(TypeError, match="out"):
        _library.int8_weight_only_linear_out(x, packed, w_scale, bias, 16, torch.empty(3, 16, dtype=torch.float16))


# ---- bfloat16 x on AVX512-BF16 dot products (csrc/cpu/wo_bf16.h; chosen per M by fastq.ops.plans) ----
BF16_CASES = [(1, 16, 64, 1), (5, 33, 96, 3), (12, 40, 128, 1), (13, 63, 256, 2), (40, 97, 520, 5),
              (193, 70, 768, 1), (64, 3072, 768, 24), (200, 31, 4, 1)]


@needs_native
@pytest.mark.parametrize("m,n,k,groups", BF16_CASES, ids=[case_id("m", m, "n", n, "k", k, "g", g)
                                                         for m, n, k, g in BF16_CASES])
def test_bf16_dot_path_matches_reference(m, n, k, groups):
    from fastq import _native
    from fastq.ops import plans

    if not _native._C.wo_bf16_available():
        pytest.skip("this CPU lacks AVX512-BF16")
    x, w, packed, w_scale, bias = _inputs(m, n, k, groups, torch.bfloat16, m + n + k)
    outs = {}
    for min_m in (1, 10 ** 9):  # the bf16 path for every M, then never
        plans.set_weight_only_bf16_min_m(min_m)
        try:
            for t in (1, 2, 3):
                with threads(t):
                    outs[(min_m, t)] = _library.int8_weight_only_linear(x, packed, w_scale, bias, n)
        finally:
            plans.set_weight_only_bf16_min_m(None)
        assert_within_bound(outs[(min_m, 1)], x, w, w_scale, bias, n, k)
    assert all(torch.equal(outs[(1, 1)], outs[(1, t)]) for t in (2, 3)), "thread count changed the result"
