"""sparse_24_linear on CUDA: the sparse tensor-core path (mma.sp, bfloat16 x, compute capability
>= 8.0) and the CUDA-core path that float32 x keeps, TF32 allowed or not.

Invariants: ops are called as users call them (the torch.library op), each test checks that the
native CUDA kernel serves the op and afterwards that the intended path ran (``native_calls`` of
``sparse_24_linear`` and of the tensor-core key). Oracles are float64 on the device. Skipped
without a CUDA device (and the tensor-core tests below compute capability 8.0).

Tolerances, derived (S = |x| @ |W*M|^T, the sum of |products| of an output; r the exact float64
result; u_k = K/2 products summed in float32, each add off by at most 2^-23 of the running sum
even if the tensor cores truncate rather than round):
  * bfloat16 x: each kept weight is rounded once to bfloat16 (8-bit significand, so relative
    error <= u = 2^-8), products of two bfloat16 are exact in float32, so
    |y32 - r| <= E = (2^-8 + (K/2) 2^-23) S (1 + 2^-7) (+ bias add, 2^-24 |r|); y is then rounded
    once to bfloat16 (<= 2^-8 |y32| <= 2^-8 (|r| + E)), so |y - r| <= E (1 + 2^-8) + 2^-8 |r|.
    Against the same float64 product with the weights rounded to bfloat16 first (r_bf) the 2^-8 S
    term goes away: that checks round-to-nearest on the weights and that nothing else is lost.
  * float32 x (CUDA cores, float32 products and sums): |y - r| <= (K/2 + 2) 2^-24 S (1 + 2^-7).
A wrong fragment or metadata lane moves products to the wrong columns, an error of order
sqrt(K) |x| |w|, far above these bounds for the shapes below.
"""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _library as L
from fastq.ops import cuda as N
from fastq.ops import reference as R

from _compare import generator
from sparse_cases import mask_24

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = "cuda"
OP = "sparse_24_linear"
MS = (1, 7, 31, 33, 65, 129)
# (m, n, k): M tails (and the three tile shapes: m <= 64, <= 512, larger), N tails, K tails (K % 8 == 4
# takes the 8-byte loaders, K % 64 != 0 a partial last stage), a few real layer shapes.
CASES = (
    [(m, 65, 132) for m in MS]
    + [(17, n, 100) for n in (1, 7, 16, 31, 33, 129)]
    + [(9, 40, k) for k in (4, 8, 12, 36, 60, 64, 68, 100, 260, 1000, 1028)]
    + [(300, 260, 200), (513, 130, 324), (600, 384, 1024), (1, 4096, 4096), (64, 1024, 4100), (1024, 768, 3072)]
)


def _ids(cases):
    return [f"m{m}-n{n}-k{k}" for m, n, k in cases]


def _tensor_cores() -> int:
    """Skip unless the native tensor-core kernel serves bf16 x here; its call count so far."""
    if not _native.build_info().get("cuda"):
        pytest.skip(f"fastq was built without CUDA ({_native.IMPORT_ERROR or 'CPU-only build'})")
    assert fastq.kernel_for(OP, "cuda") == "native:cuda", "sparse_24_linear: no native CUDA kernel registered"
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("mma.sp needs compute capability 8.0")
    assert N.sparse_24_uses_tensor_cores(torch.empty(1, dtype=torch.bfloat16, device=DEV))
    return fastq.native_calls(N.SPARSE_24_MMA, "cuda")


def _inputs(m: int, n: int, k: int, dtype: torch.dtype, bias: bool, *key):
    gen = generator(*key, m, n, k)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen)
    mask = mask_24(n, k, gen, keep_per_group=1 if (m + n) % 3 == 0 else 2)
    b = torch.randn(n, generator=gen) if bias else None
    values, meta = L.sparse_24_pack(w, mask)
    return (x.to(DEV), values.to(DEV), meta.to(DEV), None if b is None else b.to(DEV))


def _exact(x, dense, bias):
    """float64 x @ dense^T + bias and S = |x| @ |dense|^T."""
    x64, d64 = x.double().reshape(-1, x.shape[-1]), dense.double()
    r = x64 @ d64.t()
    if bias is not None:
        r = r + bias.double()
    return r, x64.abs() @ d64.abs().t()


def _assert_within(y, r, tol, what):
    err = (y.double().reshape(r.shape) - r).abs()
    bad = err > tol
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} of {err.numel()} outside the bound, worst "
                                 f"err/tol {float((err / tol).max()):.3g} at {bad.nonzero()[0].tolist()}")


