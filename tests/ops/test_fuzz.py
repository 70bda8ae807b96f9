"""Property tests (hypothesis) over every op with a native kernel: random shapes (empty dims and
vector tails included), strides (transposed, expanded, sliced, offset views), dtypes, group sizes,
NaN/Inf/huge/subnormal values and invalid arguments. For every example and every CPU ISA the
native kernel must give what the reference gives (bit for bit where the arithmetic is integer or
one rounding, else within the float32 bound the reference documents) or raise the same exception
type. Any other exception type fails the test.

Runs are reproducible: ``derandomize=True`` (the examples are a fixed function of the test), no
example database. ``CALLS`` counts native-vs-reference comparisons (one native call each);
``test_fuzzed_call_count`` checks the suite makes at least ``MIN_CALLS`` of them, a number the
README reports. Shapes are tiny, so the whole file runs in seconds.
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastq
from fastq import _native
from fastq.ops import _library as L
from fastq.ops import cpu as native, reference

from _compare import assert_bits_equal
from _gemm_util import ISAS

pytestmark = pytest.mark.skipif(not _native.available(), reason="the native extension is not loaded")

CALLS: collections.Counter = collections.Counter()
MIN_CALLS = 10_000
EPS32 = torch.finfo(torch.float32).eps

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes never split across threads; one thread also spares every small torch op of the
    comparisons an OpenMP fork/join (slow on a loaded machine). Thread counts have their own tests."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _isas() -> list[str]:
    if not _native.available():
        return []
    return [i for i in ISAS if ISAS.index(i) <= ISAS.index(fastq.detected_cpu_isa())]


# ---- value and layout strategies ------------------------------------------------------------------

SPECIALS = [float("nan"), float("inf"), float("-inf"), 3.0e38, -3.0e38, 1e-40, -0.0, 65504.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def float_tensor(draw, shape, dtypes=DTYPES, specials: bool = True):
    """A float tensor of ``shape`` in one of several memory layouts, with optional special values."""
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    gen = torch.Generator().manual_seed(seed)
    magnitude = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1.0, 1e3, 1e30]))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced", "expanded", "offset"]))
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen).transpose(-1, -2)
    elif layout == "sliced" and len(shape) >= 1:
        base = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen)[..., ::2]
    elif layout == "expanded" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], 1, shape[-1], generator=gen).expand(shape)
    elif layout == "offset" and len(shape) >= 1:
        base = torch.randn(shape[0] + 1, *shape[1:], generator=gen)[1:]
    else:
        base = torch.randn(shape, generator=gen)
    x = (base * magnitude).to(dtype)
    if specials and x.numel() and draw(st.booleans()):
        flat = x.reshape(-1) if x.is_contiguous() else None
        if flat is not None:
            for _ in range(draw(st.integers(1, 3))):
                flat[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    return x


def dims(lo=0, hi=40):
    # vector tails are likeliest to break kernels: bias towards them
    return st.one_of(st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65]), st.integers(lo, hi))


def group_sizes(c: int):
    divisors = [g for g in range(1, c + 1) if c % g == 0] if c > 0 else [1]
    invalid = [-2, None, 2.0, True, "a"] + ([c + 1] if c > 1 else [])
    return st.one_of(st.sampled_from([0, -1]), st.sampled_from(divisors), st.sampled_from(invalid))


# ---- calling and comparing -------------------------------------------------------------------------

def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except (TypeError, ValueError) as exc:
        return ("raise", type(exc).__name__, str(exc))


def _ref(name):
    return L.OPS[name]._init_fn  # the op's default implementation: validation + reference


def _same(a, b, compare, what) -> None:
    assert a[0] == b[0], f"{what}: native {a[0]} {a[1:] if a[0] == 'raise' else ''} vs reference " \
                         f"{b[0]} {b[1:] if b[0] == 'raise' else ''}"
    if a[0] == "raise":
        assert a[1] == b[1], f"{what}: native raised {a[1]} ({a[2]}), reference {b[1]} ({b[2]})"
        return
    compare(a[1], b[1], what)


def _bits(a, b, what):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for i, (u, v) in enumerate(zip(a, b)):
            _bits(u, v, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert_bits_equal(a, b, what)
    else:
        assert a == b, what


def _per_isa(name: str, run_native, reference_outcome, compare, what: str) -> None:
    """Run ``run_native()`` under every ISA and compare each outcome with the reference's."""
    saved = fastq.cpu_isa()
    try:
        for isa in _isas():
            fastq.set_cpu_isa(isa)
            CALLS[name] += 1
            _same(run_native(), reference_outcome, compare, f"{what} [{isa}]")
    finally:
        fastq.set_cpu_isa(saved)


