"""IntxLinear: accuracy vs fp32, agreement with the op sequence, native kernels per ISA, clipping,
state_dict / init_kwargs round trips, dtypes, bad input.

SQNR thresholds (20 log10(|y| / |y - y_q|)) follow from the rounding noise of a Gaussian layer's
weights: symmetric int4 in groups of 128 has step ~ 2.8 sigma / 7.5 and noise step / sqrt(12), so
about 19 dB; asymmetric int4 and smaller groups a little more; W4A8 adds int8 activation noise
(~40 dB, negligible); int2 asymmetric g32 about 7 dB; 8-bit codes about 42 dB. Measured values
sit 0.5-1.5 dB above each threshold below.
"""

import copy
import json

import pytest
import torch

import fastq
from fastq.nn import IntxLinear, UnsupportedLayerError
from fastq.ops import reference
from fastq.quantization.intx import intx_quantize, reconstruction_error

from test_quant_linear import gaussian_linear, sqnr  # tests/nn has no __init__: a plain import

CASES = {  # name: (config, SQNR floor in dB)
    "int4_g128_sym": (fastq.Int4WeightOnlyConfig(128, True), 18.0),
    "int4_g128_asym": (fastq.Int4WeightOnlyConfig(128, False), 18.5),
    "int4_g32_sym": (fastq.Int4WeightOnlyConfig(32, True), 19.0),
    "int4_channel_asym": (fastq.Int4WeightOnlyConfig(None, False), 16.0),
    "w4a8_g128_sym": (fastq.Int4DynamicConfig(128, True), 18.0),
    "w4a8_g64_asym": (fastq.Int4DynamicConfig(64, False), 18.5),
    "int2_g32_asym": (fastq.IntxWeightOnlyConfig(2, 32, False), 6.0),
    "int3_g64_asym": (fastq.IntxWeightOnlyConfig(3, 64, False), 12.5),
    "int8_channel_sym": (fastq.IntxWeightOnlyConfig(8, None, True), 40.0),
}


def op_of(q: IntxLinear) -> str:
    return "intx_linear_dynamic" if q.mode == "dynamic" else "intx_weight_only_linear"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k,n", [(768, 768), (384, 1536), (1536, 384)], ids=lambda v: str(v))
def test_sqnr_vs_fp32(name, k, n):
    cfg, floor = CASES[name]
    lin = gaussian_linear(k, n, seed=k + n)
    q = IntxLinear.from_float(lin, cfg)
    x = torch.randn(16, k, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        db = sqnr(lin(x), q(x))
    assert db >= floor, f"{name}: SQNR {db:.1f} dB < {floor} dB"


@pytest.mark.parametrize("name", list(CASES))
def test_forward_is_the_op_on_the_dequantized_weight(name):
    cfg, _ = CASES[name]
    lin = gaussian_linear(256, 80, seed=3)
    q = IntxLinear.from_float(lin, cfg)
    x = torch.randn(5, 256)
    y = q(x)
    if q.mode == "dynamic":  # bit-exact with the reference op on the module's own buffers
        assert torch.equal(y, reference.intx_linear_dynamic(x, q.weight_packed, q.bias, 80, q.groups, q.bits,
                                                              not q.symmetric, x.dtype))
    else:
        want = x.double() @ q.dequantized_weight().double().T + q.bias.double()
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("name", ["int4_g128_asym", "w4a8_g128_sym", "int2_g32_asym"])
def test_native_kernel_runs_per_isa(isa, name):
    if not fastq.native_available():
        pytest.skip("native extension not built")
    if ["scalar", "avx2", "avx512"].index(isa) > ["scalar", "avx2", "avx512"].index(fastq.detected_cpu_isa()):
        pytest.skip(f"this CPU lacks {isa}")
    q = IntxLinear.from_float(gaussian_linear(128, 48, seed=5), CASES[name][0])
    x = torch.randn(3, 128)
    saved = fastq.cpu_isa()
    fastq.set_cpu_isa(isa)
    try:
        before = fastq.native_calls(op_of(q), "cpu")
        y = q(x)
        assert fastq.native_calls(op_of(q), "cpu") == before + 1
    finally:
        fastq.set_cpu_isa(saved)
    ref = getattr(reference, op_of(q))
    args = (x, q.weight_packed, q.bias, 48, q.groups, q.bits, not q.symmetric)
    want = ref(*args, x.dtype) if q.mode == "dynamic" else ref(*args)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


def test_clipping_never_increases_the_weight_error():
    w = gaussian_linear(512, 64, seed=7).weight.detach()
    w[3, 10] = 0.9  # an outlier: clipping its group pays off
    for bits, gs, sym in ((4, 128, True), (4, 32, False), (2, 32, False), (3, None, True)):
        plain = reconstruction_error(w, *intx_quantize(w, bits, gs, sym, None), bits)
        clipped = reconstruction_error(w, *intx_quantize(w, bits, gs, sym, "weight"), bits)
        assert clipped <= plain  # ratio 1 is a candidate and wins ties
        assert clipped < plain * (0.97 if bits == 4 else 0.9), (bits, gs, sym, plain, clipped)


def test_output_clipping_uses_observed_inputs():
    torch.manual_seed(0)
    lin = gaussian_linear(256, 64, seed=9)
    model = torch.nn.Sequential(lin)
    x = torch.randn(64, 256) * torch.linspace(0.1, 3.0, 256)  # very uneven input channels
    with fastq.quantization.observe_inputs(model):
        model(x)
    stats = fastq.quantization.intx.input_stats(lin)
    assert stats.shape == (256,) and torch.allclose(stats, x.square().mean(0), rtol=1e-5)
    with torch.no_grad():
        errs = {clip: sqnr(lin(x), IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(64, True, clip))(x))
                for clip in (None, "weight", "output")}
    assert errs["output"] >= errs["weight"] - 0.05 and errs["output"] > errs[None]
    q = IntxLinear.from_float(gaussian_linear(256, 8, seed=1), fastq.Int4WeightOnlyConfig(64, True, "output"))
    assert q.clip == "weight"  # no observations for this layer: falls back to the weight error


