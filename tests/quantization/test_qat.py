"""QAT: the prepared model's forward is the integer kernel's output (so convert_ is bit-exact for
every config), gradients follow the straight-through estimator, LSQ scales learn, other configs plug
in with register_qat, and bad input is refused."""

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import QuantConv2d, QuantLinear, StaticQuantConv2d, StaticQuantLinear, UnsupportedLayerError
from fastq.quantization import CalibrationError, register_handler, register_qat
from fastq.quantization.qat import QATConv2d, QATLinear, QATScheme, fake_quant, round_ste
from _qat_util import regression_losses, train_losses

CONFIGS = {
    "dynamic_sym": fastq.Int8DynamicConfig(),
    "dynamic_asym": fastq.Int8DynamicConfig(act_symmetric=False),
    "weight_only": fastq.quantization.Int8WeightOnlyConfig(),
    "weight_only_g16": fastq.quantization.Int8WeightOnlyConfig(group_size=16),
    "static": fastq.Int8StaticConfig(observer="minmax"),
}


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 48), nn.GELU(), nn.Linear(48, 10))


def _data(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 10, 10, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def _train(model, data, steps=3, lr=0.05):
    return train_losses(model, data, nn.functional.cross_entropy, steps, torch.optim.SGD(model.parameters(), lr=lr))


@pytest.mark.parametrize("lsq", [False, True], ids=["amax", "lsq"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_convert_is_bit_exact_with_the_qat_forward(name, lsq):
    cfg, model, data = CONFIGS[name], _cnn(), _data()
    first = nn.Conv2d if name == "weight_only_g16" else QATConv2d  # K = 9: no groups of 16
    if name == "static":
        fastq.calibrate(model, [x for x, _ in data], cfg, progress=False)
    fastq.prepare_qat_(model, cfg, lsq=lsq)
    assert isinstance(model[0], first) and isinstance(model[7], QATLinear)
    w0 = model[7].weight.detach().clone()
    _train(model, data)
    assert not torch.equal(model[7].weight, w0)  # gradients reached the float weights
    model.eval()
    x = _data(1, seed=9)[0][0]
    with torch.no_grad():
        y_qat = model(x)
    fastq.convert_(model)
    kinds = (StaticQuantConv2d, StaticQuantLinear) if name == "static" else (QuantConv2d, QuantLinear)
    assert isinstance(model[2], kinds[0]) and isinstance(model[7], kinds[1])
    assert torch.equal(model(x), y_qat)


def test_forward_value_is_the_kernel_and_gradient_the_ste():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    model = nn.Sequential(copy.deepcopy(lin))
    fastq.prepare_qat_(model, fastq.Int8DynamicConfig())
    x = torch.randn(4, 32, requires_grad=True)
    y = model(x)
    q = QuantLinear.from_float(lin, fastq.Int8DynamicConfig())
    assert torch.equal(y.detach(), q(x.detach()))  # the value is the int8 kernel's
    y.sum().backward()
    # STE: dL/dx = sum over outputs of the fake-quantized weight rows
    w_fq = q.dequantized_weight()
    torch.testing.assert_close(x.grad, w_fq.sum(0).expand(4, 32), rtol=1e-5, atol=1e-6)


def test_static_clipped_activations_get_no_gradient_and_lsq_scale_learns():
    x = torch.tensor([[-4.0, -0.503, 0.2549, 3.0]])
    scale = torch.tensor([0.01], requires_grad=True)  # range [-1.27, 1.27]: -4 and 3 are clipped
    xr = x.clone().requires_grad_(True)
    out = fake_quant(xr, scale, None, -127, 127)
    out.sum().backward()
    assert torch.equal(xr.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    # LSQ: d out / d s = q - x / s inside the range, the clip level outside
    expected = (-50 + 50.3) + (25 - 25.49) + (-127 + 127)
    torch.testing.assert_close(scale.grad, torch.tensor([expected]), rtol=1e-3, atol=1e-3)
    v = torch.tensor([0.5, 1.5, 2.5, -0.5], requires_grad=True)
    r = round_ste(v)
    assert torch.equal(r.detach(), torch.round(v.detach()))  # half to even, exactly
    r.sum().backward()
    assert torch.equal(v.grad, torch.ones(4))


def test_static_qat_without_calibration_observes_in_training():
    model, data = _cnn(), _data()
    fastq.prepare_qat_(model, fastq.Int8StaticConfig(observer="moving_average"))
    with pytest.raises(CalibrationError, match="no activation range yet"):
        model.eval()(data[0][0])
    _train(model, data, steps=2)
    assert model[5].act_symmetric is False  # after ReLU: one-sided
    model.eval()
    with torch.no_grad():
        y = model(data[0][0])
    fastq.convert_(model)
    assert torch.equal(model(data[0][0]), y)


def test_lsq_static_activation_scale_is_learned():
    model, data = _cnn(), _data()
    cfg = fastq.Int8StaticConfig(observer="minmax")
    fastq.calibrate(model, [x for x, _ in data], cfg, progress=False)
    fastq.prepare_qat_(model, cfg, lsq=True)
    s0 = model[5].act_scale.detach().clone()
    assert isinstance(model[5].act_scale, nn.Parameter) and isinstance(model[5].weight_scale_lsq, nn.Parameter)
    _train(model, data, steps=3, lr=0.5)
    assert not torch.equal(model[5].act_scale.detach(), s0)


def test_trains_with_distill():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    student = copy.deepcopy(teacher)
    fastq.prepare_qat_(student, fastq.Int8DynamicConfig())
    batches = [torch.randn(8, 32) for _ in range(4)]
    hist = fastq.distill_(student, teacher, batches, loss="mse", steps=6, lr=1e-3)
    assert len(hist.losses) == 6 and all(l == l for l in hist.losses)
    fastq.convert_(student)
    assert isinstance(student[0], QuantLinear)


@dataclass(frozen=True)
class _SignConfig:
    """A toy 'binary' weight config: the hook example of register_qat."""


class _SignLinear(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("scale", w.abs().mean(1, keepdim=True))
        self.register_buffer("sign", torch.sign(w))
        self.bias = None if b is None else b.detach().clone()

    def forward(self, x):
        y = x @ (self.sign * self.scale).T
        return y if self.bias is None else y + self.bias


class _SignScheme(QATScheme):
    def fake_weight(self, module, w):
        scale = w.abs().mean(1, keepdim=True).detach()
        return w + (torch.sign(w) * scale - w).detach()


def test_other_configs_plug_in_with_register_qat():
    register_handler(_SignConfig, nn.Linear, lambda m, c: _SignLinear(m.weight.detach(), m.bias))
    register_qat(_SignConfig, _SignScheme)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    fastq.prepare_qat_(model, _SignConfig())
    x = torch.randn(5, 8)
    loss = model(x).sum()
    loss.backward()
    assert model[0].weight.grad is not None
    with torch.no_grad():
        y = model(x)
    fastq.convert_(model)
    assert isinstance(model[0], _SignLinear) and torch.equal(model(x), y)


def test_bad_input():
    with pytest.raises(TypeError, match="no QAT scheme for Float16Config"):
        fastq.prepare_qat_(_cnn(), fastq.Float16Config())
    with pytest.raises(TypeError, match="lsq"):
        fastq.prepare_qat_(_cnn(), fastq.Int8DynamicConfig(), lsq="yes")
    with pytest.raises(ValueError, match="no layer"):
        fastq.prepare_qat_(nn.Sequential(nn.ReLU()), fastq.Int8DynamicConfig())
    with pytest.raises(ValueError, match="no QAT layers"):
        fastq.convert_(_cnn())
    model = _cnn()
    fastq.prepare_qat_(model, fastq.Int8StaticConfig())
    with pytest.raises(CalibrationError, match="never saw activations"):
        fastq.convert_(model)
    assert isinstance(model[0], QATConv2d)  # nothing was converted


def test_filter_and_tiny_layers_stay_float():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Linear(32, 2))
    fastq.prepare_qat_(model, fastq.Int8DynamicConfig(), filter_fn=lambda m, n: n != "0")
    assert type(model[0]) is nn.Linear and isinstance(model[2], QATLinear)
    assert type(model[3]) is nn.Linear  # too small to gain from int8: left float with a note
    assert "too small" in dict(fastq.summary(model).notes)["3"]


# ---- sub-8-bit weights (IntxWeightOnlyConfig, Int4WeightOnlyConfig, Int4DynamicConfig) ------------
# The CNN's linears have K = 512 and 48: groups of 16 suit both int4 (chunk 8) and int2 (chunk 16).
INTX_CONFIGS = {
    "int4_sym_g16": fastq.quantization.Int4WeightOnlyConfig(group_size=16),
    "int4_asym_channel": fastq.quantization.Int4WeightOnlyConfig(group_size=None, symmetric=False),
    "int2_sym_g16": fastq.quantization.IntxWeightOnlyConfig(bits=2, group_size=16),
    "int2_asym_channel": fastq.quantization.IntxWeightOnlyConfig(bits=2, group_size=None, symmetric=False),
    "int2_asym_g16": fastq.quantization.IntxWeightOnlyConfig(bits=2, group_size=16, symmetric=False),
    "int3_asym_g16_clip": fastq.quantization.IntxWeightOnlyConfig(bits=3, group_size=16, symmetric=False,
                                                                  clip="weight"),
    "w4a8_sym_g16": fastq.quantization.Int4DynamicConfig(group_size=16),
    "w4a8_asym_channel_clip": fastq.quantization.Int4DynamicConfig(group_size=None, symmetric=False, clip="weight"),
}


@pytest.mark.parametrize("lsq", [False, True], ids=["amax", "lsq"])
@pytest.mark.parametrize("name", list(INTX_CONFIGS))
def test_intx_convert_is_bit_exact_with_the_qat_forward(name, lsq):
    from fastq.nn.intx import IntxLinear

    cfg, model, data = INTX_CONFIGS[name], _cnn(), _data()
    fastq.prepare_qat_(model, cfg, lsq=lsq)
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Conv2d  # intx configs take nn.Linear only
    assert "no quantize_ handler for Conv2d" in dict(fastq.summary(model).notes)["0"]
    assert isinstance(model[5], QATLinear) and isinstance(model[7], QATLinear)
    w0 = model[5].weight.detach().clone()
    s0 = model[5].weight_scale_lsq.detach().clone() if lsq else None
    _train(model, data)
    assert not torch.equal(model[5].weight, w0)  # gradients reached the float weights
    if lsq:
        assert not torch.equal(model[5].weight_scale_lsq.detach(), s0)  # ... and the learned scales
    model.eval()
    x = _data(1, seed=9)[0][0]
    with torch.no_grad():
        y_qat = model(x)
        fake = model[5].qat_scheme.fake_weight(model[5], model[5].weight)
    fastq.convert_(model)
    assert isinstance(model[5], IntxLinear) and isinstance(model[7], IntxLinear)
    assert model[5].bits == cfg.bits and model[5].symmetric == cfg.symmetric and model[5].mode == cfg.mode
    assert torch.equal(model(x), y_qat)
    assert torch.equal(model[5].dequantized_weight(), fake)  # the STE graph's weight is the packed one


@pytest.mark.parametrize("name", list(INTX_CONFIGS))
def test_intx_fake_weight_rounds_as_intx_quantize(name):
    """Before any step the QAT model is quantize_'s model: same forward, and the STE weight equals the
    dequantized intx_quantize codes bit for bit (intx_quantize divides by the scale; a multiply by
    1 / scale would move some codes)."""
    cfg, model = INTX_CONFIGS[name], _cnn()
    ref = fastq.quantize_(copy.deepcopy(model), cfg)
    fastq.prepare_qat_(model, cfg)
    x = _data(1, seed=3)[0][0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))
        for i in (5, 7):
            fake = model[i].qat_scheme.fake_weight(model[i], model[i].weight)
            assert torch.equal(fake, ref[i].dequantized_weight())


def test_intx_clip_output_uses_the_observed_inputs_and_stays_fixed():
    cfg = fastq.quantization.Int4WeightOnlyConfig(group_size=16, clip="output")
    model, data = _cnn(), _data()
    with fastq.quantization.observe_inputs(model):
        for x, _ in data:
            model(x)
    ref = fastq.quantize_(copy.deepcopy(model), cfg)
    fastq.prepare_qat_(model, cfg)
    assert model[5].qat_scheme.clip == "output" and bool((model[5].weight_clip_ratio < 1).any())
    with torch.no_grad():
        assert torch.equal(model.eval()(data[0][0]), ref(data[0][0]))
    ratio = model[5].weight_clip_ratio.clone()
    _train(model, data, steps=2)
    assert torch.equal(model[5].weight_clip_ratio, ratio)  # searched at prepare_qat_ only


def test_intx_clipped_weights_get_no_gradient():
    """Symmetric int4 per channel: codes -8..7 with step amax / 7.5, so a row's largest positive
    weight rounds to 8 and clips: it (and only what clips) gets a zero gradient; x gets the STE's."""
    from fastq.quantization.intx import intx_quantize

    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    model = nn.Sequential(lin)
    fastq.prepare_qat_(model, fastq.quantization.Int4WeightOnlyConfig(group_size=None))
    x = torch.randn(4, 32, requires_grad=True)
    model(x).sum().backward()
    codes, scale, _ = intx_quantize(lin.weight.detach(), 4, None, True)
    v = torch.round(lin.weight.detach() / scale)
    clipped = (v > 7) | (v < -8)
    assert bool(clipped.any()) and not bool(clipped.all())
    assert torch.equal(model[0].weight.grad[clipped], torch.zeros(int(clipped.sum())))
    torch.testing.assert_close(model[0].weight.grad[~clipped], x.detach().sum(0).expand(8, 32)[~clipped])
    deq = (codes.float() - 8) * scale
    torch.testing.assert_close(x.grad, deq.sum(0).expand(4, 32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lsq", [False, True], ids=["amax", "lsq"])
@pytest.mark.parametrize("cfg", [fastq.quantization.Int4WeightOnlyConfig(group_size=16),
                                 fastq.quantization.IntxWeightOnlyConfig(bits=2, group_size=16, symmetric=False)],
                         ids=["int4", "int2"])
def test_intx_training_lowers_the_loss(cfg, lsq):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    fastq.prepare_qat_(model, cfg, lsq=lsq)
    losses = regression_losses(model)  # the values are the intx kernel's outputs
    assert losses[-1] < 0.5 * losses[0]


def test_intx_bad_input():
    with pytest.raises(ValueError, match=r"gptq=True\) cannot be trained"):
        fastq.prepare_qat_(_cnn(), fastq.quantization.Int4WeightOnlyConfig(gptq=True))
    with pytest.raises(TypeError, match="no QAT scheme for IntxEmbeddingConfig"):
        fastq.prepare_qat_(_cnn(), fastq.quantization.IntxEmbeddingConfig())
    convs = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    with pytest.raises(ValueError, match="no layer of the model can be trained for Int4WeightOnlyConfig"):
        fastq.prepare_qat_(convs, fastq.quantization.Int4WeightOnlyConfig())
    assert "no quantize_ handler for Conv2d" in dict(fastq.summary(convs).notes)["0"]
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32), nn.Linear(12, 4))
    fastq.prepare_qat_(model, fastq.quantization.Int4WeightOnlyConfig(group_size=32, fit_group_size=False))
    notes = dict(fastq.summary(model).notes)
    assert type(model[0]) is nn.Linear and "does not divide K=48" in notes["0"]  # left float, with the reason
    assert isinstance(model[2], QATLinear)
    assert type(model[3]) is nn.Linear and "does not divide K=12" in notes["3"]
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):  # a diverged step: said, not packed
        model(torch.randn(2, 48))