# ---- quantize / dequantize ---------------------------------------------------------------------------

@st.composite
def quantize_case(draw):
    rank = draw(st.integers(1, 3))
    shape = [draw(dims(0, 6)) for _ in range(rank - 1)] + [draw(dims())]
    x = draw(float_tensor(shape))
    return x, draw(group_sizes(shape[-1])), draw(st.sampled_from([True, False, True, 1]))


@settings(FUZZ, max_examples=400)
@given(case=quantize_case())
def test_quantize_int8(case):
    x, gs, sym = case
    ref = _outcome(_ref("quantize_int8"), x, gs, sym)
    _per_isa("quantize_int8", lambda: _outcome(native.quantize_int8, x, gs, sym), ref, _bits, "quantize_int8")
    if ref[0] == "ok":  # the out= variant writes into poisoned buffers
        codes, scale, zp = ref[1]

        def run(fn):
            c = torch.full_like(codes, 77)
            s = torch.full_like(scale, float("nan"))
            z = torch.full_like(zp, -5)
            out = _outcome(fn, x, c, s, None if sym else z, gs, sym, True)
            return out if out[0] == "raise" else ("ok", (c, s) if sym else (c, s, z))

        _per_isa("quantize_int8_out", lambda: run(native.quantize_int8_out), run(_ref("quantize_int8_out")), _bits,
                 "quantize_int8_out")


@settings(FUZZ, max_examples=250)
@given(case=quantize_case(), data=st.data())
def test_quantize_int8_static(case, data):
    x, gs, sym = case
    try:
        lay = L._checks.layout(tuple(x.shape), gs) if isinstance(gs, int) and not isinstance(gs, bool) else None
    except ValueError:
        lay = None
    shape = lay.scale_shape if lay else (1,) * x.dim()
    kind = data.draw(st.sampled_from(["good", "good", "zero", "nan", "huge-zp", "wrong-shape"]))
    scale = torch.rand(shape) * 0.1 + 1e-3
    zp = torch.randint(0, 256, shape, dtype=torch.int32)
    if kind == "zero" and scale.numel():
        scale.view(-1)[0] = 0.0
    elif kind == "nan" and scale.numel():
        scale.view(-1)[0] = float("nan")
    elif kind == "huge-zp" and zp.numel():
        zp.view(-1)[0] = 300
    elif kind == "wrong-shape":
        scale, zp = scale.reshape(-1)[:1].reshape(-1).repeat(2), zp.reshape(-1)[:1].repeat(2)
    zp_arg = None if sym is True else zp
    ref = _outcome(_ref("quantize_int8"), x, gs, sym, scale, zp_arg)
    _per_isa("quantize_int8", lambda: _outcome(native.quantize_int8, x, gs, sym, scale, zp_arg), ref, _bits,
             "quantize_int8 static")


@st.composite
def dequantize_case(draw):
    x, gs, sym = draw(quantize_case())
    gs = gs if isinstance(gs, int) and not isinstance(gs, bool) and gs >= -1 else -1
    try:
        codes, scale, zp = reference.quantize_int8(x.float(), gs, sym is True)
    except ValueError:
        codes, scale, zp = reference.quantize_int8(x.float(), -1, sym is True)
    if draw(st.booleans()) and codes.dim() >= 2:  # strided codes
        codes = codes.transpose(-1, -2).contiguous().transpose(-1, -2)
    dtype = draw(st.sampled_from(DTYPES + [torch.int32, torch.float64]))
    zp = None if codes.dtype == torch.int8 else zp
    if draw(st.integers(0, 9)) == 0 and scale.numel() > 1:
        scale = scale.reshape(-1)  # a shape that fits no granularity
    return codes, scale, zp, dtype


@settings(FUZZ, max_examples=350)
@given(case=dequantize_case())
def test_dequantize_int8(case):
    codes, scale, zp, dtype = case
    ref = _outcome(_ref("dequantize_int8"), codes, scale, zp, dtype)
    _per_isa("dequantize_int8", lambda: _outcome(native.dequantize_int8, codes, scale, zp, dtype), ref, _bits,
             "dequantize_int8")

    def run(fn):
        out = torch.full(codes.shape, 123, dtype=dtype)
        got = _outcome(fn, codes, scale, zp, out)
        return got if got[0] == "raise" else ("ok", out)

    _per_isa("dequantize_int8_out", lambda: run(native.dequantize_int8_out), run(_ref("dequantize_int8_out")), _bits,
             "dequantize_int8_out")


