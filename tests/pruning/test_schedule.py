"""Schedules: the cubic formula, gradual pruning inside a training loop, and a real-data check."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastq.pruning import CubicSchedule, OneShot, PruneConfig, PruningScheduler, prune_


def test_cubic_schedule_follows_zhu_gupta():
    sch = CubicSchedule(end_step=50, initial_sparsity=0.1, begin_step=10, frequency=10)
    sf, si, t0, n_dt = 0.8, 0.1, 10, 40
    assert sch.sparsity_at(9, sf) is None
    for t in (10, 20, 30, 40, 50):
        assert sch.sparsity_at(t, sf) == pytest.approx(sf + (si - sf) * (1 - (t - t0) / n_dt) ** 3)
    assert sch.sparsity_at(10, sf) == pytest.approx(si)
    assert sch.sparsity_at(25, sf) == sch.sparsity_at(20, sf)  # held between pruning steps
    assert sch.sparsity_at(50, sf) == sf and sch.sparsity_at(1000, sf) == sf
    targets = [sch.sparsity_at(t, sf) for t in range(10, 60)]
    assert all(a <= b for a, b in zip(targets, targets[1:]))


def test_one_shot_schedule():
    assert OneShot(step=3).sparsity_at(2, 0.5) is None
    assert OneShot(step=3).sparsity_at(3, 0.5) == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(end_step=0), "must be > begin_step"),
        (dict(end_step=10, begin_step=-1), "begin_step must be >= 0"),
        (dict(end_step=10, frequency=0), "frequency must be >= 1"),
        (dict(end_step=10, initial_sparsity=1.0), r"initial_sparsity must be in \[0, 1\)"),
    ],
)
def test_cubic_schedule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CubicSchedule(**kwargs)


def test_schedule_config_validation():
    with pytest.raises(ValueError, match="initial_sparsity .* must be <= sparsity"):
        PruneConfig(sparsity=0.3, schedule=CubicSchedule(end_step=10, initial_sparsity=0.5))
    with pytest.raises(ValueError, match="cannot grow gradually"):
        PruneConfig(pattern="2:4", schedule=CubicSchedule(end_step=10))
    with pytest.raises(TypeError, match="PruneConfig"):
        PruningScheduler("0.5")


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


def test_gradual_pruning_in_a_training_loop():
    model = _mlp(0)
    sch = CubicSchedule(end_step=20, initial_sparsity=0.2, begin_step=2, frequency=4)
    cfg = PruneConfig(sparsity=0.8, schedule=sch)
    sched = PruningScheduler(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(64, 20), torch.randn(64, 4)
    prev_mask = None
    pruned_at = []
    for t in range(30):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        report = sched.step(model)
        target = cfg.schedule.sparsity_at(t, 0.8)
        if report is not None:
            pruned_at.append(t)
            for r in report.layers:
                assert r.pruned == round(target * r.numel)
        if target is None:
            assert not hasattr(model[0], "weight_mask")
            continue
        mask = model[0].weight_mask.clone()
        assert int((~mask).sum()) == round(target * mask.numel())
        # Right after sched.step the pruned weights are zero, even with momentum carried over.
        assert bool((model[0].weight[~mask] == 0).all())
        if prev_mask is not None:
            assert not bool((mask & ~prev_mask).any()), "a pruned weight came back"
        prev_mask = mask
    assert pruned_at == [2, 6, 10, 14, 18, 20]
    assert sched.current_sparsity == 0.8
    state = sched.state_dict()
    other = PruningScheduler(cfg)
    other.load_state_dict(state)
    assert other.step_count == 30 and other.current_sparsity == 0.8


def test_scheduler_one_shot_and_fixed_patterns():
    model = _mlp(1)
    sched = PruningScheduler(PruneConfig(pattern="2:4", schedule=OneShot(step=1)))
    assert sched.step(model) is None and not hasattr(model[0], "weight_mask")
    assert sched.step(model).layers[0].sparsity == 0.5
    assert sched.step(model) is None  # nothing new to do
    model = _mlp(2)
    sched = PruningScheduler(PruneConfig(criterion="threshold", threshold=0.05))
    report = sched.step(model)
    assert report is not None and bool((model[0].weight_mask == (model[0].weight.abs() >= 0.05)).all())


# ----------------------------------------------------------------------------- real data


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1400], perm[1400:]


def test_digits_mlp_accuracy_after_pruning():
    x, y, tr, te = _digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend on a shared machine
    try:
        def accuracy(m):
            with torch.no_grad():
                return float((m(x[te]).argmax(1) == y[te]).float().mean())

        def train(m, opt, steps, seed, sched=None):
            gen = torch.Generator().manual_seed(seed)
            for _ in range(steps):
                b = tr[torch.randint(0, len(tr), (128,), generator=gen)]
                opt.zero_grad()
                F.cross_entropy(m(x[b]), y[b]).backward()
                opt.step()
                if sched is not None:
                    sched.step(m)

        torch.manual_seed(0)
        dense = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
        train(dense, torch.optim.Adam(dense.parameters(), lr=3e-3), 300, seed=1)
        acc = {"dense": accuracy(dense)}
        for s in (0.5, 0.75, 0.9):
            one_shot = copy.deepcopy(dense)
            prune_(one_shot, PruneConfig(sparsity=s))
            acc[f"{s:.0%} one-shot"] = accuracy(one_shot)
            tuned = copy.deepcopy(dense)
            sched = PruningScheduler(PruneConfig(sparsity=s, schedule=CubicSchedule(end_step=100, frequency=10)))
            train(tuned, torch.optim.Adam(tuned.parameters(), lr=3e-3), 150, seed=2, sched=sched)
            assert all(float((~m.weight_mask).float().mean()) == pytest.approx(s, abs=1e-3)
                       for m in tuned if isinstance(m, nn.Linear))
            acc[f"{s:.0%} fine-tuned"] = accuracy(tuned)
    finally:
        torch.set_num_threads(threads)
    print("\nload_digits test accuracy (397 held-out images):")
    for k, v in acc.items():
        print(f"  {k:16s} {v:.4f}")
    assert acc["dense"] > 0.93
    assert acc["50% one-shot"] >= acc["dense"] - 0.03  # magnitude pruning at 50% is nearly free
    assert acc["50% fine-tuned"] >= acc["dense"] - 0.02
    assert acc["75% fine-tuned"] >= acc["dense"] - 0.03
    assert acc["90% fine-tuned"] >= 0.85
    assert acc["90% fine-tuned"] > acc["90% one-shot"] + 0.2  # fine-tuning recovers what one-shot loses
