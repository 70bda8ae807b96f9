"""The fine-tunes of other features run on ``train_`` unchanged: quantization-aware training
(``prepare_qat_`` -> ``train_`` -> ``convert_``, including checkpoint and exact resume) and codebook
centroid fine-tuning (``train_centroids_`` -> ``train_``), on real digits."""

import pytest
import torch
from torch import nn

import fastq
from fastq.train import train_


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def accuracy(model, held):
    with torch.no_grad():
        return float((model(held[0]).argmax(-1) == held[1]).float().mean())


def train_loss(model, batches):
    with torch.no_grad():
        return sum(float(ce(model, b)) for b in batches) / len(batches)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    train_(model, digits[0], ce, steps=60, lr=1e-2, schedule="cosine")
    return model


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_qat_trains_with_train_and_converts_exactly(digits, trained, tmp_path):
    batches, held = digits
    model = _copy(trained)
    fastq.prepare_qat_(model, fastq.Int8DynamicConfig())
    w0 = model[0].weight.detach().clone()
    h = train_(model, batches, ce, steps=12, lr=1e-3, schedule="cosine", max_grad_norm=1.0,
               checkpoint_dir=str(tmp_path), checkpoint_every=4)
    assert all(torch.isfinite(torch.tensor(h.losses)))
    assert not torch.equal(model[0].weight, w0), "the STE gradients reached the float weights"
    qat_out = model.eval()(held[0]).detach()
    w_trained = model[0].weight.detach().clone()
    fastq.convert_(model)
    assert isinstance(model[0], fastq.nn.QuantLinear)
    assert torch.equal(model(held[0]), qat_out), "convert_ is bit-exact with the QAT forward"
    assert accuracy(model, held) >= accuracy(trained, held) - 0.03

    resumed = _copy(trained)  # a fresh process: same preparation, then resume from the checkpoint
    fastq.prepare_qat_(resumed, fastq.Int8DynamicConfig())
    h2 = train_(resumed, batches, ce, steps=12, lr=1e-3, schedule="cosine", max_grad_norm=1.0,
                checkpoint_dir=str(tmp_path), checkpoint_every=4)
    assert h2.resumed_from == 12 and h2.losses == h.losses
    assert torch.equal(resumed[0].weight, w_trained)


def test_centroid_fine_tuning_trains_with_train(digits, trained):
    batches, held = digits
    model = _copy(trained)
    fastq.quantize_(model, fastq.WeightSharingConfig(clusters=4, scope="row", method="lloyd"))
    layer = model[0]
    assert isinstance(layer, fastq.nn.SharedWeightLinear)
    codes = layer.int_codes().clone()
    before = train_loss(model, batches)
    fastq.train_centroids_(model)
    h = train_(model, batches, ce, steps=30, lr=1e-3, schedule="cosine")
    assert h.losses[-1] < h.losses[0]
    fastq.train_centroids_(model, False)
    assert torch.equal(layer.int_codes(), codes), "only the shared values train"
    assert train_loss(model, batches) < 0.97 * before  # the kernels now run the fine-tuned tables
    calls = fastq.native_calls("codebook_linear", "cpu")
    model(held[0])
    assert fastq.native_calls("codebook_linear", "cpu") > calls
