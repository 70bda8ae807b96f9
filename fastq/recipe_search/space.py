"""The transformations ``fastq.search`` chooses among, per layer: a registry keyed by name.

Invariants:
  * A ``Transformation`` turns ONE float layer into its replacement and never modifies the layer it
    is given (``apply`` works on a private deep copy where the underlying API is in place, such as
    ``prune_``). It raises ``UnsupportedLayerError`` with a reason for a layer it cannot take.
  * ``spec()`` is plain JSON and ``from_spec(t.spec())`` rebuilds an equal transformation: a search
    recipe stores specs, so ``fastq compress --recipe FILE`` rebuilds exactly what the search chose.
  * Quantization configs plug in with no code here: every config type registered with
    ``fastq.quantization.register_handler`` and not already named in the registry joins the search
    space as ``Quantize(config_type())`` (or the configs its ``search_candidates()`` classmethod
    returns). Other kinds of transformation register an instance with ``register`` and a spec reader
    with ``register_kind``.
  * ``ChannelPrune`` acts on a (producer, consumer) pair, not on one layer; the search applies it
    first and then the per-layer choice to each of the two (shrunk) layers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Callable, ClassVar, Optional

from torch import nn

from fastq.nn import UnsupportedLayerError

__all__ = ["ChannelPrune", "KeepFloat", "LayerContext", "Quantize", "SparsePrune", "Transformation",
           "channel_transforms", "from_spec", "register", "register_config", "register_kind", "transformations"]


@dataclasses.dataclass(frozen=True)
class LayerContext:
    """What a transformation may use besides the layer: its qualified name and one captured input
    (a batch of real activations from ``example_inputs``, for transformations that calibrate)."""

    name: str = ""
    inputs: tuple = ()


class Transformation:
    """One way to transform one layer. Subclasses set ``kind`` and implement the four methods."""

    kind: ClassVar[str] = ""
    name: str

    def spec(self) -> dict:
        """JSON-able description, including ``"kind"``; ``from_spec`` reads it back."""
        raise NotImplementedError

    def check(self, module: nn.Module) -> Optional[str]:
        """None when ``apply`` may take ``module`` (by type and shape), else the reason it cannot."""
        raise NotImplementedError

    def apply(self, module: nn.Module, context: LayerContext = LayerContext()) -> nn.Module:
        """The replacement of ``module`` (which is left as it was)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _plain_layer(module: nn.Module) -> Optional[str]:
    if type(module) not in _LAYER_TYPES:
        return f"{type(module).__name__} is not a plain nn.Linear / nn.Conv2d"
    return None


class KeepFloat(Transformation):
    """Leave the layer as it is (the reference every other choice is measured against)."""

    kind = "float"

    def __init__(self, name: str = "float") -> None:
        self.name = name

    def spec(self) -> dict:
        return {"kind": self.kind}

    def check(self, module):
        return None

    def apply(self, module, context=LayerContext()):
        return module


class Quantize(Transformation):
    """``quantize_``'s handler for ``config`` applied to one layer (any registered config type)."""

    kind = "quantize"

    def __init__(self, name: str, config) -> None:
        from fastq.quantization import config_types

        if type(config) not in config_types():
            raise TypeError(f"Quantize({name!r}): {type(config).__name__} has no quantize_ handler; register one "
                            "with fastq.quantization.register_handler first")
        self.name, self.config = name, config

    def spec(self) -> dict:
        return {"kind": self.kind, "config": type(self.config).__name__,
                "args": _jsonable(dataclasses.asdict(self.config))}

    def check(self, module):
        from fastq.quantization import handler_for

        if handler_for(module, self.config) is None:
            return f"{type(self.config).__name__} has no handler for {type(module).__name__}"
        return None

    def apply(self, module, context=LayerContext()):
        from fastq.quantization import handler_for

        handler = handler_for(module, self.config)
        if handler is None:
            raise UnsupportedLayerError(self.check(module))
        # A private copy: a handler may reuse or change the module it is given (module.half()),
        # and the search keeps the float layer to build the other choices from.
        return handler(copy.deepcopy(module), self.config)

    @staticmethod
    def from_spec(spec: dict, name: str) -> "Quantize":
        from fastq.quantization import config_types

        by_name = {c.__name__: c for c in config_types()}
        cls = by_name.get(spec.get("config"))
        if cls is None:
            raise ValueError(f"unknown quantization config {spec.get('config')!r}; this fastq has {sorted(by_name)}")
        return Quantize(name, cls(**_from_json(spec.get("args", {}))))


