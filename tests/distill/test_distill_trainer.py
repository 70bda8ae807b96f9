"""distill_: recovery of a pruned MLP on real digits, the mask contract, frozen teacher, bad input."""

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import fastq
from fastq.distill import DistillConfig, distill_
from fastq.pruning import PruneConfig, prune_


@pytest.fixture(scope="module")
def digits():
    """(x_train, y_train, x_test, y_test) float32 / int64, the 1797 real 8x8 digits split 1400/397."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def teacher(digits):
    """A 64-128-64-10 MLP trained on the digits (about 97% test accuracy)."""
    x, y, xt, yt = digits
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    assert _accuracy(model, xt, yt) > 0.9
    return model


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def _batches(x, size=128):
    return [x[i:i + size] for i in range(0, len(x), size)]


def _linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _pruned_student(teacher, config):
    student = copy.deepcopy(teacher)
    prune_(student, config)
    return student


def _hidden(model, x):
    """Hidden states after each ReLU and the logits, for the "mse" loss."""
    outs, h = [], x
    for layer in model:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            outs.append(h)
    return outs + [h]


CASES = {
    "unstructured75-kl": (PruneConfig(sparsity=0.75), dict(loss="kl", temperature=2.0)),
    "unstructured90-cosine": (PruneConfig(sparsity=0.9), dict(loss="cosine")),
    "2:4-mse-hidden": (PruneConfig(pattern="2:4"), dict(loss="mse", embed_fn=_hidden)),
    "block2x4-60-kl": (PruneConfig(sparsity=0.6, pattern=(2, 4)), dict(loss="kl")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_distilling_a_pruned_mlp_lowers_the_loss_and_keeps_masks(digits, teacher, case):
    config, kwargs = CASES[case]
    x, _, xt, yt = digits
    student = _pruned_student(teacher, config)
    masks = [m.weight_mask.clone() for m in _linears(student)]
    teacher_state = copy.deepcopy(teacher.state_dict())
    acc_before = _accuracy(student, xt, yt)

    hist = distill_(student, teacher, _batches(x), steps=60, lr=3e-3, **kwargs)

    assert len(hist.losses) == 60 and hist.config.loss == kwargs["loss"]
    assert hist.mean(-10) < 0.5 * hist.mean(0, 5), hist.losses
    for m, mask in zip(_linears(student), masks):
        assert torch.equal(m.weight_mask, mask)  # masks unchanged
        assert bool((m.weight.detach()[~mask] == 0).all())  # pruned weights exactly zero
        assert bool((m.weight.detach()[mask] != 0).any())
    for k, v in teacher.state_dict().items():  # the teacher is frozen
        assert torch.equal(v, teacher_state[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    # Matching the teacher on held-out digits does not make the student worse at the task.
    assert _accuracy(student, xt, yt) >= acc_before - 0.01


def test_stale_optimizer_state_cannot_revive_pruned_weights(digits, teacher):
    x = digits[0]
    student = copy.deepcopy(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):  # momentum buffers from the dense model, non-zero at weights pruned next
        opt.zero_grad()
        student(x[:64]).square().mean().backward()
        opt.step()
    prune_(student, PruneConfig(sparsity=0.8))
    masks = [m.weight_mask.clone() for m in _linears(student)]
    distill_(student, teacher, _batches(x), loss="kl", steps=5, optimizer=opt)
    for m, mask in zip(_linears(student), masks):
        assert bool((m.weight.detach()[~mask] == 0).all())


def test_dense_student_and_modes_restored(digits, teacher):
    x = digits[0]
    student = nn.Sequential(nn.Linear(64, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 10))
    student.train()
    teacher.train()
    try:
        hist = distill_(student, teacher, _batches(x, 256), loss="kl", steps=40, lr=1e-2, train_mode=False)
    finally:
        assert student.training and teacher.training
        teacher.eval()
    assert hist.final < hist.initial


def test_batches_are_cycled_and_embed_fn_is_used(teacher):
    calls = []

    def embed(model, batch):
        calls.append(model)
        return model(batch["x"])

    x = torch.rand(20, 64)
    student = copy.deepcopy(teacher)
    hist = distill_(student, teacher, [{"x": x[:10]}, {"x": x[10:]}], loss="mse", steps=5, lr=1e-3, embed_fn=embed)
    assert len(hist.losses) == 5
    assert calls[:2] == [teacher, student] and len(calls) == 10
    assert hist.initial == 0.0  # a copy of the teacher starts at zero distance


def test_bad_input_raises_clearly(teacher):
    x = [torch.rand(8, 64)]
    s = copy.deepcopy(teacher)
    with pytest.raises(ValueError, match=r"unknown distillation loss 'hinton'.*cosine"):
        distill_(s, teacher, x, loss="hinton", steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="steps"):
        distill_(s, teacher, x, steps=0, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        distill_(s, teacher, x, steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="pass lr="):
        distill_(s, teacher, x, steps=1)
    with pytest.raises(ValueError, match="not both"):
        distill_(s, teacher, x, steps=1, lr=1e-3, optimizer=torch.optim.SGD(s.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="same module"):
        distill_(teacher, teacher, x, steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="share parameters"):
        distill_(nn.Sequential(teacher[0]), teacher, x, steps=1, lr=1e-3)
    with pytest.raises(ValueError, match=r"student shape \(8, 5\) != teacher shape \(8, 10\)"):
        distill_(nn.Linear(64, 5), teacher, x, loss="kl", steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="batches is empty"):
        distill_(s, teacher, [], steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="ran out after 2 batches"):
        distill_(s, teacher, iter([x[0], x[0]]), steps=3, lr=1e-3)
    with pytest.raises(TypeError, match="embed_fn"):
        distill_(s, teacher, x, steps=1, lr=1e-3, embed_fn=lambda m, b: {"out": m(b)})
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(loss="kl", temperature=0.0)
    frozen = copy.deepcopy(teacher).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        distill_(frozen, teacher, x, steps=1, lr=1e-3)


def test_non_finite_loss_stops_before_the_step(teacher):
    s = copy.deepcopy(teacher)
    w0 = s[0].weight.detach().clone()
    with pytest.raises(FloatingPointError, match="step 0"):
        distill_(s, teacher, [torch.full((4, 64), float("nan"))], loss="mse", steps=2, lr=1e-3)
    assert torch.equal(s[0].weight.detach(), w0)


def test_exported_at_top_level():
    assert fastq.distill_ is distill_
