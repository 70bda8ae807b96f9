"""``fastq.search``: the fastest (or smallest) per-layer compression within a quality budget.

Invariants:
  * The caller's model is never modified: trials run on one private deep copy (the workspace),
    into which cached per-layer replacements are swapped; every replacement is built once per
    (layer, channel choice, transformation) and reused by every trial that picks it.
  * Speed is measured, never modeled: each distinct layer shape is timed with its candidates on
    this machine (``fastq.recipe_search.timing``); a trial's latency estimate is the measured end-to-end
    fp32 time minus the measured savings of its layers, and the Pareto candidates are finally timed
    end to end (round-robin with fp32), which decides the answer.
  * Faster-or-skip: a transformation is offered for a layer only where it was measured faster by
    ``min_gain`` (or smaller, when the objective is size); layers left float get the reason in the
    recipe's notes (and ``SKIP_ATTR``, printed by ``fastq.summary``).
  * Optuna holds the trials (in memory, SQLite or any database URL), so a search is resumable and
    several workers can share one study; each finished trial is stored as it ends, so an error or
    an interrupt keeps the best-so-far results.
  * Bad input raises ``SearchError`` (or its subclass ``NoRecipeError``, which carries the results)
    with a clear message, before any trial where it can be known before.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from fastq.nn import UnsupportedLayerError
from fastq.recipe_search.recipe import LayerRecipe, set_module
from fastq.recipe_search.space import KeepFloat, LayerContext, channel_transforms, transformations
from fastq.recipe_search.timing import (TimingCache, capture_inputs, default_forward, layer_key, time_candidates,
                                        time_models)

__all__ = ["Budget", "NoRecipeError", "SearchError", "SearchResult", "TrialRecord", "search"]

OBJECTIVES = ("speed", "size")
STRATEGIES = ("tpe", "nsga2", "random", "grid")
FLOAT = "float"


class SearchError(ValueError):
    """The search cannot run or cannot answer (bad arguments, failing evaluate, bad storage)."""


class NoRecipeError(SearchError):
    """No compressed recipe meets the budget (or none is faster / smaller than fp32).

    ``result`` holds everything the search measured (trials, Pareto front), so nothing is lost.
    """

    def __init__(self, message: str, result: "SearchResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Budget:
    """How much worse than the float model the quality metric may get.

    ``value`` is absolute (``0.005``: a cosine of 1.0 may fall to 0.995) or, with ``relative``,
    a fraction of the float score (``Budget.parse("3%")``: perplexity 30.9 may rise to 31.8).
    """

    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise SearchError(f"budget must be a finite number >= 0 (the allowed quality loss), got {v!r}")

    @classmethod
    def parse(cls, budget: Union["Budget", float, int, str]) -> "Budget":
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, str):
            text = budget.strip()
            try:
                return cls(float(text[:-1]) / 100, True) if text.endswith("%") else cls(float(text))
            except ValueError:
                raise SearchError(f"budget {budget!r} is neither a number (absolute loss, e.g. 0.005) nor a "
                                  "percentage (relative loss, e.g. '3%')") from None
        return cls(budget)

    def loss(self, base: float, score: float, higher_is_better: bool) -> float:
        """How much worse ``score`` is than ``base``, in the budget's units (negative: better)."""
        worse = (base - score) if higher_is_better else (score - base)
        return worse / abs(base) if self.relative and base != 0 else worse

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: what it chose and what was measured."""

    number: int
    layers: dict  # layer -> transformation (layers left float omitted)
    pairs: dict  # producer -> channel transformation
    quality: float
    loss: float  # in budget units (see Budget.loss)
    feasible: bool
    latency_s: float  # estimate from measured per-layer timings
    speedup: float  # fp32 latency / latency_s
    size_bytes: int
    measured_speedup: Optional[float] = None  # end-to-end, round-robin with fp32 (Pareto candidates)

    @property
    def changed(self) -> int:
        return len(set(self.layers) | set(self.pairs))


@dataclass
class SearchResult:
    """What ``fastq.search`` found. ``recipe`` and ``model`` are the chosen compression."""

    baseline: dict  # quality, latency_s, size_bytes of the float model
    trials: list  # TrialRecord, every finished trial of the study (all workers)
    pareto: list  # TrialRecord on the (cost, quality loss) Pareto front, by cost
    best: Optional[TrialRecord]
    recipe: Optional[LayerRecipe]
    model: Optional[nn.Module]
    objective: str
    budget: Budget
    notes: dict = field(default_factory=dict)  # layer -> why it stays float in every recipe
    study: Any = None
    failures: list = field(default_factory=list)  # (trial number, error message)
    higher_is_better: bool = True
    seconds: dict = field(default_factory=dict)  # wall time per phase of this call
    skipped: int = 0  # trials not evaluated: they could not beat the best recipe within the budget

    def table(self, which: str = "pareto") -> str:
        """Markdown table of the Pareto front (or ``"all"`` trials), fp32 first."""
        from fastq.benchmarking import format_table

        records = self.pareto if which == "pareto" else sorted(self.trials, key=lambda r: r.number)
        rows = [{"trial": "fp32", "layers": 0, "est. speedup": 1.0, "measured speedup": 1.0,
                 "quality": f"{self.baseline['quality']:.5g}", "loss": "0",
                 "size MB": self.baseline["size_bytes"] / 1e6,
                 "within budget": "yes", "chosen": ""}]
        for r in records:
            rows.append({"trial": str(r.number), "layers": r.changed, "est. speedup": r.speedup,
                         "measured speedup": "" if r.measured_speedup is None else r.measured_speedup,
                         "quality": f"{r.quality:.5g}", "loss": f"{r.loss:.3g}", "size MB": r.size_bytes / 1e6,
                         "within budget": "yes" if r.feasible else "no",
                         "chosen": "<- chosen" if self.best is not None and r.number == self.best.number else ""})
        return format_table(rows)

    def plot(self, path, title: str = "fastq search") -> None:
        """Speed vs quality of every trial, the Pareto front labelled with its size."""
        from fastq.recipe_search.report import plot_search

        plot_search(self, path, title)

    def save_recipe(self, path):
        if self.recipe is None:
            raise SearchError("the search chose no recipe (see the trials table)")
        return self.recipe.save(path)


# ---- grouping -----------------------------------------------------------------------------------

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def _group_key(group_by: Union[str, Callable[[str], str]], name: str) -> str:
    if callable(group_by):
        key = group_by(name)
        if not isinstance(key, str):
            raise SearchError(f"group_by({name!r}) must return a str, got {type(key).__name__}")
        return key
    if group_by == "layer":
        return name
    if group_by == "type":  # encoder.layer.3.attention.self.query -> encoder.layer.*.attention.self.query
        return _INDEX.sub(".*", name)
    if group_by == "block":  # encoder.layer.3.attention.self.query -> encoder.layer.3
        m = _INDEX.search(name)
        return name[:m.end()] if m else name
    raise SearchError(f"group_by must be 'layer', 'type', 'block' or a function name -> group, got {group_by!r}")


# ---- the workspace: one deep copy, cached replacements, measurements ---------------------------

@dataclass
class _Option:
    seconds: float
    nbytes: int
    module: Optional[nn.Module]  # built on the representative layer (None: not built here)


def _module_bytes(m: nn.Module) -> int:
    if hasattr(m, "weight_bytes"):
        return int(m.weight_bytes())
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _input_for(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The captured input cut to a shrunk layer's input width (channel pruning removed inputs)."""
    k = getattr(module, "in_features", None)
    if k is not None and x.shape[-1] != k:
        return x[..., :k].contiguous()
    c = getattr(module, "in_channels", None)
    if c is not None and x.dim() == 4 and x.shape[1] != c:
        return x[:, :c].contiguous()
    return x


