"""prune_: exact sparsity, patterns, the mask contract (state_dict, training, hooks), bad input."""

import copy
import io

import pytest
import torch
from torch import nn

import fastq
from fastq.pruning import PruneConfig, apply_masks_, prune_, remove_masks


def _mlp(seed=0, dims=(33, 64, 17, 5)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _zero_where_pruned(m):
    return bool((m.weight[~m.weight_mask] == 0).all())


LAYERS = {
    "linear7x9": lambda: nn.Linear(9, 7),
    "linear17x33": lambda: nn.Linear(33, 17),
    "linear64x129": lambda: nn.Linear(129, 64),
    "conv3to8k3": lambda: nn.Conv2d(3, 8, 3),
    "conv16to4k1": lambda: nn.Conv2d(16, 4, 1, bias=False),
}


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.3, 0.5, 0.77, 0.9])
@pytest.mark.parametrize("criterion", ["magnitude", "l2", "random"])
def test_per_layer_sparsity_is_exact(layer, sparsity, criterion):
    torch.manual_seed(1)
    m = LAYERS[layer]()
    w0 = m.weight.detach().clone()
    report = prune_(m, PruneConfig(sparsity=sparsity, criterion=criterion))
    n = w0.numel()
    assert m.weight_mask.dtype == torch.bool and m.weight_mask.shape == w0.shape
    assert int((~m.weight_mask).sum()) == round(sparsity * n)
    assert report[""].pruned == round(sparsity * n)
    assert report.sparsity[""] == pytest.approx(round(sparsity * n) / n)
    assert m.fastq_prune_pattern == "unstructured"
    assert _zero_where_pruned(m)
    # Kept weights are untouched.
    assert torch.equal(m.weight.detach()[m.weight_mask], w0[m.weight_mask])
    if criterion == "magnitude" and 0 < sparsity:
        assert w0.abs()[~m.weight_mask].max() <= w0.abs()[m.weight_mask].min()


def test_ties_are_broken_by_index():
    m = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.5)
    prune_(m, PruneConfig(sparsity=0.25))
    expected = torch.ones(32, dtype=torch.bool)
    expected[:8] = False  # the 8 lowest flat indices
    assert torch.equal(m.weight_mask.flatten(), expected)