class SparsePrune(Transformation):
    """One-shot magnitude pruning of the layer, stored in a sparse format (``SparseLinear`` /
    ``SparseConv2d``): ``prune_`` then ``sparsify_`` on one layer."""

    kind = "sparse"

    def __init__(self, name: str, pattern: str = "unstructured", sparsity: Optional[float] = None,
                 int8: bool = False, format: Optional[str] = None) -> None:
        from fastq.pruning import PruneConfig

        self.prune_config = PruneConfig(sparsity=sparsity, pattern=pattern)  # validates
        self.name, self.int8, self.format = name, bool(int8), format

    def spec(self) -> dict:
        c = self.prune_config
        return {"kind": self.kind, "pattern": c.pattern, "sparsity": c.sparsity, "int8": self.int8,
                "format": self.format}

    def check(self, module):
        reason = _plain_layer(module)
        if reason is None and isinstance(module, nn.Conv2d) and module.groups != 1:
            reason = "grouped convolutions have no sparse kernel"
        return reason

    def apply(self, module, context=LayerContext()):
        from fastq.nn import SparseConv2d, SparseLinear
        from fastq.pruning import prune_

        reason = self.check(module)
        if reason:
            raise UnsupportedLayerError(reason)
        box = nn.Sequential(copy.deepcopy(module))
        try:
            prune_(box, self.prune_config)
            cls = SparseLinear if isinstance(module, nn.Linear) else SparseConv2d
            return cls.from_float(box[0], int8=self.int8, format=self.format)
        except ValueError as exc:  # a pattern that does not divide the layer, a format it cannot hold
            raise UnsupportedLayerError(str(exc)) from None

    @staticmethod
    def from_spec(spec: dict, name: str) -> "SparsePrune":
        return SparsePrune(name, spec.get("pattern", "unstructured"), spec.get("sparsity"), spec.get("int8", False),
                           spec.get("format"))


class ChannelPrune(Transformation):
    """Structured pruning of a (producer, consumer) pair: ``prune_channels_`` removes the producer's
    output channels of lowest L1 norm and the matching consumer inputs (a smaller dense pair)."""

    kind = "channels"

    def __init__(self, name: str, sparsity: float) -> None:
        from fastq.pruning import PruneConfig

        self.prune_config = PruneConfig(sparsity=sparsity, pattern="channels")
        self.name = name

    def spec(self) -> dict:
        return {"kind": self.kind, "sparsity": self.prune_config.sparsity}

    def check(self, module):
        return _plain_layer(module)

    def apply(self, module, context=LayerContext()):
        raise TypeError("ChannelPrune acts on a (producer, consumer) pair: use apply_pair")

    def apply_pair(self, producer: nn.Module, consumer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Shrunk copies of ``(producer, consumer)``; the originals are left as they were."""
        from fastq.pruning import prune_channels_

        for m in (producer, consumer):
            reason = self.check(m)
            if reason:
                raise UnsupportedLayerError(reason)
        box = nn.Module()
        box.p, box.c = copy.deepcopy(producer), copy.deepcopy(consumer)
        try:
            prune_channels_(box, self.prune_config, pairs=[("p", "c")])
        except ValueError as exc:
            raise UnsupportedLayerError(str(exc)) from None
        return box.p, box.c

    @staticmethod
    def from_spec(spec: dict, name: str) -> "ChannelPrune":
        return ChannelPrune(name, spec["sparsity"])


# ---- the registry -------------------------------------------------------------------------------

_KINDS: dict[str, Callable[[dict, str], Transformation]] = {
    "float": lambda spec, name: KeepFloat(name),
    "quantize": Quantize.from_spec,
    "sparse": SparsePrune.from_spec,
    "channels": ChannelPrune.from_spec,
}
_REGISTRY: dict[str, Transformation] = {}
_DEFAULT: set = set()  # names searched when the caller names none


def register_kind(kind: str, from_spec: Callable[[dict, str], Transformation]) -> None:
    """Teach ``from_spec`` a new kind of transformation: ``from_spec(spec, name) -> Transformation``."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty str, got {kind!r}")
    _KINDS[kind] = from_spec


def register(t: Transformation, default: bool = True) -> Transformation:
    """Add ``t`` to the search space under ``t.name`` (replacing one of the same name).

    Args:
        t: the transformation; its spec must round-trip through ``from_spec``.
        default: searched when ``fastq.search`` is not given ``transformations=``; otherwise only
            when named there.
    """
    if not isinstance(t, Transformation):
        raise TypeError(f"register expects a fastq.recipe_search.Transformation, got {type(t).__name__}")
    if not isinstance(t.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._:+-]*", t.name):
        raise ValueError(f"transformation names are lower case without spaces (a-z 0-9 . _ : + -), got {t.name!r}")
    _check_round_trip(t)
    _REGISTRY[t.name] = t
    (_DEFAULT.add if default else _DEFAULT.discard)(t.name)
    return t


