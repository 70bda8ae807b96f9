"""codebook_pack / codebook_unpack / codebook_linear: the documented layouts bit by bit, exact round
trips, the native CPU kernels (every ISA; row layout with 1/2/4/8-bit codes and shared, per-row and
per-group codebooks; lookup-table layout with T-MAC tables at 1-2 bits and in-register
dequantization at 4 bits) against a float64 oracle on the tail table and M in 1..33, opcheck, the
native kernel really ran, every output written (poisoned buffer), thread-count independence, the
NaN policy and bad input.

Tolerance (derived, not tuned): with S[m, n] = sum_k |x[m, k] * Wc[n, k]| (Wc the table values
before the per-row scale s), any order of float32 multiply-adds, or table lookups of sums of
g <= 4 products, keeps |acc - exact| <= (K + 4) u S, u = 2^-24 (each of the at most K + 4
roundings on the path of a product is relative to a partial sum bounded by S). The scale and bias
add two more roundings: |y32 - r| <= E = (K + 8) u (S |s| + |b|). Rounding y to bfloat16 / float16
adds 2^-8 / 2^-11 of |y32| <= |r| + E. The reference itself (a float32 matmul) is held to the same
bound. A single code read from the wrong place changes an output by |x w|, about S / K, which
exceeds E by a factor of at least 2^24 / (K + 8) / K > 900 for every K used here (K <= 129 on the
tail table; the K = 2048 pass-splitting case still has margin > 3.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _library as L
from fastq.ops import cpu as N
from fastq.ops import reference as R
from fastq.ops._checks import codebook_packed_sizes

from _compare import assert_bits_equal, generator
from sparse_cases import TAILS, with_threads

FORMATS = [(1, False), (2, False), (4, False), (8, False), (1, True), (2, True), (4, True)]
FORMAT_IDS = [f"{b}bit-{'lut' if lut else 'rows'}" for b, lut in FORMATS]
SHAPES = list(zip(TAILS, reversed(TAILS)))  # (n, k): every tail size in both roles
MS = (1, 3, 4, 5, 9, 33)
U = 2.0 ** -24


def _case(n: int, k: int, bits: int, lut: bool, gen: torch.Generator, per_row: bool, groups: int = 1,
          scale: bool = True, bias: bool = True):
    codes = torch.randint(0, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
    codebook = torch.randn(n if per_row else 1, groups, 1 << bits, generator=gen)
    s = torch.rand(n, generator=gen) + 0.5 if scale else None
    b = torch.randn(n, generator=gen) if bias else None
    return codes, L.codebook_pack(codes, bits, lut), codebook, s, b


def _oracle(x, codes, codebook, scale, bias):
    """(float64 exact result r, the tolerance E of the float32 result)."""
    w = R.codebook_weight(codes, codebook).double()
    xd = x.reshape(-1, x.shape[-1]).double()
    r = xd @ w.T
    s_mag = (xd.abs() @ w.abs().T)
    if scale is not None:
        r, s_mag = r * scale.double(), s_mag * scale.double().abs()
    if bias is not None:
        r, s_mag = r + bias.double(), s_mag + bias.double().abs()
    k = x.shape[-1]
    return r, (k + 8) * U * s_mag


def _check_close(y, x, codes, codebook, scale, bias, what):
    r, e = _oracle(x, codes, codebook, scale, bias)
    rel = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[x.dtype]
    tol = e * (1 + rel) + rel * r.abs() + (6e-8 if x.dtype == torch.float16 else 0.0)  # fp16 subnormal step
    err = (y.reshape(r.shape).double() - r).abs()
    bad = err > tol
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} outputs off, worst err/tol "
                                 f"{float((err / tol.clamp_min(1e-300)).max()):.3g}")


# ---- layouts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_layout_bit_by_bit(bits, lut):
    """Every code sits where reference.py's layout comment says."""
    gen = generator("cb-layout", bits, lut)
    n, k = 19, 141
    codes, packed, *_ = _case(n, k, bits, lut, gen, False)
    n_pad, k_pad, size = codebook_packed_sizes(n, k, bits, lut)
    assert packed.dtype == torch.uint8 and packed.shape == (size,)
    mask = (1 << bits) - 1
    p = packed.tolist()
    for r in range(n_pad):
        for c in range(k_pad):
            want = int(codes[r, c]) if r < n and c < k else 0
            if lut:
                g = 4 // bits
                unit, pos = divmod(c, 2 * g)
                byte = p[((r // 16) * (k_pad // (2 * g)) + unit) * 16 + r % 16]
                nib = byte & 15 if pos < g else byte >> 4
                got = (nib >> (bits * (pos % g))) & mask
            else:
                chunk = 128 // bits
                cidx, off = divmod(c, chunk)
                byte = p[r * (k_pad * bits // 8) + cidx * 16 + off % 16]
                got = (byte >> (bits * (off // 16))) & mask
            assert got == want, (r, c)


@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_round_trip(bits, lut):
    gen = generator("cb-round-trip", bits, lut)
    for n, k in SHAPES:
        codes, packed, *_ = _case(n, k, bits, lut, gen, False)
        assert torch.equal(L.codebook_unpack(packed, n, k, bits, lut), codes), (n, k)


# ---- native kernels against the float64 oracle ----------------------------------------------------

@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_native_matches_oracle(isa, bits, lut):
    gen = generator("cb-native", isa, bits, lut)
    before = fastq.native_calls("codebook_linear", "cpu")
    calls = 0
    for i, (n, k) in enumerate(SHAPES):
        per_row = not lut and i % 2 == 0
        codes, packed, codebook, s, b = _case(n, k, bits, lut, gen, per_row, scale=i % 3 != 0, bias=i % 4 != 1)
        for m in MS:
            x = torch.randn(m, k, generator=gen)
            y = L.codebook_linear(x, packed, codebook, s, b, n, bits, lut)
            calls += 1
            _check_close(y, x, codes, codebook, s, b, f"{isa} n={n} k={k} m={m}")
        y_ref = R.codebook_linear(x, packed, codebook, s, b, n, bits, lut)
        _check_close(y_ref, x, codes, codebook, s, b, f"reference n={n} k={k}")
    assert fastq.native_calls("codebook_linear", "cpu") - before == calls


@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_codebook_groups(isa, bits, lut):
    """Tables that change along K (codebook [R, G, C]); groups are whole chunks / units."""
    gen = generator("cb-groups", isa, bits, lut)
    unit = 2 * (4 // bits) if lut else 128 // bits
    for n, groups, m in ((17, 3, 1), (33, 2, 5), (1, 4, 9)):
        k = groups * unit * 2
        codes, packed, codebook, s, b = _case(n, k, bits, lut, gen, not lut and n > 1, groups)
        x = torch.randn(m, k, generator=gen)
        _check_close(L.codebook_linear(x, packed, codebook, s, b, n, bits, lut), x, codes, codebook, s, b,
                     f"{isa} groups={groups} n={n}")


def _native_call(x, packed, codebook, s, b, n, bits, lut, path=0, y=None):
    """codebook_linear_cpu called directly: a forced lookup-table path (1 tables, 2 dequantization)
    and/or a caller's output buffer."""
    m, k = x.shape
    y = torch.empty(m, n) if y is None else y
    ws_bytes = _native._C.codebook_linear_workspace_bytes_cpu(m, k, bits, lut, path, torch.get_num_threads())
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8)
    _native._C.codebook_linear_cpu(x.data_ptr(), m, n, k, packed.data_ptr(), bits, lut, codebook.data_ptr(),
                                   codebook.shape[0], codebook.shape[1], 0 if s is None else s.data_ptr(),
                                   0 if b is None else b.data_ptr(), y.data_ptr(), ws.data_ptr(), ws_bytes,
                                   torch.get_num_threads(), path)
    return y


@pytest.mark.parametrize("bits,path", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)], ids=lambda v: str(v))
def test_both_lookup_table_paths(isa, bits, path):
    """T-MAC tables (path 1) and in-register dequantization (path 2) each at every M, whatever the
    automatic policy would pick."""
    gen = generator("cb-paths", isa, bits, path)
    for n, k in SHAPES[::2]:
        codes, packed, codebook, s, b = _case(n, k, bits, True, gen, False)
        for m in (1, 4, 5, 33):
            x = torch.randn(m, k, generator=gen)
            _check_close(_native_call(x, packed, codebook, s, b, n, bits, True, path), x, codes, codebook, s, b,
                         f"{isa} path={path} n={n} k={k} m={m}")


@pytest.mark.parametrize("bits", (1, 2))
def test_tables_in_several_passes(isa, bits):
    """Long K: the T-MAC tables of all rows exceed the per-pass budget, so rows go in passes."""
    gen = generator("cb-passes", isa, bits)
    n, k, m = 33, 2048, 33
    codes, packed, codebook, s, b = _case(n, k, bits, True, gen, False)
    assert 0 < _native._C.codebook_linear_workspace_bytes_cpu(m, k, bits, True, 1, 1) < m * (k // (4 // bits)) * 64
    x = torch.randn(m, k, generator=gen)
    _check_close(_native_call(x, packed, codebook, s, b, n, bits, True, 1), x, codes, codebook, s, b, "passes")


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("lut", (False, True))
def test_low_precision_x(dtype, lut):
    gen = generator("cb-dtype", str(dtype), lut)
    codes, packed, codebook, s, b = _case(40, 96, 2, lut, gen, not lut)
    x = torch.randn(3, 7, 96, generator=gen).to(dtype)
    y = L.codebook_linear(x, packed, codebook, s, b, 40, 2, lut)
    assert y.dtype == dtype and y.shape == (3, 7, 40)
    _check_close(y, x, codes, codebook, s, b, str(dtype))


@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_every_output_written(bits, lut):
    """A NaN-poisoned output buffer comes back bit-identical to the op's fresh one."""
    gen = generator("cb-poison", bits, lut)
    n, k, m = 37, 100, 6
    codes, packed, codebook, s, b = _case(n, k, bits, lut, gen, not lut)
    x = torch.randn(m, k, generator=gen)
    want = L.codebook_linear(x, packed, codebook, s, b, n, bits, lut)
    y = _native_call(x, packed, codebook, s, b, n, bits, lut, y=torch.full((m, n), float("nan")))
    assert_bits_equal(y, want, "poisoned buffer")


@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_thread_count_independent(bits, lut):
    """Each output is summed by one thread in a fixed order: identical bits for 1 and 2 threads."""
    gen = generator("cb-threads", bits, lut)
    codes, packed, codebook, s, b = _case(300, 520, bits, lut, gen, not lut)
    for m in (1, 7, 40):
        x = torch.randn(m, 520, generator=gen)
        one = with_threads(1, lambda: L.codebook_linear(x, packed, codebook, s, b, 300, bits, lut))
        two = with_threads(2, lambda: L.codebook_linear(x, packed, codebook, s, b, 300, bits, lut))
        assert_bits_equal(one, two, f"m={m}")


@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_nan_policy(bits, lut):
    """A NaN in x[m] makes row m of y NaN (every weight multiplies it), in the reference and natively;
    other rows stay finite."""
    gen = generator("cb-nan", bits, lut)
    codes, packed, codebook, s, b = _case(21, 70, bits, lut, gen, not lut)
    x = torch.randn(4, 70, generator=gen)
    x[2, 13] = float("nan")
    for y in (L.codebook_linear(x, packed, codebook, s, b, 21, bits, lut),
              R.codebook_linear(x, packed, codebook, s, b, 21, bits, lut)):
        assert bool(torch.isnan(y[2]).all()) and bool(torch.isfinite(y[[0, 1, 3]]).all())


def test_padding_never_reaches_a_result():
    """Entry 0 non-finite: the padding codes (0) past K and past N must not turn outputs NaN."""
    gen = generator("cb-pad")
    for bits, lut in FORMATS:
        n, k = 17, 35
        codes = torch.randint(1, 1 << bits, (n, k), generator=gen, dtype=torch.uint8)
        packed = L.codebook_pack(codes, bits, lut)
        codebook = torch.randn(1, 1, 1 << bits, generator=gen)
        codebook[0, 0, 0] = float("inf")
        y = L.codebook_linear(torch.randn(5, k, generator=gen), packed, codebook, None, None, n, bits, lut)
        assert bool(torch.isfinite(y).all()), (bits, lut)


def test_native_kernel_registered():
    assert fastq.kernel_for("codebook_linear", "cpu").startswith("native:")


@pytest.mark.parametrize("bits,lut", [(1, True), (4, True), (4, False), (8, False)])
def test_opcheck(bits, lut):
    gen = generator("cb-opcheck", bits, lut)
    codes, packed, codebook, s, b = _case(20, 64, bits, lut, gen, not lut)
    x = torch.randn(3, 64, generator=gen)
    for args in ((x, packed, codebook, s, b, 20, bits, lut), (x.bfloat16(), packed, codebook, None, None, 20, bits, lut)):
        torch.library.opcheck(L.OPS["codebook_linear"], args)
    torch.library.opcheck(L.OPS["codebook_pack"], (codes, bits, lut))
    torch.library.opcheck(L.OPS["codebook_unpack"], (packed, 20, 64, bits, lut))


def test_empty_batch():
    gen = generator("cb-empty")
    codes, packed, codebook, s, b = _case(5, 16, 4, False, gen, False)
    y = L.codebook_linear(torch.randn(0, 16), packed, codebook, s, b, 5, 4, False)
    assert y.shape == (0, 5)


# ---- bad input -------------------------------------------------------------------------------------

def _good():
    gen = generator("cb-bad")
    codes, packed, codebook, s, b = _case(8, 32, 4, False, gen, True)
    return torch.randn(2, 32, generator=gen), packed, codebook, s, b


@pytest.mark.parametrize("change,exc,match", [
    (lambda a: {**a, "x": a["x"].int()}, TypeError, "x must be float32"),
    (lambda a: {**a, "x": torch.randn(2, 0)}, ValueError, "non-empty last dimension"),
    (lambda a: {**a, "x": torch.randn(2, 64)}, ValueError, "packed has"),  # K=31 would pack alike: chunks of 32
    (lambda a: {**a, "packed": a["packed"].to(torch.int8)}, TypeError, "packed must be torch.uint8"),
    (lambda a: {**a, "packed": a["packed"][:-1]}, ValueError, "packed has"),
    (lambda a: {**a, "bits": 3}, ValueError, "bits must be one of"),
    (lambda a: {**a, "bits": 8, "lut": True}, ValueError, "lookup-table layout takes bits"),
    (lambda a: {**a, "codebook": a["codebook"][..., :8]}, ValueError, "2\\*\\*bits = 16 entries"),
    (lambda a: {**a, "codebook": a["codebook"][:3]}, ValueError, "1 \\(shared\\) or n = 8"),
    (lambda a: {**a, "codebook": a["codebook"].double()}, TypeError, "codebook must be torch.float32"),
    (lambda a: {**a, "codebook": torch.zeros(8, 3, 16)}, ValueError, "codebook groups"),
    (lambda a: {**a, "scale": torch.ones(7)}, ValueError, "scale must have n = 8"),
    (lambda a: {**a, "bias": torch.ones(8, dtype=torch.float64)}, ValueError, "bias must be float32"),
])
def test_bad_input(change, exc, match):
    x, packed, codebook, s, b = _good()
    a = change({"x": x, "packed": packed, "codebook": codebook, "scale": s, "bias": b, "bits": 4, "lut": False})
    with pytest.raises(exc, match=match):
        L.codebook_linear(a["x"], a["packed"], a["codebook"], a["scale"], a["bias"], 8, a["bits"], a["lut"])


def test_lut_layout_needs_a_shared_codebook():
    gen = generator("cb-bad-lut")
    codes, packed, codebook, s, b = _case(8, 32, 2, True, gen, True)
    with pytest.raises(ValueError, match="shared by all rows"):
        L.codebook_linear(torch.randn(1, 32), packed, codebook, s, b, 8, 2, True)


def test_pack_rejects_bad_codes():
    with pytest.raises(ValueError, match="a code is >= 2\\*\\*2"):
        L.codebook_pack(torch.full((2, 8), 4, dtype=torch.uint8), 2, False)
    with pytest.raises(TypeError, match="2-D uint8"):
        L.codebook_pack(torch.zeros(2, 8, dtype=torch.int64), 2, False)
    with pytest.raises(ValueError, match="non-empty"):
        L.codebook_pack(torch.zeros(0, 8, dtype=torch.uint8), 2, False)


def test_native_wrapper_validates_too():
    """The native entry point checks arguments itself (it is what eager calls reach)."""
    x, packed, codebook, s, b = _good()
    with pytest.raises(ValueError, match="packed has"):
        N.codebook_linear(torch.cat([x, x], 1), packed, codebook, s, b, 8, 4, False)


# ---- CUDA -------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits,lut", FORMATS, ids=FORMAT_IDS)
def test_cuda_matches_oracle(bits, lut):
    assert fastq.kernel_for("codebook_linear", "cuda") == "native:cuda"
    gen = generator("cb-cuda", bits, lut)
    before = fastq.native_calls("codebook_linear", "cuda")
    calls = 0
    for i, ((n, k), m) in enumerate(itertools.product(SHAPES[::2], (1, 4, 9, 33))):
        codes, packed, codebook, s, b = _case(n, k, bits, lut, gen, not lut and i % 2 == 0)
        x = torch.randn(m, k, generator=gen)
        dev = [t.cuda() if t is not None else None for t in (x, packed, codebook, s, b)]
        y = L.codebook_linear(*dev, n, bits, lut)
        calls += 1
        assert y.is_cuda
        _check_close(y.cpu(), x, codes, codebook, s, b, f"cuda n={n} k={k} m={m}")
    gs_unit = 2 * (4 // bits) if lut else 128 // bits
    codes, packed, codebook, s, b = _case(9, 4 * gs_unit, bits, lut, gen, not lut, groups=2)
    x = torch.randn(3, 4 * gs_unit, generator=gen)
    y = L.codebook_linear(x.cuda(), packed.cuda(), codebook.cuda(), s.cuda(), b.cuda(), 9, bits, lut)
    _check_close(y.cpu(), x, codes, codebook, s, b, "cuda groups")
    assert fastq.native_calls("codebook_linear", "cuda") - before == calls + 1