@pytest.mark.parametrize("n", [1, 7, 33, 129, 1000])
def test_selection_equals_stable_sort_with_many_ties(n):
    from fastq.pruning.prune import _prune_lowest

    gen = torch.Generator().manual_seed(n)
    for trial in range(20):
        s = torch.randint(0, 4, (n,), generator=gen).float()
        if trial % 2:
            s[torch.randint(0, n, (n // 3 + 1,), generator=gen)] = float("-inf")  # already-pruned groups
        for k in sorted({0, 1, n // 2, n - 1, n}):
            ref = torch.ones(n, dtype=torch.bool)
            ref[torch.argsort(s, stable=True)[:k]] = False
            assert torch.equal(_prune_lowest(s, k), ref)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5])
def test_global_sparsity_is_exact_with_one_threshold(sparsity):
    model = _mlp()
    with torch.no_grad():  # layers of very different scales: a global ranking must differ per layer
        model[0].weight.mul_(2)  # |w| < 0.35; layer "2" |w| < 0.125; layer "4" |w| < 0.25
    w0 = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = prune_(model, PruneConfig(sparsity=sparsity, scope="global"))
    total = sum(w.numel() for w in w0.values())
    assert sum(r.pruned for r in report.layers) == round(sparsity * total)
    assert report.total_sparsity == pytest.approx(round(sparsity * total) / total)
    mods = dict(model.named_modules())
    pruned_max = max(float(w0[n].abs()[~mods[n].weight_mask].amax()) for n in w0)
    kept_min = min(float(w0[n].abs()[mods[n].weight_mask].min()) for n in w0)
    assert pruned_max <= kept_min
    spars = report.sparsity
    assert spars["0"] < spars["4"] < spars["2"]  # larger layers keep more


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_nm_pattern_valid_in_every_group(pattern, n, m, layer):
    torch.manual_seed(2)
    mod = nn.Linear(64, 16) if layer == "linear" else nn.Conv2d(8, 16, 3)  # K = 64 or 8*3*3 = 72
    w0 = mod.weight.detach().reshape(16, -1).clone()
    prune_(mod, PruneConfig(pattern=pattern))
    assert mod.fastq_prune_pattern == pattern
    mask = mod.weight_mask.reshape(16, -1).reshape(-1, m)
    assert torch.equal(mask.sum(1), torch.full((mask.shape[0],), n))
    groups = w0.reshape(-1, m).abs()
    # The kept ones are the N largest of each group.
    assert bool((groups.masked_fill(mask, float("inf")).amin(1) >= 0).all())
    assert bool((groups.masked_fill(~mask, float("inf")).amin(1) >= groups.masked_fill(mask, -1).amax(1)).all())
    assert _zero_where_pruned(mod)


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (8, 1), "block2x8"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_block_pattern_valid(block, sparsity):
    torch.manual_seed(3)
    mod = nn.Linear(32, 64)
    report = prune_(mod, PruneConfig(sparsity=sparsity, pattern=block))
    r, c = block if isinstance(block, tuple) else (2, 8)
    assert mod.fastq_prune_pattern == f"block{r}x{c}"
    blocks = mod.weight_mask.reshape(64 // r, r, 32 // c, c).permute(0, 2, 1, 3).reshape(-1, r * c)
    assert bool((blocks.all(1) | ~blocks.any(1)).all()), "a block is partly pruned"
    nblocks = blocks.shape[0]
    assert int((~blocks.all(1)).sum()) == round(sparsity * nblocks)
    assert report[""].pruned == round(sparsity * nblocks) * r * c


def test_l1_and_l2_rank_blocks_differently():
    mod = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        mod.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0]]))
    l1 = copy.deepcopy(mod)
    prune_(l1, PruneConfig(sparsity=0.5, pattern=(1, 4), criterion="magnitude"))
    prune_(mod, PruneConfig(sparsity=0.5, pattern=(1, 4), criterion="l2"))
    assert l1.weight_mask[0].tolist() == [True] * 4 + [False] * 4  # L1: 4 > 3
    assert mod.weight_mask[0].tolist() == [False] * 4 + [True] * 4  # L2: 2 < 3


def test_channels_pattern_masks_whole_rows():
    torch.manual_seed(4)
    mod = nn.Conv2d(4, 10, 3)
    prune_(mod, PruneConfig(sparsity=0.3, pattern="channels"))
    rows = mod.weight_mask.reshape(10, -1)
    assert bool((rows.all(1) | ~rows.any(1)).all())
    assert int((~rows.all(1)).sum()) == 3


def test_filter_fn_selects_layers():
    model = _mlp()
    report = prune_(model, PruneConfig(sparsity=0.5), filter_fn=lambda m, name: name != "0")
    assert [r.name for r in report.layers] == ["2", "4"]
    assert not hasattr(model[0], "weight_mask")
    assert fastq.prune_ is prune_ and fastq.PruneConfig is PruneConfig


def test_reprune_keeps_pruned_weights_pruned():
    model = _mlp()
    prune_(model, PruneConfig(sparsity=0.4, criterion="random", seed=1))
    first = model[0].weight_mask.clone()
    prune_(model, PruneConfig(sparsity=0.7, criterion="random", seed=2))
    assert not bool((model[0].weight_mask & ~first).any())
    assert int((~model[0].weight_mask).sum()) == round(0.7 * model[0].weight.numel())


