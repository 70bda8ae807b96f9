"""``fastq.sparsify_``: swap pruned ``nn.Linear`` / ``nn.Conv2d`` layers for ``fastq.nn.SparseLinear`` /
``fastq.nn.SparseConv2d`` in place.

Invariant: only plain ``nn.Linear`` and ``nn.Conv2d`` (groups=1) modules carrying a ``weight_mask``
buffer (the mask contract of ``fastq.prune_``) and accepted by ``filter_fn`` are replaced;
everything else, grouped convolutions included, is left untouched (still masked and dense).
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from fastq.nn.activation import fuse_activations_
from fastq.nn.sparse import STORAGE_FORMATS, SparseLinear
from fastq.nn.sparse_conv import SparseConv2d


def sparsify_(model: nn.Module, int8: bool = False,
              filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
              format: Optional[str] = None, fuse_activations: bool = True) -> nn.Module:
    """Replace every masked ``nn.Linear`` / ``nn.Conv2d`` (groups=1) of ``model`` by a ``SparseLinear`` /
    ``SparseConv2d`` (in place).

    Args:
        model: a model pruned by ``fastq.prune_`` (or any model whose linears have a bool
            ``weight_mask`` buffer and a weight that is zero where the mask is False).
        int8: store the kept weights as int8 with per-output-row scales (Deep Compression style).
        filter_fn: ``filter_fn(module, fqn) -> bool`` chooses which masked layers to swap.
        format: "csr" or "ell" stores every swapped layer that way (with int8: "int8" /
            "ell_int8"); None (default) chooses per layer (``fastq.nn.sparse.choose_format``).
        fuse_activations: then ``fastq.fuse_activations_(model)`` (as ``quantize_`` does).

    Returns:
        ``model`` itself. The format of each layer follows its ``fastq_prune_pattern``
        (``SparseLinear`` docstring) unless ``format`` is given.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify_: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"sparsify_ swaps submodules in place; wrap a bare {type(model).__name__} in a container "
                        "or call SparseLinear/SparseConv2d.from_float(layer)")
    if not isinstance(fuse_activations, bool):
        raise TypeError(f"sparsify_: fuse_activations must be a bool, got {type(fuse_activations).__name__}")
    if format is not None and format not in STORAGE_FORMATS:
        raise ValueError(f"sparsify_: format must be one of {STORAGE_FORMATS} or None (automatic), got {format!r}")
    targets = []
    for fqn, mod in model.named_modules():
        swappable = type(mod) is nn.Linear or (type(mod) is nn.Conv2d and mod.groups == 1)
        if swappable and getattr(mod, "weight_mask", None) is not None:
            if filter_fn is None or filter_fn(mod, fqn):
                targets.append(fqn)
    for fqn in targets:
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        try:
            layer = getattr(parent, child)
            cls = SparseLinear if isinstance(layer, nn.Linear) else SparseConv2d
            setattr(parent, child, cls.from_float(layer, int8=int8, format=format))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"sparsify_: layer {fqn!r}: {exc}") from exc
    if fuse_activations:
        fuse_activations_(model)
    return model
