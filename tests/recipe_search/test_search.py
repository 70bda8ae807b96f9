"""fastq.search on tiny models: each strategy, the size and speed objectives, faster-or-skip, recipes that
reproduce the searched model exactly, grouping, channel pairs, storage (resume), and bad input.

Nothing here asserts on speed. Choices that depend on timing are made deterministic with two test
transformations: "test-slow" (the float layer plus a 2 ms sleep: always measured slower) and
"test-zero" (returns zeros without touching the weight: always measured faster than the layer).
"""

import copy
import json
import math
import time

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import QuantLinear
from fastq.quantization import SKIP_ATTR
from fastq.recipe_search import (Budget, LayerRecipe, NoRecipeError, SearchError, Transformation, from_spec,
                                 register_kind, transformations)

optuna = pytest.importorskip("optuna")


class _Slow(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        time.sleep(0.002)
        return self.layer(x)


class _Zero(nn.Module):
    def __init__(self, out_features):
        super().__init__()
        self.out_features = out_features

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], self.out_features)


class SlowT(Transformation):
    kind = "test-slow"

    def __init__(self, name="test-slow"):
        self.name = name

    def spec(self):
        return {"kind": self.kind}

    def check(self, module):
        return None if type(module) is nn.Linear else "not a Linear"

    def apply(self, module, context=None):
        return _Slow(copy.deepcopy(module))


class ZeroT(SlowT):
    kind = "test-zero"

    def __init__(self, name="test-zero"):
        self.name = name

    def apply(self, module, context=None):
        return _Zero(module.out_features)


register_kind("test-slow", lambda spec, name: SlowT(name))
register_kind("test-zero", lambda spec, name: ZeroT(name))

FAST = dict(rounds=3, verify_rounds=2, progress=False)
QUICK = ["float", "w8a8", "int8-wo", "sparse-50"]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 32)).eval()


@pytest.fixture
def task():
    model = mlp()
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref = model(x)

    def evaluate(m):
        return float(nn.functional.cosine_similarity(m(x), ref, dim=-1).mean())

    return model, x, evaluate


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def assert_untouched(model, snap):
    state, types = snap
    assert [type(m) for m in model.modules()] == types
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(hasattr(m, SKIP_ATTR) for m in model.modules())


@pytest.mark.parametrize("strategy", ["tpe", "nsga2", "random", "grid"])
def test_size_search_finds_a_recipe_within_budget_that_reproduces_exactly(task, strategy, tmp_path):
    model, x, evaluate = task
    snap = snapshot(model)
    r = fastq.search(model, evaluate, x, 0.01, objective="size", strategy=strategy, trials=6, transformations_=QUICK,
                     **FAST)
    assert_untouched(model, snap)
    assert r.best is not None and r.best.feasible and r.best.changed > 0
    assert r.pareto and r.best.number in {t.number for t in r.trials}
    # the model returned is the recipe applied, and it keeps the promised quality
    assert evaluate(r.model) >= r.baseline["quality"] - 0.01 - 1e-6
    assert math.isclose(evaluate(r.model), r.best.quality, rel_tol=0, abs_tol=1e-6)
    assert fastq.summary(r.model).total_bytes < fastq.summary(model).total_bytes
    # the recipe file rebuilds it exactly
    path = r.save_recipe(tmp_path / "recipe.json")
    again = LayerRecipe.load(path).apply_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(again(x), r.model(x))
    # every layer left float says why
    layers = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    notes = dict(fastq.summary(again).notes)
    assert set(r.recipe.layers) | set(notes) == layers
    assert all(v.startswith("search:") for v in notes.values())
    table = r.table()
    assert table.splitlines()[2].startswith("| fp32") and "<- chosen" in table
    r.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_faster_or_skip_keeps_only_measured_gains(task):
    model, x, _ = task
    r = fastq.search(model, lambda m: 1.0, x, 0.0, objective="speed", trials=4,
                     transformations_=["float", SlowT(), ZeroT()], pairs=None, **FAST)
    # test-slow is never offered (measured slower everywhere); test-zero is measured faster on every layer
    assert {v["transform"] for v in r.recipe.layers.values()} == {"test-zero"}
    assert {v for tr in r.trials for v in tr.layers.values()} == {"test-zero"}, [tr.layers for tr in r.trials]
    # the first trial (every layer zeroed, quality free) is the fastest possible: the others are not evaluated
    assert r.skipped == 3 and len(r.trials) == 1
    with pytest.raises(SearchError, match=r"no transformation is measured faster.*test-slow measured"):
        fastq.search(model, lambda m: 1.0, x, 0.0, trials=2, transformations_=["float", SlowT()], pairs=None, **FAST)


