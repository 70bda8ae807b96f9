"""sparse_ell_pack / sparse_ell_unpack / sparse_ell_linear (sliced ELL: 16-row groups x 32-column
tiles): the documented layout, exact round trips on the tail table (empty rows, a fully kept row,
sparsity 0 to 0.99), int8 packing by sparse_int8_pack's rule, native kernels under every ISA
against the reference for M in 1..33 (float32 and bfloat16 x, int8, bias or not), opcheck, the
native kernel really ran, thread-count independence, the NaN policy, and bad input.

Tolerance: none. The reference states the float-op sequence (per lane, in storage order,
``acc = acc + v * x`` with separate roundings, zero slots skipped; then ``* scale``, ``+ bias``, one
rounding to x's dtype) and every kernel follows it, so outputs are compared bit for bit."""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq.ops import _library as L
from fastq.ops import reference as R
from fastq.ops._checks import ELL_ROWS, ELL_TILE

from _compare import assert_bits_equal, generator
from sparse_cases import random_mask, with_threads

SIZES = (1, 7, 31, 33, 65, 129)
SHAPES = [(n, k) for n, k in zip(SIZES, reversed(SIZES))] + [(16, 32), (33, 7)]
MS = (1, 2, 3, 4, 5, 7, 8, 9, 33)


