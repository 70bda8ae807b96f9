"""int8_pack_weight: the packed layout (16 x 4 blocks then int32 column sums) and its round trip."""

import pytest
import torch

from fastq.ops import _library, reference

SHAPES = [(1, 1), (7, 9), (16, 4), (17, 15), (33, 65), (129, 127), (768, 768)]


@pytest.mark.parametrize("n,k", SHAPES, ids=[f"n{n}-k{k}" for n, k in SHAPES])
def test_round_trip(n, k):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    packed = _library.int8_pack_weight(w)
    n_pad, k_pad, total = reference.packed_sizes(n, k)
    assert packed.dtype == torch.int8 and packed.shape == (total,)
    w2, colsum = reference.int8_unpack_weight(packed, n, k)
    assert torch.equal(w2, w)
    assert torch.equal(colsum, w.to(torch.int32).sum(dim=1, dtype=torch.int32))


def test_layout_positions():
    # w[j, kk] sits in block (j // 16, kk // 4) at byte (j % 16) * 4 + kk % 4; padding is zero.
    n, k = 20, 7
    w = torch.arange(n * k, dtype=torch.int64).reshape(n, k).remainder(251).sub(125).to(torch.int8)
    packed = _library.int8_pack_weight(w)
    n_pad, k_pad, _ = reference.packed_sizes(n, k)
    for j in range(n_pad):
        for kk in range(k_pad):
            pos = ((j // 16) * (k_pad // 4) + kk // 4) * 64 + (j % 16) * 4 + kk % 4
            want = int(w[j, kk]) if j < n and kk < k else 0
            assert int(packed[pos]) == want, (j, kk)
    colsum = packed[n_pad * k_pad:].view(torch.int32)
    assert torch.equal(colsum[n:], torch.zeros(n_pad - n, dtype=torch.int32))


def test_opcheck():
    w = torch.randint(-128, 128, (17, 9), dtype=torch.int8)
    torch.library.opcheck(_library.int8_pack_weight, (w,))


@pytest.mark.parametrize("bad,exc", [
    (torch.zeros(4, 4), TypeError),
    (torch.zeros(4, dtype=torch.int8), TypeError),
    (torch.zeros(0, 4, dtype=torch.int8), ValueError),
])
def test_bad_input(bad, exc):
    with pytest.raises(exc):
        _library.int8_pack_weight(bad)