def test_masks_survive_state_dict_round_trip():
    src = _mlp(seed=5)
    prune_(src, PruneConfig(sparsity=0.6, criterion="random", seed=11))
    sd = src.state_dict()
    assert "0.weight" in sd and "0.weight_mask" in sd and sd["0.weight_mask"].dtype == torch.bool
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    # A fresh model pruned with the same structure (different masks) takes the saved ones.
    dst = _mlp(seed=6)
    prune_(dst, PruneConfig(sparsity=0.6, criterion="random", seed=12))
    assert not torch.equal(dst[0].weight_mask, src[0].weight_mask)
    dst.load_state_dict(torch.load(buf))
    for a, b in zip(src.modules(), dst.modules()):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.weight_mask, b.weight_mask)
            assert torch.equal(a.weight, b.weight)
    x = torch.randn(5, 33)
    assert torch.equal(src(x), dst(x))
    # The loaded masks are the live ones: training keeps them.
    dst(x).sum().backward()
    assert bool((dst[0].weight.grad[~src[0].weight_mask] == 0).all())


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_masked_weights_stay_zero_through_training(opt_name):
    model = _mlp(seed=7)
    prune_(model, PruneConfig(sparsity=0.75))
    masks = [m.weight_mask.clone() for m in model if isinstance(m, nn.Linear)]
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    x, y = torch.randn(32, 33), torch.randn(32, 5)
    w_before = model[0].weight.detach().clone()
    for _ in range(5):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        for m, mask in zip([m for m in model if isinstance(m, nn.Linear)], masks):
            assert bool((m.weight.grad[~mask] == 0).all())
        opt.step()
        for m, mask in zip([m for m in model if isinstance(m, nn.Linear)], masks):
            assert bool((m.weight[~mask] == 0).all())
            assert torch.equal(m.weight_mask, mask)
    assert not torch.equal(model[0].weight.detach(), w_before)  # it did train


def test_momentum_from_before_pruning_cannot_revive_weights():
    model = _mlp(seed=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(16, 33), torch.randn(16, 5)
    for _ in range(3):  # build up momentum on every weight
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    prune_(model, PruneConfig(sparsity=0.5))
    mask = model[0].weight_mask.clone()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()  # momentum revives masked weights here ...
        revived = model[0].weight.detach()[~mask].abs().max()
        ref = copy.deepcopy(model)
        remove_masks(ref)
        with torch.no_grad():
            ref[0].weight.mul_(mask)
        out = model(x)  # ... and the forward pre-hook re-zeroes them before use
        assert bool((model[0].weight[~mask] == 0).all())
        assert torch.equal(out, ref(x))
    assert float(revived) > 0  # the situation the hook exists for did happen
    opt.step()
    apply_masks_(model)
    assert bool((model[0].weight[~mask] == 0).all())


def test_remove_masks_makes_pruning_permanent():
    model = _mlp(seed=9)
    prune_(model, PruneConfig(sparsity=0.5))
    mask = model[0].weight_mask.clone()
    remove_masks(model)
    assert not hasattr(model[0], "weight_mask") and not hasattr(model[0], "fastq_prune_pattern")
    assert "0.weight_mask" not in model.state_dict()
    assert bool((model[0].weight[~mask] == 0).all())
    model(torch.randn(4, 33)).sum().backward()
    assert bool((model[0].weight.grad[~mask] != 0).any())  # gradients are no longer masked


def test_deepcopy_of_pruned_model_keeps_masking():
    model = _mlp(seed=10)
    prune_(model, PruneConfig(sparsity=0.5))
    clone = copy.deepcopy(model)
    mask = clone[0].weight_mask
    clone(torch.randn(4, 33)).sum().backward()
    assert bool((clone[0].weight.grad[~mask] == 0).all())
    assert bool((clone[0].weight.grad[mask] != 0).any())


def test_pickled_model_keeps_masking():
    model = _mlp(seed=14, dims=(32, 64, 16, 8))
    prune_(model, PruneConfig(sparsity=0.5, pattern="block1x4"))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded[0].fastq_prune_pattern == "block1x4"
    loaded(torch.randn(4, 32)).sum().backward()
    assert bool((loaded[0].weight.grad[~loaded[0].weight_mask] == 0).all())


def test_threshold_criterion_fixes_the_mask():
    torch.manual_seed(12)
    m = nn.Linear(40, 20)
    w0 = m.weight.detach().clone()
    report = prune_(m, PruneConfig(criterion="threshold", threshold=0.05))
    assert torch.equal(m.weight_mask, w0.abs() >= 0.05)
    assert report[""].pruned == int((w0.abs() < 0.05).sum())


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        PruneConfig(sparsity=bad)


def test_nm_must_divide_input_dim_and_names_the_layer():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    with pytest.raises(ValueError, match=r"layer '2'.*2:4.*6"):
        prune_(model, PruneConfig(pattern="2:4"))
    assert not hasattr(model[0], "weight_mask")  # nothing changed


def test_nm_on_conv_names_the_flattened_dim():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1))  # K = 27 and 8
    with pytest.raises(ValueError, match=r"layer '0'.*4:8.*27"):
        prune_(model, PruneConfig(pattern="4:8"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pattern="3:2"), "0 < N < M"),
        (dict(pattern="2:4", sparsity=0.7), "fixes sparsity at 0.5"),
        (dict(pattern="2:4", scope="global"), "scope must be 'layer'"),
        (dict(pattern="diagonal", sparsity=0.5), "unknown pattern"),
        (dict(pattern=(0, 4), sparsity=0.5), "rows, cols >= 1"),
        (dict(sparsity=0.5, criterion="hessian"), "criterion must be one of"),
        (dict(sparsity=0.5, scope="model"), "scope must be"),
        (dict(criterion="threshold"), "needs threshold="),
        (dict(criterion="threshold", threshold=0.1, sparsity=0.5), "leave sparsity=None"),
        (dict(criterion="threshold", threshold=0.1, pattern="2:4"), "only works with pattern 'unstructured'"),
        (dict(sparsity=0.5, threshold=0.1), "only used by criterion 'threshold'"),
        (dict(), "sparsity is required"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneConfig(**kwargs)


def test_config_is_frozen_and_canonical():
    cfg = PruneConfig(sparsity=0.5, pattern=(4, 4))
    assert cfg.pattern == "block4x4"
    with pytest.raises(Exception):
        cfg.sparsity = 0.1


def test_block_must_tile_the_weight():
    with pytest.raises(ValueError, match=r"layer ''.*block 4x4"):
        prune_(nn.Linear(8, 6), PruneConfig(sparsity=0.5, pattern=(4, 4)))


def test_pruning_a_layer_to_nothing_raises():
    # round(0.85 * 10) = 8 of 10 is fine; round(0.85 * 3) = 3 of 3 is not.
    model = nn.Sequential(nn.Linear(10, 1, bias=False), nn.Linear(1, 3))
    with pytest.raises(ValueError, match=r"layer '1'.*prune all 3"):
        prune_(model, PruneConfig(sparsity=0.85))
    assert not hasattr(model[0], "weight_mask")


def test_global_pruning_a_layer_to_nothing_raises():
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(100, 10), nn.Linear(10, 2))
    with torch.no_grad():
        model[1].weight.mul_(1e-4)
    with pytest.raises(ValueError, match=r"layer '1'.*global sparsity"):
        prune_(model, PruneConfig(sparsity=0.5, scope="global"))


