"""QuantConv2d: accuracy vs F.conv2d, equivalence with QuantLinear on pixels / im2col columns (the
1x1 and k x k paths), native kernels, state_dict and init_kwargs round trips, repr, bad input.

SQNR thresholds: as for QuantLinear (see tests/nn/test_quant_linear.py): W8A8 on Gaussian data
is expected at 38-40 dB, weight-only at 41-43 dB. Zero padding only adds exact zeros to a patch.
Reflect padding duplicates pixels, which leaves the patch statistics Gaussian.
"""

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastq
from fastq import _native
from fastq.nn import QuantConv2d, QuantLinear, UnsupportedLayerError

W8A8_SQNR_DB = 36.0
WO_SQNR_DB = 39.0

CONFIGS = {
    "w8a8_sym": fastq.Int8DynamicConfig(),
    "w8a8_asym": fastq.Int8DynamicConfig(act_symmetric=False),
    "wo_channel": fastq.Int8WeightOnlyConfig(),
    "wo_g8": fastq.Int8WeightOnlyConfig(group_size=8),
}


def sqnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    ref, y = ref.double(), y.double()
    return 20 * math.log10(ref.norm() / (ref - y).norm())


def gaussian_conv(c: int, o: int, seed: int = 0, **kw) -> torch.nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(c, o, **kw)
    with torch.no_grad():
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / math.sqrt(fan_in))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(o, generator=g) * 0.1)
    return conv


CASES = {  # id: (C, O, Conv2d kwargs, input H, W)
    "1x1": (16, 32, dict(kernel_size=1), 9, 7),
    "1x1_stride2_pad1": (16, 24, dict(kernel_size=1, stride=2, padding=1), 9, 8),
    "3x3": (8, 16, dict(kernel_size=3), 10, 10),
    "3x3_pad1": (8, 17, dict(kernel_size=3, padding=1), 9, 11),
    "3x3_stride2_pad1": (16, 32, dict(kernel_size=3, stride=2, padding=1), 15, 16),
    "3x3_dilation2": (8, 16, dict(kernel_size=3, padding=2, dilation=2), 12, 9),
    "5x5_nobias": (4, 8, dict(kernel_size=5, padding=2, bias=False), 12, 12),
    "3x1_rect": (8, 16, dict(kernel_size=(3, 1), stride=(1, 2), padding=(1, 0)), 10, 10),
    "same_4x4": (8, 16, dict(kernel_size=4, padding="same"), 9, 9),
    "valid_3x3": (8, 16, dict(kernel_size=3, padding="valid"), 9, 9),
    "reflect_3x3": (8, 16, dict(kernel_size=3, padding=1, padding_mode="reflect"), 9, 9),
    "circular_1x1": (8, 16, dict(kernel_size=1, padding=1, padding_mode="circular"), 6, 6),
    "stem_3to32": (3, 32, dict(kernel_size=3, stride=2, padding=1), 32, 32),  # EfficientNet-Lite0 stem
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own note about its reference conv
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sqnr_vs_conv2d(name, case):
    c, o, kw, h, w = CASES[case]
    cfg = CONFIGS[name]
    if isinstance(cfg, fastq.Int8WeightOnlyConfig) and cfg.group_size and (c * math.prod(
            (kw["kernel_size"],) * 2 if isinstance(kw["kernel_size"], int) else kw["kernel_size"])) % cfg.group_size:
        pytest.skip("group size does not divide K")
    conv = gaussian_conv(c, o, **kw)
    q = QuantConv2d.from_float(conv, cfg)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        ref, y = conv(x), q(x)
    assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous()
    bound = W8A8_SQNR_DB if isinstance(cfg, fastq.Int8DynamicConfig) else WO_SQNR_DB
    assert sqnr(ref, y) >= bound, case


@pytest.mark.parametrize("act_symmetric", [True, False])
def test_1x1_is_a_linear_over_pixels(act_symmetric):
    conv = gaussian_conv(33, 17, kernel_size=1)
    cfg = fastq.Int8DynamicConfig(act_symmetric=act_symmetric)
    q = QuantConv2d.from_float(conv, cfg)
    lin = torch.nn.Linear(33, 17)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(17, 33))
        lin.bias.copy_(conv.bias)
    ql = QuantLinear.from_float(lin, cfg)
    x = torch.randn(2, 33, 5, 7)
    with torch.no_grad():
        y = q(x)
        expected = ql(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # each pixel is one token
    assert torch.equal(y, expected)


@pytest.mark.parametrize("case", ["3x3_stride2_pad1", "3x3_dilation2", "3x1_rect"])
def test_kxk_is_a_linear_over_im2col_columns(case):
    c, o, kw, h, w = CASES[case]
    conv = gaussian_conv(c, o, **kw)
    cfg = fastq.Int8DynamicConfig()
    q = QuantConv2d.from_float(conv, cfg)
    lin = torch.nn.Linear(conv.weight[0].numel(), o)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(o, -1))  # (c, i, j) order, as F.unfold's rows
        lin.bias.copy_(conv.bias)
    ql = QuantLinear.from_float(lin, cfg)
    x = torch.randn(2, c, h, w)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    with torch.no_grad():
        y = q(x)
        expected = ql(cols.transpose(1, 2)).transpose(1, 2).reshape(y.shape)  # each patch is one token
    assert torch.equal(y, expected)


