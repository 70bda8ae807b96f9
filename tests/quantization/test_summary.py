"""fastq.summary: per-layer rows (type, shape, bits, bytes, sparsity), totals, compression ratio, and
notes for the layers quantize_ left as they were."""

import pytest
import torch
from torch import nn

import fastq
from fastq.quantization import Summary


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, 256),
                         nn.Linear(256, 3), nn.Conv2d(8, 8, 3, groups=4)).eval()


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_untouched_model():
    model = make_model()
    s = fastq.summary(model)
    assert isinstance(s, Summary)
    assert s.total_bytes == s.original_bytes == param_bytes(model)
    assert s.compression_ratio == 1.0
    assert [r.name for r in s.layers] == ["0", "1", "3", "4", "5"]  # GELU owns no tensors: no row
    assert s.layers[0].type == "Linear" and s.layers[0].shape == (512, 256) and s.layers[0].bits == 32
    assert s.notes == [] and s.quantized == []


@pytest.mark.parametrize("cfg", [fastq.Int8DynamicConfig(), fastq.Int8WeightOnlyConfig(group_size=64)],
                         ids=["w8a8", "wo_g64"])
def test_quantized_model_totals_and_ratio(cfg):
    model = make_model()
    original = param_bytes(model)
    with torch.no_grad():  # a pruned float layer: its sparsity must survive quantization
        model[0].weight[:, :64] = 0
    fastq.quantize_(model, cfg)
    s = fastq.summary(model)
    rows = {r.name: r for r in s.layers}
    assert rows["0"].type == "QuantLinear" and rows["0"].bits == 8 and rows["0"].shape == (512, 256)
    assert rows["0"].bytes == model[0].weight_bytes() and rows["0"].original_bytes == 4 * (512 * 256 + 512)
    assert rows["0"].sparsity >= 0.25  # the pruned quarter, plus codes that round to zero
    assert rows["0"].quantized and rows["3"].quantized and not rows["4"].quantized
    assert rows["4"].type == "Linear" and "too small" in rows["4"].note
    assert rows["5"].type == "Conv2d" and "groups=4" in rows["5"].note
    assert s.original_bytes == original
    expected_total = (model[0].weight_bytes() + model[3].weight_bytes()
                      + param_bytes(model[1]) + param_bytes(model[4]) + param_bytes(model[5]))
    assert s.total_bytes == expected_total
    assert s.compression_ratio == pytest.approx(original / expected_total)
    q_orig = sum(r.original_bytes for r in s.quantized)
    q_now = sum(r.bytes for r in s.quantized)
    assert 3.5 < q_orig / q_now < 4.0  # int8 + fp32 scales/bias: just under 4x on these layers
    assert dict(s.notes).keys() == {"4", "5"}


def test_str_is_a_readable_table():
    model = make_model()
    fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=["3"])
    text = str(fastq.summary(model))
    lines = text.splitlines()
    assert lines[0].split() == ["name", "type", "shape", "bits", "bpw", "bytes", "ratio", "sparsity", "detail"]
    assert any(line.startswith("0 ") and "QuantLinear" in line and "512x256" in line and "w8a8 per_channel" in line
               for line in lines)
    assert "compression ratio" in text and "quantized layers: 1" in text
    assert "notes (left as they were):" in text
    assert "  3: excluded by skip=" in text
    assert "  5: grouped convolution (groups=4) is not supported" in text
    assert "KiB" in text


def test_note_is_cleared_when_a_later_call_quantizes_the_layer():
    model = make_model()
    fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=["3"])
    assert "3" in dict(fastq.summary(model).notes)
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    assert "3" not in dict(fastq.summary(model).notes)
    assert type(model[3]).__name__ == "QuantLinear"


def test_summary_rejects_non_modules():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        fastq.summary({"weight": torch.zeros(3)})
