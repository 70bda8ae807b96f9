"""quantize_ and the configs: validation, swapping, filter_fn / skip, layers left as they were (with a
note), idempotence, torch.compile(fullgraph=True) and torch.export of a quantized model.

The model-level SQNR bound (30 dB) is looser than one layer's (36 dB, tests/nn): the noise of four
W8A8 layers in a chain adds up (4x the noise power of one: -6 dB from ~38 dB), and the spatial mean
pooling averages part of it away again (measured 38-45 dB over seeds and configs).
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import QuantConv2d, QuantLinear
from fastq.ops import _checks
from fastq.quantization import SKIP_ATTR, register_handler

MODEL_SQNR_DB = 30.0


def sqnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    ref, y = ref.double(), y.double()
    return 20 * math.log10(ref.norm() / (ref - y).norm())


class MLP(nn.Module):
    def __init__(self, d: int = 64, h: int = 256, out: int = 48):
        super().__init__()
        self.up = nn.Linear(d, h)
        self.act = nn.ReLU()
        self.down = nn.Linear(h, out)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class Net(nn.Module):
    """Convolutions (quantizable, grouped, tiny) and linears (quantizable, tiny head)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=2, padding=1)  # K = 48
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # depthwise: not supported -> skipped
        self.pw = nn.Conv2d(32, 64, 1)
        self.mlp = MLP(64, 128, 64)
        self.head = nn.Linear(64, 2)  # N=2 pads to 16 channels: not smaller than fp32 -> skipped

    def features(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.mlp(x.mean((2, 3)))

    def forward(self, x):
        return self.head(self.features(x))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1)
    return model.eval()


# ---- configs -------------------------------------------------------------------------------------

def test_configs_validate_themselves():
    assert fastq.Int8DynamicConfig().act_symmetric is True
    assert fastq.Int8WeightOnlyConfig(group_size=64).granularity == "group64"
    with pytest.raises(TypeError, match="act_symmetric must be True or False"):
        fastq.Int8DynamicConfig(act_symmetric="yes")
    with pytest.raises(ValueError, match="act_granularity 'per_tensor' is not supported"):
        fastq.Int8DynamicConfig(act_granularity="per_tensor")
    with pytest.raises(ValueError, match="Int8WeightOnlyConfig\\(group_size=...\\)"):
        fastq.Int8DynamicConfig(weight_granularity="per_group")
    for bad in (0, -32):
        with pytest.raises(ValueError, match="group_size must be positive"):
            fastq.Int8WeightOnlyConfig(group_size=bad)
    for bad in (32.0, True, "32"):
        with pytest.raises(TypeError, match="group_size must be a positive int or None"):
            fastq.Int8WeightOnlyConfig(group_size=bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fastq.Int8DynamicConfig().act_symmetric = False


# ---- swapping ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [fastq.Int8DynamicConfig(), fastq.Int8DynamicConfig(act_symmetric=False),
                                 fastq.Int8WeightOnlyConfig(), fastq.Int8WeightOnlyConfig(group_size=16)],
                         ids=["w8a8_sym", "w8a8_asym", "wo", "wo_g16"])
def test_quantize_swaps_in_place_and_stays_accurate(cfg):
    model = seeded(Net())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model.features(x)  # 256 values (the 2-class head's 8 outputs are too few for an SQNR)
    stem_before = model.stem
    out = fastq.quantize_(model, cfg)
    assert out is model
    assert isinstance(model.stem, QuantConv2d) and model.stem is not stem_before
    assert isinstance(model.pw, QuantConv2d)
    assert isinstance(model.mlp.up, QuantLinear) and isinstance(model.mlp.down, QuantLinear)
    assert type(model.dw) is nn.Conv2d and type(model.head) is nn.Linear  # left as they were
    assert "groups=32" in getattr(model.dw, SKIP_ATTR)
    assert "too small to gain from int8" in getattr(model.head, SKIP_ATTR)
    with torch.no_grad():
        y = model.features(x)
    assert sqnr(ref, y) >= MODEL_SQNR_DB