def test_unbatched_and_half_inputs():
    conv = gaussian_conv(8, 16, kernel_size=3, padding=1)
    q = QuantConv2d.from_float(conv, CONFIGS["w8a8_sym"])
    x = torch.randn(8, 6, 6)
    with torch.no_grad():
        assert torch.equal(q(x), q(x.unsqueeze(0)).squeeze(0))
        for dtype in (torch.float16, torch.bfloat16):
            y = q(x.unsqueeze(0).to(dtype))
            assert y.dtype == dtype
            assert sqnr(conv(x.unsqueeze(0).to(dtype).float()), y.float()) >= W8A8_SQNR_DB - 2


@pytest.mark.parametrize("name", ["w8a8_sym", "wo_channel"])
def test_native_kernel_runs(name):
    cfg = CONFIGS[name]
    op = "int8_linear_dynamic" if name.startswith("w8a8") else "int8_weight_only_linear"
    if fastq.kernel_for(op, "cpu") == "reference":
        pytest.skip(f"no native {op} kernel in this build")
    for kw in (dict(kernel_size=1), dict(kernel_size=3, padding=1)):
        q = QuantConv2d.from_float(gaussian_conv(8, 16, **kw), cfg)
        before = fastq.native_calls(op, "cpu")
        with torch.no_grad():
            q(torch.randn(1, 8, 5, 5))
        assert fastq.native_calls(op, "cpu") == before + 1
        assert fastq.kernel_for(op, "cpu") == f"native:{_native.cpu_isa()}"


@pytest.mark.parametrize("case", ["3x3_pad1", "same_4x4", "reflect_3x3", "1x1_stride2_pad1"])
@pytest.mark.parametrize("name", ["w8a8_asym", "wo_g8"])
def test_state_dict_and_init_kwargs_round_trip(name, case):
    c, o, kw, h, w = CASES[case]
    q = QuantConv2d.from_float(gaussian_conv(c, o, **kw), CONFIGS[name])
    kwargs = json.loads(json.dumps(q.init_kwargs()))
    twin = fastq.nn.MODULE_TYPES["QuantConv2d"](**kwargs)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    twin.load_state_dict(torch.load(buf, weights_only=True))
    assert twin.init_kwargs() == q.init_kwargs()
    for key, t in q.state_dict().items():
        assert torch.equal(twin.state_dict()[key], t)
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        assert torch.equal(twin(x), q(x))


def test_repr_and_sizes():
    q = QuantConv2d.from_float(gaussian_conv(16, 32, kernel_size=3, stride=2, padding=1), CONFIGS["w8a8_sym"])
    r = repr(q)
    for part in ("16, 32", "kernel_size=(3, 3)", "stride=(2, 2)", "padding=(1, 1)", "mode=w8a8", "bits=8",
                 "weight=per_channel", "act=per_token_symmetric"):
        assert part in r
    assert q.weight_shape() == (32, 16, 3, 3)
    assert q.float_weight_bytes() == 4 * (32 * 16 * 9 + 32)
    assert q.weight_bytes() == 32 * 144 + 4 * 32 + 4 * 32 + 4 * 32
    assert "padding_mode=reflect" in repr(QuantConv2d.from_float(
        gaussian_conv(8, 16, kernel_size=3, padding=1, padding_mode="reflect"), CONFIGS["wo_g8"]))


def test_bad_inputs_raise_clear_errors():
    q = QuantConv2d.from_float(gaussian_conv(8, 16, kernel_size=3), CONFIGS["w8a8_sym"])
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        q(torch.randn(2, 7, 6, 6))
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        q(torch.randn(8, 36))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        q(torch.ones(1, 8, 6, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        q(torch.randn(1, 8, 2, 6))
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        QuantConv2d.from_float(torch.nn.Conv2d(8, 8, 3, groups=2), CONFIGS["w8a8_sym"])
    with pytest.raises(UnsupportedLayerError, match="does not divide K=72"):
        QuantConv2d.from_float(gaussian_conv(8, 16, kernel_size=3), fastq.Int8WeightOnlyConfig(group_size=16))
    with pytest.raises(TypeError, match="expects an nn.Conv2d"):
        QuantConv2d.from_float(torch.nn.Linear(4, 4), CONFIGS["w8a8_sym"])
    with pytest.raises(ValueError, match="padding_mode"):
        QuantConv2d(8, 16, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        QuantConv2d(8, 16, (3, 3, 3))
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        QuantConv2d(8, 16, 3, stride=2, padding="same")
