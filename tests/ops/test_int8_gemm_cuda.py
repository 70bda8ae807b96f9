"""CUDA kernels of the int8 GEMM family (csrc/cuda/gemm.cu) against the reference on the same device.

Invariants: every op is called as users call it (``torch.ops.fastq.*``), each test first checks
that the native CUDA kernel serves the op and afterwards that it ran (``fastq.native_calls``).
Integer results and the W8A8 epilogue (a fixed float sequence without FMA) must match the
reference bit for bit; weight-only results, whose float summation order is unspecified, within
a bound derived from float32 accumulation plus one rounding to the output dtype. Skipped
without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ops = torch.ops.fastq
TAILS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
DEV = "cuda"


def _native_cuda(op: str) -> int:
    """Skip unless the native CUDA kernel serves ``op``; return its call count so far."""
    if not _native.build_info().get("cuda"):
        pytest.skip(f"fastq was built without CUDA ({_native.IMPORT_ERROR or 'CPU-only build'})")
    assert fastq.kernel_for(op, "cuda") == "native:cuda", f"{op}: no native CUDA kernel registered"
    return fastq.native_calls(op, "cuda")


def _int8(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen).to(DEV)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.dtype == ref.dtype and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)


def _linear_inputs(m: int, n: int, k: int, dtype: torch.dtype, seed: int, groups: int = 0):
    gen = _gen(seed)
    x = (torch.randn(m, k, generator=gen) * 3).to(dtype).to(DEV)
    w = _int8(n, k, gen=gen)
    w_packed = ops.int8_pack_weight(w)
    if groups:
        w_scale = (torch.rand(n, groups, generator=gen) * 0.02 + 0.001).to(DEV)
    else:
        w_scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(DEV)
    bias = torch.randn(n, generator=gen).to(DEV)
    return x, w, w_packed, w_scale, bias


# ---- int8_gemm ----------------------------------------------------------------------------------

GEMM_CASES = (
    [(m, 33, 65) for m in TAILS]
    + [(17, n, 129) for n in TAILS]
    + [(9, 65, k) for k in TAILS]
    + [(5, 40, k) for k in (4, 12, 16, 48, 80, 96, 100, 130, 1000, 1024)]  # 16-, 4-, 1-byte loaders
    + [(300, 260, 200), (1024, 2048, 320), (2048, 2100, 300)]  # 64- and 128-row tiles, tails
)


@pytest.mark.parametrize("m,n,k", GEMM_CASES, ids=[f"m{m}-n{n}-k{k}" for m, n, k in GEMM_CASES])
def test_int8_gemm_exact(m, n, k):
    before = _native_cuda("int8_gemm")
    gen = _gen(m * 10007 + n * 101 + k)
    a, b = _int8(m, k, gen=gen), _int8(n, k, gen=gen)
    c = ops.int8_gemm(a, b)
    assert c.dtype == torch.int32 and c.device.type == "cuda"
    assert torch.equal(c, reference.int8_gemm(a, b))
    assert fastq.native_calls("int8_gemm", "cuda") > before


def test_int8_gemm_extremes():
    """All -128 (the largest products) and a K large enough to need every tile and stage."""
    _native_cuda("int8_gemm")
    a = torch.full((70, 4100), -128, dtype=torch.int8, device=DEV)
    b = torch.full((90, 4100), -128, dtype=torch.int8, device=DEV)
    b[::3] = 127
    assert torch.equal(ops.int8_gemm(a, b), reference.int8_gemm(a, b))


def test_int8_gemm_misaligned_views():
    """Contiguous views whose data does not start on a 16-byte boundary take the narrow loaders."""
    _native_cuda("int8_gemm")
    gen = _gen(7)
    m, n, k = 37, 45, 64
    a = _int8(m * k + 1, gen=gen)[1:].view(m, k)
    b = _int8(n * k + 4, gen=gen)[4:].view(n, k)
    assert a.is_contiguous() and b.is_contiguous()
    assert torch.equal(ops.int8_gemm(a, b), reference.int8_gemm(a, b))


def test_int8_gemm_large():
    _native_cuda("int8_gemm")
    gen = _gen(11)
    a, b = _int8(2048, 8192, gen=gen), _int8(8192, 8192, gen=gen)
    assert torch.equal(ops.int8_gemm(a, b), reference.int8_gemm(a, b))


def test_int8_gemm_opcheck():
    _native_cuda("int8_gemm")
    gen = _gen(3)
    torch.library.opcheck(ops.int8_gemm.default, (_int8(19, 40, gen=gen), _int8(24, 40, gen=gen)))


# ---- int8_linear_dynamic -----------------------------------------------------------------------

LINEAR_CASES = (
    [(m, 48, 96) for m in TAILS]  # M <= 16: weight streaming; M > 16: tiled GEMM
    + [(3, n, 70) for n in TAILS]
    + [(20, n, 33) for n in (1, 17, 129)]
    + [(2, 40, k) for k in TAILS]
    + [(40, 24, k) for k in (1, 63, 65, 1030)]
    + [(1, 300, 2000), (16, 130, 1100), (600, 700, 300)]
)


@pytest.mark.parametrize("act_symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k", LINEAR_CASES, ids=[f"m{m}-n{n}-k{k}" for m, n, k in LINEAR_CASES])
def test_int8_linear_dynamic_bit_exact_f32(m, n, k, act_symmetric):
    before = _native_cuda("int8_linear_dynamic")
    x, _, w_packed, w_scale, bias = _linear_inputs(m, n, k, torch.float32, m * 7 + n * 13 + k)
    for b in (bias, None):
        y = ops.int8_linear_dynamic(x, w_packed, w_scale, b, n, act_symmetric, torch.float32)
        _assert_same(y, reference.int8_linear_dynamic(x, w_packed, w_scale, b, n, act_symmetric, torch.float32))
    assert fastq.native_calls("int8_linear_dynamic", "cuda") > before


@pytest.mark.parametrize("x_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("m", [1, 5, 16, 17, 90])
def test_int8_linear_dynamic_dtypes(x_dtype, out_dtype, m):
    _native_cuda("int8_linear_dynamic")
    n, k = 72, 200
    x, _, w_packed, w_scale, bias = _linear_inputs(m, n, k, x_dtype, m + 1)
    for sym in (True, False):
        y = ops.int8_linear_dynamic(x, w_packed, w_scale, bias, n, sym, out_dtype)
        _assert_same(y, reference.int8_linear_dynamic(x, w_packed, w_scale, bias, n, sym, out_dtype))


def test_int8_linear_dynamic_batched_and_poisoned_rows():
    """A rank-3 input, and rows holding NaN/Inf: the reference poisons them to NaN; so must we."""
    _native_cuda("int8_linear_dynamic")
    x, _, w_packed, w_scale, bias = _linear_inputs(6 * 5, 40, 64, torch.float32, 5)
    x = x.reshape(6, 5, 64)
    x[1, 2, 3] = float("nan")
    x[4, 0, 0] = float("inf")
    for m_rows in (x, x[:2]):  # 30 rows (tiled GEMM) and 10 rows (weight streaming)
        for sym in (True, False):
            y = ops.int8_linear_dynamic(m_rows, w_packed, w_scale, bias, 40, sym, torch.float32)
            _assert_same(y, reference.int8_linear_dynamic(m_rows, w_packed, w_scale, bias, 40, sym, torch.float32))


def test_int8_linear_dynamic_out_poisoned():
    before = _native_cuda("int8_linear_dynamic_out")
    x, _, w_packed, w_scale, bias = _linear_inputs(33, 50, 77, torch.float32, 9)
    out = torch.full((33, 50), float("nan"), device=DEV)
    ops.int8_linear_dynamic_out(x, w_packed, w_scale, bias, 50, False, out)
    _assert_same(out, reference.int8_linear_dynamic(x, w_packed, w_scale, bias, 50, False, torch.float32))
    assert fastq.native_calls("int8_linear_dynamic_out", "cuda") > before


@pytest.mark.parametrize("m", range(1, 17))
def test_int8_linear_dynamic_decode_shapes(m):
    """Llama-7B MLP up-projection (K=4096, N=11008) at decode batch sizes: the streaming path."""
    _native_cuda("int8_linear_dynamic")
    n, k = 11008, 4096
    x, _, w_packed, w_scale, bias = _decode_weight(n, k)
    x = torch.randn(m, k, generator=_gen(m)).to(DEV)
    for sym in (True, False):
        y = ops.int8_linear_dynamic(x, w_packed, w_scale, bias, n, sym, torch.float32)
        _assert_same(y, reference.int8_linear_dynamic(x, w_packed, w_scale, bias, n, sym, torch.float32))


_DECODE = {}


def _decode_weight(n: int, k: int):
    if (n, k) not in _DECODE:
        _DECODE[(n, k)] = _linear_inputs(1, n, k, torch.float32, 1234)
    return _DECODE[(n, k)]


def test_int8_linear_dynamic_large():
    _native_cuda("int8_linear_dynamic")
    x, _, w_packed, w_scale, bias = _linear_inputs(2048, 8192, 8192, torch.float32, 4321)
    y = ops.int8_linear_dynamic(x, w_packed, w_scale, bias, 8192, True, torch.float32)
    _assert_same(y, reference.int8_linear_dynamic(x, w_packed, w_scale, bias, 8192, True, torch.float32))


def test_int8_linear_dynamic_opcheck():
    _native_cuda("int8_linear_dynamic")
    x, _, w_packed, w_scale, bias = _linear_inputs(5, 24, 40, torch.bfloat16, 2)
    torch.library.opcheck(ops.int8_linear_dynamic.default, (x, w_packed, w_scale, bias, 24, False, torch.float16))
    x, _, w_packed, w_scale, bias = _linear_inputs(40, 24, 40, torch.float32, 3)
    torch.library.opcheck(ops.int8_linear_dynamic.default, (x, w_packed, w_scale, None, 24, True, torch.float32))


# ---- int8_weight_only_linear --------------------------------------------------------------------

def _assert_weight_only_close(y, x, w, w_scale, bias, n):
    """|y - ref| within float32 accumulation error (any order) plus one rounding to y's dtype."""
    ref = reference.int8_weight_only_linear(x, reference.int8_pack_weight(w), w_scale, bias, n).float()
    k = x.shape[-1]
    groups = w_scale.shape[-1]
    w_f = (w.float().reshape(n, groups, k // groups) * w_scale.reshape(n, groups, 1)).reshape(n, k)
    mag = x.reshape(-1, k).float().abs() @ w_f.abs().T
    if bias is not None:
        mag = mag + bias.abs()
    mag = mag.reshape(ref.shape)
    ulp = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[y.dtype]
    tiny = 2.0**-24 if y.dtype == torch.float16 else 1e-30  # float16's subnormal step near zero
    bound = 2 * (k + 2) * 2.0**-24 * mag + 2 * ulp * ref.abs() + tiny
    err = (y.float() - ref).abs()
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert bool(torch.all(err <= bound)), f"max excess {float((err - bound).max())}"


WO_CASES = (
    [(m, 40, 64, 1) for m in TAILS]
    + [(3, n, 96, 1) for n in TAILS]
    + [(2, 33, k, 1) for k in TAILS]
    + [(1, 48, 256, 2), (7, 48, 256, 8), (20, 33, 384, 3), (1, 20, 12, 4), (9, 20, 36, 3), (4, 17, 130, 5)]
    + [(1, 1000, 2050, 41), (33, 300, 1000, 1)]
)


@pytest.mark.parametrize("x_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("m,n,k,groups", WO_CASES, ids=[f"m{m}-n{n}-k{k}-g{g}" for m, n, k, g in WO_CASES])
def test_int8_weight_only_linear(m, n, k, groups, x_dtype):
    before = _native_cuda("int8_weight_only_linear")
    x, w, w_packed, w_scale, bias = _linear_inputs(m, n, k, x_dtype, m * 3 + n + k * 7 + groups, groups=groups)
    for b in (bias, None):
        y = ops.int8_weight_only_linear(x, w_packed, w_scale, b, n)
        _assert_weight_only_close(y, x, w, w_scale, b, n)
    assert fastq.native_calls("int8_weight_only_linear", "cuda") > before


def test_int8_weight_only_linear_unaligned_x():
    """A contiguous x view off a 16-byte boundary takes the scalar activation loads."""
    _native_cuda("int8_weight_only_linear")
    x, w, w_packed, w_scale, bias = _linear_inputs(3, 40, 64, torch.float32, 8, groups=1)
    xs = torch.empty(3 * 64 + 1, device=DEV)[1:].view(3, 64)
    xs.copy_(x)
    _assert_weight_only_close(ops.int8_weight_only_linear(xs, w_packed, w_scale, bias, 40), xs, w, w_scale, bias, 40)


@pytest.mark.parametrize("groups", [1, 64])
def test_int8_weight_only_linear_decode_large(groups):
    _native_cuda("int8_weight_only_linear")
    x, w, w_packed, w_scale, bias = _linear_inputs(1, 8192, 8192, torch.bfloat16, 77, groups=groups)
    _assert_weight_only_close(ops.int8_weight_only_linear(x, w_packed, w_scale, bias, 8192), x, w, w_scale, bias,
                              8192)


def test_int8_weight_only_linear_out_poisoned():
    before = _native_cuda("int8_weight_only_linear_out")
    x, w, w_packed, w_scale, bias = _linear_inputs(6, 50, 96, torch.float16, 12, groups=3)
    out = torch.full((6, 50), float("nan"), dtype=torch.float16, device=DEV)
    ops.int8_weight_only_linear_out(x, w_packed, w_scale, bias, 50, out)
    _assert_weight_only_close(out, x, w, w_scale, bias, 50)
    assert fastq.native_calls("int8_weight_only_linear_out", "cuda") > before


def test_int8_weight_only_linear_opcheck():
    _native_cuda("int8_weight_only_linear")
    x, _, w_packed, w_scale, bias = _linear_inputs(3, 24, 64, torch.float16, 4, groups=4)
    torch.library.opcheck(ops.int8_weight_only_linear.default, (x, w_packed, w_scale, bias, 24))
