"""sparse_{csr,int8,24,bsr}_linear: native CPU kernels (every ISA; row-major path for M < 8,
transposed path for M >= 8) and CUDA kernels against the references on the tail table at
50/75/90/95% sparsity, 2:4 and several block shapes; float32 and bfloat16 x; opcheck; the
native kernel really ran; thread-count independence; the NaN policy; bad input.

Tolerance: the kernels sum the same float32 products in another order, so each output may differ
from the reference by a few ulps of sum |x * w| over its row (bounded here by 1e-5 of it)."""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq.ops import _library as L
from fastq.ops import reference as R

from _compare import generator
from sparse_cases import BLOCKS, SPARSITIES, block_mask, mask_24, random_mask, with_threads

SHAPES = [(7, 129), (33, 64), (16, 17), (65, 31), (1, 127), (9, 8), (127, 65), (64, 384)]
MS = (1, 7, 8, 33)


def _close(y: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, wm: torch.Tensor) -> None:
    bound = x.float().abs().reshape(-1, x.shape[-1]) @ wm.abs().t()
    bound = bound.reshape(ref.shape)
    tol = 1e-5 * bound + 1e-30
    if y.dtype == torch.bfloat16:  # one bf16 rounding on each side of a float32 difference
        tol = tol + ref.float().abs() * 2 ** -7
    err = (y.float() - ref.float()).abs()
    assert bool((err <= tol).all()), f"max err {err.max().item()} (tol {tol.min().item()}..)"


def _expect_native(op: str, before: int, isa_name: str) -> None:
    assert fastq.native_calls(op, "cpu") > before
    assert fastq.kernel_for(op, "cpu") == f"native:{isa_name}"


def _inputs(m: int, n: int, k: int, dtype: torch.dtype, gen: torch.Generator):
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen)
    bias = torch.randn(n, generator=gen) if (m + n) % 2 else None
    return x, w, bias


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", SHAPES, ids=lambda v: str(v))
def test_csr_and_int8(isa, m, n, k):
    i = SHAPES.index((n, k)) + MS.index(m)
    dtype = torch.bfloat16 if i % 3 == 2 else torch.float32
    gen = generator("csr", m, n, k)
    x, w, bias = _inputs(m, n, k, dtype, gen)
    mask = random_mask(n, k, SPARSITIES[i % 4], gen)
    values, cols, row_ptr = L.sparse_csr_pack(w, mask)
    before = fastq.native_calls("sparse_csr_linear", "cpu")
    y = L.sparse_csr_linear(x, values, cols, row_ptr, bias, n)
    _expect_native("sparse_csr_linear", before, isa)
    assert y.dtype == dtype and y.shape == (m, n)
    _close(y, R.sparse_csr_linear(x, values, cols, row_ptr, bias, n), x, w * mask)
    # the reference is the masked dense matmul (up to summation order)
    _close(y, torch.nn.functional.linear(x.float(), w * mask, bias).to(dtype), x, w * mask)

    q, scale, cols8, row_ptr8 = L.sparse_int8_pack(w, mask)
    before = fastq.native_calls("sparse_int8_linear", "cpu")
    y8 = L.sparse_int8_linear(x, q, scale, cols8, row_ptr8, bias)
    _expect_native("sparse_int8_linear", before, isa)
    _close(y8, R.sparse_int8_linear(x, q, scale, cols8, row_ptr8, bias), x, w * mask)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", [(7, 132), (33, 64), (16, 20), (65, 36), (1, 128), (9, 8), (64, 384)], ids=str)
def test_24(isa, m, n, k):
    gen = generator("24", m, n, k)
    dtype = torch.bfloat16 if (m + n) % 3 == 0 else torch.float32
    x, w, bias = _inputs(m, n, k, dtype, gen)
    mask = mask_24(n, k, gen, keep_per_group=1 if n == 65 else 2)
    values, meta = L.sparse_24_pack(w, mask)
    before = fastq.native_calls("sparse_24_linear", "cpu")
    y = L.sparse_24_linear(x, values, meta, bias)
    _expect_native("sparse_24_linear", before, isa)
    _close(y, R.sparse_24_linear(x, values, meta, bias), x, w * mask)


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("br,bc", BLOCKS, ids=str)
def test_bsr(isa, m, br, bc):
    for n, k in ((33, 65), (16, 129), (7, 8)):
        gen = generator("bsr", m, br, bc, n, k)
        x, w, bias = _inputs(m, n, k, torch.float32 if (n + m) % 2 else torch.bfloat16, gen)
        mask = block_mask(n, k, br, bc, SPARSITIES[(n + br) % 4], gen)
        values, block_col, row_ptr = L.sparse_bsr_pack(w, mask, br, bc)
        before = fastq.native_calls("sparse_bsr_linear", "cpu")
        y = L.sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
        _expect_native("sparse_bsr_linear", before, isa)
        _close(y, R.sparse_bsr_linear(x, values, block_col, row_ptr, bias, n), x, w * mask)


