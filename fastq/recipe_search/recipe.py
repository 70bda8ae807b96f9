"""A per-layer compression recipe: what ``fastq.search`` found, as a JSON file anyone can re-apply.

Invariants:
  * The file names every transformed layer with the transformation's name and full spec (so it does
    not depend on what is registered where it is applied), the channel-pruned pairs, and for each
    layer left float the reason; ``apply_`` on the same float model rebuilds exactly the modules
    the search measured (every transformation is deterministic given the weights), then fuses
    activations into them as ``quantize_`` does (``fastq.fuse_activations_``: no output bit changes).
  * ``apply_`` checks every name and builds every replacement before it swaps anything: a recipe
    that does not fit the model raises ValueError naming the layer and leaves the model untouched.
  * Layers left float carry the reason in ``SKIP_ATTR``, so ``fastq.summary`` prints it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from fastq.nn import UnsupportedLayerError, fuse_activations_
from fastq.quantization import SKIP_ATTR
from fastq.recipe_search.space import ChannelPrune, LayerContext, from_spec

__all__ = ["FORMAT", "LayerRecipe", "is_recipe_file", "set_module"]

FORMAT = "fastq-layer-recipe"
VERSION = 1


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@dataclass
class LayerRecipe:
    """Per-layer choices: ``layers`` name -> (transformation name, spec); ``pairs`` the channel-pruned
    (producer, consumer) pairs; ``notes`` name -> why it stayed float; ``meta`` what the search measured."""

    layers: dict = field(default_factory=dict)  # name -> {"transform": str, "spec": dict}
    pairs: list = field(default_factory=list)  # [{"producer", "consumer", "transform", "spec"}]
    notes: dict = field(default_factory=dict)  # name -> reason it was left float
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "layers": self.layers, "pairs": self.pairs, "notes": self.notes,
                "meta": self.meta}

    def save(self, path: Union[str, os.PathLike]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "LayerRecipe":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON recipe ({exc})") from None
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = "recipe") -> "LayerRecipe":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a fastq layer recipe (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise ValueError(f"{where}: recipe version {data.get('version')!r} is not supported "
                             f"(this fastq reads {VERSION})")
        layers, pairs, notes = data.get("layers", {}), data.get("pairs", []), data.get("notes", {})
        ok = (isinstance(layers, dict) and all(isinstance(v, dict) and isinstance(v.get("transform"), str)
                                               and isinstance(v.get("spec"), dict) for v in layers.values())
              and isinstance(pairs, list) and all(isinstance(p, dict) and {"producer", "consumer", "transform", "spec"}
                                                  <= set(p) for p in pairs)
              and isinstance(notes, dict))
        if not ok:
            raise ValueError(f"{where}: malformed recipe: \"layers\" maps names to {{transform, spec}}, \"pairs\" "
                             "lists {producer, consumer, transform, spec}")
        return cls(dict(layers), list(pairs), dict(notes), dict(data.get("meta", {})))

    def transforms(self) -> dict:
        """transformation name -> how many layers use it."""
        counts: dict = {}
        for entry in self.layers.values():
            counts[entry["transform"]] = counts.get(entry["transform"], 0) + 1
        for p in self.pairs:
            counts[p["transform"]] = counts.get(p["transform"], 0) + 1
        return counts

    def count(self) -> int:
        """Layers this recipe changes (transformed or shrunk)."""
        names = set(self.layers)
        for p in self.pairs:
            names.update((p["producer"], p["consumer"]))
        return len(names)

    def apply_(self, model: nn.Module, inputs: Optional[dict] = None) -> nn.Module:
        """Compress ``model`` in place as recorded.

        Args:
            model: the float model the recipe was searched on (same architecture and layer names).
            inputs: optional name -> captured input, for transformations that calibrate.

        Returns:
            ``model``.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"apply_ expects an nn.Module, got {type(model).__name__}")
        modules = dict(model.named_modules())

        def get(name: str) -> nn.Module:
            if name not in modules or not name:
                raise ValueError(f"recipe layer {name!r} does not exist in {type(model).__name__}")
            return modules[name]

        new: dict = {}
        for p in self.pairs:
            t = from_spec(p["spec"], p["transform"])
            if not isinstance(t, ChannelPrune):
                raise ValueError(f"recipe pair {p['producer']!r}: {p['transform']!r} is not a channel pruning")
            try:
                new[p["producer"]], new[p["consumer"]] = t.apply_pair(get(p["producer"]), get(p["consumer"]))
            except UnsupportedLayerError as exc:
                raise ValueError(f"recipe pair ({p['producer']!r}, {p['consumer']!r}): {exc}") from None
        for name, entry in self.layers.items():
            t = from_spec(entry["spec"], entry["transform"])
            base = new.get(name, get(name))
            try:
                x = (inputs or {}).get(name)
                new[name] = t.apply(base, LayerContext(name, () if x is None else (x,)))
            except UnsupportedLayerError as exc:
                raise ValueError(f"recipe layer {name!r} ({entry['transform']}): {exc}") from None
        for name in self.notes:
            get(name)
        for name, module in new.items():
            module.train(modules[name].training)
            set_module(model, name, module)
        for name, reason in self.notes.items():
            if name not in self.layers:
                setattr(model.get_submodule(name), SKIP_ATTR, reason)
        fuse_activations_(model)  # as quantize_ does: changes no output bit
        return model


def is_recipe_file(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is a file holding a fastq layer recipe."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