def test_gptq_lowers_the_output_error_on_calibration_inputs():
    torch.manual_seed(0)
    lin = gaussian_linear(512, 128, seed=11)
    mix = torch.randn(512, 512) / 20 + torch.eye(512)  # correlated, uneven input features
    x = (torch.randn(768, 512) @ mix) * torch.linspace(0.2, 3.0, 512)
    with fastq.quantization.observe_inputs(torch.nn.Sequential(lin), hessian=True):
        lin(x)
    h = fastq.quantization.intx.input_hessian(lin)
    assert h.shape == (512, 512) and torch.allclose(h, x.T @ x / 768, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ref = lin(x)
        for cfg in (fastq.Int4WeightOnlyConfig(64), fastq.Int4DynamicConfig(None, False), fastq.IntxWeightOnlyConfig(2, 32, False)):
            rtn = IntxLinear.from_float(lin, cfg)
            gptq = IntxLinear.from_float(lin, type(cfg)(**{**cfg.__dict__, "gptq": True}))
            assert gptq.gptq and not rtn.gptq and "gptq" in repr(gptq)
            gain = sqnr(ref, gptq(x)) - sqnr(ref, rtn(x))
            assert gain > 0.7, f"{cfg}: GPTQ gains only {gain:.2f} dB"
    unobserved = IntxLinear.from_float(gaussian_linear(512, 8), fastq.Int4WeightOnlyConfig(64, gptq=True))
    assert not unobserved.gptq  # no Hessian recorded: rounded to nearest


def test_half_inputs_keep_dtype_and_dtype_casts_keep_float32_bias():
    q = IntxLinear.from_float(gaussian_linear(128, 40), fastq.Int4WeightOnlyConfig(32))
    x = torch.randn(2, 3, 128)
    for dtype in (torch.float16, torch.bfloat16):
        y = q(x.to(dtype))
        assert y.dtype == dtype and y.shape == (2, 3, 40)
        torch.testing.assert_close(y.float(), q(x), rtol=2e-2, atol=2e-2)
    q.half()
    assert q.bias.dtype == torch.float32 and q.weight_packed.dtype == torch.uint8
    assert q(x).dtype == torch.float32


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_and_init_kwargs_round_trip(name):
    q = IntxLinear.from_float(gaussian_linear(256, 40, bias=name != "int2_g32_asym"), CASES[name][0])
    kwargs = json.loads(json.dumps(q.init_kwargs()))
    twin = IntxLinear(**kwargs)
    twin.load_state_dict(q.state_dict())
    x = torch.randn(4, 256)
    assert torch.equal(twin(x), q(x))
    assert repr(twin) == repr(q)


def test_repr_and_sizes():
    q = IntxLinear.from_float(gaussian_linear(4096, 32), fastq.Int4WeightOnlyConfig(128, False, "weight"))
    r = repr(q)
    assert "bits=4" in r and "group128 asymmetric" in r and "clip=weight" in r
    # 32 rows x 32 groups of records: 128 codes (64 bytes / row) + 64 B scales + 16 B zeros per 16 rows
    assert q.weight_packed.numel() == reference.intx_packed_bytes(32, 4096, 32, 4, True) == 2 * 32 * (16 * 64 + 80)
    assert q.weight_bytes() == q.weight_packed.numel() + 4 * 32
    assert q.float_weight_bytes() == 4 * (32 * 4096 + 32)
    assert 4.3 < 8 * q.weight_packed.numel() / (32 * 4096) < 4.4  # 4 + 0.25 (scales) + 0.0625 (zeros)


def test_group_size_is_fitted_to_k():
    lin = gaussian_linear(576, 32)  # SmolLM2's hidden size: 128 does not divide it
    q = IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(128))
    assert q.group_size == 96 and q.groups == 6 and q.fitted_from == 128
    assert "group96 (fitted: 128 does not divide K=576)" in repr(q)
    twin = IntxLinear(**q.init_kwargs())
    twin.load_state_dict(q.state_dict())
    assert "fitted" in repr(twin)
    assert IntxLinear.from_float(lin, fastq.IntxWeightOnlyConfig(2, 128)).group_size == 96  # 96 % 16 == 0
    assert IntxLinear.from_float(gaussian_linear(1536, 8), fastq.Int4WeightOnlyConfig(128)).fitted_from is None


