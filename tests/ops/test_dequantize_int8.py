"""dequantize_int8 / dequantize_int8_out: native CPU (every ISA) and CUDA kernels against the reference.

Invariants checked here: ``float32(code - zero_point) * scale`` rounded to the output dtype is
reproduced bit for bit (NaN positions included) for every code value, granularity and output
dtype, through the functional and the out= op, with the native kernel proven to have run; a
quantize -> dequantize round trip stays within half a step; bad input raises TypeError/ValueError
before native code runs; opcheck and the CUDA kernel agree with the reference.
"""

from __future__ import annotations


import pytest
import torch

import fastq
from fastq.ops import reference
from fastq.ops._checks import PER_ROW, PER_TENSOR, layout
from _compare import assert_bits_equal, generator

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TAILS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)

needs_native = pytest.mark.skipif(not fastq.native_available(), reason="fastq._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _case(shape: tuple, group_size: int, note: str = ""):
    g = {PER_TENSOR: "tensor", PER_ROW: "row"}.get(group_size, f"g{group_size}")
    return pytest.param(shape, group_size, id=f"{note}{'x'.join(map(str, shape))}-{g}")


CASES = (
    [_case((3, n), PER_ROW) for n in TAILS]
    + [_case((n,), PER_TENSOR) for n in TAILS]
    + [_case((3, 96), 32), _case((2, 192), 64), _case((2, 384), 128), _case((3, 72), 24)]
    + [_case((32, 384), g, "minilm-") for g in (PER_TENSOR, PER_ROW, 32, 128)]
    + [_case((8, 4096), g, "llama-") for g in (PER_TENSOR, PER_ROW, 128)]
    + [_case((2, 5, 96), g, "3d-") for g in (PER_TENSOR, PER_ROW, 32)]
)


@pytest.fixture
def threads(request):
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)





