"""quantize_int8 / quantize_int8_out: native CPU (every ISA) and CUDA kernels against the reference.

Invariants checked here: the native kernels reproduce fastq/ops/reference.py bit for bit (codes,
scales and zero points, NaN scales included) on every case of the table, through the functional
and the out= op; the native kernel really ran (native_calls, kernel_for); the op passes
torch.library.opcheck and torch.compile(fullgraph=True); the documented edge-case policy holds
(empty tensors, all-zero rows, non-finite input, non-contiguous input, multi-threaded splits);
bad input raises TypeError/ValueError before any native code runs.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastq
from fastq.ops import reference
from fastq.ops._checks import FLT_MIN, PER_ROW, PER_TENSOR, layout
from _compare import assert_bits_equal, generator

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Row lengths that hit every vector tail of the 8-, 16-, 32- and 64-wide loops.
TAILS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)

needs_native = pytest.mark.skipif(not fastq.native_available(), reason="fastq._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _granularity_id(g: int) -> str:
    return {PER_TENSOR: "tensor", PER_ROW: "row"}.get(g, f"g{g}")


def _case(shape: tuple, group_size: int, note: str = ""):
    sid = "x".join(map(str, shape))
    return pytest.param(shape, group_size, id=f"{note}{sid}-{_granularity_id(group_size)}")


# (shape, group_size): tails per row and per tensor, groups, then real layer shapes.
CASES = (
    [_case((3, n), PER_ROW) for n in TAILS]
    + [_case((n,), PER_TENSOR) for n in TAILS]
    + [_case((3, 96), 32), _case((2, 192), 64), _case((2, 384), 128), _case((5, 48), 16),
       _case((3, 72), 24), _case((4, 129), 129)]
    + [_case((32, 384), g, "minilm-") for g in (PER_TENSOR, PER_ROW, 32, 64, 128)]
    + [_case((8, 4096), g, "llama-") for g in (PER_TENSOR, PER_ROW, 128)]
    + [_case((2, 5, 96), g, "3d-") for g in (PER_TENSOR, PER_ROW, 32)]
    + [_case((4, 3, 128), g, "3d-") for g in (64, 128)]
    + [_case((2, 7, 768), PER_ROW, "3d-bert-")]
)





def make_input(shape: tuple, dtype: torch.dtype, symmetric: bool, gen: torch.Generator) -> torch.Tensor:
    """Random values whose rows span several decades of magnitude; asymmetric inputs also get a
    per-row offset, so zero points vary and some rows are all positive or all negative."""
    rowshape = tuple(shape[:-1]) + (1,)
    x = torch.randn(shape, generator=gen) * torch.exp(2 * torch.randn(rowshape, generator=gen))
    if not symmetric:
        x = x + 3 * torch.randn(rowshape, generator=gen) * x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-3)
    return x.to(dtype)


def static_qparams(x: torch.Tensor, group_size: int, symmetric: bool, gen: torch.Generator):
    """Static scales near the dynamic ones (some values saturate); random zero points."""
    _, s, _ = reference.quantize_int8(x, group_size, symmetric)
    s = (s * (0.7 + 0.6 * torch.rand(s.shape, generator=gen))).clamp_min(FLT_MIN)
    if symmetric:
        return s, None
    return s, torch.randint(0, 256, s.shape, generator=gen, dtype=torch.int32)


def assert_same_quant(got, want, what: str) -> None:
    for name, a, e in zip(("codes", "scale", "zero_point"), got, want):
        assert_bits_equal(a, e, f"{what} {name}")


def run_functional(x, group_size, symmetric, scale, zero_point, device="cpu"):
    before = fastq.native_calls("quantize_int8", device)
    got = torch.ops.fastq.quantize_int8(x, group_size, symmetric, scale, zero_point)
    assert fastq.native_calls("quantize_int8", device) == before + 1, "the native kernel did not run"
    return got


def run_out(x, group_size, symmetric, scale, zero_point, gen, device="cpu"):
    """quantize_int8_out into poisoned buffers (so a kernel that skips a write is caught)."""
    codes = torch.randint(-128, 128, x.shape, generator=gen, dtype=torch.int8).to(device)
    if not symmetric:
        codes = codes.view(torch.uint8)
    if scale is None:  # dynamic: the op writes scale and zero point
        shape = layout(tuple(x.shape), group_size).scale_shape
        s_buf = torch.full(shape, -3.0, device=device)
        z_buf = None if symmetric else torch.full(shape, -5, dtype=torch.int32, device=device)
        dynamic = True
    else:
        s_buf, z_buf, dynamic = scale, zero_point, False
    before = fastq.native_calls("quantize_int8_out", device)
    torch.ops.fastq.quantize_int8_out(x, codes, s_buf, z_buf, group_size, symmetric, dynamic)
    assert fastq.native_calls("quantize_int8_out", device) == before + 1, "the native kernel did not run"
    zp = z_buf if z_buf is not None else torch.zeros(s_buf.shape, dtype=torch.int32, device=device)
    return codes, s_buf, zp


# ---- bit-exact against the reference ----------------------------------------------------------

@pytest.mark.parametrize("shape, group_size", CASES)
def test_native_matches_reference(isa, shape, group_size):
    assert fastq.kernel_for("quantize_int8", "cpu") == f"native:{isa}"
    assert fastq.kernel_for("quantize_int8_out", "cpu") == f"native:{isa}"
    for dtype in DTYPES:
        for symmetric in (True, False):
            for dynamic in (True, False):
                what = f"{dtype} {'sym' if symmetric else 'asym'} {'dynamic' if dynamic else 'static'}"
                gen = generator(shape, group_size, dtype, symmetric, dynamic)
                x = make_input(shape, dtype, symmetric, gen)
                scale, zp = (None, None) if dynamic else static_qparams(x, group_size, symmetric, gen)
                want = reference.quantize_int8(x, group_size, symmetric, scale, zp)
                assert_same_quant(run_functional(x, group_size, symmetric, scale, zp), want, what)
                assert_same_quant(run_out(x, group_size, symmetric, scale, zp, gen), want, what + " out=")


def test_round_half_to_even(isa):
    # scale 0.25: x * 4 is exact, so x = (k + 0.5) / 4 lands exactly on ties.
    k = torch.arange(-140, 140, dtype=torch.float32)
    x = ((k + 0.5) / 4).reshape(1, -1)
    scale = torch.full((1, 1), 0.25)
    codes, _, _ = run_functional(x, PER_ROW, True, scale, None)
    want = reference.quantize_int8(x, PER_ROW, True, scale, None)[0]
    assert_bits_equal(codes, want, "ties")
    inside = (k + 0.5).abs() < 127
    assert bool(torch.all(codes[0][inside] % 2 == 0)), "ties must round to the even neighbour"
    zp = torch.full((1, 1), 100, dtype=torch.int32)
    ucodes, _, _ = run_functional(x, PER_ROW, False, scale, zp)
    assert_bits_equal(ucodes, reference.quantize_int8(x, PER_ROW, False, scale, zp)[0], "asym ties")


def test_public_wrapper_matches_ops(isa):
    gen = generator("wrapper")
    x = make_input((6, 80), torch.float32, False, gen)
    for symmetric in (True, False):
        q = fastq.quantize_int8(x, 16, symmetric)
        want = reference.quantize_int8(x, 16, symmetric)
        assert_same_quant(q, want, "functional")
        out = torch.empty(x.shape, dtype=q.codes.dtype)
        q2 = fastq.quantize_int8(x, 16, symmetric, out=out)
        assert q2.codes is out
        assert_same_quant(q2, want, "out=")


# ---- threading, layout and edge-case policy ------------------------------------------------------

@pytest.fixture
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("shape, group_size", [
    _case((2, 33001), PER_TENSOR, "split-"),   # one row of 66002: reduced by all threads
    _case((1, 65537), PER_ROW, "split-"),      # a single long row
    _case((2, 65536), PER_ROW, "rows-"),       # rows >= threads: a row per thread
    _case((3, 65601), PER_ROW, "rows-"),
    _case((157, 211), PER_ROW, "many-"),       # static: the flat split falls mid-row
])
def test_multithreaded_paths(isa, threads, shape, group_size):
    for dtype in (torch.float32, torch.bfloat16):
        for symmetric in (True, False):
            gen = generator("mt", shape, group_size, dtype, symmetric)
            x = make_input(shape, dtype, symmetric, gen)
            # The extreme value sits late in the row, in the second thread's share.
            flat = x.view(-1)
            flat[-1000] = 4 * flat.abs().max()
            if not symmetric:
                flat[-3] = -5 * flat.abs().max()
            want = reference.quantize_int8(x, group_size, symmetric)
            assert_same_quant(run_functional(x, group_size, symmetric, None, None), want, f"{dtype} dyn")
            # Static: the flat split crosses row boundaries mid-row.
            scale, zp = static_qparams(x, group_size, symmetric, gen)
            want = reference.quantize_int8(x, group_size, symmetric, scale, zp)
            assert_same_quant(run_out(x, group_size, symmetric, scale, zp, gen), want, f"{dtype} static")


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_multithreaded_split_poisons_long_row(isa, threads, bad):
    x = torch.randn(70001)
    x[50001] = bad  # in the second thread's share of the split reduction
    for symmetric in (True, False):
        want = reference.quantize_int8(x, PER_TENSOR, symmetric)
        got = run_functional(x, PER_TENSOR, symmetric, None, None)
        assert_same_quant(got, want, "split")
        assert math.isnan(got[1].item()) and not bool(got[0].any()) and got[2].item() == 0


def test_non_contiguous_input_is_copied(isa):
    """Documented policy: non-contiguous inputs (and scales) are copied; results are identical."""
    gen = generator("noncontig")
    base = make_input((40, 64), torch.float32, True, gen)
    views = {"transposed": base.t(), "strided": base[:, ::2], "expanded": base[:1].expand(8, 64)}
    for name, x in views.items():
        assert not x.is_contiguous()
        for symmetric in (True, False):
            for g in (PER_TENSOR, PER_ROW, 8):
                want = reference.quantize_int8(x.contiguous(), g, symmetric)
                assert_same_quant(run_functional(x, g, symmetric, None, None), want, f"{name} g={g}")
                assert_same_quant(run_out(x, g, symmetric, None, None, gen), want, f"{name} g={g} out=")
    x = base
    scale = (torch.rand(40, 2, generator=gen) + 0.01)[:, :1]  # shape (40, 1), stride (2, 1)
    assert not scale.is_contiguous()
    want = reference.quantize_int8(x, PER_ROW, True, scale.contiguous(), None)
    assert_same_quant(run_functional(x, PER_ROW, True, scale, None), want, "non-contiguous scale")


@pytest.mark.parametrize("shape, group_size", [
    _case((0,), PER_TENSOR), _case((0, 8), PER_ROW), _case((0, 8), PER_TENSOR), _case((4, 0), PER_ROW),
    _case((4, 0), PER_TENSOR), _case((4, 0), 32), _case((2, 0, 16), PER_ROW), _case((2, 0, 16), 16),
])
def test_empty(isa, shape, group_size):
    """Documented policy: empty input gives empty codes; a scale that covers no element is FLT_MIN
    (an empty row quantizes like a row of zeros); the reference answers, the kernel is not called."""
    x = torch.empty(shape)
    for symmetric in (True, False):
        want = reference.quantize_int8(x, group_size, symmetric)
        got = torch.ops.fastq.quantize_int8(x, group_size, symmetric)
        assert_same_quant(got, want, "empty")
        assert bool(torch.all(got[1] == FLT_MIN))
        codes = torch.empty(shape, dtype=got[0].dtype)
        scale = torch.full(got[1].shape, -1.0)
        zp = None if symmetric else torch.full(got[1].shape, -1, dtype=torch.int32)
        torch.ops.fastq.quantize_int8_out(x, codes, scale, zp, group_size, symmetric, True)
        assert_bits_equal(scale, want[1], "empty out= scale")
        y = torch.ops.fastq.dequantize_int8(got[0], got[1], None if symmetric else got[2], torch.float32)
        assert y.shape == x.shape


def test_all_zero_rows(isa):
    """Documented policy: an all-zero row gets scale FLT_MIN (never 0 or NaN), codes 0, zero point 0."""
    gen = generator("zeros")
    for dtype in DTYPES:
        x = make_input((6, 100), dtype, True, gen)
        x[1] = 0
        x[4] = -0.0
        x[5, :50] = 0
        for symmetric in (True, False):
            for g in (PER_ROW, 50, 25):
                got = run_functional(x, g, symmetric, None, None)
                assert_same_quant(got, reference.quantize_int8(x, g, symmetric), f"{dtype}")
                codes, scale, zp = got
                assert not bool(torch.isnan(scale).any())
                assert bool(torch.all(scale[1] == FLT_MIN)) and bool(torch.all(scale[4] == FLT_MIN))
                assert not bool(codes[1].any()) and not bool(codes[4].any()) and not bool(zp[1].any())
        x0 = torch.zeros(1000, dtype=dtype)
        codes, scale, zp = run_functional(x0, PER_TENSOR, False, None, None)
        assert scale.item() == FLT_MIN and not bool(codes.any()) and zp.item() == 0


@pytest.mark.parametrize("cols", [9, 64, 129], ids=lambda c: f"cols{c}")
def test_non_finite_dynamic_poisons_row(isa, cols):
    """Documented policy: a dynamic row (or group) holding NaN/+-Inf gets scale NaN, codes 0 and
    zero point 0; other rows are unaffected."""
    gen = generator("poison", cols)
    for dtype in DTYPES:
        for symmetric in (True, False):
            x = make_input((5, cols), dtype, symmetric, gen)
            x[0, cols - 1] = float("nan")  # in the scalar tail
            x[1, 0] = float("inf")          # in the vector body
            x[2, cols // 2] = -float("inf")
            x[3, :] = float("nan")
            for g in (PER_ROW, PER_TENSOR):
                got = run_functional(x, g, symmetric, None, None)
                assert_same_quant(got, reference.quantize_int8(x, g, symmetric), f"{dtype} g={g}")
                assert_same_quant(run_out(x, g, symmetric, None, None, gen), reference.quantize_int8(x, g, symmetric),
                                  f"{dtype} g={g} out=")
                codes, scale, zp = got
                bad = slice(0, 4) if g == PER_ROW else slice(None)
                assert bool(torch.isnan(scale[bad]).all())
                assert not bool(codes[bad].any()) and not bool(zp[bad].any())
                if g == PER_ROW:
                    assert bool(torch.isfinite(scale[4]).all())


def test_non_finite_static(isa):
    """Documented policy with static scales: NaN -> 0 (symmetric) or the zero point; +-Inf saturate."""
    x = torch.randn(4, 37)
    x[:, 3] = float("nan")
    x[:, 20] = float("inf")
    x[:, 33] = -float("inf")  # in the tail
    scale = torch.full((4, 1), 0.02)
    zp = torch.tensor([[0], [17], [128], [255]], dtype=torch.int32)
    for dtype in DTYPES:
        xd = x.to(dtype)
        codes, _, _ = run_functional(xd, PER_ROW, True, scale, None)
        assert_bits_equal(codes, reference.quantize_int8(xd, PER_ROW, True, scale, None)[0], f"{dtype} sym")
        assert codes[:, 3].tolist() == [0] * 4
        assert codes[:, 20].tolist() == [127] * 4 and codes[:, 33].tolist() == [-127] * 4
        ucodes, _, _ = run_functional(xd, PER_ROW, False, scale, zp)
        assert_bits_equal(ucodes, reference.quantize_int8(xd, PER_ROW, False, scale, zp)[0], f"{dtype} asym")
        assert ucodes[:, 3].tolist() == zp.flatten().tolist()
        assert ucodes[:, 20].tolist() == [255] * 4 and ucodes[:, 33].tolist() == [0] * 4


def test_extreme_magnitudes(isa):
    """Subnormal and near-FLT_MAX rows: the scale math must not overflow into NaN codes."""
    x = torch.randn(4, 70)
    x[0] *= 1e-41   # subnormal: amax / 127 < FLT_MIN, so scale = FLT_MIN
    x[1] *= 1e37
    x[2] = x[2].abs() * 3e37  # all positive, up to ~1.5e38
    x[3, :5] = torch.finfo(torch.float32).max
    for symmetric in (True, False):
        for g in (PER_ROW, 10):
            got = run_functional(x, g, symmetric, None, None)
            assert_same_quant(got, reference.quantize_int8(x, g, symmetric), "extreme")
            if symmetric:
                assert bool(torch.isfinite(got[1]).all())


# ---- bad input ---------------------------------------------------------------------------------

def _q(x, g=PER_ROW, sym=True, scale=None, zp=None):
    return lambda: torch.ops.fastq.quantize_int8(x, g, sym, scale, zp)


def _qo(x, codes, scale, zp, g=PER_ROW, sym=True, dynamic=True):
    return lambda: torch.ops.fastq.quantize_int8_out(x, codes, scale, zp, g, sym, dynamic)


X = torch.randn(4, 64)
S = torch.full((4, 1), 0.1)
Z = torch.full((4, 1), 128, dtype=torch.int32)
C8 = torch.empty(4, 64, dtype=torch.int8)
CU8 = torch.empty(4, 64, dtype=torch.uint8)
META = torch.device("meta")

BAD_INPUTS = [
    ("int-input", _q(torch.ones(4, 8, dtype=torch.int32)), TypeError, "float32, float16 or bfloat16"),
    ("float64-input", _q(X.double()), TypeError, "float32, float16 or bfloat16"),
    ("0-d", _q(torch.tensor(1.0)), ValueError, "0-d"),
    ("group-not-dividing", _q(X, 48), ValueError, "does not divide"),
    ("group-negative", _q(X, -2), ValueError, "group_size"),
    ("scale-shape", _q(X, PER_ROW, True, torch.full((4,), 0.1)), ValueError, "scale has shape"),
    ("scale-shape-group", _q(X, 32, True, S), ValueError, "scale has shape"),
    ("scale-dtype", _q(X, PER_ROW, True, S.half()), TypeError, "scale must be float32"),
    ("zp-for-symmetric", _q(X, PER_ROW, True, S, Z), ValueError, "symmetric quantization takes no zero_point"),
    ("zp-missing-asym-static", _q(X, PER_ROW, False, S, None), ValueError, "needs a zero_point"),
    ("zp-without-scale", _q(X, PER_ROW, False, None, Z), ValueError, "zero_point was given without scale"),
    ("zp-dtype", _q(X, PER_ROW, False, S, Z.long()), TypeError, "zero_point must be int32"),
    ("zp-shape", _q(X, PER_ROW, False, S, Z[:2]), ValueError, "zero_point has shape"),
    ("zp-range", _q(X, PER_ROW, False, S, Z + 200), ValueError, r"\[0, 255\]"),
    ("scale-zero", _q(X, PER_ROW, True, S * 0), ValueError, "scale must be finite"),
    ("scale-negative", _q(X, PER_ROW, True, -S), ValueError, "scale must be finite"),
    ("scale-inf", _q(X, PER_ROW, True, S * float("inf")), ValueError, "scale must be finite"),
    ("scale-nan", _q(X, PER_ROW, True, S * float("nan")), ValueError, "scale must be finite"),
    ("scale-subnormal", _q(X, PER_ROW, True, S * 1e-39), ValueError, "scale must be finite"),
    ("scale-other-device", _q(X, PER_ROW, True, S.to(META)), ValueError, "on meta but x is on cpu"),
    ("zp-other-device", _q(X, PER_ROW, False, S, Z.to(META)), ValueError, "on meta but x is on cpu"),
    ("out-codes-dtype", _qo(X, CU8, S, None), TypeError, "codes must be torch.int8"),
    ("out-codes-dtype-asym", _qo(X, C8, S, Z, sym=False), TypeError, "codes must be torch.uint8"),
    ("out-codes-shape", _qo(X, C8[:2], S, None), ValueError, "codes must have shape"),
    ("out-codes-noncontig", _qo(X, torch.empty(64, 4, dtype=torch.int8).t(), S, None), ValueError, "contiguous"),
    ("out-codes-other-device", _qo(X, C8.to(META), S, None), ValueError, "on meta but x is on cpu"),
    ("out-scale-shape", _qo(X, C8, torch.empty(4), None), ValueError, "scale must have shape"),
    ("out-scale-dtype", _qo(X, C8, torch.empty(4, 1, dtype=torch.float64), None), TypeError, "scale must be"),
    ("out-scale-noncontig", _qo(X, C8, torch.empty(4, 2)[:, :1], None), ValueError, "contiguous"),
    ("out-zp-missing", _qo(X, CU8, S.clone(), None, sym=False), ValueError, "zero_point buffer"),
    ("out-zp-dtype", _qo(X, CU8, S.clone(), Z.float(), sym=False), TypeError, "zero_point must be"),
    ("out-static-scale-bad", _qo(X, C8, -S, None, dynamic=False), ValueError, "scale must be finite"),
    ("out-static-zp-missing", _qo(X, CU8, S, None, sym=False, dynamic=False), ValueError, "needs a zero_point"),
]


@needs_native
@pytest.mark.parametrize("fn, exc, match", [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUTS])
def test_bad_input_raises_before_native(fn, exc, match):
    before = (fastq.native_calls("quantize_int8", "cpu"), fastq.native_calls("quantize_int8_out", "cpu"))
    with pytest.raises(exc, match=match):
        fn()
    assert (fastq.native_calls("quantize_int8", "cpu"), fastq.native_calls("quantize_int8_out", "cpu")) == before


def test_bad_input_public_wrapper():
    with pytest.raises(TypeError, match="codes must be torch.int8"):
        fastq.quantize_int8(X, out=CU8)
    with pytest.raises(ValueError, match="does not divide"):
        fastq.quantize_int8(X, 48, out=C8)


# ---- torch.library integration --------------------------------------------------------------------

OPCHECK_CASES = [
    pytest.param((5, 64), 32, False, False, id="g32-asym-dynamic"),
    pytest.param((2, 3, 48), PER_TENSOR, True, True, id="3d-tensor-sym-static"),
]


@needs_native
@pytest.mark.parametrize("shape, group_size, symmetric, static", OPCHECK_CASES)
def test_opcheck(shape, group_size, symmetric, static):
    gen = generator("opcheck", shape, group_size)
    x = make_input(shape, torch.float32, symmetric, gen)
    scale, zp = static_qparams(x, group_size, symmetric, gen) if static else (None, None)
    before = fastq.native_calls("quantize_int8", "cpu")
    torch.library.opcheck(torch.ops.fastq.quantize_int8.default, (x, group_size, symmetric, scale, zp))
    assert fastq.native_calls("quantize_int8", "cpu") > before
    want = reference.quantize_int8(x, group_size, symmetric, scale, zp)
    codes = torch.empty_like(want[0])
    s_buf = scale if static else torch.empty_like(want[1])
    z_buf = zp if static else (None if symmetric else torch.empty_like(want[2]))
    before = fastq.native_calls("quantize_int8_out", "cpu")
    torch.library.opcheck(torch.ops.fastq.quantize_int8_out.default,
                          (x, codes, s_buf, z_buf, group_size, symmetric, not static))
    assert fastq.native_calls("quantize_int8_out", "cpu") > before


@needs_native
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def roundtrip(x):
        q, s, z = torch.ops.fastq.quantize_int8(x, PER_ROW, False, None, None)
        return q, s, z, torch.ops.fastq.dequantize_int8(q, s, z, torch.float32)

    x = make_input((16, 96), torch.float32, False, generator("compile"))
    before = (fastq.native_calls("quantize_int8", "cpu"), fastq.native_calls("dequantize_int8", "cpu"))
    q, s, z, y = roundtrip(x)
    after = (fastq.native_calls("quantize_int8", "cpu"), fastq.native_calls("dequantize_int8", "cpu"))
    assert after[0] > before[0] and after[1] > before[1], "compiled graph did not reach the native kernels"
    want = reference.quantize_int8(x, PER_ROW, False)
    assert_same_quant((q, s, z), want, "compiled")
    assert_bits_equal(y, reference.dequantize_int8(*want, torch.float32), "compiled dequantize")


# ---- CUDA ----------------------------------------------------------------------------------------

CUDA_CASES = CASES + [
    _case((1, 4097), PER_TENSOR, "grid-"),      # single row > 4096: the two-kernel grid reduction
    _case((2, 300000), PER_TENSOR, "grid-"),
    _case((3, 5000), PER_ROW, "block-"),        # rows > 1024 columns: a block per row
    # the 16-byte vector kernel: whole rows in registers (8192), longer than the register cache for
    # float32 (9000) and for 16-bit x (20000), a row length that only float32 vectors divide (4100),
    # and one that no vector divides (1030: the scalar block kernel)
    _case((2, 8192), PER_ROW, "vec-"),
    _case((2, 9000), PER_ROW, "vec-"),
    _case((2, 20000), PER_ROW, "vec-"),
    _case((3, 4100), PER_ROW, "vec-"),
    _case((2, 1030), PER_ROW, "block-"),
]


@needs_cuda
@pytest.mark.parametrize("shape, group_size", CUDA_CASES)
def test_cuda_matches_reference(shape, group_size):
    if fastq.kernel_for("quantize_int8", "cuda") != "native:cuda":
        pytest.skip("fastq._C was built without CUDA")
    for dtype in DTYPES:
        for symmetric in (True, False):
            for dynamic in (True, False):
                what = f"cuda {dtype} {'sym' if symmetric else 'asym'} {'dynamic' if dynamic else 'static'}"
                gen = generator("cuda", shape, group_size, dtype, symmetric, dynamic)
                x = make_input(shape, dtype, symmetric, gen)
                x.view(-1)[len(x.view(-1)) // 3] = 5 * x.abs().max()  # max away from the first block
                scale, zp = (None, None) if dynamic else static_qparams(x, group_size, symmetric, gen)
                want = reference.quantize_int8(x, group_size, symmetric, scale, zp)
                to = (lambda t: None if t is None else t.cuda())
                got = run_functional(x.cuda(), group_size, symmetric, to(scale), to(zp), "cuda")
                assert_same_quant(got, want, what)
                got = run_out(x.cuda(), group_size, symmetric, to(scale), to(zp), gen, "cuda")
                assert_same_quant(got, want, what + " out=")


@needs_cuda
def test_cuda_vector_kernel_misaligned_view():
    """A contiguous x view off a 16-byte boundary takes the scalar block kernel: same results."""
    if fastq.kernel_for("quantize_int8", "cuda") != "native:cuda":
        pytest.skip("fastq._C was built without CUDA")
    for dtype in DTYPES:
        for symmetric in (True, False):
            x = make_input((2, 6145), dtype, symmetric, generator("cuda-misaligned", dtype, symmetric))
            xs = x.cuda().reshape(-1)[1:1 + 2 * 6144].reshape(2, 6144)
            assert xs.is_contiguous() and xs.data_ptr() % 16
            want = reference.quantize_int8(xs.cpu(), PER_ROW, symmetric)
            assert_same_quant(run_functional(xs, PER_ROW, symmetric, None, None, "cuda"), want, "cuda misaligned")


@needs_cuda
@pytest.mark.parametrize("shape, group_size", [_case((5, 129), PER_ROW), _case((2, 300000), PER_TENSOR),
                                               _case((3, 5000), PER_ROW)])
def test_cuda_non_finite_poisons_row(shape, group_size):
    if fastq.kernel_for("quantize_int8", "cuda") != "native:cuda":
        pytest.skip("fastq._C was built without CUDA")
    for symmetric in (True, False):
        x = make_input(shape, torch.float32, symmetric, generator("cuda-poison", shape))
        x[0, -1] = float("nan")
        x[1, 3] = float("inf")
        x[-1, 7] = 0.0
        want = reference.quantize_int8(x, group_size, symmetric)
        assert_same_quant(run_functional(x.cuda(), group_size, symmetric, None, None, "cuda"), want, "cuda poison")


@needs_cuda
def test_cuda_empty_and_zero():
    for shape, g in (((0, 8), PER_ROW), ((4, 0), PER_ROW), ((0,), PER_TENSOR)):
        x = torch.empty(shape, device="cuda")
        for symmetric in (True, False):
            got = torch.ops.fastq.quantize_int8(x, g, symmetric)
            assert_same_quant(got, reference.quantize_int8(x.cpu(), g, symmetric), "cuda empty")
    x = torch.zeros(3, 50, device="cuda")
    for symmetric in (True, False):
        got = torch.ops.fastq.quantize_int8(x, PER_ROW, symmetric)
        assert bool(torch.all(got[1] == FLT_MIN))


# ---- the streaming-store path (calls moving > 24 MiB use non-temporal stores) ----------------------

def test_large_output_streaming_path(isa):
    """Odd row length: every row's codes start unaligned, so the aligned-body peeling is exercised."""
    if isa == "scalar":
        pytest.skip("the scalar kernels have no streaming variant")
    gen = generator("stream")
    x = torch.randn(1283, 4099, generator=gen)  # 5.3M elements: 26 MB moved
    for symmetric in (True, False):
        want = reference.quantize_int8(x, PER_ROW, symmetric)
        assert_same_quant(run_out(x, PER_ROW, symmetric, None, None, gen), want, "stream dynamic")
        scale, zp = static_qparams(x, PER_ROW, symmetric, gen)
        want = reference.quantize_int8(x, PER_ROW, symmetric, scale, zp)
        assert_same_quant(run_functional(x, PER_ROW, symmetric, scale, zp), want, "stream static")
    # Per tensor: one long row, reduced and written by all threads (each chunk starts unaligned).
    want = reference.quantize_int8(x, PER_TENSOR, True)
    assert_same_quant(run_functional(x, PER_TENSOR, True, None, None), want, "stream per-tensor")
    # Groups of 128 stream when their codes are whole aligned lines; a misaligned out buffer does not.
    xg = torch.randn(1280, 4096, generator=gen)
    for symmetric in (True, False):
        want = reference.quantize_int8(xg, 128, symmetric)
        assert_same_quant(run_functional(xg, 128, symmetric, None, None), want, "stream g128")
        scale, zp = static_qparams(xg, 128, symmetric, gen)
        want = reference.quantize_int8(xg, 128, symmetric, scale, zp)
        codes = torch.empty(xg.numel() + 1, dtype=want[0].dtype)[1:].view(xg.shape)
        torch.ops.fastq.quantize_int8_out(xg, codes, scale, zp, 128, symmetric, False)
        assert_bits_equal(codes, want[0], "misaligned g128 static")


