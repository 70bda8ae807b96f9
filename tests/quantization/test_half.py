"""Float16Config / BFloat16Config: half-precision weight storage, the compute-dtype choice, summary,
save/load, and layers that cannot be stored (fp16 overflow) left float with a note."""

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import HalfConv2d, HalfLinear
from fastq.nn import half as half_mod

CONFIGS = {"float16": fastq.Float16Config(), "bfloat16": fastq.BFloat16Config()}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 16))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("native_bf16", [False, True])
def test_outputs_match_the_rounded_weights(name, native_bf16, monkeypatch):
    monkeypatch.setattr(half_mod, "cpu_has_bf16", lambda: native_bf16)
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    ref = net(x).detach()
    q = fastq.quantize_(net, CONFIGS[name])
    assert isinstance(q[0], HalfConv2d) and isinstance(q[2], HalfConv2d) and isinstance(q[4], HalfLinear)
    assert q[4].weight.dtype == getattr(torch, name) and q[4].bias.dtype == torch.float32
    y = q(x)
    assert y.dtype == torch.float32
    bf16_compute = name == "bfloat16" and native_bf16
    # float32 compute: only the weight rounding (2^-11 / 2^-8 relative); bf16 compute also rounds x
    tol = {"float16": 2e-3, "bfloat16": 1.5e-2 if bf16_compute else 8e-3}[name]
    assert float((y - ref).norm() / ref.norm()) < tol
    lin = q[4]
    xl = torch.randn(5, lin.in_features)
    w = lin.weight.float()
    expected = (xl.bfloat16().float() if bf16_compute else xl) @ w.T + lin.bias
    torch.testing.assert_close(lin(xl), expected, rtol=2e-2 if bf16_compute else 1e-5, atol=1e-2 if bf16_compute else 1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_summary_and_save_load(name, tmp_path):
    q = fastq.quantize_(_net(), CONFIGS[name])
    rows = {r.name: r for r in fastq.summary(q).layers}
    assert rows["4"].bits == 16 and rows["4"].detail == f"{name} per_tensor"
    assert rows["4"].bytes * 2 - 4 * 16 == rows["4"].original_bytes  # weight halves, float32 bias stays
    fastq.save(q, tmp_path)
    loaded = fastq.load(tmp_path, base_model=_net)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), q(x))
    assert loaded[4].weight.dtype == getattr(torch, name)


def test_dtype_casts_keep_the_stored_weight():
    q = fastq.quantize_(_net(), fastq.BFloat16Config())
    q.half()
    assert q[4].weight.dtype == torch.bfloat16 and q[4].bias.dtype == torch.float32
    assert q(torch.randn(1, 3, 8, 8, dtype=torch.float16)).dtype == torch.float16


def test_float16_overflow_is_skipped_with_a_note():
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        net[1].weight[0, 0] = 1e6
    fastq.quantize_(net, fastq.Float16Config())
    assert isinstance(net[0], HalfLinear) and type(net[1]) is nn.Linear
    assert "65504" in dict(fastq.summary(net).notes)["1"]
    fastq.quantize_(net, fastq.BFloat16Config())  # bf16 has float32's range
    assert isinstance(net[1], HalfLinear)


def test_bad_input():
    with pytest.raises(ValueError, match="dtype"):
        HalfLinear(4, 4, dtype="float8")
    lin = HalfLinear(4, 4)
    with pytest.raises(ValueError, match="in_features"):
        lin(torch.randn(2, 5))
    with pytest.raises(TypeError, match="float"):
        lin(torch.ones(2, 4, dtype=torch.int64))
    net = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    fastq.quantize_(net, fastq.BFloat16Config())
    assert type(net[0]) is nn.Linear and "NaN" in dict(fastq.summary(net).notes)["0"]
