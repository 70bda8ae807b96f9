"""quantize_ with the sub-8-bit configs: validation, handlers by config type, per-layer skips with
reasons, summary, save/load, torch.compile and torch.export."""

import math

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import IntxEmbedding, IntxLinear
from fastq.quantization import config_types, handler_for

LINEAR_CONFIGS = {
    "int4_wo": fastq.Int4WeightOnlyConfig(group_size=32),
    "int4_wo_asym_clip": fastq.Int4WeightOnlyConfig(group_size=64, symmetric=False, clip="weight"),
    "w4a8": fastq.Int4DynamicConfig(group_size=32),
    "int2": fastq.IntxWeightOnlyConfig(bits=2, group_size=32, symmetric=False),
    "int6": fastq.IntxWeightOnlyConfig(bits=6, group_size=None),
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.odd = nn.Linear(64, 9)     # N = 9: a partial 16-row block
        self.wide = nn.Linear(72, 16)   # K = 72: groups of 32 do not divide it
        self.tiny = nn.Linear(8, 1)     # too small to gain

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.fc1(self.embed(ids))))
        return torch.cat([self.odd(h), self.wide(torch.cat([h, h[..., :8]], -1)), self.tiny(h[..., :8])], -1)


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    m = Net().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    return m


def test_configs_validate_themselves():
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8"):
        fastq.IntxWeightOnlyConfig(bits=1)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8"):
        fastq.IntxWeightOnlyConfig(bits=9)
    with pytest.raises(ValueError, match=r"bits must be an int in 2\.\.8"):
        fastq.IntxEmbeddingConfig(bits=True)
    with pytest.raises(ValueError, match="multiple of 16"):
        fastq.IntxWeightOnlyConfig(bits=2, group_size=24)
    with pytest.raises(ValueError, match="multiple of 8"):
        fastq.Int4WeightOnlyConfig(group_size=12)
    with pytest.raises(ValueError, match="positive int"):
        fastq.Int4DynamicConfig(group_size=0)
    with pytest.raises(ValueError, match="clip"):
        fastq.Int4WeightOnlyConfig(clip="mse")
    with pytest.raises(TypeError, match="symmetric"):
        fastq.Int4WeightOnlyConfig(symmetric=1)
    with pytest.raises(AttributeError):
        fastq.Int4WeightOnlyConfig().group_size = 64  # frozen
    assert fastq.Int4WeightOnlyConfig().bits == 4 and fastq.Int4DynamicConfig().mode == "dynamic"
    assert fastq.IntxWeightOnlyConfig(bits=3, group_size=8).group_size == 8


def test_handlers_are_registered_by_config_type():
    types = config_types()
    for cfg in (fastq.IntxWeightOnlyConfig, fastq.Int4WeightOnlyConfig, fastq.Int4DynamicConfig,
                fastq.IntxEmbeddingConfig):
        assert cfg in types
    assert handler_for(nn.Linear(8, 8), fastq.Int4WeightOnlyConfig()) is not None
    assert handler_for(nn.Embedding(8, 8), fastq.Int4WeightOnlyConfig()) is None
    assert handler_for(nn.Embedding(8, 8), fastq.IntxEmbeddingConfig()) is not None


@pytest.mark.parametrize("name", list(LINEAR_CONFIGS))
def test_quantize_skips_with_reasons_and_stays_accurate(name):
    cfg = LINEAR_CONFIGS[name]
    model = net()
    ids = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        ref = model(ids)
    fastq.quantize_(model, cfg)
    assert isinstance(model.fc1, IntxLinear) and isinstance(model.odd, IntxLinear)
    notes = dict(fastq.summary(model).notes)
    if cfg.group_size == 32 and cfg.bits == 4:  # K = 72: groups of 24 fit
        assert isinstance(model.wide, IntxLinear) and model.wide.group_size == 24 and "wide" not in notes
    elif cfg.bits == 2:  # 2-bit chunks hold 16 k: K = 72 has no packed form
        assert "K=72 is not a multiple of 16" in notes["wide"]
    assert "tiny" in notes  # too small to gain, or K=8 not holding a group
    assert isinstance(model.embed, nn.Embedding)  # linear configs leave embeddings alone
    with torch.no_grad():
        y = model(ids)
    db = 20 * math.log10(ref.norm() / (ref - y).norm())
    assert db > (5 if cfg.bits == 2 else 14), f"{name}: {db:.1f} dB"
    s = str(fastq.summary(model))
    assert "bits per weight" in s and "bits/w" in s.splitlines()[0]