@pytest.mark.parametrize("threads", [1], indirect=True)
def test_single_thread_long_row(isa, threads):
    """A long single row takes the split path (backward write) even on one thread."""
    gen = generator("long-row-1t")
    for dtype in (torch.float32, torch.float16):
        x = make_input((70001,), dtype, True, gen)
        for symmetric in (True, False):
            want = reference.quantize_int8(x, PER_TENSOR, symmetric)
            assert_same_quant(run_functional(x, PER_TENSOR, symmetric, None, None), want, f"{dtype}")


@needs_native
def test_public_wrapper_routes_through_op_when_traced():
    """The public wrapper's eager fast path steps aside under dispatch modes (here FakeTensorMode):
    the op's fake implementation answers and no native kernel runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    before = fastq.native_calls("quantize_int8", "cpu")
    with FakeTensorMode():
        x = torch.empty(4, 64)
        q = fastq.quantize_int8(x, 32, False)
        assert q.codes.dtype == torch.uint8 and tuple(q.scale.shape) == (4, 2)
    assert fastq.native_calls("quantize_int8", "cpu") == before
    # With requires_grad the op path runs too (same numbers, still native).
    x = torch.randn(4, 64, requires_grad=True)
    q = fastq.quantize_int8(x, PER_ROW)
    assert_same_quant(q, reference.quantize_int8(x.detach(), PER_ROW, True), "requires_grad")