def _check_bf16(y, x, values, meta, bias, dense=None, dense_abs=None):
    """y (bf16 tensor-core result) against the exact product, and against the exact product with
    the weights rounded to bf16 first (see the module docstring for both bounds)."""
    k = x.shape[-1]
    assert y.dtype == torch.bfloat16 and y.shape == x.shape[:-1] + (values.shape[0],)
    dense = R.sparse_24_unpack(values, meta, k) if dense is None else dense
    r, s = _exact(x, dense, bias)
    if dense_abs is not None:
        s = x.double().reshape(-1, k).abs() @ dense_abs.double().t()
    acc = k / 2 * 2.0**-23
    e = (2.0**-8 + 2.0**-22 + acc) * s * (1 + 2.0**-7) + 2.0**-24 * r.abs()
    _assert_within(y, r, e * (1 + 2.0**-8) + 2.0**-8 * (1 + 2.0**-14) * r.abs() + 1e-30, "vs exact")
    if dense_abs is None:
        r_bf, _ = _exact(x, dense.bfloat16().float(), bias)
        e_bf = acc * s * (1 + 2.0**-7) + 2.0**-24 * r_bf.abs()
        _assert_within(y, r_bf, e_bf * (1 + 2.0**-8) + 2.0**-8 * (1 + 2.0**-14) * r_bf.abs() + 1e-30,
                       "vs exact with bf16 weights")


@pytest.mark.parametrize("bias", (True, False), ids=("bias", "nobias"))
@pytest.mark.parametrize("m,n,k", CASES, ids=_ids(CASES))
def test_bf16_tensor_cores(m, n, k, bias):
    before, calls = _tensor_cores(), fastq.native_calls(OP, "cuda")
    x, values, meta, b = _inputs(m, n, k, torch.bfloat16, bias, "bf16")
    y = L.OPS[OP](x, values, meta, b)
    assert fastq.native_calls(N.SPARSE_24_MMA, "cuda") == before + 1
    assert fastq.native_calls(OP, "cuda") == calls + 1
    _check_bf16(y, x, values, meta, b)


@pytest.mark.parametrize("m", (1, 33))
def test_bf16_matches_reference_op(m):
    """The reference itself (float32 weights, rounded once at the end) within the bf16 bound plus
    the reference's own float32 sum and bf16 output rounding."""
    _tensor_cores()
    n, k = 65, 132
    x, values, meta, b = _inputs(m, n, k, torch.bfloat16, True, "ref")
    y = L.OPS[OP](x, values, meta, b).double()
    ref = R.sparse_24_linear(x.cpu(), values.cpu(), meta.cpu(), b.cpu()).double().to(DEV)
    r, s = _exact(x, R.sparse_24_unpack(values, meta, k), b)
    e = (2.0**-8 + k * 2.0**-23) * s * (1 + 2.0**-7)
    _assert_within(y, ref, e * (1 + 2.0**-7) + 2.0**-7 * (1 + 2.0**-7) * r.abs() + 1e-30, "vs reference op")


def test_bf16_batched_and_unaligned_views():
    """[B, T, K] input, and x / values views whose data start is not 16-byte aligned."""
    _tensor_cores()
    gen = generator("views")
    n, k = 72, 200
    w = torch.randn(n, k, generator=gen)
    values, meta = (t.to(DEV) for t in L.sparse_24_pack(w, mask_24(n, k, gen)))
    x3 = torch.randn(3, 5, k, generator=gen).to(torch.bfloat16).to(DEV)
    y3 = L.OPS[OP](x3, values, meta, None)
    assert y3.shape == (3, 5, n)
    _check_bf16(y3, x3, values, meta, None)
    xs = torch.randn(7 * k + 1, generator=gen).to(torch.bfloat16).to(DEV)[1:].view(7, k)  # 2-byte offset
    vs = torch.empty(values.numel() + 2, device=DEV)[2:].view_as(values).copy_(values)  # 8-byte offset
    assert xs.data_ptr() % 16 and vs.data_ptr() % 16 and xs.is_contiguous() and vs.is_contiguous()
    _check_bf16(L.OPS[OP](xs, vs, meta, None), xs, values, meta, None)