def _mask(n: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """random_mask plus the edge cases: an empty row, a fully kept row (when n allows)."""
    mask = random_mask(n, k, sparsity, gen)
    if n >= 3:
        mask[1] = False
        mask[2] = True
    return mask


def _check_layout(w: torch.Tensor, mask: torch.Tensor, packed) -> None:
    """The documented layout, checked slot by slot against the mask."""
    values, offsets, steps, group_ptr, _ = packed
    n, k = mask.shape
    groups, tiles = -(-n // ELL_ROWS), -(-k // ELL_TILE)
    assert offsets.dtype == steps.dtype == torch.uint8 and group_ptr.dtype == torch.int64
    assert steps.shape == (groups, tiles) and group_ptr.shape == (groups + 1,)
    assert values.shape == offsets.shape == (int(steps.sum()), ELL_ROWS)
    padded = torch.zeros(groups * ELL_ROWS, tiles * ELL_TILE, dtype=torch.bool)
    padded[:n, :k] = mask
    counts = padded.reshape(groups, ELL_ROWS, tiles, ELL_TILE).sum(3)  # [g, r, t]
    assert torch.equal(steps.long(), counts.amax(1))
    assert torch.equal(group_ptr.diff(), steps.long().sum(1)) and group_ptr[0] == 0
    j = 0
    for g in range(groups):
        for t in range(tiles):
            for s in range(int(steps[g, t])):
                for r in range(ELL_ROWS):
                    cols = padded[g * ELL_ROWS + r, t * ELL_TILE:(t + 1) * ELL_TILE].nonzero().flatten()
                    if s < cols.numel():  # the s-th kept weight of the row in this tile
                        assert offsets[j, r] == cols[s]
                        if values.dtype == torch.float32:
                            assert values[j, r] == w[g * ELL_ROWS + r, t * ELL_TILE + cols[s]]
                    else:  # padding
                        assert offsets[j, r] == 0 and values[j, r] == 0
                j += 1


def test_layout_slot_by_slot():
    gen = generator("ell-layout")
    n, k = 19, 70  # two groups (the second padded), three tiles (the last partial)
    w = torch.randn(n, k, generator=gen)
    mask = _mask(n, k, 0.7, gen)
    mask[0, 32:64] = True  # a row filling a whole tile: 32 steps
    packed = L.sparse_ell_pack(w, mask)
    assert int(packed[2].max()) == ELL_TILE
    _check_layout(w, mask, packed)
    _check_layout(w, mask, L.sparse_ell_pack(w, mask, True))


@pytest.mark.parametrize("n,k", SHAPES, ids=str)
def test_round_trip(n, k):
    dtype = (torch.float32, torch.bfloat16, torch.float16)[(n + k) % 3]
    gen = generator("ell-round-trip", n, k)
    w = torch.randn(n, k, generator=gen).to(dtype)
    for sp in (0.0, 0.5, 0.9, 0.99):
        mask = _mask(n, k, sp, gen)
        values, offsets, steps, group_ptr, scale = L.sparse_ell_pack(w, mask)
        assert values.dtype == torch.float32 and scale.shape == (0,)
        assert torch.equal(L.sparse_ell_unpack(values, offsets, steps, group_ptr, None, n, k), w.float() * mask)
        assert int((values != 0).sum()) == int(((w != 0) & mask).sum())
        if (n, k) in ((33, 65), (1, 129)):
            _check_layout(w.float(), mask, (values, offsets, steps, group_ptr, scale))
        # int8: sparse_int8_pack's scale and codes, so the same dequantized weight
        q8 = L.sparse_ell_pack(w, mask, True)
        q, scale8, cols, row_ptr = L.sparse_int8_pack(w, mask)
        assert q8[0].dtype == torch.int8 and torch.equal(q8[4], scale8)
        assert torch.equal(L.sparse_ell_unpack(*q8, n, k), L.sparse_int8_unpack(q, scale8, cols, row_ptr, k))


def test_wide_layers_need_no_16_bit_indices():
    w = torch.randn(3, 70000)
    mask = torch.zeros(3, 70000, dtype=torch.bool)
    mask[0, 69999] = mask[1, 40000] = mask[2, 3] = True
    packed = L.sparse_ell_pack(w, mask)
    assert torch.equal(L.sparse_ell_unpack(*packed, 3, 70000), w * mask)
    x = torch.randn(2, 70000)
    before = fastq.native_calls("sparse_ell_linear", "cpu")
    y = L.sparse_ell_linear(x, *packed, None, 3)
    # three kept weights, one per row: a single product each, exact in float32
    assert_bits_equal(y, x @ (w * mask).T)
    if fastq.native_available():  # without the native kernel, y *is* the reference: compare only when it ran
        assert fastq.native_calls("sparse_ell_linear", "cpu") > before
        assert_bits_equal(y, R.sparse_ell_linear(x, *packed, None, 3))


def _expect_native(before: int, isa_name: str) -> None:
    assert fastq.native_calls("sparse_ell_linear", "cpu") > before
    assert fastq.kernel_for("sparse_ell_linear", "cpu") == f"native:{isa_name}"


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", SHAPES, ids=str)
def test_linear_matches_reference(isa, m, n, k):
    i = SHAPES.index((n, k)) + MS.index(m)
    gen = generator("ell-linear", m, n, k)
    w = torch.randn(n, k, generator=gen)
    mask = _mask(n, k, (0.0, 0.5, 0.75, 0.9, 0.95)[i % 5], gen)
    bias = torch.randn(n, generator=gen) if i % 2 else None
    for int8 in (False, True):
        packed = L.sparse_ell_pack(w, mask, int8)
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(m, k, generator=gen).to(dtype)
            before = fastq.native_calls("sparse_ell_linear", "cpu")
            y = L.sparse_ell_linear(x, *packed, bias, n)
            _expect_native(before, isa)
            assert y.dtype == dtype and y.shape == (m, n)
            assert_bits_equal(y, R.sparse_ell_linear(x, *packed, bias, n), f"int8={int8} {dtype}")
            # and it is the masked dense layer, up to float32 summation order
            dense = L.sparse_ell_unpack(*packed, n, k)
            ref = torch.nn.functional.linear(x.float(), dense, bias)
            tol = 1e-5 * (x.float().abs() @ dense.abs().t() + (0 if bias is None else bias.abs())) + 1e-6
            if dtype == torch.bfloat16:
                tol = tol + ref.abs() * 2 ** -7
            assert bool(((y.float() - ref).abs() <= tol).all())


def test_batched_input_and_thread_independence(isa):
    gen = generator("ell-threads")
    n, k = 256, 1024  # over 2 x 2^18 stored slots: two threads split the row groups
    w = torch.randn(n, k, generator=gen)
    mask = random_mask(n, k, 0.5, gen)
    for int8 in (False, True):
        packed = L.sparse_ell_pack(w, mask, int8)
        for x in (torch.randn(2, 3, k, generator=gen), torch.randn(1, k, generator=gen)):
            y1, y2 = (with_threads(t, lambda: L.sparse_ell_linear(x, *packed, None, n)) for t in (1, 2))
            assert y1.shape == tuple(x.shape[:-1]) + (n,)
            assert_bits_equal(y1, y2)
            assert_bits_equal(y1, R.sparse_ell_linear(x, *packed, None, n))
        assert L.sparse_ell_linear(torch.randn(0, k), *packed, None, n).shape == (0, n)  # no rows: nothing to do
        # a non-contiguous x is copied, not misread
        xt = torch.randn(k, 3, generator=gen).t()
        assert_bits_equal(L.sparse_ell_linear(xt, *packed, None, n), R.sparse_ell_linear(xt.contiguous(), *packed, None, n))


def test_nan_policy(isa):
    """Padding and zero weights are skipped: NaN/Inf in x reaches y only through a nonzero kept weight."""
    n, k = 16, 64
    gen = generator("ell-nan")
    w = torch.randn(n, k, generator=gen)
    mask = random_mask(n, k, 0.5, gen)
    mask[:, [0, 5, 32]] = False  # offset 0 of both tiles (the padding's column) and column 5: pruned
    mask[3, 9] = True
    mask[[r for r in range(n) if r != 3], 9] = False  # column 9 kept only by row 3
    mask[4, 20] = True
    w[4, 20] = 0.0  # a kept weight equal to 0 is skipped like padding
    mask[[r for r in range(n) if r != 4], 20] = False
    for m in (1, 9):
        x = torch.randn(m, k, generator=gen)
        x[:, [0, 5, 20, 32]] = float("nan")
        x[:, 9] = float("inf")
        packed = L.sparse_ell_pack(w, mask)
        y = L.sparse_ell_linear(x, *packed, None, n)
        assert torch.isinf(y[:, 3]).all()
        assert torch.isfinite(y[:, [r for r in range(n) if r != 3]]).all()
        assert_bits_equal(y, R.sparse_ell_linear(x, *packed, None, n))


def _case(n: int = 20, k: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = generator("ell-case", n, k)
    return torch.randn(n, k, generator=gen), random_mask(n, k, 0.5, gen)


def _packed(int8: bool = False):
    return L.sparse_ell_pack(*_case(), int8)


@pytest.mark.parametrize("int8", (False, True))
@pytest.mark.parametrize("m", (1, 9))
def test_opcheck(m, int8):
    gen = generator("ell-opcheck", m)
    packed = _packed(int8)
    x = torch.randn(m, 40, generator=gen)
    for args in ((x, *packed, torch.randn(20, generator=gen), 20), (x.bfloat16(), *packed, None, 20)):
        torch.library.opcheck(L.OPS["sparse_ell_linear"], args)
    torch.library.opcheck(L.OPS["sparse_ell_unpack"], (*packed, 20, 40))
    torch.library.opcheck(L.OPS["sparse_ell_pack"], (*_case(), int8))


def test_cuda_is_served_by_the_reference():
    """No CUDA kernel: the reference (the op's default) serves CUDA tensors."""
    assert fastq.kernel_for("sparse_ell_linear", "cuda") == "reference"
    if torch.cuda.is_available():
        gen = generator("ell-cuda")
        w = torch.randn(33, 70, generator=gen)
        packed = L.sparse_ell_pack(w, random_mask(33, 70, 0.8, gen), True)
        x = torch.randn(3, 70, generator=gen)
        y = L.sparse_ell_linear(x.cuda(), *(t.cuda() for t in packed), None, 33)
        torch.testing.assert_close(y.cpu(), R.sparse_ell_linear(x, *packed, None, 33))


# ---- bad input --------------------------------------------------------------------------------

_W = torch.randn(8, 16)
_NON_FINITE = _W.clone()
_NON_FINITE[2, 3] = float("inf")


@pytest.mark.parametrize("w,mask,error,match", [
    (_W, torch.zeros(8, 16, dtype=torch.bool), ValueError, "keeps no weight"),
    (_W, torch.ones(8, 16), TypeError, "mask must be a bool"),
    (_W, torch.ones(8, 15, dtype=torch.bool), ValueError, "mask has shape"),
    (torch.randn(0, 16), torch.ones(0, 16, dtype=torch.bool), ValueError, "non-empty 2-D"),
    (_NON_FINITE, torch.ones(8, 16, dtype=torch.bool), ValueError, "NaN or Inf"),
], ids=("empty-mask", "float-mask", "mask-shape", "empty-w", "inf"))
def test_bad_pack_input(w, mask, error, match):
    with pytest.raises(error, match=match):
        L.sparse_ell_pack(w, mask)


def test_bad_linear_dtypes_and_shapes():
    values, offsets, steps, group_ptr, _ = _packed()
    q, _, _, _, scale = _packed(True)
    x = torch.randn(3, 40)
    args = (values, offsets, steps, group_ptr)
    op = L.sparse_ell_linear
    with pytest.raises(TypeError, match="x must be float32 or bfloat16"):
        op(x.double(), *args, None, None, 20)
    with pytest.raises(TypeError, match="values must be float32 or int8"):
        op(x, values.double(), offsets, steps, group_ptr, None, None, 20)
    with pytest.raises(TypeError, match="offsets must be torch.uint8"):
        op(x, values, offsets.to(torch.int16), steps, group_ptr, None, None, 20)
    with pytest.raises(TypeError, match="steps must be torch.uint8"):
        op(x, values, offsets, steps.long(), group_ptr, None, None, 20)
    with pytest.raises(TypeError, match="group_ptr must be torch.int64"):
        op(x, values, offsets, steps, group_ptr.int(), None, None, 20)
    with pytest.raises(ValueError, match="K mismatch"):
        op(torch.randn(3, 80), *args, None, None, 20)
    with pytest.raises(ValueError, match="row groups"):
        op(x, *args, None, None, 40)
    with pytest.raises(ValueError, match="n \\(output features\\) must be positive"):
        op(x, *args, None, None, 0)
    with pytest.raises(ValueError, match="values and offsets"):
        op(x, values, offsets[:-1].contiguous(), steps, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="offsets must be 2-D"):
        op(x, values, offsets.flatten(), steps, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="group_ptr must have"):
        op(x, values, offsets, steps, group_ptr[:-1].contiguous(), None, None, 20)
    with pytest.raises(ValueError, match="values must be contiguous"):
        op(x, torch.cat([values, values], 1)[:, ::2], offsets, steps, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="non-empty last dimension"):
        op(torch.randn(3, 0), *args, None, None, 20)
    with pytest.raises(ValueError, match="bias"):
        op(x, *args, None, torch.randn(21), 20)
    with pytest.raises(ValueError, match="int8 values need"):
        op(x, q, offsets, steps, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="scale must have n"):
        op(x, q, offsets, steps, group_ptr, scale[:-1], None, 20)
    with pytest.raises(ValueError, match="take no scale"):
        op(x, *args, scale, None, 20)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="put them on one device"):
            op(x, values.cuda(), offsets, steps, group_ptr, None, None, 20)


def test_bad_linear_values():
    """Values native code would trust are scanned (once per tensor version) before any kernel runs."""
    values, offsets, steps, group_ptr, _ = _packed()
    x = torch.randn(2, 40)
    bad = offsets.clone()
    bad[0, 0] = 32
    with pytest.raises(ValueError, match="offset is >= 32"):
        L.sparse_ell_linear(x, values, bad, steps, group_ptr, None, None, 20)
    bad = steps.clone()
    bad[0, 0] = 33
    with pytest.raises(ValueError, match="step count exceeds 32"):
        L.sparse_ell_linear(x, values, offsets, bad, group_ptr, None, None, 20)
    bad = steps.clone()
    bad[1, 0] += 1  # counts no longer add up to the stored steps
    with pytest.raises(ValueError, match="inconsistent with the values' length"):
        L.sparse_ell_linear(x, values, offsets, bad, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="inconsistent"):
        L.sparse_ell_linear(x, values[:-1].contiguous(), offsets[:-1].contiguous(), steps, group_ptr, None, None, 20)
    # an in-place edit after a good call is caught too (the cached verdict is per version)
    y = L.sparse_ell_linear(x, values, offsets, steps, group_ptr, None, None, 20)
    assert y.shape == (2, 20)
    offsets[0, 0] = 40
    with pytest.raises(ValueError, match="offset is >= 32"):
        L.sparse_ell_linear(x, values, offsets, steps, group_ptr, None, None, 20)
    with pytest.raises(ValueError, match="offset is >= 32"):
        L.sparse_ell_unpack(values, offsets, steps, group_ptr, None, 20, 40)