def test_dequantize_out_aliasing_codes_is_refused():
    codes = torch.randint(-127, 128, (4, 64), dtype=torch.int8)
    scale = torch.rand(4, 1)
    buf = torch.empty(4 * 64 * 4, dtype=torch.uint8)
    alias_codes = buf[: 4 * 64].view(torch.int8).view(4, 64)
    alias_codes.copy_(codes)
    out = buf.view(torch.float32).view(4, 64)
    for fn in (native.dequantize_int8_out, _ref("dequantize_int8_out")):
        with pytest.raises(ValueError, match="overlaps"):
            fn(alias_codes, scale, None, out)
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="overlaps"):
        fastq.quantize_int8(x, out=x.view(-1).view(torch.int8)[:256].view(4, 64))


# ---- int8 GEMM family ---------------------------------------------------------------------------------

@st.composite
def int8_matrix(draw, rows, cols):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    if layout == "transposed":
        return torch.randint(-128, 128, (cols, rows), dtype=torch.int8, generator=gen).t()
    if layout == "sliced":
        return torch.randint(-128, 128, (rows, 2 * cols), dtype=torch.int8, generator=gen)[:, ::2]
    return torch.randint(-128, 128, (rows, cols), dtype=torch.int8, generator=gen)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_int8_gemm(data):
    m, n, k = data.draw(dims(0, 40)), data.draw(dims(0, 40)), data.draw(dims(0, 70))
    a = data.draw(int8_matrix(m, k))
    b = data.draw(int8_matrix(n, k if data.draw(st.integers(0, 19)) else k + 1))  # sometimes a K mismatch
    ref = _outcome(_ref("int8_gemm"), a, b)
    _per_isa("int8_gemm", lambda: _outcome(native.int8_gemm, a, b), ref, _bits, "int8_gemm")


@st.composite
def linear_case(draw, weight_only: bool):
    m, n = draw(dims(0, 20)), draw(st.integers(1, 40))
    k = draw(st.sampled_from([1, 3, 4, 8, 9, 16, 17, 32, 33, 64, 65]))
    rank = draw(st.integers(1, 3))
    lead = [m] if rank == 2 else ([] if rank == 1 else [draw(st.integers(0, 3)), m])
    x = draw(float_tensor(lead + [k], specials=True))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    packed = reference.int8_pack_weight(w)
    groups = draw(st.sampled_from([g for g in range(1, k + 1) if k % g == 0])) if weight_only else 1
    scale = torch.rand((n, groups) if weight_only else (n,), generator=gen) * 0.02 + 1e-4
    bias = torch.randn(n, generator=gen) if draw(st.booleans()) else None
    bad = draw(st.sampled_from([None] * 8 + ["k", "scale-dtype", "bias-shape", "n"]))
    if bad == "k":
        x = x[..., : max(0, k - 1)]
    elif bad == "scale-dtype":
        scale = scale.double()
    elif bad == "bias-shape":
        bias = torch.randn(n + 1)
    elif bad == "n":
        n = n + 16
    return x, w, packed, scale, bias, n


