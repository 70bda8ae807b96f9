"""train_: learning on real digits, the rates it sets, clipping, early stopping with restore, checkpoint
and exact resume, non-finite losses and bad input."""

import copy

import pytest
import torch
from torch import nn

import fastq
from fastq.train import CHECKPOINT_FILE, TrainConfig, train_


def mlp(dropout=0.0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def accuracy(model, held):
    with torch.no_grad():
        return float((model(held[0]).argmax(-1) == held[1]).float().mean())


def test_training_learns_and_sets_the_scheduled_rates(digits):
    batches, held = digits
    model = mlp()
    before = accuracy(model, held)
    h = train_(model, batches, ce, steps=40, lr=1e-2, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)
    cfg = TrainConfig(steps=40, lr=1e-2, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)
    assert h.lrs == pytest.approx([1e-2 * cfg.lr_factor(s) for s in range(40)], rel=1e-12)
    assert h.steps == 40 and h.losses[-1] < 0.5 * h.losses[0]
    assert accuracy(model, held) > max(0.85, before + 0.5)
    assert model.training  # mode restored (nn.Module default: train)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_clipping_bounds_the_applied_norm(digits):
    norms = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            norms.append(float(torch.norm(torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]]))))
            return super().step(closure)

    model = mlp()
    train_(model, digits[0], ce, steps=5, optimizer=Recording(model.parameters(), lr=1.0), max_grad_norm=0.05)
    assert max(norms) <= 0.05 * (1 + 1e-5) and len(norms) == 5
    norms.clear()
    model = mlp()
    train_(model, digits[0], ce, steps=2, optimizer=Recording(model.parameters(), lr=1e-3))
    assert max(norms) > 0.05  # without clipping the norms are larger: the bound above was the clip


def test_early_stopping_restores_the_best_weights(digits):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best after step 4 (the 2nd evaluation), then no gain twice
    saved = {}

    def evaluate(model):
        s = next(scores)
        saved[s] = copy.deepcopy(model.state_dict())
        return s

    model = mlp()
    h = train_(model, digits[0], ce, steps=10, lr=1e-2, evaluate=evaluate, eval_every=2, patience=2)
    assert h.stopped_early and h.steps == 8 and [e[0] for e in h.evals] == [2, 4, 6, 8]
    assert h.best_step == 4 and h.best_metric == 0.7
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[0.7][k]), k


def test_lower_is_better_and_min_delta(digits):
    scores = iter([1.0, 0.995, 0.99, 0.5])
    h = train_(mlp(), digits[0], ce, steps=8, lr=1e-2, evaluate=lambda m: next(scores), eval_every=2, patience=2,
               higher_is_better=False, min_delta=0.02, restore_best=False)
    assert h.stopped_early and h.best_step == 2 and h.steps == 6  # 0.995 and 0.99 are within min_delta


def test_checkpoint_resume_is_exact(digits, tmp_path):
    batches = digits[0][:5]
    kwargs = dict(steps=12, lr=5e-3, schedule="cosine", warmup_steps=2, max_grad_norm=1.0)
    straight = mlp(dropout=0.2)
    torch.manual_seed(1)
    h_straight = train_(straight, batches, ce, **kwargs)

    class Stop(Exception):
        pass

    def crash(model, n=[0]):
        n[0] += 1
        if n[0] == 7:
            raise Stop

    interrupted = mlp(dropout=0.2)
    torch.manual_seed(1)
    with pytest.raises(Stop):
        train_(interrupted, batches, ce, after_step=crash, checkpoint_dir=str(tmp_path), checkpoint_every=3, **kwargs)
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    resumed = mlp(dropout=0.2)  # a fresh process would rebuild the model and optimizer
    h = train_(resumed, batches, ce, checkpoint_dir=str(tmp_path), checkpoint_every=3, **kwargs)
    assert h.resumed_from == 6 and h.losses == h_straight.losses and h.lrs == h_straight.lrs
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ValueError, match="written for 12 steps"):
        train_(mlp(), batches, ce, steps=20, lr=1e-3, checkpoint_dir=str(tmp_path))


def test_non_finite_loss_stops_before_the_step(digits):
    model = mlp()
    w = model[0].weight.detach().clone()
    bad = [(torch.full((4, 64), float("nan")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(FloatingPointError, match="step 0"):
        train_(model, bad, ce, steps=3, lr=1e-2)
    assert torch.equal(model[0].weight, w)


def test_bad_input(digits, tmp_path):
    m = mlp()
    with pytest.raises(ValueError, match="pass lr="):
        train_(m, digits[0], ce, steps=1)
    with pytest.raises(ValueError, match="not both"):
        train_(m, digits[0], ce, steps=1, lr=1e-3, optimizer=torch.optim.SGD(m.parameters(), lr=1.0))
    with pytest.raises(ValueError, match="need evaluate"):
        train_(m, digits[0], ce, steps=1, lr=1e-3, eval_every=1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_(mlp().requires_grad_(False), digits[0], ce, steps=1, lr=1e-3)
    with pytest.raises(TypeError, match="scalar tensor"):
        train_(m, digits[0], lambda model, b: model(b[0]), steps=1, lr=1e-3)
    with pytest.raises(TypeError, match="not both"):
        train_(m, digits[0], ce, TrainConfig(steps=1, lr=1e-3), steps=2)
    with pytest.raises(ValueError, match="batches is empty"):
        train_(m, [], ce, steps=1, lr=1e-3)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        train_(m, digits[0], ce, steps=1, lr=1e-3, checkpoint_dir=str(tmp_path))


def test_exported():
    assert fastq.train_ is train_ and fastq.TrainConfig is TrainConfig
