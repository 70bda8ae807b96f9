"""fastq.search: the fastest (or smallest) per-layer compression of a model within a quality budget.

``fastq.search(model, evaluate, example_inputs, budget)`` chooses, per layer or group of layers, among
the registered transformations (``transformations()``: keep float, int8 W8A8, int8 weight-only,
pruning + sparse formats, channel pruning, and every config registered with
``fastq.quantization.register_handler``), with Optuna (TPE, NSGA-II, random, grid) and latency
measured on this machine. The answer is a ``LayerRecipe`` (JSON) that ``fastq compress --recipe FILE``
and ``LayerRecipe.load(FILE).apply_(model)`` reproduce exactly.

A new transformation joins the search by registering: a quantization config needs nothing beyond
its ``register_handler`` (it is discovered, default-constructed, or taken from its
``search_candidates()`` classmethod), or ``register_config("name", Config(...))`` for specific
settings; any other kind subclasses ``Transformation`` and calls ``register(t)`` and
``register_kind(kind, from_spec)``.
"""

from fastq.recipe_search.engine import Budget, NoRecipeError, SearchError, SearchResult, TrialRecord, search
from fastq.recipe_search.recipe import LayerRecipe, is_recipe_file
from fastq.recipe_search.space import (ChannelPrune, KeepFloat, LayerContext, Quantize, SparsePrune, Transformation,
                                channel_transforms, from_spec, register, register_config, register_kind,
                                transformations)

__all__ = ["Budget", "ChannelPrune", "KeepFloat", "LayerContext", "LayerRecipe", "NoRecipeError", "Quantize",
           "SearchError", "SearchResult", "SparsePrune", "Transformation", "TrialRecord", "channel_transforms",
           "from_spec", "is_recipe_file", "register", "register_config", "register_kind", "search", "transformations"]