def test_bf16_non_canonical_meta():
    """Hand-made codes (not from sparse_24_pack): decreasing pairs are reordered and a repeated code
    keeps both values' sum, as the reference's sum over stored entries does."""
    _tensor_cores()
    gen = generator("meta")
    m, n, k = 19, 48, 96
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEV)
    values = torch.randn(n, k // 2, generator=gen).to(DEV)
    meta = torch.randint(0, 256, (n, k // 8), dtype=torch.uint8, generator=gen).to(DEV)
    cols = R._24_cols(meta, k)
    dense = torch.zeros(n, k, dtype=torch.float64, device=DEV).scatter_add_(1, cols, values.double())
    dense_abs = torch.zeros(n, k, dtype=torch.float64, device=DEV).scatter_add_(1, cols, values.double().abs())
    codes = ((meta.long().unsqueeze(-1) >> torch.tensor([0, 2, 4, 6], device=DEV)) & 3).reshape(n, -1, 2)
    assert bool((codes[..., 0] > codes[..., 1]).any()) and bool((codes[..., 0] == codes[..., 1]).any())
    y = L.OPS[OP](x, values, meta, None)
    _check_bf16(y, x, values, meta, None, dense=dense, dense_abs=dense_abs)
    ref = R.sparse_24_linear(x.cpu(), values.cpu(), meta.cpu(), None).double().to(DEV)
    r, s = _exact(x, dense, None)
    _assert_within(y.double(), ref, (2.0**-8 + k * 2.0**-23) * s * 1.02 + 2.0**-7 * 1.01 * r.abs() + 1e-30,
                   "vs reference op")


@pytest.mark.parametrize("tf32", (False, True), ids=("ieee", "tf32-allowed"))
@pytest.mark.parametrize("m,n,k", [(1, 65, 132), (33, 40, 260), (129, 130, 100)], ids=_ids(
    [(1, 65, 132), (33, 40, 260), (129, 130, 100)]))
def test_float32_stays_on_cuda_cores(m, n, k, tf32):
    """float32 x keeps the float32 CUDA-core kernel whatever torch's TF32 setting (the TF32 mma.sp
    wants 1:2 sparsity): same bits either way, float32 accuracy."""
    if not _native.build_info().get("cuda"):
        pytest.skip("fastq was built without CUDA")
    assert fastq.kernel_for(OP, "cuda") == "native:cuda"
    x, values, meta, b = _inputs(m, n, k, torch.float32, True, "f32")
    assert not N.sparse_24_uses_tensor_cores(x)
    before_tc, before = fastq.native_calls(N.SPARSE_24_MMA, "cuda"), fastq.native_calls(OP, "cuda")
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        y = L.OPS[OP](x, values, meta, b)
        torch.backends.cuda.matmul.allow_tf32 = not tf32
        y_other = L.OPS[OP](x, values, meta, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert fastq.native_calls(OP, "cuda") == before + 2
    assert fastq.native_calls(N.SPARSE_24_MMA, "cuda") == before_tc
    assert y.dtype == torch.float32 and torch.equal(y, y_other)
    r, s = _exact(x, R.sparse_24_unpack(values, meta, k), b)
    _assert_within(y, r, (k / 2 + 2) * 2.0**-24 * s * (1 + 2.0**-7) + 2.0**-24 * r.abs() + 1e-30, "float32")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=("bf16", "f32"))
@pytest.mark.parametrize("m", (1, 9, 70))
def test_opcheck(m, dtype):
    if dtype == torch.bfloat16:
        _tensor_cores()
    x, values, meta, b = _inputs(m, 24, 72, dtype, True, "opcheck")
    torch.library.opcheck(L.OPS[OP], (x, values, meta, b))


@pytest.mark.parametrize("m,n,k", [(64, 128, 128), (128, 256, 512), (256, 512, 1024)],
                         ids=_ids([(64, 128, 128), (128, 256, 512), (256, 512, 1024)]))
def test_matches_torch_semi_structured(m, n, k):
    """Same bf16 weights through torch.sparse.to_sparse_semi_structured (cuSPARSELt or CUTLASS):
    both results lie within the accumulation-and-output bound of the exact bf16-weight product."""
    _tensor_cores()
    gen = generator("semi", m, n, k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(DEV)
    w = torch.randn(n, k, generator=gen)
    mask = mask_24(n, k, gen)
    wm = (w * mask).to(torch.bfloat16).to(DEV)
    try:
        from torch.sparse import to_sparse_semi_structured

        y_torch = torch.nn.functional.linear(x, to_sparse_semi_structured(wm))
    except (ImportError, RuntimeError, NotImplementedError, ValueError) as exc:
        pytest.skip(f"torch semi-structured sparsity unavailable here: {exc}")
    values, meta = (t.to(DEV) for t in L.sparse_24_pack(w, mask))
    y = L.OPS[OP](x, values, meta, None)
    r_bf, s = _exact(x, wm.float(), None)
    tol = k * 2.0**-23 * s * (1 + 2.0**-6) + 2.0**-7 * (1 + 2.0**-7) * r_bf.abs() + 1e-30
    _assert_within(y, r_bf, tol / 2 + 1e-30, "fastq vs exact bf16-weight product")
    _assert_within(y_torch, r_bf, tol / 2 + 1e-30, "torch semi-structured vs exact bf16-weight product")
    _assert_within(y, y_torch.double(), tol, "fastq vs torch semi-structured")
