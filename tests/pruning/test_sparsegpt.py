"""Activation-aware pruning (criteria "wanda" and "sparsegpt"): exact sparsity per row, the layer-output
error against magnitude and Wanda, the mask contract and native sparse kernels, bad input."""

import copy

import pytest
import torch
from torch import nn

import fastq
from fastq.pruning import PruneConfig, prune_
from fastq.pruning.config import Pattern
from fastq.pruning.sparsegpt import lowest_per_row, sparsegpt_prune
from fastq.quantization.intx import INPUT_HESSIAN_ATTR, INPUT_STATS_ATTR

CRITERIA = ("wanda", "sparsegpt")


def _correlated_inputs(n, k, seed=0):
    """Rows of x with strongly correlated features and very unequal scales (as real activations):
    the case where weight magnitude alone, and even the diagonal statistics, misjudge the output error."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5 + 2.0 * torch.eye(k)
    latent = torch.randn(n, k // 4, generator=gen) @ torch.randn(k // 4, k, generator=gen)
    x = (0.3 * torch.randn(n, k, generator=gen) + latent) @ mix
    return x * torch.logspace(-1, 0.7, k)[torch.randperm(k, generator=gen)]


def _mlp(seed=0, dims=(64, 48, 32)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dims[0], dims[1]), nn.GELU(), nn.Linear(dims[1], dims[2]))


def _calibrated(model, x, hessian=True, batches=4):
    with fastq.quantization.observe_inputs(model, hessian=hessian):
        for chunk in x.chunk(batches):
            model(chunk)
    return model


def _config(criterion, pattern, sparsity=0.5):
    return PruneConfig(sparsity=sparsity if pattern == "unstructured" else None, pattern=pattern, criterion=criterion)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_unstructured_every_row_reaches_the_sparsity(criterion, sparsity):
    model = _calibrated(_mlp(), _correlated_inputs(512, 64))
    report = prune_(model, _config(criterion, "unstructured", sparsity))
    for name, m in ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)):
        k = m.in_features
        assert (~m.weight_mask).sum(1).tolist() == [round(sparsity * k)] * m.out_features
        assert report[name].pruned == m.out_features * round(sparsity * k)
        assert bool((m.weight.detach()[~m.weight_mask] == 0).all())
        assert m.fastq_prune_pattern == "unstructured"


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_nm_every_group_keeps_n(criterion, pattern, n, m):
    model = _calibrated(_mlp(1), _correlated_inputs(512, 64, seed=1))
    prune_(model, _config(criterion, pattern))
    for lin in (model[0], model[2]):
        keep = lin.weight_mask.reshape(lin.out_features, -1, m)
        assert bool((keep.sum(-1) == n).all())
        assert bool((lin.weight.detach()[~lin.weight_mask] == 0).all())
        assert lin.fastq_prune_pattern == pattern


def test_wanda_scores_weight_times_input_rms():
    torch.manual_seed(0)
    w = torch.randn(5, 8)
    sq = torch.rand(8) * 4
    assert torch.equal(fastq.pruning.scores.wanda(w, sq), w.abs() * sq.sqrt())
    # one input much louder than the others: Wanda keeps its small weights, magnitude drops them
    lin = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0]] * 4))
    setattr(lin, INPUT_STATS_ATTR, torch.tensor([10000.0] + [1.0] * 7))
    prune_(lin, PruneConfig(sparsity=0.5, criterion="wanda"))
    assert bool(lin.weight_mask[:, 0].all())
    assert (~lin.weight_mask[:, 1:5]).all()  # ties among the rest: lower index pruned first


def _output_error(w0, w, x):
    return float((x @ w0.t() - x @ w.t()).norm() / (x @ w0.t()).norm())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_output_error_beats_magnitude_and_wanda(pattern):
    """On correlated inputs SparseGPT's error compensation lowers ||XW^T - XW'^T|| clearly below Wanda and
    magnitude; without it (mask only, kept weights unchanged) it would land near Wanda, not below."""
    x = _correlated_inputs(2048, 128, seed=3)
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(128, 96))
    _calibrated(base, x)
    w0 = base[0].weight.detach().clone()
    errors = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(base)
        prune_(m, _config(criterion, pattern))
        errors[criterion] = _output_error(w0, m[0].weight.detach(), x)
    # the kept weights moved: the mask alone, with the original weights, is worse than the update
    m = copy.deepcopy(base)
    prune_(m, _config("sparsegpt", pattern))
    mask_only = _output_error(w0, w0 * m[0].weight_mask, x)
    assert errors["sparsegpt"] < 0.8 * errors["wanda"] < errors["magnitude"], errors
    assert errors["sparsegpt"] < 0.8 * mask_only, (errors, mask_only)


def test_sparsegpt_with_identity_hessian_is_magnitude_pruning():
    """H = I: no correlation to exploit, so the score is w^2 and nothing moves: per-row magnitude."""
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    keep, new = sparsegpt_prune(w, torch.eye(16), Pattern("unstructured"), 0.5, damp=0.0, block=16)
    order = w.abs().argsort(dim=1, stable=True)
    expect = torch.ones_like(keep)
    expect.scatter_(1, order[:, :8], False)
    assert torch.equal(keep, expect)
    assert torch.allclose(new, w * keep, atol=1e-6)


def test_sparsegpt_blocks_split_the_quota_exactly():
    """Blocks narrower than K and a sparsity that does not divide each block still end exact per row."""
    torch.manual_seed(0)
    x = _correlated_inputs(256, 40)
    h = x.t() @ x / x.shape[0]
    for s in (0.3, 0.55, 0.9):
        keep, new = sparsegpt_prune(torch.randn(7, 40), h, Pattern("unstructured"), s, block=16)
        assert (~keep).sum(1).tolist() == [round(s * 40)] * 7
        assert bool((new[~keep] == 0).all())


def test_reprune_keeps_earlier_pruned_weights_pruned():
    for criterion in CRITERIA:
        model = _calibrated(_mlp(2), _correlated_inputs(256, 64, seed=2))
        prune_(model, PruneConfig(sparsity=0.3))  # magnitude first
        first = model[0].weight_mask.clone()
        prune_(model, PruneConfig(sparsity=0.5, criterion=criterion))
        assert not bool((model[0].weight_mask & ~first).any()), criterion
        assert (~model[0].weight_mask).sum(1).tolist() == [32] * 48


def test_lowest_per_row_counts_and_ties():
    s = torch.tensor([[1.0, 1.0, 0.0, 1.0], [3.0, 2.0, 1.0, 0.0]])
    assert lowest_per_row(s, torch.tensor([2, 0])).tolist() == [[True, False, True, False], [False] * 4]
    assert lowest_per_row(s, torch.tensor([9, -1])).tolist() == [[True] * 4, [False] * 4]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_pruned_model_sparsifies_and_runs_natively(criterion, pattern):
    x = _correlated_inputs(256, 64, seed=4)
    model = _calibrated(_mlp(4), x)
    prune_(model, _config(criterion, pattern))
    with torch.no_grad():
        ref = model(x)
    fastq.sparsify_(model)
    assert all(type(m).__name__ == "SparseLinear" for m in (model[0], model[2]))
    op = "sparse_24_linear" if pattern == "2:4" else f"sparse_{model[0].format}_linear"
    before = fastq.native_calls(op, "cpu")
    with torch.no_grad():
        y = model(x)
    if fastq.native_available():
        assert fastq.native_calls(op, "cpu") > before
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_missing_statistics_raise_and_change_nothing(criterion):
    model = _mlp()
    _calibrated(nn.Sequential(model[0]), _correlated_inputs(64, 64))  # the second layer has no statistics
    w = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"layer '2'.*observe_inputs"):
        prune_(model, PruneConfig(sparsity=0.5, criterion=criterion))
    assert all(torch.equal(a, b) for a, b in zip(w, model.parameters()))
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_sparsegpt_needs_the_hessian_not_only_the_diagonal():
    model = _calibrated(_mlp(), _correlated_inputs(64, 64), hessian=False)
    prune_(copy.deepcopy(model), PruneConfig(sparsity=0.5, criterion="wanda"))  # enough for wanda
    with pytest.raises(ValueError, match=r"hessian=True"):
        prune_(model, PruneConfig(sparsity=0.5, criterion="sparsegpt"))


def test_conv2d_has_no_statistics():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        prune_(model, PruneConfig(sparsity=0.5, criterion="wanda"))


@pytest.mark.parametrize("criterion,attr,bad,match", [
    ("wanda", INPUT_STATS_ATTR, torch.ones(63), "shape"),
    ("wanda", INPUT_STATS_ATTR, torch.tensor([float("nan")] + [1.0] * 63), "NaN"),
    ("wanda", INPUT_STATS_ATTR, -torch.ones(64), "negative"),
    ("sparsegpt", INPUT_HESSIAN_ATTR, torch.eye(63), "shape"),
    ("sparsegpt", INPUT_HESSIAN_ATTR, torch.full((64, 64), float("inf")), "NaN"),
    ("sparsegpt", INPUT_HESSIAN_ATTR, -torch.eye(64), "positive definite"),
])
def test_bad_statistics_raise(criterion, attr, bad, match):
    lin = nn.Linear(64, 8)
    setattr(lin, attr, bad)
    with pytest.raises(ValueError, match=match):
        prune_(lin, PruneConfig(sparsity=0.5, criterion=criterion))
    assert not hasattr(lin, "weight_mask")


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=0.5, criterion="wanda", scope="global"), "scope='layer'"),
    (dict(sparsity=0.5, criterion="sparsegpt", scope="global"), "scope='layer'"),
    (dict(sparsity=0.5, criterion="wanda", pattern="block4x4"), "unstructured"),
    (dict(sparsity=0.5, criterion="sparsegpt", pattern="channels"), "unstructured"),
    (dict(sparsity=0.5, criterion="sparsegpt", schedule=fastq.pruning.CubicSchedule(end_step=10)), "OneShot"),
])
def test_config_refuses_what_does_not_apply(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


def test_whole_row_pruning_raises():
    lin = nn.Linear(2, 4)
    setattr(lin, INPUT_STATS_ATTR, torch.ones(2))
    with pytest.raises(ValueError, match="each row"):
        prune_(lin, PruneConfig(sparsity=0.8, criterion="wanda"))
