"""smooth_quant_: folds where they are exact (pre-norm Llama blocks, v -> o, up -> down), scale vectors
where they are not (BERT's post-norm residuals, after GELU), outputs preserved, all-or-nothing."""

import copy
import importlib.util

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import SmoothedLinear
from fastq.quantization import CalibrationError

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")


def _tiny(kind):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=True)
        model = LlamaForCausalLM(cfg)
    else:
        model = BertModel(BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=64))
    with torch.no_grad():  # outlier channels, as trained LLMs have
        for m in model.modules():
            if type(m).__name__.endswith(("RMSNorm", "LayerNorm")):
                m.weight[5] = 30.0
    return model.eval()


def _ids(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 100, (2, 12), generator=g) for _ in range(n)]


def _out(model, ids):
    with torch.no_grad():
        return model(ids)[0]


@needs_transformers
def test_llama_folds_into_norms_and_up_proj():
    model = _tiny("llama")
    batches = _ids()
    ref = _out(model, batches[1])
    report = fastq.smooth_quant_(model, batches, alpha=0.5, progress=False)
    where = {names[0].split(".", 3)[-1]: w for names, w in report.groups if names[0].startswith("model.layers.0.")}
    assert where["self_attn.q_proj"] == "folded into model.layers.0.input_layernorm"
    assert where["mlp.gate_proj"] == "folded into model.layers.0.post_attention_layernorm"
    assert where["mlp.down_proj"] == "folded into model.layers.0.mlp.up_proj"
    assert where["self_attn.o_proj"] == "SmoothedLinear"  # GQA: v_proj has fewer channels than o_proj's input
    assert ("lm_head", "its weight is shared with another module (tied)") in report.skipped
    assert isinstance(model.model.layers[0].self_attn.o_proj, SmoothedLinear)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(_out(model, batches[1]), ref, rtol=1e-4, atol=1e-4)
    assert "folded into" in str(report)


@needs_transformers
def test_bert_post_norm_residuals_are_not_folded():
    model = _tiny("bert")
    batches = _ids()
    ref = _out(model, batches[1])
    report = fastq.smooth_quant_(model, batches, alpha=0.8, progress=False)
    where = {names[0]: w for names, w in report.groups}
    layer = "encoder.layer.0."
    # The LayerNorm output also feeds the residual: folding would change the model, so it is kept as s.
    assert where[layer + "attention.self.query"] == "SmoothedLinear"
    assert where[layer + "intermediate.dense"] == "SmoothedLinear"
    assert where[layer + "output.dense"] == "SmoothedLinear"  # after GELU
    assert where[layer + "attention.output.dense"] == f"folded into {layer}attention.self.value.linear"
    torch.testing.assert_close(_out(model, batches[1]), ref, rtol=1e-4, atol=1e-4)


@needs_transformers
def test_fold_false_keeps_every_scale_in_the_modules():
    model = _tiny("llama")
    report = fastq.smooth_quant_(model, _ids(1), alpha=0.5, fold=False, progress=False)
    assert all(w == "SmoothedLinear" for _, w in report.groups)


@needs_transformers
def test_smoothing_then_static_w8a8_beats_plain_static():
    model, batches = _tiny("llama"), _ids(4)
    ref = _out(model, batches[0])
    errs = {}
    for alpha in (None, 0.5):
        m = copy.deepcopy(model)
        cfg = fastq.Int8StaticConfig(observer="minmax", smooth_alpha=alpha)
        fastq.calibrate(m, batches, cfg, progress=False)
        fastq.quantize_(m, cfg, filter_fn=lambda mod, name: "lm_head" not in name)
        errs[alpha] = float((_out(m, batches[0]) - ref).norm() / ref.norm())
    assert errs[0.5] < errs[None]


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan"), "0.5", True, None])
def test_alpha_outside_unit_interval_is_refused(alpha):
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        fastq.smooth_quant_(model, [torch.randn(2, 8)], alpha=alpha)


def test_bad_batches_change_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationError, match="empty"):
        fastq.smooth_quant_(model, [], alpha=0.5)
    bad = torch.randn(3, 16)
    bad[1, 2] = float("nan")
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        fastq.smooth_quant_(model, [torch.randn(3, 16), bad], alpha=0.5, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [type(m) for m in model] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]


def test_an_error_during_folding_restores_everything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    state = copy.deepcopy(model.state_dict())
    calls = {"n": 0}

    def forward(m, b):
        calls["n"] += 1
        if calls["n"] == 4:  # trace, statistics, the all-wrapped check, then the first fold check
            raise RuntimeError("boom")
        return m(b)

    with pytest.raises(RuntimeError, match="boom"):
        fastq.smooth_quant_(model, [torch.randn(3, 16)], alpha=0.5, forward_fn=forward, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [type(m) for m in model] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]


def test_nothing_to_smooth():
    with pytest.raises(ValueError, match="no nn.Linear"):
        fastq.smooth_quant_(nn.Sequential(nn.ReLU()), [torch.randn(2, 3)], alpha=0.5)


def test_smoothed_linear_module():
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    s = torch.rand(8) + 0.5
    w = SmoothedLinear.wrap(lin, s)
    x = torch.randn(3, 8)
    torch.testing.assert_close(w(x), lin(x / s))
    w.to(torch.bfloat16)
    assert w.smooth.dtype == torch.float32 and w(x.bfloat16()).dtype == torch.bfloat16
    assert SmoothedLinear(**w.init_kwargs()).smooth.shape == (8,)