def test_batched_input_and_thread_independence(isa):
    gen = generator("threads")
    n, k = 1024, 1024  # enough stored weights (> 2 x 2^18 multiply-adds) that 2 threads split the rows
    w = torch.randn(n, k, generator=gen)
    mask = random_mask(n, k, 0.5, gen)
    packed = L.sparse_csr_pack(w, mask)
    for x in (torch.randn(2, 5, k, generator=gen), torch.randn(1, k, generator=gen)):  # [*, K] input
        y1, y2 = (with_threads(t, lambda: L.sparse_csr_linear(x, *packed, None, n)) for t in (1, 2))
        assert y1.shape == tuple(x.shape[:-1]) + (n,)
        assert torch.equal(y1, y2)  # rows are split across threads, never a row's sum
        _close(y1, R.sparse_csr_linear(x, *packed, None, n), x, w * mask)


def test_nan_policy(isa):
    """Pruned weights are never read: NaN in x reaches y only through a kept weight."""
    n, k = 8, 64
    gen = generator("nan")
    w = torch.randn(n, k, generator=gen)
    mask = random_mask(n, k, 0.5, gen)
    mask[:, 5] = False  # column 5 pruned everywhere
    mask[3, 9] = True
    mask[[0, 1, 2, 4, 5, 6, 7], 9] = False  # column 9 kept only by row 3
    for m in (1, 9):
        x = torch.randn(m, k, generator=gen)
        x[:, 5] = float("nan")
        x[:, 9] = float("inf")
        y = L.sparse_csr_linear(x, *L.sparse_csr_pack(w, mask), None, n)
        assert not torch.isnan(y[:, [0, 1, 2, 4, 5, 6, 7]]).any() and torch.isinf(y[:, 3]).all()
        yr = R.sparse_csr_linear(x, *L.sparse_csr_pack(w, mask), None, n)
        assert torch.equal(torch.isfinite(y), torch.isfinite(yr))


@pytest.mark.parametrize("m", (1, 9))
def test_opcheck(m):
    gen = generator("opcheck", m)
    n, k = 12, 40
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    mask = random_mask(n, k, 0.6, gen)
    torch.library.opcheck(L.OPS["sparse_csr_linear"], (x, *L.sparse_csr_pack(w, mask), bias, n))
    torch.library.opcheck(L.OPS["sparse_int8_linear"], (x, *L.sparse_int8_pack(w, mask), None))
    m24 = mask_24(n, k, gen)
    torch.library.opcheck(L.OPS["sparse_24_linear"], (x, *L.sparse_24_pack(w, m24), bias))
    torch.library.opcheck(L.OPS["sparse_bsr_linear"], (x, *L.sparse_bsr_pack(w, block_mask(n, k, 4, 4, 0.5, gen), 4, 4), bias, n))
    torch.library.opcheck(L.OPS["sparse_24_pack"], (w, m24))
    torch.library.opcheck(L.OPS["sparse_24_unpack"], (*L.sparse_24_pack(w, m24), k))
    torch.library.opcheck(L.OPS["sparse_csr_unpack"], (*L.sparse_csr_pack(w, mask), n, k))


def test_bad_input():
    n, k = 8, 32
    gen = generator("bad")
    w = torch.randn(n, k, generator=gen)
    mask = random_mask(n, k, 0.5, gen)
    values, cols, row_ptr = L.sparse_csr_pack(w, mask)
    x = torch.randn(3, k, generator=gen)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        L.sparse_csr_linear(x.double(), values, cols, row_ptr, None, n)
    with pytest.raises(TypeError, match="int16"):
        L.sparse_csr_linear(x, values, cols.int(), row_ptr, None, n)
    with pytest.raises(ValueError, match="n \\+ 1"):
        L.sparse_csr_linear(x, values, cols, row_ptr, None, n + 1)
    with pytest.raises(ValueError, match="bias"):
        L.sparse_csr_linear(x, values, cols, row_ptr, torch.randn(n + 1), n)
    if fastq.native_available():  # index bounds are checked before native code reads x
        with pytest.raises(ValueError, match="K does not match"):
            L.sparse_csr_linear(x[:, :16].contiguous(), values, cols, row_ptr, None, n)
        with pytest.raises(ValueError, match="row_ptr"):
            L.sparse_csr_linear(x, values, cols, row_ptr.flip(0).contiguous(), None, n)
    v24, meta = L.sparse_24_pack(w, mask_24(n, k, gen))
    with pytest.raises(ValueError, match="K/2"):
        L.sparse_24_linear(torch.randn(2, k + 4), v24, meta, None)
    with pytest.raises(ValueError, match="non-empty"):
        L.sparse_csr_linear(torch.randn(2, 0), values, cols, row_ptr, None, n)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("m", (1, 7, 33))
def test_cuda_matches_cpu(m):
    gen = generator("cuda", m)
    n, k = 65, 132
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    mask = random_mask(n, k, 0.75, gen)
    csr = L.sparse_csr_pack(w, mask)
    y = L.sparse_csr_linear(x.cuda(), *(t.cuda() for t in csr), bias.cuda(), n)
    _close(y.cpu(), R.sparse_csr_linear(x, *csr, bias, n), x, w * mask)
    m24 = mask_24(n, k, gen)
    p24 = L.sparse_24_pack(w, m24)
    y = L.sparse_24_linear(x.cuda(), *(t.cuda() for t in p24), bias.cuda())
    _close(y.cpu(), R.sparse_24_linear(x, *p24, bias), x, w * m24)
    for dtype in (torch.bfloat16,):
        yb = L.sparse_csr_linear(x.cuda().to(dtype), *(t.cuda() for t in csr), bias.cuda(), n)
        assert yb.dtype == dtype
    assert fastq.kernel_for("sparse_csr_linear", "cuda") == "native:cuda"