def test_group_size_not_dividing_k_is_skipped_without_fitting():
    model = net()
    fastq.quantize_(model, fastq.Int4WeightOnlyConfig(group_size=32, fit_group_size=False))
    assert "group_size 32 does not divide K=72" in dict(fastq.summary(model).notes)["wide"]
    assert type(model.wide) is nn.Linear
    with pytest.raises(TypeError, match="fit_group_size"):
        fastq.Int4WeightOnlyConfig(fit_group_size=None)
    with pytest.raises(TypeError, match="gptq"):
        fastq.Int4DynamicConfig(gptq="yes")


def test_nan_weights_are_skipped_with_the_reason():
    model = net()
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    fastq.quantize_(model, fastq.Int4WeightOnlyConfig(group_size=32))
    assert type(model.fc2) is nn.Linear
    assert "NaN or Inf" in dict(fastq.summary(model).notes)["fc2"]


def test_summary_reports_bits_bytes_and_ratio():
    model = net()
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    fastq.quantize_(model, fastq.Int4WeightOnlyConfig(group_size=64))
    s = fastq.summary(model)
    rows = {r.name: r for r in s.layers}
    fc1 = rows["fc1"]
    assert fc1.bits == 4 and fc1.bytes == model.fc1.weight_bytes()
    assert fc1.bits_per_weight == pytest.approx(8 * fc1.bytes / (128 * 64))
    assert 4.5 < fc1.bits_per_weight < 5.5 and fc1.compression_ratio == pytest.approx(fc1.original_bytes / fc1.bytes)
    assert rows["embed"].type == "IntxEmbedding" and rows["embed"].bits == 8
    assert 4 < s.quantized_bits_per_weight < 8
    assert s.total_bytes == sum(r.bytes for r in s.layers)


def test_save_load_round_trip(tmp_path):
    model = net()
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=4, group_size=32))
    fastq.quantize_(model, fastq.Int4DynamicConfig(group_size=32), skip=["odd"])
    fastq.quantize_(model, fastq.IntxWeightOnlyConfig(bits=3, group_size=32, symmetric=False))
    ids = torch.randint(0, 50, (2, 7))
    y = model(ids)
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=net)
    assert torch.equal(loaded(ids), y)
    assert isinstance(loaded.embed, IntxEmbedding) and loaded.fc1.mode == "dynamic" and loaded.odd.bits == 3
    assert "3-bit codes in 4-bit slots" in str(fastq.summary(loaded))


@pytest.mark.parametrize("name", ["int4_wo", "w4a8", "int2"])
def test_compile_fullgraph_and_export(name):
    cfg = LINEAR_CONFIGS[name]
    model = net()
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    fastq.quantize_(model, cfg)
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        eager = model(ids)
        op = "intx_linear_dynamic" if cfg.mode == "dynamic" else "intx_weight_only_linear"
        native = fastq.kernel_for(op, "cpu") != "reference"
        before = fastq.native_calls(op, "cpu")
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(ids), eager, rtol=1e-5, atol=1e-5)
        if native:
            assert fastq.native_calls(op, "cpu") > before
        ep = torch.export.export(model, (ids,))
        code = ep.graph_module.code
        assert f"torch.ops.fastq.{op}" in code and "torch.ops.fastq.intx_embedding" in code
        torch.testing.assert_close(ep.module()(ids), eager, rtol=1e-5, atol=1e-5)
