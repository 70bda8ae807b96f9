"""Named compression recipes: what `fastq demo` runs and `fastq compress --recipe NAME` applies.

Invariants: a recipe compresses a model in place and reports how many layers it changed (0 means
the model has nothing it can compress). Adding a recipe is one ``Recipe(...)`` entry in
``_RECIPES``; an entry whose ``available()`` is False (its API is missing) is hidden everywhere.
Recipes import fastq lazily, so this table is importable even when optional parts are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["RECIPES", "Recipe", "count_fastq_modules", "recipes"]


def count_fastq_modules(model: nn.Module) -> int:
    """Number of fastq.nn modules (swapped-in compressed layers) inside ``model``; the
    ``FusedActivation`` placeholders of fused activations are not layers."""
    from fastq.nn import MODULE_TYPES, FusedActivation

    kinds = tuple(MODULE_TYPES.values())
    return sum(isinstance(m, kinds) and not isinstance(m, FusedActivation) for m in model.modules())


def _has(*names: str) -> Callable[[], bool]:
    def available() -> bool:
        import fastq

        return all(hasattr(fastq, n) for n in names)

    return available


def _quantize(config_name: str, **kwargs) -> Callable[[nn.Module], None]:
    def apply(model: nn.Module) -> None:
        import fastq

        fastq.quantize_(model, getattr(fastq, config_name)(**kwargs))

    return apply


def _prune_sparsify(int8: bool = False, **config) -> Callable[[nn.Module], None]:
    """One-shot magnitude pruning of every Linear, then the pruned ones swapped for SparseLinear."""

    def apply(model: nn.Module) -> None:
        import fastq

        fastq.prune_(model, fastq.PruneConfig(**config))
        fastq.sparsify_(model, int8=int8)

    return apply


@dataclass(frozen=True)
class Recipe:
    """One way to compress a model.

    Attributes:
        name: the CLI name (``--recipe NAME``); lower case, no spaces.
        description: one line for ``--help`` and the README.
        apply: compresses the model in place.
        available: whether this fastq build has the API the recipe needs.
        changed: how many layers ``apply`` compressed (default: fastq.nn modules in the model).
    """

    name: str
    description: str
    apply: Callable[[nn.Module], None]
    available: Callable[[], bool] = lambda: True
    changed: Callable[[nn.Module], int] = count_fastq_modules

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or " " in self.name:
            raise ValueError(f"recipe name must be lower case without spaces, got {self.name!r}")


_RECIPES = [
    Recipe("w8a8", "int8 weights per channel x int8 activations per token, quantized at run time (W8A8 dynamic)",
           _quantize("Int8DynamicConfig"), _has("quantize_", "Int8DynamicConfig")),
    Recipe("int8-weight-only", "int8 weights per channel, float activations (weight-only)",
           _quantize("Int8WeightOnlyConfig"), _has("quantize_", "Int8WeightOnlyConfig")),
    # One-shot pruning without a recovery fine-tune: the table shows what that costs in quality.
    Recipe("sparse-24", "2:4 pruning (magnitude, one-shot), kept weights in the 2:4 sparse format",
           _prune_sparsify(pattern="2:4"), _has("prune_", "sparsify_")),
    Recipe("sparse-50", "50% unstructured pruning (magnitude, one-shot), compressed-row sparse format",
           _prune_sparsify(sparsity=0.5), _has("prune_", "sparsify_")),
    Recipe("sparse-50-int8", "50% unstructured pruning, kept weights int8 per channel (Deep Compression style)",
           _prune_sparsify(int8=True, sparsity=0.5), _has("prune_", "sparsify_")),
]

# ---- sub-8-bit integer weights ----
_RECIPES += [
    Recipe("int4-weight-only", "int4 weights in groups of 128 (symmetric), float activations (weight-only)",
           _quantize("Int4WeightOnlyConfig"), _has("quantize_", "Int4WeightOnlyConfig")),
    Recipe("w4a8", "int4 weights in groups of 128 x int8 activations per token, quantized at run time (W4A8)",
           _quantize("Int4DynamicConfig"), _has("quantize_", "Int4DynamicConfig")),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def recipes() -> dict[str, Recipe]:
    """The recipes this fastq build can run, by name, in table order."""
    return {name: r for name, r in RECIPES.items() if r.available()}