class _Workspace:
    def __init__(self, model, names, pairs, transforms, channels, objective, min_gain, rounds, cache, inputs):
        self.model = model  # the search's own deep copy of the caller's model
        self.channel_transforms = {t.name: t for t in channels}
        self.deadline: Optional[float] = None  # perf_counter time after which layers get the short timing only
        self.names, self.pairs, self.transforms = names, pairs, {t.name: t for t in transforms}
        self.objective, self.min_gain, self.rounds, self.cache = objective, min_gain, rounds, cache
        self.original = {n: self.model.get_submodule(n) for n in names}
        self.inputs = inputs
        self.options: dict = {}  # shape key -> {transform: _Option | reason str}
        self.built: dict = {}  # (layer, channel choice, transform) -> module | reason str
        self.shrunk: dict = {}  # (producer, channel transform) -> (producer', consumer') | reason str
        self.consumer_of = {p: c for p, c in pairs}
        self.producer_of = {c: p for p, c in pairs}
        self.current: dict = {}  # layer -> module swapped in now

    # -- measurements --
    def key(self, name: str, base: nn.Module) -> str:
        return layer_key(base, _input_for(self.inputs[name], base), "")

    def measure(self, name: str, base: nn.Module, channel: str = FLOAT) -> dict:
        """Options of ``base`` (layer ``name``, maybe shrunk) for every transformation; timed once per key."""
        key = self.key(name, base)
        if key in self.options:
            return self.options[key]
        x = _input_for(self.inputs[name], base)
        opts: dict = {}
        modules = {FLOAT: base}
        for tname, t in self.transforms.items():
            if tname == FLOAT:
                continue
            reason = t.check(base)
            if reason is None:
                try:
                    modules[tname] = t.apply(base, LayerContext(name, (x,)))
                except UnsupportedLayerError as exc:
                    reason = str(exc)
                except Exception as exc:  # a transformation that fails on this layer: skip it, say why
                    reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                opts[tname] = reason
        with torch.inference_mode():
            want = base(x).shape
            for n in [n for n in modules if n != FLOAT]:
                try:  # a replacement that fails or computes another shape is dropped, with the reason
                    got = modules[n](x).shape
                    if got != want:
                        opts[n] = f"output shape {tuple(got)} != float {tuple(want)}"
                except Exception as exc:
                    opts[n] = f"{type(exc).__name__}: {exc}"
                if n in opts:
                    del modules[n]
        missing = {n: m for n, m in modules.items() if self.cache.get(key + n) is None}
        if missing:
            # Time the float layer with the missing candidates (round-robin), even if cached, so the
            # ratio is from one run: a short pass over all, then the full rounds for the candidates
            # within 25% of float (one clearly slower after 3 rounds cannot end up faster).
            times = time_candidates({FLOAT: base, **missing}, x, rounds=min(3, self.rounds))
            close = {n: m for n, m in missing.items() if n != FLOAT and times[n] <= 1.25 * times[FLOAT]}
            late = self.deadline is not None and time.perf_counter() > self.deadline
            if self.rounds > 3 and close and not late:
                times.update(time_candidates({FLOAT: base, **close}, x, rounds=self.rounds))
            for n, s in times.items():
                if n != FLOAT or self.cache.get(key + FLOAT) is None:
                    self.cache.put(key + n, s)
        for n, m in modules.items():
            opts[n] = _Option(self.cache.get(key + n), _module_bytes(m), m)
            if n != FLOAT:
                self.built[(name, channel, n)] = m
        self.options[key] = opts
        return opts

    def allowed(self, opts: dict, tname: str) -> Optional[str]:
        """None when ``tname`` is kept for a layer with these options, else why it is not."""
        o, f = opts.get(tname), opts[FLOAT]
        if o is None:
            return f"{tname} is not in the search space"
        if isinstance(o, str):
            return f"{tname} cannot take this layer: {o}"
        if self.objective == "size":
            return None if o.nbytes < f.nbytes else f"{tname} is not smaller here ({o.nbytes} B vs {f.nbytes} B float)"
        if o.seconds <= f.seconds * (1.0 - self.min_gain):
            return None
        return f"{tname} measured {o.seconds / f.seconds:.2f}x the float time here ({1e6 * o.seconds:.0f} us vs " \
               f"{1e6 * f.seconds:.0f} us)"

    # -- building --
    def pair_modules(self, producer: str, channel: str) -> Union[tuple, str]:
        if channel == FLOAT:
            return self.original[producer], self.original[self.consumer_of[producer]]
        key = (producer, channel)
        if key not in self.shrunk:
            t = self.channel_transforms.get(channel)
            if t is None:
                return f"{channel} is not in the search space"
            try:
                self.shrunk[key] = t.apply_pair(self.original[producer], self.original[self.consumer_of[producer]])
            except UnsupportedLayerError as exc:
                self.shrunk[key] = str(exc)
        return self.shrunk[key]

    def base(self, name: str, channels: dict) -> tuple[nn.Module, str, Optional[str]]:
        """(float module of ``name`` under the channel choices, channel choice, reason if not shrunk)."""
        producer = name if name in self.consumer_of else self.producer_of.get(name)
        channel = channels.get(producer, FLOAT) if producer is not None else FLOAT
        if channel == FLOAT:
            return self.original[name], FLOAT, None
        pair = self.pair_modules(producer, channel)
        if isinstance(pair, str):
            return self.original[name], FLOAT, f"{channel} cannot take this pair: {pair}"
        return pair[0] if name == producer else pair[1], channel, None

    def module(self, name: str, base: nn.Module, channel: str, tname: str) -> Union[nn.Module, str]:
        key = (name, channel, tname)
        if key not in self.built:
            try:
                x = _input_for(self.inputs[name], base)
                self.built[key] = self.transforms[tname].apply(base, LayerContext(name, (x,)))
            except UnsupportedLayerError as exc:
                self.built[key] = str(exc)
            except Exception as exc:
                self.built[key] = f"{type(exc).__name__}: {exc}"
        return self.built[key]

    def assemble(self, choice: dict, channels: dict) -> dict:
        """Swap the chosen modules in; returns layers used, notes, and the measured costs."""
        used, notes, saved_s, saved_b = {}, {}, 0.0, 0
        pairs_used = {}
        for name in self.names:
            base, channel, why = self.base(name, channels)
            if why is not None:
                notes[name] = why
            elif channel != FLOAT and name in self.consumer_of:
                pairs_used[name] = channel
            opts = self.measure(name, base, channel)
            orig = self.measure(name, self.original[name])[FLOAT]
            tname = choice.get(name, FLOAT)
            mod = base
            if tname != FLOAT:
                reason = self.allowed(opts, tname)
                built = self.module(name, base, channel, tname) if reason is None else reason
                if isinstance(built, str):
                    notes[name] = f"search: kept float: {built}" if reason is None else f"search: kept float: {reason}"
                    tname = FLOAT
                else:
                    mod = built
            if tname != FLOAT:
                used[name] = tname
            o = opts[tname]
            saved_s += orig.seconds - o.seconds
            saved_b += orig.nbytes - o.nbytes
            if self.current.get(name) is not mod:
                set_module(self.model, name, mod)
                self.current[name] = mod
        return {"layers": used, "pairs": pairs_used, "notes": notes, "saved_s": saved_s, "saved_bytes": saved_b}