def make_qtensor(shape: tuple, group_size: int, symmetric: bool, gen: torch.Generator, nan_scale: bool = True):
    """Random codes over the whole code range and scales spanning 1e-9..1e3, so float16 outputs
    overflow to Inf and underflow to subnormals; one group gets a NaN (poisoned) scale."""
    lay = layout(tuple(shape), group_size)
    codes = torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
    if not symmetric:
        codes = codes.view(torch.uint8)
    scale = 10 ** (12 * torch.rand(lay.scale_shape, generator=gen) - 9)
    if nan_scale and scale.numel() > 1:
        scale.view(-1)[scale.numel() // 2] = float("nan")
    zp = None if symmetric else torch.randint(0, 256, lay.scale_shape, generator=gen, dtype=torch.int32)
    return codes, scale, zp


def run_functional(codes, scale, zp, dtype, device="cpu"):
    before = fastq.native_calls("dequantize_int8", device)
    y = torch.ops.fastq.dequantize_int8(codes, scale, zp, dtype)
    assert fastq.native_calls("dequantize_int8", device) == before + 1, "the native kernel did not run"
    return y


def run_out(codes, scale, zp, dtype, device="cpu"):
    out = torch.full(codes.shape, float("nan"), dtype=dtype, device=device)  # poisoned
    before = fastq.native_calls("dequantize_int8_out", device)
    torch.ops.fastq.dequantize_int8_out(codes, scale, zp, out)
    assert fastq.native_calls("dequantize_int8_out", device) == before + 1, "the native kernel did not run"
    return out


# ---- bit-exact against the reference ----------------------------------------------------------

@pytest.mark.parametrize("shape, group_size", CASES)
def test_native_matches_reference(isa, shape, group_size):
    assert fastq.kernel_for("dequantize_int8", "cpu") == f"native:{isa}"
    assert fastq.kernel_for("dequantize_int8_out", "cpu") == f"native:{isa}"
    for symmetric in (True, False):
        codes, scale, zp = make_qtensor(shape, group_size, symmetric, generator(shape, group_size, symmetric))
        for dtype in DTYPES:
            want = reference.dequantize_int8(codes, scale, zp, dtype)
            what = f"{dtype} {'sym' if symmetric else 'asym'}"
            assert_bits_equal(run_functional(codes, scale, zp, dtype), want, what)
            assert_bits_equal(run_out(codes, scale, zp, dtype), want, what + " out=")


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("shape, group_size", [_case((157, 211), PER_ROW), _case((1, 70001), PER_TENSOR),
                                               _case((4, 20480), 128)])
def test_multithreaded(isa, threads, shape, group_size):
    """The flat range is split across threads, mid-row; each segment must find its own scale."""
    for symmetric in (True, False):
        codes, scale, zp = make_qtensor(shape, group_size, symmetric, generator("mt", shape, symmetric))
        for dtype in (torch.float32, torch.bfloat16):
            want = reference.dequantize_int8(codes, scale, zp, dtype)
            assert_bits_equal(run_out(codes, scale, zp, dtype), want, f"{dtype}")


def test_round_trip_within_half_step(isa):
    """dequantize(quantize(x)) is within half a quantization step of x (dynamic scales never clip)."""
    gen = generator("roundtrip")
    x = torch.randn(16, 300, generator=gen) * torch.exp(torch.randn(16, 1, generator=gen))
    for symmetric in (True, False):
        for g in (PER_TENSOR, PER_ROW, 60):
            q, s, z = fastq.quantize_int8(x, g, symmetric)
            y = fastq.dequantize_int8(q, s, None if symmetric else z)
            step = s.expand(16, -1).repeat_interleave(300 // s.shape[-1] if g != PER_TENSOR else 300, dim=1)
            assert bool(torch.all((y - x).abs() <= step * 0.5001)), f"g={g} symmetric={symmetric}"


def test_poisoned_rows_dequantize_to_nan(isa):
    x = torch.randn(4, 40)
    x[1, 5] = float("nan")
    x[2, 39] = float("inf")
    for symmetric in (True, False):
        q, s, z = fastq.quantize_int8(x, PER_ROW, symmetric)
        for dtype in DTYPES:
            y = run_functional(q, s, None if symmetric else z, dtype)
            assert_bits_equal(y, reference.dequantize_int8(q, s, None if symmetric else z, dtype), "poisoned")
            assert bool(torch.isnan(y[1:3]).all()) and not bool(torch.isnan(y[0]).any())


def test_non_contiguous_codes_are_copied(isa):
    """Documented policy: non-contiguous codes and scales are copied; results are identical."""
    codes, scale, zp = make_qtensor((64, 48), PER_ROW, False, generator("noncontig"), nan_scale=False)
    codes_t = codes.t().contiguous().t()  # same values, column-major
    assert not codes_t.is_contiguous()
    want = reference.dequantize_int8(codes, scale, zp, torch.float32)
    assert_bits_equal(run_functional(codes_t, scale, zp, torch.float32), want, "transposed codes")
    scale_nc = torch.cat([scale, scale], dim=1)[:, :1]
    assert not scale_nc.is_contiguous()
    assert_bits_equal(run_out(codes, scale_nc, zp, torch.float16),
                      reference.dequantize_int8(codes, scale, zp, torch.float16), "strided scale")


@pytest.mark.parametrize("shape, scale_shape", [((0,), (1,)), ((0, 8), (0, 1)), ((4, 0), (4, 1)),
                                                ((4, 0), (1, 1)), ((4, 0), (4, 0)), ((2, 0, 16), (2, 0, 2))],
                         ids=["0", "0x8-row", "4x0-row", "4x0-tensor", "4x0-groups", "2x0x16-g8"])
def test_empty(isa, shape, scale_shape):
    """Documented policy: empty codes give an empty output of the requested dtype; no kernel runs."""
    for symmetric in (True, False):
        codes = torch.empty(shape, dtype=torch.int8 if symmetric else torch.uint8)
        scale = torch.ones(scale_shape)
        zp = None if symmetric else torch.zeros(scale_shape, dtype=torch.int32)
        for dtype in DTYPES:
            y = torch.ops.fastq.dequantize_int8(codes, scale, zp, dtype)
            assert y.shape == codes.shape and y.dtype == dtype
            out = torch.empty(shape, dtype=dtype)
            torch.ops.fastq.dequantize_int8_out(codes, scale, zp, out)


def test_public_wrapper(isa):
    codes, scale, _ = make_qtensor((4, 64), 16, True, generator("wrapper"))
    want = reference.dequantize_int8(codes, scale, None, torch.bfloat16)
    # The zero zero-points quantize_int8 returns for symmetric codes are accepted and ignored.
    zeros = torch.zeros(scale.shape, dtype=torch.int32)
    assert_bits_equal(fastq.dequantize_int8(codes, scale, zeros, torch.bfloat16), want, "wrapper")
    out = torch.empty(4, 64, dtype=torch.bfloat16)
    assert fastq.dequantize_int8(codes, scale, out=out) is out
    assert_bits_equal(out, want, "wrapper out=")


# ---- bad input ---------------------------------------------------------------------------------

C8 = torch.randint(-128, 128, (4, 64), dtype=torch.int8)
CU8 = C8.view(torch.uint8)
S = torch.full((4, 1), 0.1)
Z = torch.full((4, 1), 128, dtype=torch.int32)
META = torch.device("meta")


def _d(codes, scale, zp=None, dtype=torch.float32):
    return lambda: torch.ops.fastq.dequantize_int8(codes, scale, zp, dtype)


def _do(codes, scale, zp, out):
    return lambda: torch.ops.fastq.dequantize_int8_out(codes, scale, zp, out)


BAD_INPUTS = [
    ("float-codes", _d(C8.float(), S), TypeError, "codes must be int8"),
    ("int32-codes", _d(C8.int(), S), TypeError, "codes must be int8"),
    ("0-d", _d(torch.tensor(3, dtype=torch.int8), torch.ones(())), ValueError, "0-d"),
    ("scale-rank", _d(C8, torch.full((4,), 0.1)), ValueError, "same rank"),
    ("scale-no-granularity", _d(C8, torch.full((4, 3), 0.1)), ValueError, "fits no granularity"),
    ("scale-rows", _d(C8, torch.full((3, 1), 0.1)), ValueError, "fits no granularity"),
    ("scale-dtype", _d(C8, S.double()), TypeError, "scale must be float32"),
    ("zp-for-int8", _d(C8, S, Z), ValueError, "symmetric quantization takes no zero_point"),
    ("zp-missing-uint8", _d(CU8, S), ValueError, "needs a zero_point"),
    ("zp-dtype", _d(CU8, S, Z.long()), TypeError, "zero_point must be int32"),
    ("zp-shape", _d(CU8, S, Z[:2]), ValueError, "zero_point has shape"),
    ("out-dtype-int", _d(C8, S, None, torch.int32), TypeError, "output dtype"),
    ("out-dtype-float64", _d(C8, S, None, torch.float64), TypeError, "output dtype"),
    ("scale-other-device", _d(C8, S.to(META)), ValueError, "on meta but codes is on cpu"),
    ("zp-other-device", _d(CU8, S, Z.to(META)), ValueError, "on meta but codes is on cpu"),
    ("out-buffer-dtype", _do(C8, S, None, torch.empty(4, 64, dtype=torch.float64)), TypeError, "output dtype"),
    ("out-buffer-shape", _do(C8, S, None, torch.empty(4, 63)), ValueError, "out must have shape"),
    ("out-buffer-noncontig", _do(C8, S, None, torch.empty(64, 4).t()), ValueError, "contiguous"),
    ("out-buffer-other-device", _do(C8, S, None, torch.empty(4, 64, device=META)), ValueError, "on meta"),
]


@needs_native
@pytest.mark.parametrize("fn, exc, match", [pytest.param(*c[1:], id=c[0]) for c in BAD_INPUTS])
def test_bad_input_raises_before_native(fn, exc, match):
    before = (fastq.native_calls("dequantize_int8", "cpu"), fastq.native_calls("dequantize_int8_out", "cpu"))
    with pytest.raises(exc, match=match):
        fn()
    assert (fastq.native_calls("dequantize_int8", "cpu"), fastq.native_calls("dequantize_int8_out", "cpu")) == before


# ---- torch.library integration ------------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("shape, group_size, symmetric, dtype", [
    pytest.param((5, 64), 32, False, torch.bfloat16, id="g32-asym-bf16"),
    pytest.param((2, 3, 48), PER_TENSOR, False, torch.float16, id="3d-tensor-asym-f16"),
])
def test_opcheck(shape, group_size, symmetric, dtype):
    codes, scale, zp = make_qtensor(shape, group_size, symmetric, generator("opcheck", shape), nan_scale=False)
    before = fastq.native_calls("dequantize_int8", "cpu")
    torch.library.opcheck(torch.ops.fastq.dequantize_int8.default, (codes, scale, zp, dtype))
    assert fastq.native_calls("dequantize_int8", "cpu") > before
    before = fastq.native_calls("dequantize_int8_out", "cpu")
    torch.library.opcheck(torch.ops.fastq.dequantize_int8_out.default,
                          (codes, scale, zp, torch.empty(shape, dtype=dtype)))
    assert fastq.native_calls("dequantize_int8_out", "cpu") > before