def test_threshold_pruning_everything_raises():
    with pytest.raises(ValueError, match="would prune all"):
        prune_(nn.Linear(4, 4), PruneConfig(criterion="threshold", threshold=100.0))


def test_channels_to_nothing_raises():
    with pytest.raises(ValueError, match="output channels"):
        prune_(nn.Linear(4, 2), PruneConfig(sparsity=0.8, pattern="channels"))


def test_non_finite_weights_raise():
    m = nn.Linear(4, 4)
    with torch.no_grad():
        m.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        prune_(m, PruneConfig(sparsity=0.5))


def test_nothing_selected_raises():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        prune_(nn.Sequential(nn.ReLU()), PruneConfig(sparsity=0.5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "block4x4", "channels"])
def test_masks_on_cuda(pattern):
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).cuda()
    cfg = PruneConfig(pattern=pattern) if pattern == "2:4" else PruneConfig(sparsity=0.5, pattern=pattern)
    cpu = copy.deepcopy(model).cpu()
    prune_(model, cfg)
    prune_(cpu, cfg)
    assert model[0].weight_mask.is_cuda
    assert torch.equal(model[0].weight_mask.cpu(), cpu[0].weight_mask)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(8, 32, device="cuda")
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert bool((model[0].weight[~model[0].weight_mask] == 0).all())