# ---- the search ---------------------------------------------------------------------------------

def _layers(model: nn.Module, transforms: list, filter_fn) -> tuple[dict, dict]:
    """(name -> module the search may change, name -> why a candidate layer is left out)."""
    found, left, seen = {}, {}, set()
    for name, m in model.named_modules():
        if not name or not any(t.check(m) is None for t in transforms if not isinstance(t, KeepFloat)):
            continue
        if id(m) in seen:
            left[name] = "shared with another layer name (searched once, under its first name)"
            continue
        seen.add(id(m))
        if filter_fn is not None and not filter_fn(m, name):
            left[name] = "excluded by filter_fn"
            continue
        found[name] = m
    return found, left


def _default_pairs(model: nn.Module, names: dict) -> list:
    """(producer, consumer) FFN pairs: torch.fx when the model traces, else transformers' BERT names."""
    from fastq.pruning import find_pairs

    try:
        found, _ = find_pairs(model)
        pairs = [(p.producer, p.consumer) for p in found if p.batchnorm is None]
    except ValueError:
        pairs = [(n, n.replace(".intermediate.dense", ".output.dense")) for n in names
                 if n.endswith(".intermediate.dense") and n.replace(".intermediate.dense", ".output.dense") in names]
    return _disjoint([(p, c) for p, c in pairs if p in names and c in names])