def test_summary_says_why_layers_stayed_float(task):
    model, x, evaluate = task
    r = fastq.search(model, evaluate, x, 0.01, objective="size", trials=4, transformations_=QUICK,
                     filter_fn=lambda m, name: name != "4", **FAST)
    notes = dict(fastq.summary(r.model).notes)
    assert notes["4"] == "excluded by filter_fn"
    assert "4" not in r.recipe.layers


def test_group_by_type_shares_one_choice_per_role():
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(64, 128), "down": nn.Linear(128, 64)}) for _ in range(3))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = blocks

        def forward(self, x):
            for b in self.blocks:
                x = x + b["down"](torch.relu(b["up"](x)))
            return x

    model, x = Net().eval(), torch.randn(16, 64)
    with torch.no_grad():
        ref = model(x)
    r = fastq.search(model, lambda m: float(nn.functional.cosine_similarity(m(x), ref, dim=-1).mean()), x, 0.05,
                     objective="size", group_by="type", trials=6, transformations_=QUICK, pairs=None, **FAST)
    study_params = {k for t in r.study.trials for k in t.params}
    assert study_params <= {"blocks.*.up", "blocks.*.down"}
    for t in r.trials:
        for role in ("up", "down"):
            assert len({t.layers.get(f"blocks.{i}.{role}", "float") for i in range(3)}) == 1


def test_channel_pairs_shrink_and_reproduce(task, tmp_path):
    model, x, _ = task
    r = fastq.search(model, lambda m: 1.0, x, 0.0, objective="size", trials=6, transformations_=["float", "w8a8"],
                     channels=["channels-50"], **FAST)
    assert r.recipe.pairs, "halving a pair's channels is smaller, and quality is free here"
    p = r.recipe.pairs[0]
    assert (p["producer"], p["consumer"]) in {("0", "2"), ("2", "4")}
    again = LayerRecipe.from_json(json.loads(json.dumps(r.recipe.to_json()))).apply_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(again(x), r.model(x))
    shrunk = again.get_submodule(p["consumer"])
    assert getattr(shrunk, "in_features", None) in (128, 32)


def test_storage_resumes_and_keeps_every_trial(task, tmp_path):
    model, x, evaluate = task
    url = f"sqlite:///{tmp_path / 'search.db'}"
    kw = dict(objective="size", trials=3, transformations_=QUICK, storage=url, study_name="s", **FAST)
    first = fastq.search(model, evaluate, x, 0.01, **kw)
    second = fastq.search(model, evaluate, x, 0.01, **kw)
    assert len(first.trials) + first.skipped == 3
    assert len(second.trials) + second.skipped == 6 and len(second.trials) >= len(first.trials)
    study = optuna.load_study(study_name="s", storage=url)
    assert len(study.trials) == 6 and "fastq_space" in study.user_attrs


def test_timing_cache_is_reused(task, tmp_path):
    model, x, evaluate = task
    cache = tmp_path / "t.json"
    fastq.search(model, evaluate, x, 1.0, objective="size", trials=2, transformations_=QUICK, timing_cache=cache, **FAST)
    first = json.loads(cache.read_text())
    assert first and all(k.endswith(("float", "w8a8", "int8-wo", "sparse-50")) for k in first)
    fastq.search(model, evaluate, x, 1.0, objective="size", trials=2, transformations_=QUICK, timing_cache=cache, **FAST)
    assert json.loads(cache.read_text()) == first


def test_every_registered_transformation_round_trips_and_configs_are_discovered():
    from dataclasses import dataclass

    from fastq.quantization import api, register_handler

    for t in transformations():
        assert from_spec(json.loads(json.dumps(t.spec())), t.name).spec() == t.spec()

    @dataclass(frozen=True)
    class TinyConfig:
        bits: int = 8

    register_handler(TinyConfig, nn.Linear, lambda m, c: QuantLinear.from_float(m, fastq.Int8WeightOnlyConfig()))
    try:
        found = {t.name: t for t in transformations()}
        assert "tiny" in found and found["tiny"].config == TinyConfig()
        assert from_spec(found["tiny"].spec(), "tiny").config == TinyConfig()
    finally:
        del api._HANDLERS[TinyConfig]


# ---- bad input ------------------------------------------------------------------------------------