def test_skipped_layers_are_untouched():
    model = seeded(Net())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fastq.quantize_(model, fastq.Int8WeightOnlyConfig(group_size=128))  # divides only K=128 (mlp.down)
    assert isinstance(model.mlp.down, QuantLinear)
    for name in ("stem", "dw", "pw", "mlp.up", "head"):
        layer = model.get_submodule(name)
        assert type(layer) in (nn.Linear, nn.Conv2d), name
        assert torch.equal(layer.weight, state[f"{name}.weight"])
    assert "group_size 128 does not divide K=48" in getattr(model.stem, SKIP_ATTR)
    assert "group_size 128 does not divide K=64" in getattr(model.mlp.up, SKIP_ATTR)


def test_filter_fn_and_skip():
    model = seeded(Net())
    fastq.quantize_(model, fastq.Int8DynamicConfig(), filter_fn=lambda m, name: not name.startswith("stem"),
                    skip=["mlp.down", "pw"])
    assert type(model.stem) is nn.Conv2d and getattr(model.stem, SKIP_ATTR) == "excluded by filter_fn"
    assert type(model.pw) is nn.Conv2d and getattr(model.pw, SKIP_ATTR) == "excluded by skip="
    assert type(model.mlp.down) is nn.Linear and getattr(model.mlp.down, SKIP_ATTR) == "excluded by skip="
    assert isinstance(model.mlp.up, QuantLinear)

    assert "groups=32" in getattr(model.dw, SKIP_ATTR)

    model = seeded(Net())
    fastq.quantize_(model, fastq.Int8DynamicConfig(), skip="mlp")  # a name skips everything under it
    assert type(model.mlp.up) is nn.Linear and type(model.mlp.down) is nn.Linear
    assert isinstance(model.stem, QuantConv2d)

    model = seeded(Net())
    fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=[nn.Conv2d])  # by type
    assert type(model.stem) is nn.Conv2d and type(model.pw) is nn.Conv2d
    assert isinstance(model.mlp.up, QuantLinear)


def test_bad_arguments_raise():
    model = seeded(Net())
    with pytest.raises(ValueError, match="skip entry 'mlp.dwn' names no module.*mlp.down"):
        fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=["mlp.dwn"])
    with pytest.raises(TypeError, match="skip entries must be module names"):
        fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=[3])
    with pytest.raises(TypeError, match="config must be one of"):
        fastq.quantize_(model, "int8")
    with pytest.raises(TypeError, match="expects an nn.Module"):
        fastq.quantize_(torch.randn(3), fastq.Int8DynamicConfig())
    with pytest.raises(TypeError, match="filter_fn must be a callable"):
        fastq.quantize_(model, fastq.Int8DynamicConfig(), filter_fn=True)
    assert all(type(m) is not QuantLinear for m in model.modules())  # nothing changed by failed calls


def test_idempotent_root_layer_shared_modules_and_mha():
    model = seeded(MLP())
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    up = model.up
    fastq.quantize_(model, fastq.Int8WeightOnlyConfig())  # fastq modules have no handler: untouched
    assert model.up is up and model.up.mode == "w8a8"

    root = nn.Linear(64, 64)
    q = fastq.quantize_(root, fastq.Int8DynamicConfig())
    assert isinstance(q, QuantLinear)  # a root layer cannot be swapped in place: returned instead

    shared = nn.Linear(64, 64)
    tied = nn.Sequential(shared, nn.ReLU(), shared)
    fastq.quantize_(tied, fastq.Int8DynamicConfig())
    assert isinstance(tied[0], QuantLinear) and tied[0] is tied[2]

    # MultiheadAttention reads out_proj.weight itself: its NonDynamicallyQuantizableLinear is not an
    # nn.Linear by exact type, so it stays, and the attention still runs.
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        ref = mha(x, x, x)[0]
        fastq.quantize_(mha, fastq.Int8DynamicConfig())
        assert torch.equal(mha(x, x, x)[0], ref)


