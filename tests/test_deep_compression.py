"""Deep Compression at small scale (seconds): train an MLP on scikit-learn's digits, prune it
(fastq.prune_), share its weights by k-means with the pruned zeros kept (sparse relative-index
storage), fine-tune the centroids with fastq.distill_, and check accuracy and size at each stage.
The full Fashion-MNIST run is bench/deep_compression.py.

Thresholds: on 397 held-out digits one image is 0.25 points; the fp32 MLP reaches ~97%. Pruning
to 80% and sharing 16 values per layer without retraining may cost a few points; fine-tuning the
centroids must bring the model back to within 2 points of fp32 (measured: within 1) while the
stored model is >= 10x smaller than fp32 (measured ~13x: 20% of the weights at 8 bits each plus
fillers, codebooks and biases)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastq

sklearn = pytest.importorskip("sklearn.datasets")


def _data():
    d = sklearn.load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(model, x, y, steps: int, lr: float) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


@torch.no_grad()
def _acc(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean()) * 100


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is faster, and immune to a straggling second thread on a loaded machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_prune_share_finetune_pipeline(one_thread):
    torch.manual_seed(0)
    x, y, xt, yt = _data()
    fp32 = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    _train(fp32, x, y, 250, 3e-3)
    acc_fp32, bytes_fp32 = _acc(fp32, xt, yt), fastq.summary(fp32).total_bytes
    assert acc_fp32 > 93

    pruned = copy.deepcopy(fp32)
    for s in (0.5, 0.8):
        fastq.prune_(pruned, fastq.PruneConfig(sparsity=s))
        _train(pruned, x, y, 80, 1e-3)
    assert _acc(pruned, xt, yt) > acc_fp32 - 2

    shared = copy.deepcopy(pruned)
    fastq.quantize_(shared, fastq.WeightSharingConfig(clusters=16, scope="layer", init="linear", method="lloyd",
                                                      storage="sparse"))
    layers = [m for m in shared.modules() if isinstance(m, fastq.SharedWeightLinear)]
    assert len(layers) == 3 and all(m.storage == "sparse" and m.zero_entry for m in layers)
    for m, p in zip(layers, [m for m in pruned.modules() if isinstance(m, nn.Linear)]):
        assert torch.equal(m.dequantized_weight() == 0, p.weight == 0)  # the pruned zeros, exactly
    acc_shared = _acc(shared, xt, yt)

    fastq.train_centroids_(shared)
    hist = fastq.distill_(shared, pruned, [x[i:i + 200] for i in range(0, 1400, 200)], loss="kl", steps=80,
                          lr=1e-3, train_mode=False)
    assert hist.mean(60) <= hist.mean(0, 20)
    fastq.train_centroids_(shared, False)
    acc_tuned = _acc(shared, xt, yt)
    ratio = bytes_fp32 / fastq.summary(shared).total_bytes
    assert acc_tuned >= acc_fp32 - 2, (acc_fp32, acc_shared, acc_tuned)
    assert acc_tuned >= acc_shared - 0.5
    assert ratio >= 10, ratio
    for m, p in zip(layers, [m for m in pruned.modules() if isinstance(m, nn.Linear)]):
        assert torch.equal(m.dequantized_weight() == 0, p.weight == 0)  # still exactly the pruned zeros
