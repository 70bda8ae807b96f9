"""intx_pack_weight / intx_unpack_weight: the packed layout of reference.py, round trips and checks.

The layout is a format on disk, so one test pins its bytes for a tiny weight (an accidental layout
change would silently break saved models); the rest round-trip random weights of every bit width,
including row counts that are not multiples of the 16-row block.
"""

import pytest
import torch

from fastq.ops import _library, reference

from _intx_util import FORMATS, fmt_id, random_weight

TAIL_N = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("n", TAIL_N)
def test_round_trip(fmt, n):
    bits, asym = fmt
    chunk = reference.intx_chunk_k(bits)
    for k, groups in ((chunk, 1), (4 * chunk, 2), (12 * chunk, 3)):
        gen = torch.Generator().manual_seed(n * 31 + k + bits)
        codes, scale, zero, packed = random_weight(n, k, groups, bits, asym, gen)
        assert packed.dtype == torch.uint8 and packed.numel() == reference.intx_packed_bytes(n, k, groups, bits, asym)
        c2, s2, z2 = _library.intx_unpack_weight(packed, n, k, groups, bits, asym)
        assert torch.equal(c2, codes) and torch.equal(s2, scale) and torch.equal(z2, zero)


def test_layout_bytes():
    # int4 asymmetric, one 16-row block, K = 8 (one chunk), one group: code of (r, k) = (r + k) % 16.
    r = torch.arange(16).reshape(16, 1)
    k = torch.arange(8).reshape(1, 8)
    codes = ((r + k) % 16).to(torch.uint8)
    scale = torch.arange(16, dtype=torch.float32).reshape(16, 1) / 4
    zero = (15 - torch.arange(16)).to(torch.uint8).reshape(16, 1)
    packed = _library.intx_pack_weight(codes, scale, zero, 4)
    assert packed.numel() == 64 + 64 + 16
    chunk = packed[:64].reshape(16, 4).to(torch.int32)
    # byte (row, j): quad 0 (k = j) in the low nibble, quad 1 (k = 4 + j) in the high nibble
    expect = (codes[:, :4].to(torch.int32)) | (codes[:, 4:].to(torch.int32) << 4)
    assert torch.equal(chunk, expect)
    assert torch.equal(packed[64:128].view(torch.float32), scale.reshape(-1))
    assert torch.equal(packed[128:], zero.reshape(-1))


def test_int2_layout_bytes():
    codes = torch.randint(0, 4, (16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    packed = _library.intx_pack_weight(codes, torch.ones(16, 1), None, 2)
    assert packed.numel() == 64 + 64  # symmetric: no zero points
    b = packed[:64].reshape(16, 4).to(torch.int32)
    expect = sum(codes[:, 4 * p:4 * p + 4].to(torch.int32) << (2 * p) for p in range(4))
    assert torch.equal(b, expect)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    codes, scale, zero, packed = random_weight(20, 32, 2, 4, True, gen)
    torch.library.opcheck(_library.intx_pack_weight, (codes, scale, zero, 4))
    torch.library.opcheck(_library.intx_pack_weight, (codes, scale, None, 4))
    torch.library.opcheck(_library.intx_unpack_weight, (packed, 20, 32, 2, 4, True))


def test_bad_input():
    gen = torch.Generator().manual_seed(1)
    codes, scale, zero, packed = random_weight(16, 32, 2, 4, True, gen)
    f = _library.intx_pack_weight
    with pytest.raises(ValueError, match="codes must lie in"):
        f(codes | 16, scale, zero, 4)
    with pytest.raises(ValueError, match="zero points must lie"):
        f(codes, scale, zero | 16, 4)
    with pytest.raises(ValueError, match="finite"):
        f(codes, scale.masked_fill(scale > 0.01, float("nan")), zero, 4)
    with pytest.raises(ValueError, match="bits must be an int in 2..8"):
        f(codes, scale, zero, 9)
    with pytest.raises(ValueError, match="bits must be an int in 2..8"):
        f(codes, scale, zero, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        f(codes[:, :12], scale[:, :1], zero[:, :1], 4)  # odd number of k-quads for two codes per byte
    with pytest.raises(ValueError, match="multiple of 16"):
        f(codes[:, :24], scale[:, :1], zero[:, :1], 2)
    with pytest.raises(ValueError, match="divisor"):
        f(codes, torch.ones(16, 3), None, 4)  # 3 groups do not divide K=32
    with pytest.raises(TypeError, match="uint8"):
        f(codes.to(torch.int8), scale, zero, 4)
    with pytest.raises(ValueError, match="zero must have"):
        f(codes, scale, zero[:, :1], 4)
    with pytest.raises(ValueError, match="packs to"):
        _library.intx_unpack_weight(packed, 16, 32, 2, 4, False)  # asymmetric flag mismatch
