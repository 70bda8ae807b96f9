"""SharedWeightLinear / SharedWeightConv2d: equal to the float layer with the dequantized weight for
every codebook config (kernel vs F.linear within float32 summation error), save/load and
init_kwargs round trips, torch.compile(fullgraph) and torch.export, centroid fine-tuning (each
centroid's gradient is exactly the sum of its members' gradients; pruned zeros stay 0; usable from
distill_), Deep Compression's sparse relative-index storage, dtype conversions, bad input, and the
summary's bits per weight and weight-sharing ratio."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastq
from fastq.nn.codebook import relative_decode, relative_encode

CONFIGS = {
    "kmeans-row": fastq.WeightSharingConfig(clusters=16),
    "kmeans-layer-2bit": fastq.WeightSharingConfig(clusters=4, scope="layer"),
    "kmeans-group": fastq.WeightSharingConfig(clusters=8, scope="group", group_size=32, method="lloyd"),
    "kmeans-256": fastq.WeightSharingConfig(clusters=256, scope="layer", method="lloyd", init="density"),
    "binary": fastq.BinaryConfig(),
    "ternary": fastq.TernaryConfig(),
    "pow2": fastq.PowerOfTwoConfig(),
}


def _gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(hash(seed) % (1 << 31))


def _linear(k: int, n: int, gen: torch.Generator, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) / math.sqrt(k))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    return lin


def _close(y: torch.Tensor, want: torch.Tensor, k: int) -> None:
    # float32 sums of K products in different orders: (K + 8) 2^-24 relative to sum |x w| (the op
    # tests derive it); here against magnitudes ~sqrt(K), a generous absolute form of it
    tol = (k + 8) * 2.0 ** -24 * 4 * math.sqrt(k) * 8
    assert float((y.float() - want.float()).abs().max()) <= tol


@pytest.mark.parametrize("name", CONFIGS)
def test_linear_matches_dequantized_float(name):
    gen = _gen(name)
    lin = _linear(256, 40, gen)
    q = fastq.SharedWeightLinear.from_float(lin, CONFIGS[name])
    w = q.dequantized_weight()
    for m in (1, 9):
        x = torch.randn(3, m, 256, generator=gen)
        y = q(x)
        assert y.shape == (3, m, 40) and y.dtype == torch.float32
        _close(y, F.linear(x, w, q.bias), 256)
    assert q(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["kmeans-row", "binary", "pow2"])
def test_conv_matches_dequantized_float(name):
    gen = _gen(("conv", name))
    conv = nn.Conv2d(8, 24, 3, padding=1)
    q = fastq.SharedWeightConv2d.from_float(conv, CONFIGS[name])
    w = q.dequantized_weight().reshape(conv.weight.shape)
    x = torch.randn(2, 8, 9, 7, generator=gen)
    _close(q(x), F.conv2d(x, w, q.bias, padding=1), 72)
    assert q(x[0]).shape == (24, 9, 7)


def test_quantize_swaps_linear_and_conv():
    model = nn.Sequential(nn.Conv2d(4, 16, 3), nn.Flatten(), nn.Linear(16 * 36, 10))
    fastq.quantize_(model, fastq.TernaryConfig())
    assert isinstance(model[0], fastq.SharedWeightConv2d) and isinstance(model[2], fastq.SharedWeightLinear)
    assert model(torch.randn(2, 4, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", ["kmeans-row", "kmeans-group", "ternary"])
def test_save_load_round_trip(tmp_path, name):
    def build():
        return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 32), nn.Conv2d(2, 8, 3))

    model = build()
    fastq.quantize_(model, CONFIGS[name])
    x = torch.randn(5, 64)
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=build)
    assert type(loaded[0]) is type(model[0])
    assert torch.equal(loaded[:3](x), model[:3](x))
    twin = type(model[0])(**model[0].init_kwargs())
    twin.load_state_dict(model[0].state_dict())
    assert torch.equal(twin(x), model[0](x))


def test_sparse_storage_round_trip(tmp_path):
    def build():
        return nn.Sequential(nn.Linear(128, 64))

    model = build()
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.9))
    dense, sparse = copy.deepcopy(model), copy.deepcopy(model)
    fastq.quantize_(dense, fastq.WeightSharingConfig(clusters=16, scope="layer"))
    fastq.quantize_(sparse, fastq.WeightSharingConfig(clusters=16, scope="layer", storage="sparse"))
    assert sparse[0].storage == "sparse" and sparse[0].weight_bytes() < dense[0].weight_bytes() / 2
    assert torch.equal(sparse[0].dequantized_weight(), dense[0].dequantized_weight())
    x = torch.randn(4, 128)
    _close(sparse(x), dense(x), 128)
    fastq.save(sparse, tmp_path)
    assert torch.equal(fastq.load(tmp_path, base_model=build)(x), sparse(x))


def test_relative_indices_with_long_gaps():
    codes = torch.zeros(3, 100, dtype=torch.uint8)
    codes[0, 0], codes[0, 17], codes[1, 99], codes[2, 40] = 5, 3, 15, 1  # gaps of 1, 17, 182, 41
    gaps, packed, entries = relative_encode(codes, 4)
    assert entries == 4 + 1 + 11 + 2  # fillers every 16 positions of a long gap
    pos, vals = relative_decode(gaps, packed, entries, 4, 3, 100)
    back = torch.zeros(300, dtype=torch.int64)
    back[pos] = vals
    assert torch.equal(back.reshape(3, 100), codes.long())


def test_sparse_storage_needs_a_pruned_layer():
    model = nn.Sequential(nn.Linear(64, 32))
    fastq.quantize_(model, fastq.WeightSharingConfig(storage="sparse"))
    assert "needs a pruned layer" in dict(fastq.summary(model).notes)["0"]


@pytest.mark.parametrize("name", ["kmeans-row", "binary"])
def test_compile_and_export(name):
    gen = _gen(("compile", name))
    model = nn.Sequential(_linear(64, 48, gen), nn.ReLU(), nn.Conv2d(1, 4, 3))
    fastq.quantize_(model, CONFIGS[name])
    x = torch.randn(7, 64, generator=gen)
    head = model[:2]
    want = head(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(head, fullgraph=True)(x), want)
    assert torch.equal(torch.export.export(head, (x,)).module()(x), want)
    img = torch.randn(2, 1, 6, 6, generator=gen)
    assert torch.equal(torch.export.export(model[2], (img,)).module()(img), model[2](img))


# ---- centroid fine-tuning --------------------------------------------------------------------------

def test_centroid_gradient_is_the_sum_of_member_gradients():
    gen = _gen("grad")
    lin = _linear(64, 12, gen)
    q = fastq.SharedWeightLinear.from_float(lin, fastq.WeightSharingConfig(clusters=8, scope="group", group_size=32))
    fastq.train_centroids_(q)
    assert q.training_centroids and isinstance(q.codebook, nn.Parameter)
    x = torch.randn(5, 64, generator=gen)
    target = torch.randn(5, 12, generator=gen)
    # the dense-weight gradient of the same loss, by hand
    w = q.dequantized_weight().detach().requires_grad_(True)
    ((F.linear(x, w, q.bias) - target) ** 2).sum().backward()
    ((q(x) - target) ** 2).sum().backward()
    codes = q.int_codes().long().reshape(12, 2, 32)
    want = torch.zeros(12, 2, 16, dtype=torch.float64)  # 8 clusters in 4-bit codes: 16 entries
    want.scatter_add_(2, codes, w.grad.double().reshape(12, 2, 32))
    torch.testing.assert_close(q.codebook.grad.double(), want, rtol=1e-5, atol=1e-6)


def test_pruned_zero_entry_gets_no_gradient_and_stays_zero():
    gen = _gen("zero")
    model = nn.Sequential(_linear(64, 32, gen))
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.8))
    fastq.quantize_(model, fastq.WeightSharingConfig(clusters=8))
    fastq.train_centroids_(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 64, generator=gen)).pow(2).sum().backward()
        assert bool((model[0].codebook.grad[..., 0] == 0).all())
        opt.step()
    fastq.train_centroids_(model, False)
    assert not model[0].training_centroids and "codebook" in model[0]._buffers
    assert bool((model[0].codebook[..., 0] == 0).all())
    assert abs(model[0].weight_sparsity() - 0.8) < 0.02


def test_distill_trains_centroids():
    gen = _gen("distill")
    teacher = nn.Sequential(_linear(32, 64, gen), nn.ReLU(), _linear(64, 8, gen))
    student = copy.deepcopy(teacher)
    fastq.quantize_(student, fastq.WeightSharingConfig(clusters=4, scope="layer", method="lloyd"))
    keys = set(student.state_dict())
    fastq.train_centroids_(student)
    before = [m.codebook.detach().clone() for m in (student[0], student[2])]
    batches = [torch.randn(16, 32, generator=gen) for _ in range(4)]
    hist = fastq.distill_(student, teacher, batches, loss="mse", steps=40, lr=1e-2)
    assert hist.mean(30) < hist.mean(0, 10)
    fastq.train_centroids_(student, False)
    assert set(student.state_dict()) == keys
    assert not torch.equal(before[0], student[0].codebook)
    # back on the kernels, with the trained centroids
    x = torch.randn(3, 32, generator=gen)
    assert student[0].activation == "relu"  # quantize_ fused the ReLU; centroid training ran through it
    _close(student[0](x), F.relu(F.linear(x, student[0].dequantized_weight(), student[0].bias)), 32)


def test_train_centroids_leaves_fixed_grids_alone():
    model = nn.Sequential(nn.Linear(64, 32))
    fastq.quantize_(model, fastq.BinaryConfig())
    fastq.train_centroids_(model)
    assert not model[0].training_centroids
    with pytest.raises(TypeError, match="nn.Module"):
        fastq.train_centroids_("model")


# ---- conversions, bad input, summary ----------------------------------------------------------------

def test_half_keeps_tables_float32():
    model = nn.Sequential(nn.Linear(64, 32))
    fastq.quantize_(model, fastq.BinaryConfig())
    model.half()
    assert model[0].codebook.dtype == model[0].scale.dtype == model[0].bias.dtype == torch.float32
    assert model(torch.randn(2, 64).half()).dtype == torch.float16


def test_forward_bad_input():
    q = fastq.SharedWeightLinear.from_float(nn.Linear(64, 32), fastq.BinaryConfig())
    with pytest.raises(ValueError, match="K mismatch"):
        q(torch.randn(2, 63))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        q(torch.randint(0, 3, (2, 64)))
    with pytest.raises(ValueError, match="clusters must be in"):
        fastq.SharedWeightLinear(64, 32, bits=2, clusters=5)
    with pytest.raises(ValueError, match="codebook_rows must be 1"):
        fastq.SharedWeightLinear(64, 32, codebook_rows=7)


def test_summary_reports_bits_and_ratio():
    model = nn.Sequential(nn.Linear(512, 256, bias=False), nn.Linear(256, 10))
    fastq.quantize_(model, fastq.WeightSharingConfig(clusters=16, scope="layer"), filter_fn=lambda m, n: n == "0")
    s = fastq.summary(model)
    row = s.layers[0]
    n = 512 * 256
    assert row.compression_ratio == pytest.approx(n * 32 / (n * 4 + 16 * 32))  # the mission's r = nb / (n log2 k + k b)
    assert row.bits_per_weight == pytest.approx(8 * model[0].weight_bytes() / n)
    assert s.codebook_ratio == pytest.approx(row.compression_ratio)
    text = str(s)
    assert "bits/w" in text.splitlines()[0] and "weight sharing: r =" in text
