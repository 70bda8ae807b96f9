"""Learning-rate schedules: exact values at the ends, warm-up, monotone decay, bad input."""

import math

import pytest

from fastq.train import TrainConfig, lr_factor


def test_cosine_runs_from_one_to_the_floor():
    f = [lr_factor(s, 11, "cosine", min_lr_ratio=0.1) for s in range(11)]
    assert f[0] == 1.0 and math.isclose(f[-1], 0.1)
    assert math.isclose(f[5], 0.1 + 0.9 * 0.5)  # half way: the cosine's midpoint
    assert all(a > b for a, b in zip(f, f[1:]))


def test_linear_warmup_then_linear_decay():
    f = [lr_factor(s, 15, "linear", warmup_steps=4) for s in range(15)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[-1] == 0.0
    assert math.isclose(f[9], 0.5, abs_tol=1e-12)


def test_step_and_constant():
    assert [lr_factor(s, 10, "step", step_size=3, gamma=0.5) for s in range(7)] == [1, 1, 1, .5, .5, .5, .25]
    assert {lr_factor(s, 10) for s in range(10)} == {1.0}
    assert lr_factor(0, 10, "constant", warmup_steps=2) == 0.5


def test_one_step_runs_at_the_base_rate():
    assert lr_factor(0, 1, "cosine") == 1.0 and lr_factor(0, 1, "linear") == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=10, schedule="exp"), "schedule must be one of"),
    (dict(steps=10, schedule="step"), "step_size"),
    (dict(steps=10, warmup_steps=10), "warmup_steps"),
    (dict(steps=10, min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(steps=0), "steps"),
    (dict(steps=10, lr=float("nan")), "lr"),
    (dict(steps=10, max_grad_norm=0), "max_grad_norm"),
    (dict(steps=10, patience=0), "patience"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