# ---- CUDA ----------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("shape, group_size", CASES + [_case((2, 300000), PER_TENSOR, "big-")])
def test_cuda_matches_reference(shape, group_size):
    if fastq.kernel_for("dequantize_int8", "cuda") != "native:cuda":
        pytest.skip("fastq._C was built without CUDA")
    for symmetric in (True, False):
        codes, scale, zp = make_qtensor(shape, group_size, symmetric, generator("cuda", shape, group_size, symmetric))
        to = (lambda t: None if t is None else t.cuda())
        for dtype in DTYPES:
            want = reference.dequantize_int8(codes, scale, zp, dtype)
            assert_bits_equal(run_functional(to(codes), to(scale), to(zp), dtype, "cuda"), want, f"cuda {dtype}")
            assert_bits_equal(run_out(to(codes), to(scale), to(zp), dtype, "cuda"), want, f"cuda {dtype} out=")


def test_large_output_streaming_path(isa):
    """Outputs of calls moving > 24 MiB are written with non-temporal stores; odd rows misalign them."""
    if isa == "scalar":
        pytest.skip("the scalar kernels have no streaming variant")
    for shape, dtype, symmetric in (((1283, 4099), torch.float32, False), ((2100, 4099), torch.bfloat16, True),
                                    ((40960, 128), torch.float32, True)):
        codes, scale, zp = make_qtensor(shape, PER_ROW, symmetric, generator("stream", shape, symmetric))
        want = reference.dequantize_int8(codes, scale, zp, dtype)
        assert_bits_equal(run_out(codes, scale, zp, dtype), want, f"stream {dtype}")
