"""IntxEmbedding and tied heads: lookups equal the dequantized rows, the op only reads the rows it
needs, a head tied to the embedding shares one packed buffer (in memory, in summary, on disk and
after loading), output dtype follows model dtype casts, bad input raises."""

import os

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import IntxEmbedding, IntxLinear, UnsupportedLayerError
from fastq.ops import _library, reference


class TinyLM(nn.Module):
    """Embedding -> MLP -> head tied to the embedding (as in SmolLM2 / Gemma)."""

    def __init__(self, vocab: int = 300, dim: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(self.embed(ids)))))


def tiny(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().eval()


@pytest.mark.parametrize("bits,group,sym", [(8, None, True), (4, 32, True), (4, None, False), (2, 16, False)])
def test_lookup_equals_dequantized_rows(bits, group, sym):
    emb = nn.Embedding(77, 64)
    q = IntxEmbedding.from_float(emb, fastq.IntxEmbeddingConfig(bits, group, sym))
    ids = torch.tensor([[0, 76, 15, 16], [17, 3, 3, 40]])
    out = q(ids)
    assert out.shape == (2, 4, 64) and out.dtype == torch.float32
    assert torch.equal(out, q.dequantized_weight()[ids])
    rel = (q.dequantized_weight() - emb.weight).norm() / emb.weight.norm()
    assert rel < {8: 0.01, 4: 0.15, 2: 0.6}[bits]
    assert torch.equal(q(ids.to(torch.int32)), out)


def test_tied_head_shares_one_buffer_and_round_trips(tmp_path):
    model = tiny()
    ids = torch.randint(0, 300, (2, 9))
    ref = model(ids)
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    assert isinstance(model.embed, IntxEmbedding) and isinstance(model.head, IntxLinear)
    assert isinstance(model.up, nn.Linear)  # the embedding config leaves untied linears alone, without notes
    assert not fastq.summary(model).notes
    assert model.head.weight_packed is model.embed.weight_packed and model.head.tied
    fastq.quantize_(model, fastq.Int4WeightOnlyConfig(group_size=32))
    y = model(ids)
    assert torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0) > 0.99

    s = fastq.summary(model)
    rows = {r.name: r for r in s.layers}
    assert rows["head"].bytes == 0 and rows["head"].bits_per_weight is None
    assert rows["embed"].bytes == model.embed.weight_packed.numel()
    assert 8.5 < rows["embed"].bits_per_weight < 8.7  # 8 + 32 / 64 (scales) + the 300 -> 304 row padding
    float_bytes = 4 * sum(p.numel() for p in tiny().parameters())  # parameters() counts the tied weight once
    assert s.original_bytes == float_bytes and s.compression_ratio > 3.5

    fastq.save(model, tmp_path)
    size = os.path.getsize(tmp_path / "model.safetensors")
    assert size < model.embed.weight_packed.numel() * 1.5 + 64 * 1024  # the shared buffer is written once
    loaded = fastq.load(tmp_path, base_model=TinyLM)
    assert loaded.head.weight_packed is loaded.embed.weight_packed
    assert torch.equal(loaded(ids), y)


def test_tied_pair_order_and_filters():
    # the head converts only when its embedding is converted too
    model = tiny()
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=4, group_size=32), skip=["embed"])
    assert type(model.head) is nn.Linear and type(model.embed) is nn.Embedding
    # a linear config reached first quantizes the head as an untied copy
    model = tiny()
    fastq.quantize_(model, fastq.Int4WeightOnlyConfig(group_size=32))
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    assert isinstance(model.head, IntxLinear) and not model.head.tied
    assert model.head.weight_packed is not model.embed.weight_packed


def test_two_linears_sharing_a_weight_share_the_packed_buffer():
    a = nn.Linear(64, 32)
    b = nn.Linear(64, 32)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), nn.Linear(32, 64), b)
    fastq.quantize_(model, fastq.Int4DynamicConfig(group_size=32))
    assert model[3].weight_packed is model[0].weight_packed and model[3].tied and not model[0].tied


def test_output_dtype_follows_model_casts():
    model = tiny()
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    ids = torch.tensor([1, 2, 3])
    model.to(torch.bfloat16)
    assert model.embed(ids).dtype == torch.bfloat16
    model.float()
    assert model.embed(ids).dtype == torch.float32
    assert model.embed.init_kwargs()["dtype"] == "float32"
    half = nn.Embedding(10, 16).to(torch.float16)
    assert IntxEmbedding.from_float(half, fastq.IntxEmbeddingConfig()).out_dtype == torch.float16


def test_op_reads_only_selected_rows_and_checks_indices():
    emb = nn.Embedding(1000, 32)
    q = IntxEmbedding.from_float(emb, fastq.IntxEmbeddingConfig(bits=4, group_size=16))
    ids = torch.tensor([999, 0, 500])
    args = (q.weight_packed, 1000, 32, 2, 4, False, torch.float32)
    assert torch.equal(reference.intx_embedding(ids, *args), q.dequantized_weight()[ids])
    with pytest.raises(IndexError, match="out of range"):
        _library.intx_embedding(torch.tensor([1000]), *args)
    with pytest.raises(IndexError, match="out of range"):
        q(torch.tensor([-1]))
    with pytest.raises(TypeError, match="int64 or int32"):
        q(torch.tensor([1.0]))
    torch.library.opcheck(_library.intx_embedding, (ids, *args))
    torch.library.opcheck(_library.intx_embedding, (ids.reshape(3, 1), *args[:-1], torch.bfloat16))


def test_unsupported_embeddings_are_skipped_with_reasons():
    model = nn.Sequential(nn.Embedding(10, 12), nn.Embedding(10, 16, max_norm=1.0), nn.Embedding(10, 16))
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=4))
    notes = dict(fastq.summary(model).notes)
    assert "K=12 is not a multiple of 8" in notes["0"]
    assert "max_norm" in notes["1"]
    assert isinstance(model[2], IntxEmbedding)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    fastq.quantize_(model, fastq.IntxEmbeddingConfig(bits=8))
    assert "NaN or Inf" in dict(fastq.summary(model).notes)["0"]
    with pytest.raises(UnsupportedLayerError):
        IntxEmbedding(10, 12, bits=4)