def test_evaluate_that_fails_on_the_float_model(task):
    model, x, _ = task
    snap = snapshot(model)

    def boom(m):
        raise RuntimeError("boom")

    with pytest.raises(SearchError, match="raised on the float model: RuntimeError: boom"):
        fastq.search(model, boom, x, 0.01, **FAST)
    with pytest.raises(SearchError, match="returned nan for the float model"):
        fastq.search(model, lambda m: float("nan"), x, 0.01, **FAST)
    with pytest.raises(SearchError, match="must return a number"):
        fastq.search(model, lambda m: "good", x, 0.01, **FAST)
    assert_untouched(model, snap)


def test_trials_that_fail_are_recorded_and_kept_in_storage(task, tmp_path):
    model, x, evaluate = task
    snap = snapshot(model)

    def flaky(m):
        if any(isinstance(k, QuantLinear) for k in m.modules()):
            raise RuntimeError("int8 is not allowed here")
        return evaluate(m)

    url = f"sqlite:///{tmp_path / 'f.db'}"
    r = fastq.search(model, flaky, x, 0.5, objective="size", trials=6, transformations_=QUICK, storage=url, **FAST)
    assert r.failures and all("int8 is not allowed here" in msg for _, msg in r.failures)
    assert not any(v["transform"] in ("w8a8", "int8-wo") for v in r.recipe.layers.values())
    stored = optuna.load_study(study_name="fastq-search", storage=url).trials
    assert len(stored) == 6 and any(t.state == optuna.trial.TrialState.FAIL for t in stored)

    def only_float(m):
        if any(isinstance(k, (QuantLinear, fastq.SparseLinear)) for k in m.modules()):
            raise RuntimeError("no")
        return 1.0

    with pytest.raises(SearchError, match="every trial failed; the first error: evaluate raised RuntimeError: no"):
        fastq.search(model, only_float, x, 0.01, objective="size", trials=3, transformations_=QUICK, pairs=None,
                     **FAST)
    assert_untouched(model, snap)


def test_budget_no_recipe_meets(task, tmp_path):
    model, x, evaluate = task
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(NoRecipeError, match="no compressed recipe keeps the quality within the budget 0") as info:
        fastq.search(model, evaluate, x, 0.0, objective="size", trials=4, transformations_=QUICK, storage=url, **FAST)
    assert len(info.value.result.trials) == 4
    assert len(optuna.load_study(study_name="fastq-search", storage=url).trials) == 4


def test_unreachable_storage_fails_before_any_work(task, tmp_path):
    model, x, evaluate = task
    calls = []
    with pytest.raises(SearchError, match="cannot open the Optuna storage"):
        fastq.search(model, lambda m: calls.append(1) or 1.0, x, 0.01,
                     storage=f"sqlite:///{tmp_path}/no/such/dir/s.db", **FAST)
    with pytest.raises(SearchError, match="cannot open the Optuna storage"):
        fastq.search(model, lambda m: calls.append(1) or 1.0, x, 0.01, storage="nosuchdb://host/x", **FAST)
    assert not calls


def test_nothing_to_compress_and_bad_arguments(task):
    model, x, evaluate = task
    with pytest.raises(SearchError, match="has no layer"):
        fastq.search(nn.Sequential(nn.ReLU()), lambda m: 1.0, x, 0.01, **FAST)
    cases = [
        (dict(objective="latency"), "objective must be"),
        (dict(strategy="genetic"), "strategy must be"),
        (dict(trials=0), "trials must be"),
        (dict(time_limit=-1), "time_limit"),
        (dict(group_by="row"), "group_by"),
        (dict(transformations_=["w4"]), "unknown transformation 'w4'"),
        (dict(pairs=[("0", "nope")]), "pair"),
        (dict(rounds=0), "rounds must be"),
    ]
    for kwargs, match in cases:
        with pytest.raises(SearchError, match=match):
            fastq.search(model, evaluate, x, 0.01, **{**FAST, **kwargs})
    with pytest.raises(SearchError, match=r"forward\(model, example_inputs\) raised RuntimeError"):
        fastq.search(model, evaluate, torch.randn(3, 5), 0.01, **FAST)
    for bad in (-1, "x%", float("nan")):
        with pytest.raises(SearchError, match="budget"):
            fastq.search(model, evaluate, x, bad, **FAST)


def test_budget_units():
    assert Budget.parse("3%") == Budget(0.03, True) and Budget.parse(0.005) == Budget(0.005)
    assert math.isclose(Budget.parse("3%").loss(30.0, 30.9, higher_is_better=False), 0.03)
    assert Budget(0.01).loss(1.0, 0.995, higher_is_better=True) == pytest.approx(0.005)