def _check_round_trip(t: Transformation) -> None:
    """The spec must survive JSON (a recipe file) and rebuild an equal transformation."""
    try:
        text = json.dumps(t.spec())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{t!r}: spec {t.spec()!r} is not JSON ({exc})") from None
    back = from_spec(json.loads(text), t.name)
    if back.spec() != t.spec():
        raise ValueError(f"{t!r}: spec {t.spec()} does not round-trip through from_spec (got {back.spec()})")


def register_config(name: str, config, default: bool = True) -> Quantize:
    """Shorthand for ``register(Quantize(name, config))``: a quantization config as a search choice."""
    return register(Quantize(name, config), default)


def from_spec(spec: dict, name: Optional[str] = None) -> Transformation:
    """The transformation a recipe's spec describes (the registered one when ``name`` is registered
    with this very spec)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise ValueError(f"a transformation spec is an object with a \"kind\", got {spec!r}")
    if name is not None and name in _REGISTRY and _REGISTRY[name].spec() == spec:
        return _REGISTRY[name]
    reader = _KINDS.get(spec["kind"])
    if reader is None:
        raise ValueError(f"unknown transformation kind {spec['kind']!r}; this fastq knows {sorted(_KINDS)}")
    try:
        return reader(spec, name or spec["kind"])
    except (TypeError, KeyError) as exc:
        raise ValueError(f"bad {spec['kind']!r} transformation spec {spec}: {exc}") from None


def _auto_name(config_type: type) -> str:
    base = config_type.__name__.removesuffix("Config")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", base).lower()


def _discovered() -> list[Transformation]:
    """Configs with a quantize_ handler that no registered transformation uses yet."""
    from fastq.quantization import config_types

    used = {type(t.config) for t in _REGISTRY.values() if isinstance(t, Quantize)}
    found = []
    for cls in config_types():
        if cls in used:
            continue
        try:
            configs = cls.search_candidates() if hasattr(cls, "search_candidates") else {_auto_name(cls): cls()}
            for name, cfg in configs.items():
                t = Quantize(name, cfg)
                _check_round_trip(t)
                found.append(t)
        except (TypeError, ValueError):  # needs arguments and offers no candidates, or is not JSON
            continue
    return found


def transformations(names=None) -> list[Transformation]:
    """The per-layer transformations to search: the registered defaults plus discovered configs
    (``names=None``), or the named ones. "float" is always first; channel pruning is not included
    (see ``channel_transforms``)."""
    if names is None:
        chosen = [t for n, t in _REGISTRY.items() if n in _DEFAULT] + _discovered()
    else:
        if isinstance(names, str):
            names = [names]
        known = {t.name: t for t in list(_REGISTRY.values()) + _discovered()}
        chosen = []
        for n in names:
            t = n if isinstance(n, Transformation) else known.get(n)
            if t is None:
                raise ValueError(f"unknown transformation {n!r}; registered: {sorted(known)}")
            chosen.append(t)
    chosen = [t for t in chosen if not isinstance(t, ChannelPrune)]
    floats = [t for t in chosen if isinstance(t, KeepFloat)] or [_REGISTRY["float"]]
    return floats[:1] + [t for t in chosen if not isinstance(t, KeepFloat)]


def channel_transforms(names=None) -> list[ChannelPrune]:
    """The registered channel-pruning choices (all by default, or the named ones)."""
    items = [t for t in _REGISTRY.values() if isinstance(t, ChannelPrune)]
    if names is not None:
        names = set([names] if isinstance(names, str) else names)
        items = [t for t in items if t.name in names]
    return items


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value):
    """JSON lists back to tuples (frozen configs hold tuples, never lists)."""
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def _defaults() -> None:
    from fastq.quantization import Int8DynamicConfig, Int8WeightOnlyConfig

    register(KeepFloat())
    register(Quantize("w8a8", Int8DynamicConfig()))
    register(Quantize("w8a8-asym", Int8DynamicConfig(act_symmetric=False)))
    register(Quantize("int8-wo", Int8WeightOnlyConfig()))
    for g in (32, 128):
        register(Quantize(f"int8-wo-g{g}", Int8WeightOnlyConfig(group_size=g)))
    register(SparsePrune("sparse-2:4", pattern="2:4"))
    for s in (50, 75, 90):
        register(SparsePrune(f"sparse-{s}", sparsity=s / 100))
        register(SparsePrune(f"sparse-{s}-int8", sparsity=s / 100, int8=True))
        register(SparsePrune(f"sparse-{s}-ell", sparsity=s / 100, format="ell"), default=False)
        register(SparsePrune(f"sparse-{s}-ell-int8", sparsity=s / 100, int8=True, format="ell"), default=False)
    for s in (25, 50):
        register(ChannelPrune(f"channels-{s}", s / 100))


_defaults()
