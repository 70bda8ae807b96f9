"""Int8StaticConfig through calibrate + quantize_: config validation, the uncalibrated-model error
(nothing converted), automatic symmetry, per-channel folding, SmoothQuant, save/load, compile."""

import copy

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import SmoothedLinear, StaticQuantConv2d, StaticQuantLinear
from fastq.quantization import CalibrationError


class Block(nn.Module):
    """LayerNorm -> fc1 -> GELU -> fc2 (+ an outlier input channel), like a transformer FFN."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        with torch.no_grad():
            self.norm.weight[3] = 40.0  # an outlier channel, as in LLM activations

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, 64, generator=g) for _ in range(n)]


def _rel(y, ref):
    return float((y.detach() - ref).norm() / ref.norm())


def test_config_validation():
    for kwargs, match in [({"observer": "kl"}, "observer"), ({"percentile": 20}, "percentile"),
                          ({"bins": 63}, "bins"), ({"averaging_constant": 0}, "averaging_constant"),
                          ({"act_granularity": "per_token"}, "act_granularity"),
                          ({"smooth_alpha": 1.5}, r"alpha must be a number in \[0, 1\]"),
                          ({"smooth_alpha": -0.1}, r"\[0, 1\]"), ({"smooth_alpha": float("nan")}, "alpha"),
                          ({"act_granularity": "per_channel", "smooth_alpha": 0.5}, "alpha=1")]:
        with pytest.raises(ValueError, match=match):
            fastq.Int8StaticConfig(**kwargs)
    with pytest.raises(TypeError, match="act_symmetric"):
        fastq.Int8StaticConfig(act_symmetric=1)


def test_uncalibrated_model_is_an_error_and_nothing_is_converted():
    model = Block()
    with pytest.raises(CalibrationError, match="no calibration statistics.*fastq.calibrate"):
        fastq.quantize_(model, fastq.Int8StaticConfig())
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear


def test_calibrated_with_other_observer_settings_is_an_error():
    model = Block()
    fastq.calibrate(model, _batches(1), fastq.Int8StaticConfig(observer="minmax"), progress=False)
    with pytest.raises(CalibrationError, match="observer settings"):
        fastq.quantize_(model, fastq.Int8StaticConfig(observer="entropy"))
    assert type(model.fc1) is nn.Linear


def test_layer_without_data_is_skipped_with_a_note():
    model = Block()
    model.spare = nn.Linear(64, 64)
    cfg = fastq.Int8StaticConfig()
    fastq.calibrate(model, _batches(1), cfg, progress=False)
    fastq.quantize_(model, cfg)
    assert type(model.spare) is nn.Linear and type(model.fc1) is StaticQuantLinear
    assert dict(fastq.summary(model).notes)["spare"] == "it received no data during calibration"


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_every_observer_end_to_end(observer):
    model, batches = Block(), _batches()
    ref = model(batches[0]).detach()
    cfg = fastq.Int8StaticConfig(observer=observer)
    fastq.calibrate(model, batches, cfg, progress=False)
    fastq.quantize_(model, cfg)
    assert type(model.fc1) is type(model.fc2) is StaticQuantLinear
    assert not model.fc2.act_symmetric  # GELU output: one-sided -> asymmetric (auto)
    assert model.fc1.act_symmetric  # LayerNorm output: two-sided
    before = fastq.native_calls("int8_linear_static", "cpu")
    y = model(batches[0])
    if fastq.kernel_for("int8_linear_static", "cpu") != "reference":
        assert fastq.native_calls("int8_linear_static", "cpu") == before + 2
    assert _rel(y, ref) < 0.25  # the outlier channel costs per-tensor static scales; see the smoothing tests


def test_explicit_symmetry_is_respected():
    for sym in (True, False):
        model = Block()
        cfg = fastq.Int8StaticConfig(act_symmetric=sym)
        fastq.calibrate(model, _batches(1), cfg, progress=False)
        fastq.quantize_(model, cfg)
        assert model.fc1.act_symmetric is sym and model.fc2.act_symmetric is sym


def test_smoothing_and_per_channel_scales_fix_the_outlier_channel():
    batches = _batches()
    ref = Block()(batches[0]).detach()
    errors = {}
    for name, cfg in [("per_tensor", fastq.Int8StaticConfig(observer="minmax")),
                      ("smooth_0.5", fastq.Int8StaticConfig(observer="minmax", smooth_alpha=0.5)),
                      ("per_channel", fastq.Int8StaticConfig(observer="minmax", act_granularity="per_channel"))]:
        model = Block()
        fastq.calibrate(model, batches, cfg, progress=False)
        fastq.quantize_(model, cfg)
        errors[name] = _rel(model(batches[0]), ref)
        if name != "per_tensor":
            # fc1's 1/s went into the LayerNorm; fc2 (after GELU) keeps s, fused into its kernel
            assert type(model.fc1) is StaticQuantLinear and model.fc1.act_smooth is None
            assert type(model.fc2) is StaticQuantLinear and model.fc2.act_smooth is not None
    assert errors["smooth_0.5"] < errors["per_tensor"] / 3
    assert errors["per_channel"] < errors["per_tensor"]


def test_smoothing_with_dynamic_w8a8():
    batches = _batches()
    model = Block()
    ref = model(batches[0]).detach()
    plain = fastq.quantize_(copy.deepcopy(model), fastq.Int8DynamicConfig())
    fastq.smooth_quant_(model, batches, alpha=0.5, progress=False)
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    assert isinstance(model.fc2, SmoothedLinear)  # dynamic configs quantize the wrapped linear
    assert _rel(model(batches[0]), ref) <= _rel(plain(batches[0]), ref)


def test_save_load_round_trip(tmp_path):
    batches = _batches(2)
    cfg = fastq.Int8StaticConfig(smooth_alpha=0.5)
    model = Block()
    fastq.calibrate(model, batches, cfg, progress=False)
    fastq.quantize_(model, cfg)
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=Block)
    assert torch.equal(loaded(batches[1]), model(batches[1]))
    assert type(loaded.fc2) is StaticQuantLinear and loaded.fc2.act_smooth is not None


def test_save_load_of_a_smoothed_dynamic_model(tmp_path):
    model = Block()
    fastq.smooth_quant_(model, _batches(1), alpha=0.8, fold=False, progress=False)
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=Block)
    x = _batches(1, seed=3)[0]
    assert torch.equal(loaded(x), model(x))


def test_summary_compile_and_export():
    batches = _batches(1)
    cfg = fastq.Int8StaticConfig()
    model = Block()
    fastq.calibrate(model, batches, cfg, progress=False)
    fastq.quantize_(model, cfg)
    rows = {r.name: r for r in fastq.summary(model).layers}
    assert rows["fc1"].detail == "w8a8_static per_channel" and rows["fc1"].bits == 8
    x = batches[0]
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), model(x))
    exported = torch.export.export(model, (x,))
    assert torch.equal(exported.module()(x), model(x))


def test_conv_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.Flatten(),
                        nn.Linear(32 * 6 * 6, 10))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    ref = net(batches[0]).detach()
    cfg = fastq.Int8StaticConfig(observer="mse")
    fastq.calibrate(net, batches, cfg, progress=False)
    fastq.quantize_(net, cfg)
    assert isinstance(net[2], StaticQuantConv2d) and not net[2].act_symmetric  # after ReLU
    assert _rel(net(batches[0]), ref) < 0.05