def _disjoint(pairs: list) -> list:
    """Pairs sharing no layer (in a chain a -> b -> c, b cannot be shrunk as a consumer and as a
    producer at once): the first of overlapping pairs wins."""
    used, out = set(), []
    for p, c in pairs:
        if p not in used and c not in used:
            out.append((p, c))
            used.update((p, c))
    return out


def _open_storage(storage):
    import optuna

    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, str):
        try:
            return optuna.storages.RDBStorage(storage)
        except Exception as exc:  # sqlalchemy / driver errors of every kind
            raise SearchError(f"cannot open the Optuna storage {storage!r}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return storage


def _check_score(value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SearchError(f"evaluate(model) must return a number, got {type(value).__name__} {what}")
    if not math.isfinite(value):
        raise SearchError(f"evaluate(model) returned {value} {what}")
    return float(value)


class _TrialFailed(Exception):
    pass


def _pareto(records: list, cost: Callable) -> list:
    """Records not dominated in (cost, loss), by cost."""
    front = []
    for r in records:
        if not any(cost(o) <= cost(r) and o.loss <= r.loss and (cost(o) < cost(r) or o.loss < r.loss)
                   for o in records):
            front.append(r)
    return sorted(front, key=cost)


def search(model: nn.Module, evaluate: Callable[[nn.Module], float], example_inputs: Any,
           budget: Union[Budget, float, str], *, objective: str = "speed", strategy: str = "tpe", trials: int = 50,
           time_limit: Optional[float] = None, transformations_: Optional[Sequence] = None,
           group_by: Union[str, Callable[[str], str]] = "layer", pairs: Union[str, Sequence, None] = "auto",
           channels: Optional[Sequence[str]] = None, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
           higher_is_better: bool = True, storage=None, study_name: str = "fastq-search", seed: int = 0,
           forward: Callable = default_forward, rounds: int = 15, min_gain: float = 0.03,
           timing_cache=None, verify: int = 3, verify_rounds: int = 10, progress: Optional[bool] = None
           ) -> SearchResult:
    """Choose a transformation per layer (or group of layers) for the fastest (or smallest) model
    whose quality stays within ``budget`` of the float model's.

    Args:
        model: the float model; never modified (the search works on a deep copy).
        evaluate: ``evaluate(model) -> float``, the quality metric (called with gradients off).
        example_inputs: what ``forward(model, example_inputs)`` runs to time the model: a batch as
            it will be served (a tensor, a tuple of positional inputs, or a dict of keyword inputs).
        budget: the allowed quality loss: a number (absolute, e.g. 0.005 on a cosine) or a
            percentage string ("3%", relative to the float score), or a ``Budget``.
        objective: "speed" (minimize measured latency) or "size" (minimize bytes).
        strategy: "tpe" (Bayesian, one objective, quality as a constraint), "nsga2" (the
            cost/quality Pareto front), "random" or "grid".
        trials: trials to run in this call (more may already be in ``storage``).
        time_limit: seconds for the whole call (timing and trials); None: no limit.
        transformations_: names (or ``Transformation`` objects) to choose among; default: every
            registered default (``fastq.recipe_search.transformations()``).
        group_by: "layer" (one choice per layer), "type" (one per layer role across blocks:
            every ``encoder.layer.*.attention.self.query`` alike), "block" (one per numbered block),
            or a function ``name -> group``.
        pairs: channel-pruning pairs: "auto" (traced, or transformers' BERT FFN names), None (no
            channel pruning), or a list of ``(producer, consumer)`` names.
        channels: channel-pruning choices by name (default all registered ``ChannelPrune``).
        filter_fn: ``(module, name) -> bool``; False keeps that layer float.
        higher_is_better: whether a larger ``evaluate`` is better (cosine) or worse (perplexity).
        storage: None (in memory), an Optuna storage, or a database URL ("sqlite:///search.db",
            "postgresql://..."): a study stored there is resumed, and other workers may join it.
        study_name: the study in ``storage``.
        seed: sampler seed.
        forward: ``forward(model, example_inputs)``; default calls ``model(x)`` / ``model(*x)`` / ``model(**x)``.
        rounds: timing rounds per layer shape; verify_rounds: end-to-end rounds of the candidates.
        min_gain: a transformation must be measured at least this fraction faster than float on a
            layer to be offered there (speed objective).
        timing_cache: a JSON file of per-layer timings to reuse and extend (optional).
        verify: how many Pareto candidates to time end to end.
        progress: tqdm bars (None: when writing to a terminal).

    Returns:
        A SearchResult: ``best`` (the chosen trial), ``recipe`` (a LayerRecipe: ``save`` it, or
        ``fastq compress --recipe FILE``), ``model`` (a compressed copy), ``pareto``, ``table()``,
        ``plot(path)``.

    Raises:
        SearchError: bad arguments, an evaluate that fails or returns NaN on the float model, an
            unreachable storage, a model with nothing to compress, every trial failing.
        NoRecipeError: no compressed recipe within the budget (or none faster / smaller than
            fp32); ``exc.result`` holds the trials.
    """
    try:
        import optuna
    except ImportError:
        raise SearchError("fastq.search needs Optuna: pip install optuna (or \"fastq-compress[search]\")") from None
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise SearchError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise SearchError("evaluate must be a callable model -> float")
    if objective not in OBJECTIVES:
        raise SearchError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if strategy not in STRATEGIES:
        raise SearchError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SearchError(f"trials must be an int >= 1, got {trials!r}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
        raise SearchError(f"time_limit must be a number of seconds > 0 (or None), got {time_limit!r}")
    if not (0.0 <= min_gain < 1.0):
        raise SearchError(f"min_gain must be in [0, 1), got {min_gain!r}")
    for name, v in (("rounds", rounds), ("verify", verify), ("verify_rounds", verify_rounds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SearchError(f"{name} must be an int >= 1, got {v!r}")
    _group_key(group_by, "probe.0.x")  # validates group_by
    budget = Budget.parse(budget)
    try:
        transforms = transformations(transformations_)
        chan = channel_transforms(channels) if pairs is not None else []
    except ValueError as exc:
        raise SearchError(str(exc)) from None
    storage = _open_storage(storage)  # before anything slow: an unreachable database fails fast

    layers, left_out = _layers(model, transforms, filter_fn)
    if not layers:
        raise SearchError(f"{type(model).__name__} has no layer the transformations "
                          f"{[t.name for t in transforms if t.name != FLOAT]} can take (fastq transforms nn.Linear / "
                          "nn.Conv2d layers)")
    pair_list = _default_pairs(model, layers) if pairs == "auto" else list(pairs or ())
    for p in pair_list:
        if len(p) != 2 or p[0] not in layers or p[1] not in layers:
            raise SearchError(f"pair {p!r}: both names must be layers the search may change")
    if not chan:
        pair_list = []
    if len(_disjoint(pair_list)) != len(pair_list):
        raise SearchError(f"pairs {pair_list} share layers; each layer may be in one (producer, consumer) pair")
    show = progress

    # The float model: quality and end-to-end time (the workspace is a private deep copy).
    cache = TimingCache(timing_cache)
    work = copy.deepcopy(model)  # the workspace: hooks and swaps happen here, never on the caller's model
    try:
        captured = capture_inputs(work, {n: work.get_submodule(n) for n in layers}, example_inputs, forward)
    except Exception as exc:
        raise SearchError(f"forward(model, example_inputs) raised {type(exc).__name__}: {exc}; example_inputs is "
                          "what the model is timed on: a tensor, a tuple of positional inputs or a dict of keyword "
                          "inputs (or pass forward=)") from exc
    not_run = [n for n in layers if n not in captured]
    for n in not_run:
        left_out[n] = "not called by forward(model, example_inputs), so it cannot be timed"
        layers.pop(n)
    pair_list = [p for p in pair_list if p[0] in layers and p[1] in layers]
    ws = _Workspace(work, list(layers), pair_list, transforms, chan, objective, min_gain, rounds, cache, captured)
    try:
        with torch.no_grad():
            base_quality = _check_score(evaluate(ws.model), "for the float model")
    except SearchError:
        raise
    except Exception as exc:
        raise SearchError(f"evaluate(model) raised on the float model: {type(exc).__name__}: {exc}") from exc
    # fp32's time here only scales the per-layer estimates; the end-to-end check times it again.
    fp32_samples = time_models({"fp32": ws.model}, example_inputs, forward=forward, rounds=3)["fp32"]
    from fastq.benchmarking import median
    from fastq.quantization import summary

    t_fp32 = median(fp32_samples)
    size_fp32 = summary(model).total_bytes
    phases = {"float model": time.perf_counter() - t_start}
    # Under a time limit: layer timing gets the full rounds until 35% of the limit has passed, and
    # the end-to-end check keeps the time its rounds need (fewer rounds when the limit is short).
    if time_limit is not None:
        ws.deadline = t_start + 0.35 * time_limit
        per_round = (1 + verify) * t_fp32
        verify_rounds = max(3, min(verify_rounds, int(0.2 * time_limit / max(per_round, 1e-9)) - 1))
    reserve = (1 + verify) * (verify_rounds + 1) * t_fp32 * 1.2

    # Per-layer measurements (once per distinct layer shape) and the faster-or-skip choices.
    keys = {}
    for n in ws.names:
        keys.setdefault(ws.key(n, ws.original[n]), n)
    for n in tqdm(list(keys.values()), desc="timing layers", unit="shape", disable=_disable(show)):
        ws.measure(n, ws.original[n])
    cache.save()
    phases["layer timing"] = time.perf_counter() - t_start - sum(phases.values())
    groups: dict = {}
    for n in ws.names:
        groups.setdefault(_group_key(group_by, n), []).append(n)
    skip_notes = {}
    space: dict = {}
    for g, names in groups.items():
        choices = [FLOAT]
        for tname in ws.transforms:
            if tname != FLOAT and any(ws.allowed(ws.measure(n, ws.original[n]), tname) is None for n in names):
                choices.append(tname)
        if len(choices) > 1:
            space[g] = choices
        else:
            for n in names:
                opts = ws.measure(n, ws.original[n])
                why = "; ".join(ws.allowed(opts, t) for t in ws.transforms if t != FLOAT)
                better = "smaller" if objective == "size" else "faster"
                skip_notes[n] = (f"search: kept float: no transformation measured {better} here ({why})" if why
                                 else "search: kept float: no transformation to try")
    pair_groups: dict = {}
    for p, c in pair_list:
        pair_groups.setdefault("channels:" + _group_key(group_by, p), []).append(p)
    for g, producers in pair_groups.items():
        space[g] = [FLOAT] + [t.name for t in chan]
    if not space:
        taken = any(isinstance(o, _Option) for opts in ws.options.values() for t, o in opts.items() if t != FLOAT)
        what = (f"no transformation is measured {'smaller' if objective == 'size' else 'faster'} than float on any "
                f"layer of {type(model).__name__} here" if taken else
                f"{type(model).__name__} has no layer any transformation can take (nothing to compress)")
        raise SearchError(what + "; reasons: " + "; ".join(f"{n}: {r.removeprefix('search: kept float: ')}"
                                                           for n, r in list(skip_notes.items())[:3]))

    # The study: resumed when it exists (its stored space wins, so every worker samples alike).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    directions = ["minimize", "minimize"] if strategy == "nsga2" else ["minimize"]

    # The quality budget is a constraint the samplers see: Trial.set_constraint (Optuna >= 5), or
    # constraints_func on older Optuna.
    new_api = hasattr(optuna.trial.Trial, "set_constraint")
    constraints = {} if new_api else {
        "constraints_func": lambda ft: [ft.user_attrs.get("loss", math.inf) - budget.value]}
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                                  n_startup_trials=min(10, max(2, trials // 4)), **constraints),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 4)),
                                                       **constraints),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(space, seed=seed),
    }[strategy]()
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, sampler=sampler,
                                    load_if_exists=True)
    except Exception as exc:
        raise SearchError(f"cannot create or load study {study_name!r}: {type(exc).__name__}: {exc}") from None
    stored = study.user_attrs.get("fastq_space")
    if stored is None:
        study.set_user_attr("fastq_space", space)
        study.set_user_attr("fastq_baseline", {"quality": base_quality, "latency_s": t_fp32, "size_bytes": size_fp32,
                                               "objective": objective, "budget": str(budget)})
    elif stored != space:
        space = stored  # another worker's measurements defined the space; choices not allowed here fall back

    param_groups = {g: names for g, names in groups.items() if g in space}
    # A trial's latency: the fp32 time with the measured per-layer savings taken off. Isolated layer
    # timings can sum above the end-to-end time on a loaded machine; the estimate then scales them
    # to it (rest = 0) instead of going negative.
    sum_float_s = sum(ws.measure(n, ws.original[n])[FLOAT].seconds for n in ws.names)
    rest_s = max(0.0, t_fp32 - sum_float_s)

    def choice_of(params: dict) -> tuple[dict, dict]:
        layer_choice = {n: params[g] for g, names in param_groups.items() if g in params for n in names}
        channel_choice = {p: params[g] for g, ps in pair_groups.items() if g in params for p in ps}
        return layer_choice, channel_choice

    # Evaluations are the expensive part of a trial: a model built before (other choices can fall
    # back to the same layers) reuses its score, and with one objective a trial that cannot beat
    # the cheapest recipe within the budget so far is not evaluated at all (it ends "pruned").
    scores: dict = {}
    cost_attr = "latency_s" if objective == "speed" else "size_bytes"
    incumbent = [min((t.user_attrs[cost_attr] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                      and t.user_attrs.get("loss", math.inf) <= budget.value and t.user_attrs.get("layers")),
                     default=math.inf)]

    def objective_fn(trial):
        params = {g: trial.suggest_categorical(g, choices) for g, choices in space.items()}
        layer_choice, channel_choice = choice_of(params)
        built = ws.assemble(layer_choice, channel_choice)
        latency = t_fp32 * (rest_s + sum_float_s - built["saved_s"]) / (rest_s + sum_float_s)
        size = size_fp32 - built["saved_bytes"]
        cost = latency if objective == "speed" else float(size)
        trial.set_user_attr("layers", built["layers"])
        trial.set_user_attr("pairs", built["pairs"])
        trial.set_user_attr("latency_s", latency)
        trial.set_user_attr("size_bytes", size)
        if strategy != "nsga2" and cost >= incumbent[0]:
            raise optuna.TrialPruned("cannot beat the best recipe within the budget so far")
        signature = (tuple(sorted(built["layers"].items())), tuple(sorted(built["pairs"].items())))
        try:
            if signature not in scores:
                with torch.no_grad():
                    scores[signature] = _check_score(evaluate(ws.model), f"in trial {trial.number}")
            score = scores[signature]
        except Exception as exc:  # recorded on the trial (FAIL) and in the result; the search goes on
            msg = str(exc) if isinstance(exc, SearchError) else f"evaluate raised {type(exc).__name__}: {exc}"
            trial.set_user_attr("error", msg)
            raise _TrialFailed(msg) from exc
        loss = budget.loss(base_quality, score, higher_is_better)
        if loss <= budget.value and (built["layers"] or built["pairs"]):
            incumbent[0] = min(incumbent[0], cost)
        trial.set_user_attr("quality", score)
        trial.set_user_attr("loss", loss)
        if new_api:
            trial.set_constraint("quality", loss - budget.value)
        return (cost, loss) if strategy == "nsga2" else cost

    if strategy != "grid" and not study.trials:
        for params in _seeds(space, ws, groups)[:max(1, trials // 2)]:
            study.enqueue_trial(params, skip_if_exists=True)

    remaining = None if time_limit is None else max(1e-3, time_limit - (time.perf_counter() - t_start) - reserve)
    bar = tqdm(total=trials, desc="search trials", unit="trial", disable=_disable(show))

    def on_trial(st, ft):
        bar.update(1)
        ok = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE
              and t.user_attrs.get("loss", math.inf) <= budget.value]
        if ok:
            best = min(t.user_attrs["latency_s" if objective == "speed" else "size_bytes"] for t in ok)
            bar.set_postfix_str(f"best within budget: {t_fp32 / best:.2f}x (est.)" if objective == "speed"
                                else f"best within budget: {best / 1e6:.1f} MB")

    try:
        study.optimize(objective_fn, n_trials=trials, timeout=remaining, catch=(_TrialFailed,), callbacks=[on_trial],
                       gc_after_trial=False)
    finally:
        bar.close()
        cache.save()
    phases["trials"] = time.perf_counter() - t_start - sum(phases.values())
    result = _finish(study, ws, model, example_inputs, forward, budget, objective, higher_is_better, t_fp32, size_fp32,
                     base_quality, {**skip_notes, **left_out}, verify, verify_rounds, phases)
    return result


def _disable(progress: Optional[bool]) -> Optional[bool]:
    return None if progress is None else not progress


def _seeds(space: dict, ws: _Workspace, groups: dict) -> list:
    """First trials: each transformation everywhere it is offered, then the fastest choice per group."""
    seeds = []
    names = [t for t in ws.transforms if t != FLOAT]
    for tname in names:
        params = {g: (tname if tname in ch else FLOAT) for g, ch in space.items()}
        if any(v != FLOAT for v in params.values()):
            seeds.append(params)
    fastest = {}
    for g, ch in space.items():
        if g.startswith("channels:"):
            fastest[g] = FLOAT
            continue
        n = groups[g][0]
        opts = ws.measure(n, ws.original[n])
        ok = [c for c in ch if c == FLOAT or ws.allowed(opts, c) is None]
        attr = "seconds" if ws.objective == "speed" else "nbytes"
        fastest[g] = min(ok, key=lambda c: getattr(opts[c], attr))
    seeds.insert(0, fastest)
    unique = []
    for s in seeds:
        if s not in unique:
            unique.append(s)
    return unique


def _records(study, budget: Budget, t_fp32: float) -> tuple[list, list]:
    import optuna

    records, failures = [], []
    for t in study.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            continue
        if t.state == optuna.trial.TrialState.FAIL:
            failures.append((t.number, t.user_attrs.get("error", "failed")))
        if t.state != optuna.trial.TrialState.COMPLETE or "loss" not in t.user_attrs:
            continue
        a = t.user_attrs
        records.append(TrialRecord(t.number, dict(a["layers"]), dict(a.get("pairs", {})), a["quality"], a["loss"],
                                   a["loss"] <= budget.value, a["latency_s"], t_fp32 / a["latency_s"],
                                   int(a["size_bytes"])))
    return records, failures


def _finish(study, ws, model, example_inputs, forward, budget, objective, higher_is_better, t_fp32, size_fp32,
            base_quality, notes, verify, verify_rounds, phases) -> SearchResult:
    from fastq.benchmarking import median

    t0 = time.perf_counter()

    records, failures = _records(study, budget, t_fp32)
    baseline = {"quality": base_quality, "latency_s": t_fp32, "size_bytes": size_fp32}
    cost = (lambda r: r.latency_s) if objective == "speed" else (lambda r: r.size_bytes)
    import optuna

    result = SearchResult(baseline, records, _pareto(records, cost), None, None, None, objective, budget, notes, study,
                          failures, higher_is_better, phases,
                          sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials))
    if not records:
        first = failures[0][1] if failures else "no trial finished (time limit too short?)"
        raise SearchError(f"every trial failed; the first error: {first}")
    feasible = [r for r in records if r.feasible and r.changed]
    if not feasible:
        closest = min(records, key=lambda r: r.loss)
        raise NoRecipeError(f"no compressed recipe keeps the quality within the budget {budget} of the float model's "
                            f"{base_quality:.5g} in {len(records)} trials; the closest, trial {closest.number}, scores "
                            f"{closest.quality:.5g} (loss {closest.loss:.3g}); raise the budget, run more trials, or "
                            "allow fewer layers (filter_fn)", result)

    # End-to-end check: time the best feasible Pareto candidates round-robin with fp32.
    front = _pareto(feasible, cost)[:max(1, verify)]
    candidates = {}
    for r in front:
        m = copy.deepcopy(model)
        _recipe_from(r, ws, notes, {}).apply_(m, ws.inputs)
        candidates[f"trial {r.number}"] = m
    samples = time_models({"fp32": model, **candidates}, example_inputs, forward=forward, rounds=verify_rounds)
    t_ref = median(samples["fp32"])
    measured = {r.number: t_ref / median(samples[f"trial {r.number}"]) for r in front}
    phases["end-to-end check"] = time.perf_counter() - t0
    records = [_with_measured(r, measured) for r in records]
    result.trials = records
    result.pareto = [_with_measured(r, measured) for r in result.pareto]
    verified = [_with_measured(r, measured) for r in front]
    if objective == "speed":
        best = max(verified, key=lambda r: r.measured_speedup)
        if best.measured_speedup <= 1.0:
            raise NoRecipeError(f"no recipe within the budget is faster than fp32 end to end (best measured "
                                f"{best.measured_speedup:.2f}x, trial {best.number})", result)
    else:
        best = min(verified, key=lambda r: r.size_bytes)
    meta = {"objective": objective, "budget": str(budget), "quality": best.quality, "float_quality": base_quality,
            "higher_is_better": higher_is_better, "trial": best.number, "measured_speedup": best.measured_speedup,
            "size_bytes": best.size_bytes, "float_size_bytes": size_fp32, "threads": torch.get_num_threads(),
            "cpu_isa": _isa(), "model_class": type(model).__name__}
    result.best = best
    result.recipe = _recipe_from(best, ws, notes, meta)
    result.model = candidates[f"trial {best.number}"]
    return result


def _isa() -> str:
    import fastq

    return fastq.cpu_isa()


def _with_measured(r: TrialRecord, measured: dict) -> TrialRecord:
    from dataclasses import replace

    return replace(r, measured_speedup=measured[r.number]) if r.number in measured else r


def _recipe_from(r: TrialRecord, ws: _Workspace, notes: dict, meta: dict) -> LayerRecipe:
    """The LayerRecipe of a trial (re-assembled here, so notes say why each other layer stayed float)."""
    built = ws.assemble(dict(r.layers), dict(r.pairs))
    layers = {n: {"transform": t, "spec": ws.transforms[t].spec()} for n, t in built["layers"].items()}
    pairs = [{"producer": p, "consumer": ws.consumer_of[p], "transform": c, "spec": ws.channel_transforms[c].spec()}
             for p, c in built["pairs"].items()]
    why = {}
    for n in ws.names:
        if n in built["layers"]:
            continue
        why[n] = built["notes"].get(n) or notes.get(n) or \
            "search: kept float: the recipe chosen within the quality budget leaves this layer float"
    why.update({n: reason for n, reason in notes.items() if n not in ws.original})
    return LayerRecipe(layers, pairs, why, meta)