def test_weight_sparsity_counts_zero_weights():
    lin = gaussian_linear(64, 32)
    with torch.no_grad():
        lin.weight[:, :32] = 0
    q = IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(32, True))
    assert q.weight_sparsity() >= 0.5


def test_bad_layers_and_inputs():
    lin = gaussian_linear(100, 16)
    with pytest.raises(UnsupportedLayerError, match="does not divide K=100"):
        IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(32, fit_group_size=False))
    with pytest.raises(UnsupportedLayerError, match="K=100 is not a multiple of 8"):
        IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(32))  # no smaller group fits either
    with pytest.raises(UnsupportedLayerError, match="K=100 is not a multiple of 8"):
        IntxLinear.from_float(lin, fastq.Int4WeightOnlyConfig(None))  # two codes per byte, 8-k chunks
    with pytest.raises(UnsupportedLayerError, match="multiple of 16"):
        IntxLinear.from_float(gaussian_linear(40, 16), fastq.IntxWeightOnlyConfig(2, None))
    bad = gaussian_linear(64, 16)
    with torch.no_grad():
        bad.weight[2, 3] = float("nan")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):
        IntxLinear.from_float(bad, fastq.Int4WeightOnlyConfig(32))
    with torch.no_grad():
        bad.weight[2, 3] = float("inf")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):
        IntxLinear.from_float(bad, fastq.Int4DynamicConfig(32))
    with pytest.raises(ValueError, match="dynamic"):
        IntxLinear(64, 16, bits=8, mode="dynamic")
    with pytest.raises(ValueError, match="bits"):
        IntxLinear(64, 16, bits=1)
    q = IntxLinear.from_float(gaussian_linear(64, 16), fastq.Int4WeightOnlyConfig(32))
    with pytest.raises(ValueError, match="K mismatch"):
        q(torch.randn(2, 32))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        q(torch.ones(2, 64, dtype=torch.int32))


def test_deepcopy_and_to_keep_results():
    q = IntxLinear.from_float(gaussian_linear(64, 24), fastq.Int4DynamicConfig(32))
    x = torch.randn(3, 64)
    assert torch.equal(copy.deepcopy(q)(x), q(x))
    assert torch.equal(q.to("cpu")(x), q(x))
