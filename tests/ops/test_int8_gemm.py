"""int8_gemm: exact int32 a @ b.T on every ISA, tails, real shapes, threads, bad input."""

import pytest
import torch

import fastq
from fastq.ops import _library, reference

from _gemm_util import ISAS, assert_native_ran, case_id, forced_isa, needs_native, threads

# (m, n, k): vector tails in every dimension, K past the 512-byte packing chunk, real layer shapes.
CASES = [
    (1, 1, 1), (7, 9, 15), (8, 16, 17), (9, 31, 33), (15, 63, 65), (16, 127, 129), (17, 129, 64),
    (31, 32, 127), (32, 33, 8), (33, 65, 1030), (63, 7, 513), (64, 17, 31), (65, 64, 32), (127, 15, 7),
    (129, 8, 9), (4, 3072, 768), (8, 768, 768), (2, 4096, 4096),
]


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,k", CASES, ids=[case_id("m", m, "n", n, "k", k) for m, n, k in CASES])
def test_matches_reference(isa, m, n, k):
    gen = torch.Generator().manual_seed(m * 7919 + n * 31 + k)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    with forced_isa(isa):
        before = fastq.native_calls("int8_gemm", "cpu")
        c = _library.int8_gemm(a, b)
        assert_native_ran("int8_gemm", before, isa)
    assert c.dtype == torch.int32 and c.shape == (m, n)
    assert torch.equal(c, reference.int8_gemm(a, b))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_extremes_exact(isa):
    # -128 * -128 everywhere: the largest products, which saturating 16-bit schemes get wrong.
    m, n, k = 5, 33, 1031
    a = torch.full((m, k), -128, dtype=torch.int8)
    b = torch.full((n, k), -128, dtype=torch.int8)
    b[1::2] = 127
    a[1::2, ::3] = 127
    with forced_isa(isa):
        c = _library.int8_gemm(a, b)
    assert torch.equal(c, reference.int8_gemm(a, b))
    assert int(c[0, 0]) == k * 128 * 128


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_threads(isa, nthreads):
    gen = torch.Generator().manual_seed(nthreads)
    a = torch.randint(-128, 128, (100, 300), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (70, 300), dtype=torch.int8, generator=gen)
    with forced_isa(isa), threads(nthreads):
        c = _library.int8_gemm(a, b)
    assert torch.equal(c, reference.int8_gemm(a, b))


@needs_native
def test_noncontiguous_and_empty():
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-128, 128, (40, 20), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (20, 33), dtype=torch.int8, generator=gen)
    c = _library.int8_gemm(a[::2], b.T)  # strided a, transposed b
    assert torch.equal(c, reference.int8_gemm(a[::2], b.T))
    assert _library.int8_gemm(a[:0], b.T).shape == (0, 33)
    z = _library.int8_gemm(a[:, :0], torch.zeros(33, 0, dtype=torch.int8))
    assert torch.equal(z, torch.zeros(40, 33, dtype=torch.int32))


def test_opcheck():
    a = torch.randint(-128, 128, (9, 17), dtype=torch.int8)
    b = torch.randint(-128, 128, (13, 17), dtype=torch.int8)
    torch.library.opcheck(_library.int8_gemm, (a, b))


@pytest.mark.parametrize("a,b,exc,match", [
    (torch.zeros(3, 4, dtype=torch.int8), torch.zeros(5, 6, dtype=torch.int8), ValueError, "K mismatch"),
    (torch.zeros(3, 4), torch.zeros(5, 4, dtype=torch.int8), TypeError, "int8"),
    (torch.zeros(3, 4, dtype=torch.int8), torch.zeros(5, 4, dtype=torch.uint8), TypeError, "int8"),
    (torch.zeros(4, dtype=torch.int8), torch.zeros(5, 4, dtype=torch.int8), ValueError, "2-D"),
])
def test_bad_input(a, b, exc, match):
    with pytest.raises(exc, match=match):
        _library.int8_gemm(a, b)
