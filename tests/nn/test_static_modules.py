"""StaticQuantLinear / StaticQuantConv2d: the module is the int8_linear_static op on its buffers;
empty twins load state dicts; parameters are validated; dtype casts keep float32 scales."""

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import StaticQuantConv2d, StaticQuantLinear
from fastq.ops import reference


def _linear(seed=0, k=48, n=40):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


@pytest.mark.parametrize("zp", [None, 17, 128])
@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_the_static_op(zp, smooth, dtype):
    lin = _linear()
    s = torch.rand(48) + 0.5 if smooth else None
    x = (torch.randn(2, 5, 48) * 2).to(dtype)
    xs = x.float() if s is None else x.float() / s  # what the layer quantizes
    scale = xs.abs().max().reshape(1) / (127 if zp != 128 else 127.5)
    q = StaticQuantLinear.from_float(lin, scale, None if zp is None else torch.tensor([zp]), s)
    before = fastq.native_calls("int8_linear_static", "cpu")
    y = q(x)
    if fastq.kernel_for("int8_linear_static", "cpu") != "reference":
        assert fastq.native_calls("int8_linear_static", "cpu") > before
    ref = reference.int8_linear_static(x, q.weight_packed, q.weight_scale, q.bias, 40, q.act_scale, q.act_zero_point,
                                       q.act_smooth, dtype)
    assert y.dtype == dtype and y.shape == (2, 5, 40) and torch.equal(y, ref)
    if zp != 17:  # a range that covers the data: only rounding error relative to the float layer
        expected = lin(xs).detach()
        err = (y.float() - expected).norm() / expected.norm()
        assert err < 0.02


def test_empty_twin_loads_the_state_dict():
    q = StaticQuantLinear.from_float(_linear(), torch.tensor([0.05]), torch.tensor([3]), torch.rand(48) + 0.5)
    twin = StaticQuantLinear(**q.init_kwargs())
    twin.load_state_dict(q.state_dict())
    x = torch.randn(3, 48)
    assert torch.equal(twin(x), q(x))
    assert q.init_kwargs() == {"in_features": 48, "out_features": 40, "bias": True, "act_symmetric": False,
                               "smooth": True}
    assert "act=static_per_tensor_asymmetric, smooth" in repr(q)


def test_dtype_casts_keep_float32_parameters():
    q = StaticQuantLinear.from_float(_linear(), torch.tensor([0.05]), None, torch.rand(48) + 0.5)
    q.half()
    assert q.act_scale.dtype == q.act_smooth.dtype == q.weight_scale.dtype == torch.float32
    assert q(torch.randn(2, 48, dtype=torch.float16)).dtype == torch.float16


def test_parameters_are_validated():
    lin = _linear()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            StaticQuantLinear.from_float(lin, torch.tensor([bad]))
    with pytest.raises(ValueError, match="zero point"):
        StaticQuantLinear.from_float(lin, torch.tensor([0.1]), torch.tensor([300]))
    with pytest.raises(ValueError, match="smoothing"):
        StaticQuantLinear.from_float(lin, torch.tensor([0.1]), None, torch.zeros(48))
    q = StaticQuantLinear(48, 40, act_symmetric=True)
    with pytest.raises(ValueError, match="zero point is required exactly"):
        q.set_activation_qparams(torch.tensor([0.1]), torch.tensor([3]))
    with pytest.raises(ValueError, match="K mismatch"):
        q(torch.randn(2, 47))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        q(torch.ones(2, 48, dtype=torch.int32))


@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_conv_is_the_static_gemm_on_patches(padding):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 24, 3, padding=padding)
    q = StaticQuantConv2d.from_float(conv, torch.tensor([0.02]), torch.tensor([100]))
    x = torch.randn(2, 4, 9, 9)
    y = q(x)
    cols = torch.nn.functional.unfold(torch.nn.functional.pad(x, (1, 1, 1, 1)) if padding == "same" else x, 3,
                                      padding=padding if padding != "same" else 0).transpose(1, 2)
    ref = reference.int8_linear_static(cols, q.weight_packed, q.weight_scale, q.bias, 24, q.act_scale,
                                       q.act_zero_point, None, torch.float32)
    assert torch.equal(y, ref.transpose(1, 2).reshape(y.shape))
    twin = StaticQuantConv2d(**q.init_kwargs())
    twin.load_state_dict(q.state_dict())
    assert torch.equal(twin(x), y)


def test_grouped_conv_is_unsupported():
    from fastq.nn import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="grouped"):
        StaticQuantConv2d.from_float(nn.Conv2d(4, 8, 3, groups=2), torch.tensor([0.1]))
