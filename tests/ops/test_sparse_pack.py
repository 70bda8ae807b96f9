"""Sparse packing ops (sparse_{csr,24,bsr,int8}_pack / _unpack): exact round trips on the tail
table for every format, the documented layouts (16-entry row padding, 2-bit 2:4 codes, 16-bit
indices), int8 quantization against its stated float-op sequence, and bad input."""

from __future__ import annotations

import pytest
import torch

from fastq.ops import _library as L
from fastq.ops.reference import SPARSE_ROW_PAD

from _compare import generator
from sparse_cases import BLOCKS, SPARSITIES, TAILS, block_mask, mask_24, random_mask, topk_mask

SHAPES = [(n, k) for n, k in zip(TAILS, reversed(TAILS))] + [(64, 768), (3, 4096)]


@pytest.mark.parametrize("n,k", SHAPES, ids=lambda v: str(v))
def test_csr_round_trip(n, k):
    dtype = (torch.float32, torch.bfloat16, torch.float16)[(n + k) % 3]
    gen = generator("csr", n, k, dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    for sp in SPARSITIES:
        mask = random_mask(n, k, sp, gen) if sp < 0.9 else topk_mask(w.float(), sp)
        values, cols, row_ptr = L.sparse_csr_pack(w, mask)
        assert values.dtype == torch.float32 and cols.dtype == torch.int16 and row_ptr.dtype == torch.int64
        counts = row_ptr.diff()
        assert torch.all(counts % SPARSE_ROW_PAD == 0)
        assert torch.equal(counts, (mask.sum(1) + SPARSE_ROW_PAD - 1) // SPARSE_ROW_PAD * SPARSE_ROW_PAD)
        dense = L.sparse_csr_unpack(values, cols, row_ptr, n, k)
        assert torch.equal(dense, w.float() * mask)
        assert int((values != 0).sum()) == int(((w != 0) & mask).sum())


def test_csr_indices_are_unsigned_16_bit():
    w = torch.randn(2, 65536)
    mask = torch.zeros(2, 65536, dtype=torch.bool)
    mask[0, 65535] = mask[1, 40000] = mask[1, 3] = True
    values, cols, row_ptr = L.sparse_csr_pack(w, mask)
    assert torch.equal(L.sparse_csr_unpack(values, cols, row_ptr, 2, 65536), w * mask)


@pytest.mark.parametrize("n,k", [(1, 4), (7, 8), (9, 12), (15, 36), (33, 64), (17, 132), (64, 768)], ids=str)
@pytest.mark.parametrize("keep", (2, 1, 0))
def test_24_round_trip(n, k, keep):
    gen = generator("24", n, k, keep)
    w = torch.randn(n, k, generator=gen)
    mask = mask_24(n, k, gen, keep)
    if keep == 0:
        mask[0, 0] = True  # an empty layer is refused
    values, meta = L.sparse_24_pack(w, mask)
    assert values.shape == (n, k // 2) and meta.shape == (n, (k // 2 + 3) // 4) and meta.dtype == torch.uint8
    assert torch.equal(L.sparse_24_unpack(values, meta, k), w * mask)
    if keep == 2:  # exactly 2:4: the stored slots are the mask
        codes = ((meta.to(torch.int64).unsqueeze(-1) >> torch.tensor([0, 2, 4, 6])) & 3).reshape(n, -1)[:, : k // 2]
        cols = codes + torch.arange(k // 2) // 2 * 4
        rebuilt = torch.zeros(n, k, dtype=torch.bool).scatter_(1, cols, True)
        assert torch.equal(rebuilt, mask)


@pytest.mark.parametrize("n,k", [(1, 1), (7, 9), (8, 16), (17, 31), (33, 65), (64, 129), (96, 768)], ids=str)
@pytest.mark.parametrize("br,bc", BLOCKS, ids=lambda v: str(v))
def test_bsr_round_trip(n, k, br, bc):
    gen = generator("bsr", n, k, br, bc)
    w = torch.randn(n, k, generator=gen)
    mask = block_mask(n, k, br, bc, 0.75, gen)
    values, block_col, row_ptr = L.sparse_bsr_pack(w, mask, br, bc)
    assert values.shape[1:] == (br, bc) and row_ptr.numel() == -(-n // br) + 1
    assert torch.equal(L.sparse_bsr_unpack(values, block_col, row_ptr, n, k), w * mask)
    # a mask that is not block-aligned still packs exactly (partial blocks store zeros)
    mask2 = random_mask(n, k, 0.9, gen)
    values, block_col, row_ptr = L.sparse_bsr_pack(w, mask2, br, bc)
    assert torch.equal(L.sparse_bsr_unpack(values, block_col, row_ptr, n, k), w * mask2)


@pytest.mark.parametrize("n,k", [(2, 7), (9, 33), (16, 129), (64, 768)], ids=str)
def test_int8_pack_follows_the_stated_math(n, k):
    gen = generator("int8", n, k)
    w = torch.randn(n, k, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    mask = random_mask(n, k, 0.9, gen)
    mask[-1] = False  # a row keeping nothing gets scale 1
    q, scale, cols, row_ptr = L.sparse_int8_pack(w, mask)
    assert q.dtype == torch.int8 and scale.shape == (n,)
    amax = (w.abs() * mask).amax(1)
    expect_scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    assert torch.equal(scale, expect_scale) and scale[-1] == 1.0
    expect_q = torch.clamp(torch.round((w * mask) / expect_scale[:, None]), -127, 127)
    dense = L.sparse_int8_unpack(q, scale, cols, row_ptr, k)
    assert torch.equal(dense, (expect_q * expect_scale[:, None]) * mask)
    assert int(q.abs().max()) == 127
    # error bound: half a step per kept weight
    assert bool(((dense - w * mask).abs() <= scale[:, None] / 2 + 1e-7).all())


# ---- bad input --------------------------------------------------------------------------------

def test_bad_masks():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="shape"):
        L.sparse_csr_pack(w, torch.ones(8, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        L.sparse_csr_pack(w, torch.ones(8, 16))
    with pytest.raises(ValueError, match="keeps no weight"):
        L.sparse_csr_pack(w, torch.zeros(8, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="keeps no weight"):
        L.sparse_int8_pack(w, torch.zeros(8, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="keeps no weight"):
        L.sparse_bsr_pack(w, torch.zeros(8, 16, dtype=torch.bool), 4, 4)
    with pytest.raises(TypeError, match="float"):
        L.sparse_csr_pack(torch.ones(8, 16, dtype=torch.int32), torch.ones(8, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D"):
        L.sparse_csr_pack(torch.randn(16), torch.ones(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="65536"):
        L.sparse_csr_pack(torch.randn(1, 65537), torch.ones(1, 65537, dtype=torch.bool))


def test_bad_24():
    w = torch.randn(4, 18)
    with pytest.raises(ValueError, match="not divisible by 4"):
        L.sparse_24_pack(w, torch.ones(4, 18, dtype=torch.bool))
    w = torch.randn(4, 16)
    m = mask_24(4, 16, generator("bad24"))
    m[1, 4:8] = True  # 4 of 4 kept in one group
    with pytest.raises(ValueError, match="more than 2"):
        L.sparse_24_pack(w, m)
    with pytest.raises(ValueError, match="keeps no weight"):
        L.sparse_24_pack(w, torch.zeros(4, 16, dtype=torch.bool))


def test_bad_blocks_and_non_finite_weights():
    w = torch.randn(8, 16)
    with pytest.raises(ValueError, match="block_rows=3"):
        L.sparse_bsr_pack(w, torch.ones(8, 16, dtype=torch.bool), 3, 4)
    mask = torch.ones(8, 16, dtype=torch.bool)
    w[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        L.sparse_csr_pack(w, mask)
    mask[2, 3] = False  # a pruned NaN is never read: packing is fine
    values, cols, row_ptr = L.sparse_csr_pack(w, mask)
    assert torch.isfinite(values).all()
