"""Importance scores: values, determinism, Taylor gradients without side effects."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastq.pruning import PruneConfig, prune_, scores


def test_magnitude_and_l2_element_scores():
    torch.manual_seed(0)
    w = torch.randn(7, 9, dtype=torch.bfloat16)
    w0 = w.clone()
    for fn in (scores.magnitude, scores.l2):
        s = fn(w)
        assert s.dtype == torch.float32 and s.shape == w.shape
        assert torch.equal(s, w.float().abs())
    assert torch.equal(w, w0)


def test_group_norms():
    g = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    assert scores.group_norm(g, 1).tolist() == [4.0, 3.0]
    assert scores.group_norm(g, 2).tolist() == [2.0, 3.0]


def test_random_scores_are_seeded():
    w = torch.randn(16, 16)
    a = scores.random(w, torch.Generator().manual_seed(1))
    b = scores.random(w, torch.Generator().manual_seed(1))
    c = scores.random(w, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a >= 0) & (a < 1)).all())
    m1, m2 = nn.Linear(16, 16), nn.Linear(16, 16)
    prune_(m1, PruneConfig(sparsity=0.5, criterion="random", seed=7))
    prune_(m2, PruneConfig(sparsity=0.5, criterion="random", seed=7))
    assert torch.equal(m1.weight_mask, m2.weight_mask)


def test_threshold_mask():
    w = torch.tensor([[-0.3, 0.05, 0.1], [0.0, -0.1, 2.0]])
    assert scores.threshold_mask(w, 0.1).tolist() == [[True, False, True], [False, True, True]]


def _taylor_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_taylor_score_is_w_times_grad_and_has_no_side_effects():
    model = _taylor_model()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    # The gradient computed by hand.
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    expected = (ref[0].weight * ref[0].weight.grad).abs().detach()

    sd0 = copy.deepcopy(model.state_dict())
    model[3].weight.grad = torch.full_like(model[3].weight, 7.0)  # a user's pending gradient
    grads = scores.compute_gradients(model, [model[0], model[3]], (x, y), F.cross_entropy)
    torch.testing.assert_close(scores.taylor(model[0].weight, grads[model[0]]), expected)
    # Weights and BN running statistics unchanged; the pending .grad restored, others still None.
    assert all(torch.equal(sd0[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model[3].weight.grad, torch.full_like(model[3].weight, 7.0))
    assert model[0].weight.grad is None


def test_taylor_uses_gradients_not_magnitude():
    model = nn.Sequential(nn.Linear(8, 4, bias=False))
    torch.manual_seed(4)
    x = torch.randn(64, 8)
    x[:, :4] = 0  # inputs 0..3 never fire: their weights get zero gradient
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 8))
        model[0].weight[:, :4] *= 100  # ... although they are by far the largest weights
    y = torch.randn(64, 4)
    taylor = copy.deepcopy(model)
    prune_(taylor, PruneConfig(sparsity=0.5, criterion="taylor"), batch=(x, y), loss_fn=F.mse_loss)
    prune_(model, PruneConfig(sparsity=0.5))
    assert not bool(taylor[0].weight_mask[:, :4].any())  # Taylor prunes exactly the dead inputs
    assert bool(model[0].weight_mask[:, :4].all())  # magnitude keeps them


def test_taylor_with_a_loss_closure():
    model = _taylor_model()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    prune_(a, PruneConfig(sparsity=0.5, criterion="taylor"), batch=(x, y), loss_fn=F.cross_entropy)
    prune_(b, PruneConfig(sparsity=0.5, criterion="taylor"), loss_fn=lambda m: F.cross_entropy(m(x), y))
    for ma, mb in zip(a.modules(), b.modules()):
        if isinstance(ma, nn.Linear):
            assert torch.equal(ma.weight_mask, mb.weight_mask)


def test_taylor_needs_a_loss():
    with pytest.raises(ValueError, match="needs loss_fn"):
        prune_(nn.Linear(4, 4), PruneConfig(sparsity=0.5, criterion="taylor"))
    with pytest.raises(ValueError, match="batch must be a pair"):
        prune_(nn.Linear(4, 4), PruneConfig(sparsity=0.5, criterion="taylor"),
               batch=torch.randn(2, 4), loss_fn=F.mse_loss)
    with pytest.raises(ValueError, match="scalar"):
        prune_(nn.Linear(4, 4), PruneConfig(sparsity=0.5, criterion="taylor"), loss_fn=lambda m: m(torch.randn(2, 4)))