def _weight_only_close(w_scale_of):
    def compare(y, yr, what):
        assert y.dtype == yr.dtype and y.shape == yr.shape, what
        if y.numel() == 0:
            return
        x, w, scale, bias, n = w_scale_of
        k = x.shape[-1]
        w = w[:, :k]  # x's K may be below the weight's within one packed K group: the ops read K columns
        g = scale.shape[1]
        wf = (w.double().reshape(n, g, k // g) * scale.double().reshape(n, g, 1)).reshape(n, k)
        xd = x.reshape(-1, k).double()
        exact = xd @ wf.T + (bias.double() if bias is not None else 0)
        bound = 2 * (k + 2) * EPS32 * (xd.abs() @ wf.abs().T) + _rounding_to(x.dtype, exact)
        yd, yrd = y.reshape(-1, n).double(), yr.reshape(-1, n).double()
        # where sum |x w s| < FLT_MAX no partial sum can overflow in any order: both sides must be
        # finite there and within the bound of the exact result (elsewhere the order decides)
        # (the kernels multiply x by the int8 code before the scale: |x| * 127 must not overflow either)
        safe = _no_overflow(xd.abs() @ wf.abs().T + (bias.double().abs() if bias is not None else 0), x.dtype) \
            & _no_overflow(xd.abs() @ w.double().abs().T, torch.float32)
        assert bool(torch.isfinite(yd[safe]).all() and torch.isfinite(yrd[safe]).all()), f"{what}: non-finite"
        assert bool(((yd - exact).abs() <= bound + 1e-30)[safe].all()), f"{what}: outside the float32 bound"
    return compare


def _rounding_to(dtype, value):
    """Twice the rounding of ``value`` to a 16-bit output dtype: relative eps for normal numbers and
    the subnormal spacing (smallest normal x eps) near zero; nothing for float32 outputs."""
    if dtype == torch.float32:
        return 0.0
    fi = torch.finfo(dtype)
    return 2 * fi.eps * value.abs() + 2 * fi.tiny * fi.eps


def _no_overflow(abs_sum, dtype):
    return abs_sum < torch.finfo(dtype).max / 2


@settings(FUZZ, max_examples=300)
@given(case=linear_case(False), sym=st.booleans(), out_dtype=st.sampled_from(DTYPES + [torch.int8]))
def test_int8_linear_dynamic(case, sym, out_dtype):
    x, w, packed, scale, bias, n = case
    args = (x, packed, scale, bias, n, sym, out_dtype)
    ref = _outcome(_ref("int8_linear_dynamic"), *args)
    _per_isa("int8_linear_dynamic", lambda: _outcome(native.int8_linear_dynamic, *args), ref, _bits,
             "int8_linear_dynamic")

    def run(fn):
        out = torch.full(tuple(x.shape[:-1]) + (n,), 5, dtype=out_dtype)
        got = _outcome(fn, x, packed, scale, bias, n, sym, out)
        return got if got[0] == "raise" else ("ok", out)

    _per_isa("int8_linear_dynamic_out", lambda: run(native.int8_linear_dynamic_out),
             run(_ref("int8_linear_dynamic_out")), _bits, "int8_linear_dynamic_out")


@settings(FUZZ, max_examples=300)
@given(case=linear_case(True))
def test_int8_weight_only_linear(case):
    x, w, packed, scale, bias, n = case
    ref = _outcome(_ref("int8_weight_only_linear"), x, packed, scale, bias, n)
    compare = _weight_only_close((x, w, scale, bias, n))
    _per_isa("int8_weight_only_linear", lambda: _outcome(native.int8_weight_only_linear, x, packed, scale, bias, n),
             ref, compare, "int8_weight_only_linear")


def test_w8a8_k_limit_is_the_same_on_every_path():
    k = L._checks.W8A8_MAX_K + 1
    x = torch.randn(1, k)
    packed = reference.int8_pack_weight(torch.ones(16, k, dtype=torch.int8))
    args = (x, packed, torch.ones(16), None, 16, False, torch.float32)
    for fn in (native.int8_linear_dynamic, _ref("int8_linear_dynamic"), L._int8_linear_dynamic_fake):
        with pytest.raises(ValueError, match="exceeds 66311"):
            fn(*args)
    a = torch.ones(1, L._checks.INT8_GEMM_MAX_K + 1, dtype=torch.int8)
    for fn in (native.int8_gemm, _ref("int8_gemm")):
        with pytest.raises(ValueError, match="exceeds 131071"):
            fn(a, a)


# ---- sparse linears ----------------------------------------------------------------------------------

@st.composite
def sparse_case(draw, fmt: str):
    n = draw(st.integers(1, 40))
    k = draw(st.sampled_from([4, 8, 12, 16, 20, 32, 36, 64, 68]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    w = torch.randn(n, k, generator=gen)
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    if fmt == "24":
        r = torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2)
        mask = (r < draw(st.integers(0, 2))).reshape(n, k)
        mask[0, 0] = True
    elif fmt == "bsr":
        br, bc = draw(st.sampled_from([(1, 2), (4, 4), (8, 1), (2, 8)]))
        keep = torch.rand(-(-n // br), -(-k // bc), generator=gen) >= sparsity
        keep[0, 0] = True
        mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k].contiguous()
    else:
        mask = torch.rand(n, k, generator=gen) >= sparsity
        mask[0, 0] = True
    if fmt == "csr":
        packed = reference.sparse_csr_pack(w, mask)
    elif fmt == "int8":
        packed = reference.sparse_int8_pack(w, mask)
    elif fmt == "24":
        packed = reference.sparse_24_pack(w, mask)
    elif fmt == "bsr":
        packed = reference.sparse_bsr_pack(w, mask, br, bc)
    else:
        packed = reference.sparse_ell_pack(w, mask, fmt == "ell_int8")
    m = draw(dims(0, 20))
    lead = [m] if draw(st.booleans()) else [draw(st.integers(0, 3)), m]
    kx = k if draw(st.integers(0, 9)) else draw(st.sampled_from([k - 1, k + 1, k + 4]))  # sometimes a wrong K
    x = draw(float_tensor(lead + [kx], dtypes=[torch.float32, torch.bfloat16, torch.float16]))
    bias = torch.randn(n, generator=gen) if draw(st.booleans()) else None
    return x, packed, bias, n, w * mask


def _sparse_close(x, dense, n, bias, int8):
    def compare(y, yr, what):
        assert y.dtype == yr.dtype and y.shape == yr.shape, what
        if y.numel() == 0:
            return
        k = x.shape[-1]
        xd = x.reshape(-1, k).double()
        d = torch.nn.functional.pad(dense, (0, max(0, k - dense.shape[1])))[:, :k]  # an x of another K
        bound = 2 * (k + 2) * EPS32 * (xd.abs() @ d.double().abs().T)
        yd, yrd = y.reshape(-1, n).double(), yr.reshape(-1, n).double()
        if bias is not None:  # the bias is added once: one more rounding of the result
            bound = bound + 2 * EPS32 * (yrd.abs() + bias.double().abs())
        bound = bound + _rounding_to(x.dtype, yrd)
        safe = _no_overflow(xd.abs() @ d.double().abs().T, x.dtype)  # see _weight_only_close
        if int8:  # kernels multiply x by the int8 code before the row's scale
            safe = safe & _no_overflow(xd.abs().sum(-1, keepdim=True) * 127, torch.float32)
        assert bool(torch.isfinite(yd[safe]).all() and torch.isfinite(yrd[safe]).all()), f"{what}: non-finite"
        assert bool(((yd - yrd).abs() <= 2 * bound + 1e-30)[safe].all()), f"{what}: outside the float32 bound"
    return compare


SPARSE_OPS = {"csr": "sparse_csr_linear", "int8": "sparse_int8_linear", "24": "sparse_24_linear",
              "bsr": "sparse_bsr_linear", "ell": "sparse_ell_linear", "ell_int8": "sparse_ell_linear"}


def _sparse_args(fmt, x, packed, bias, n):
    if fmt in ("csr", "bsr"):
        return (x, *packed, bias, n)
    if fmt == "int8":
        return (x, *packed, bias)
    if fmt == "24":
        return (x, *packed, bias)
    values, offsets, steps, group_ptr, scale = packed
    return (x, values, offsets, steps, group_ptr, scale if fmt == "ell_int8" else None, bias, n)


@pytest.mark.parametrize("fmt", list(SPARSE_OPS))
def test_sparse_linear(fmt):
    @settings(FUZZ, max_examples=180)
    @given(case=sparse_case(fmt))
    def run(case):
        x, packed, bias, n, dense = case
        if fmt in ("int8", "ell_int8"):
            dense = reference.sparse_int8_unpack(*packed, x.shape[-1]) if fmt == "int8" and \
                x.shape[-1] == dense.shape[1] else dense
        op = SPARSE_OPS[fmt]
        args = _sparse_args(fmt, x, packed, bias, n)
        ref = _outcome(_ref(op), *args)
        compare = _bits if fmt.startswith("ell") else _sparse_close(x.float() if x.dtype == torch.float16 else x,
                                                                     dense, n, bias, fmt == "int8")
        _per_isa(op, lambda: _outcome(getattr(native, op), *args), ref, compare, f"{op} ({fmt})")

    run()


# ---- the count --------------------------------------------------------------------------------------------

def test_fuzzed_call_count(request):
    """At least MIN_CALLS native-vs-reference comparisons when the whole file ran (reported in the README)."""
    fuzz_tests = [item for item in request.session.items if item.module is request.module and item.name != request.node.name
                  and item.name.startswith(("test_quantize", "test_dequantize_int8", "test_int8", "test_sparse"))]
    total = sum(CALLS.values())
    if len(fuzz_tests) < 12 or len(_isas()) < 3:
        pytest.skip(f"{total} comparisons: not every fuzz test or ISA ran here")
    print(f"\nfuzzed native-vs-reference op calls: {total} ({dict(CALLS)})")
    assert total >= MIN_CALLS, dict(CALLS)