def test_register_handler_validates():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_handler(fastq.Int8DynamicConfig, int, lambda m, c: m)
    with pytest.raises(TypeError, match="config_type must be a class"):
        register_handler("w8a8", nn.Linear, lambda m, c: m)
    with pytest.raises(TypeError, match="handler must be callable"):
        register_handler(fastq.Int8DynamicConfig, nn.Linear, None)


def test_new_config_type_plugs_in_without_touching_quantize_():
    """A config registered from outside is accepted and routed to its own handler only."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class HalfConfig:
        pass

    def to_half(module, config):
        assert isinstance(config, HalfConfig)
        return module.half()

    from fastq.quantization import api

    register_handler(HalfConfig, nn.Linear, to_half)
    try:
        assert HalfConfig in fastq.quantization.config_types()
        model = nn.Sequential(nn.Linear(8, 8), nn.Conv2d(2, 2, 1))
        fastq.quantize_(model, HalfConfig())
        assert model[0].weight.dtype == torch.float16
        assert model[1].weight.dtype == torch.float32  # no Conv2d handler for this config: untouched
    finally:
        del api._HANDLERS[HalfConfig]
    with pytest.raises(TypeError, match="config must be one of"):
        fastq.quantize_(model, object())


# ---- torch.compile and torch.export --------------------------------------------------------------

def _native_ops():
    return [op for op in ("int8_linear_dynamic", "int8_weight_only_linear")
            if fastq.kernel_for(op, "cpu") != "reference"]


def test_compile_fullgraph_matches_eager_and_calls_native():
    model = fastq.quantize_(seeded(MLP()), fastq.Int8DynamicConfig())
    x = torch.randn(8, 64)
    with torch.no_grad():
        eager = model(x)
        before = fastq.native_calls("int8_linear_dynamic", "cpu")
        compiled = torch.compile(model, fullgraph=True)
        y = compiled(x)
        y2 = compiled(torch.randn(8, 64))
    torch.testing.assert_close(y, eager, rtol=1e-5, atol=1e-5)
    assert y2.shape == (8, 48)
    if "int8_linear_dynamic" in _native_ops():
        assert fastq.native_calls("int8_linear_dynamic", "cpu") >= before + 4  # 2 layers x 2 calls


@pytest.mark.parametrize("cfg", [fastq.Int8DynamicConfig(act_symmetric=False), fastq.Int8WeightOnlyConfig(16)],
                         ids=["w8a8_asym", "wo_g16"])
def test_export_matches_eager_and_calls_native(cfg):
    model = fastq.quantize_(seeded(Net()), cfg)
    x = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (x,))
    op = "int8_linear_dynamic" if isinstance(cfg, fastq.Int8DynamicConfig) else "int8_weight_only_linear"
    assert f"torch.ops.fastq.{op}" in ep.graph_module.code
    before = fastq.native_calls(op, "cpu")
    with torch.no_grad():
        y = ep.module()(x)
        eager = model(x)
    torch.testing.assert_close(y, eager, rtol=1e-5, atol=1e-5)
    if op in _native_ops():
        assert fastq.native_calls(op, "cpu") == before + 2 * 4  # stem, pw, mlp.up, mlp.down, twice


# ---- layers quantize_ cannot take: skipped with a note, or a clear error ------------------------------

def test_quantize_skips_w8a8_layers_beyond_the_limit():
    model = nn.Sequential(nn.Linear(_checks.W8A8_MAX_K + 1, 16), nn.Linear(16, 4096))
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    assert type(model[0]) is nn.Linear and "66311" in model[0]._fastq_skip_reason
    wo = nn.Sequential(nn.Linear(_checks.W8A8_MAX_K + 1, 16))
    fastq.quantize_(wo, fastq.Int8WeightOnlyConfig())  # weight-only accumulates in float: no limit
    assert type(wo[0]).__name__ == "QuantLinear"


def test_quantize_skips_float64_layers_with_a_note():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64).double())
    model[0].double()
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    for i in (0, 2):
        assert type(model[i]) is nn.Linear and "float64" in model[i]._fastq_skip_reason
    assert "float64" in str(fastq.summary(model))


def test_quantize_refuses_meta_weights():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="meta device"):
        fastq.quantize_(model, fastq.Int8WeightOnlyConfig())
