"""``quantize_``: swap a model's float layers for fastq modules in place, via a handler registry.

Invariants:
  * The registry is keyed by (config type, module type): a new config adds its handlers with
    ``register_handler`` and never an ``if`` chain here. ``quantize_`` accepts any config type that
    has at least one handler.
  * Handlers are looked up by the EXACT module type (``type(m)``), as in torchao: a subclass such as
    nn.MultiheadAttention's ``NonDynamicallyQuantizableLinear`` is left alone, because its parent
    reads ``.weight`` directly and a swap would break it.
  * A layer a handler cannot take (it raises ``UnsupportedLayerError``) stays exactly as it was and
    gets the reason in ``SKIP_ATTR``, which ``summary`` prints. quantize_ never leaves a layer
    half-converted: the replacement is built completely before it is swapped in.
  * Layers excluded by ``skip`` or ``filter_fn`` (of a type that has a handler) are noted too.
  * A handler may return the module itself: the layer stays as it is, without a note. Handlers that
    coordinate layers (a weight tied between an embedding and a linear) use ``current_context()``.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from fastq.nn import QuantConv2d, QuantLinear, UnsupportedLayerError
from fastq.nn.activation import fuse_activations_
from fastq.nn.intx import IntxEmbedding, IntxLinear, tied_linear_handler
from fastq.ops._checks import FLOAT_DTYPES, W8A8_MAX_K
from fastq.quantization.configs import (Int4DynamicConfig, Int4WeightOnlyConfig, Int8DynamicConfig,
                                        Int8WeightOnlyConfig, IntxEmbeddingConfig, IntxWeightOnlyConfig)

# Attribute set on a float layer that quantize_ left as it was: the reason, shown by summary().
SKIP_ATTR = "_fastq_skip_reason"

Handler = Callable[[nn.Module, object], nn.Module]
_HANDLERS: dict = {}  # config type -> {module type -> handler}


def register_handler(config_type: type, module_type: type, handler: Handler) -> None:
    """Make ``quantize_(model, config)`` with a ``config_type`` config replace modules of exactly
    ``module_type`` with ``handler(module, config)``.

    The handler returns the replacement module or raises ``UnsupportedLayerError`` with a reason.
    """
    if not isinstance(config_type, type):
        raise TypeError(f"config_type must be a class (a config dataclass), got {config_type!r}")
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be an nn.Module subclass, got {module_type!r}")
    if not callable(handler):
        raise TypeError(f"handler must be callable (module, config) -> module, got {handler!r}")
    _HANDLERS.setdefault(config_type, {})[module_type] = handler


def config_types() -> tuple:
    """The config types ``quantize_`` accepts (those with at least one handler)."""
    return tuple(_HANDLERS)


def handler_for(module: nn.Module, config) -> Optional[Handler]:
    """The handler ``quantize_`` uses for ``module`` under ``config``, or None."""
    return _HANDLERS.get(type(config), {}).get(type(module))


# ---- the context of one quantize_ call, for handlers that coordinate layers (shared weights) ------

class QuantizeContext:
    """What a handler may ask about the ``quantize_`` call it runs in (``current_context()``).

    ``memo`` is a dict for work shared between layers of this call (a weight tied between an
    embedding and an LM head is quantized once); ``owners(t)`` lists the modules that hold tensor
    ``t`` as their own parameter or buffer; ``will_convert(m)`` says whether this call gives ``m``
    to a handler (it has one and neither ``skip`` nor ``filter_fn`` excludes it).
    """

    def __init__(self, model: nn.Module, config, excluded: Callable[[str, nn.Module], Optional[str]]) -> None:
        self.model, self.config, self._excluded = model, config, excluded
        self.memo: dict = {}
        self._owners: Optional[dict] = None

    def owners(self, t: torch.Tensor) -> list:
        if self._owners is None:
            self._owners = {}
            for m in self.model.modules():
                for own in list(m._parameters.values()) + list(m._buffers.values()):
                    if own is not None:
                        self._owners.setdefault(id(own), []).append(m)
        return list(self._owners.get(id(t), []))

    def will_convert(self, module: nn.Module) -> bool:
        if handler_for(module, self.config) is None:
            return False
        return any(m is module and self._excluded(name, m) is None for name, m in self.model.named_modules())


_CONTEXTS: list = []


def current_context() -> Optional[QuantizeContext]:
    """The context of the innermost running ``quantize_`` call (None outside one)."""
    return _CONTEXTS[-1] if _CONTEXTS else None


def _int8_gemm_layer(from_float: Handler) -> Handler:
    """Wrap ``from_float`` with the checks every int8 GEMM layer needs, each a skip with a note:
    a weight of a dtype the kernels do not take (float64, ...), a K beyond the exact int32 range of
    W8A8 (``_checks.W8A8_MAX_K``), and layers whose int8 form is not smaller than fp32: tiny K or N
    (the packed layout pads N to 16 and K to 4, and adds per-channel sums and scales)."""

    def handler(module: nn.Module, config) -> nn.Module:
        inner = getattr(module, "linear", module)  # SmoothedLinear wraps the layer it quantizes
        weight = inner.weight
        if weight.dtype not in FLOAT_DTYPES:
            raise UnsupportedLayerError(f"weight dtype {weight.dtype} is not supported (float32, float16 or "
                                        "bfloat16); cast the model, e.g. model.float(), to quantize this layer")
        k = math.prod(weight.shape[1:])
        if not isinstance(config, Int8WeightOnlyConfig) and k > W8A8_MAX_K:  # W8A8, dynamic or static
            raise UnsupportedLayerError(f"K={k} exceeds {W8A8_MAX_K}, beyond which W8A8's int32 accumulator "
                                        "could overflow; Int8WeightOnlyConfig has no such limit")
        q = from_float(module, config)
        if q.weight_bytes() >= q.float_weight_bytes():
            shape = "x".join(map(str, q.weight_shape()))
            raise UnsupportedLayerError(f"too small to gain from int8: weight {shape} takes {q.weight_bytes()} B "
                                        f"packed (N padded to 16, K to 4) vs {q.float_weight_bytes()} B in fp32")
        return q

    return handler


for _config in (Int8DynamicConfig, Int8WeightOnlyConfig):
    register_handler(_config, nn.Linear, _int8_gemm_layer(QuantLinear.from_float))
    register_handler(_config, nn.Conv2d, _int8_gemm_layer(QuantConv2d.from_float))

# ---- sub-8-bit integer weights (fastq.nn.intx) ----
def _intx_smaller_only(module: nn.Module, config) -> nn.Module:
    q = IntxLinear.from_float(module, config)
    if q.weight_bytes() >= q.float_weight_bytes() and not q.tied:
        shape = "x".join(map(str, q.weight_shape()))
        raise UnsupportedLayerError(f"too small to gain from {q.bits}-bit: weight {shape} takes {q.weight_bytes()} B "
                                    f"packed (rows padded to 16, 64 B of scales per group) vs "
                                    f"{q.float_weight_bytes()} B in fp32")
    return q


for _config in (IntxWeightOnlyConfig, Int4WeightOnlyConfig, Int4DynamicConfig):
    register_handler(_config, nn.Linear, _intx_smaller_only)
register_handler(IntxEmbeddingConfig, nn.Embedding, IntxEmbedding.from_float)
register_handler(IntxEmbeddingConfig, nn.Linear, tied_linear_handler)


def _check_skip(skip: Iterable[Union[str, type]], names: set) -> tuple[tuple, tuple]:
    if isinstance(skip, (str, type)):
        skip = (skip,)
    skip_names, skip_types = [], []
    for entry in skip:
        if isinstance(entry, str):
            if entry not in names and not any(n.startswith(entry + ".") for n in names):
                close = difflib.get_close_matches(entry, sorted(n for n in names if n), n=3)
                raise ValueError(f"skip entry {entry!r} names no module of the model"
                                 + (f"; did you mean one of {close}?" if close else ""))
            skip_names.append(entry)
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            skip_types.append(entry)
        else:
            raise TypeError(f"skip entries must be module names (str) or nn.Module types, got {entry!r}")
    return tuple(skip_names), tuple(skip_types)


def _check_not_meta(model: nn.Module, config) -> None:
    """Quantizing needs weight values: a layer still on the meta device is an error, not a skip (a
    model built under ``torch.device("meta")`` would otherwise come back silently unquantized)."""
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if handler_for(module, config) is not None and isinstance(weight, torch.Tensor) and weight.is_meta:
            raise ValueError(f"quantize_: layer {name or type(module).__name__!r} has its weight on the meta device "
                             "(no values to quantize); load or materialize the weights first "
                             "(e.g. model.to_empty(device='cpu') then load_state_dict)")


def _skipped_by_name(name: str, skip_names: tuple) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip_names)


@torch.no_grad()
def quantize_(model: nn.Module, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
              skip: Iterable[Union[str, type]] = (), fuse_activations: bool = True) -> nn.Module:
    """Quantize ``model``'s layers in place according to ``config``.

    Args:
        model: any nn.Module. Layers of a registered type (nn.Linear, nn.Conv2d) are replaced.
        config: a config with registered handlers (``config_types()``), e.g. ``Int8DynamicConfig``
            (W8A8) or ``Int8WeightOnlyConfig``.
        filter_fn: optional ``(module, fully_qualified_name) -> bool``; False keeps that layer float.
        skip: module names (a name also skips everything under it, e.g. ``"encoder.layer.0"``) and/or
            module types to keep float. A name that matches no module is an error (a typo would
            otherwise quantize the layer you meant to protect).
        fuse_activations: then fuse each activation (GELU, ReLU, SiLU) into the fastq linear that
            feeds it, where that leaves the parent module's output bitwise the same
            (``fastq.fuse_activations_``; it runs each candidate parent once on a small random input).

    Returns:
        ``model`` (the same object). If ``model`` itself is a layer with a handler, it cannot be
        swapped in place and the quantized replacement is returned instead.

    Layers that cannot be quantized are left unchanged and noted; ``fastq.summary(model)`` lists
    them with the reason.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ expects an nn.Module, got {type(model).__name__}")
    if type(config) not in _HANDLERS:
        raise TypeError(f"config must be one of {[c.__name__ for c in config_types()]}, got {type(config).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError("filter_fn must be a callable (module, name) -> bool")
    if not isinstance(fuse_activations, bool):
        raise TypeError(f"fuse_activations must be a bool, got {type(fuse_activations).__name__}")
    names = {n for n, _ in model.named_modules()}
    skip_names, skip_types = _check_skip(skip, names)
    _check_not_meta(model, config)

    def excluded(name: str, module: nn.Module) -> Optional[str]:
        if _skipped_by_name(name, skip_names) or isinstance(module, skip_types):
            return "excluded by skip="
        if filter_fn is not None and not filter_fn(module, name):
            return "excluded by filter_fn"
        return None

    # Decide every swap first, then apply them, so the walk never sees half-replaced trees. A module
    # registered under several names (shared) is decided once and replaced everywhere.
    replacements: dict = {}
    _CONTEXTS.append(QuantizeContext(model, config, excluded))
    try:
        for name, module in model.named_modules():
            handler = handler_for(module, config)
            if handler is None:
                continue
            if hasattr(module, SKIP_ATTR):
                delattr(module, SKIP_ATTR)
            reason = excluded(name, module)
            if reason is not None:
                setattr(module, SKIP_ATTR, reason)
                continue
            try:
                new = handler(module, config)
            except UnsupportedLayerError as exc:
                setattr(module, SKIP_ATTR, str(exc))
                continue
            if new is module:  # the handler leaves this layer alone (no note)
                continue
            new.train(module.training)
            replacements[id(module)] = new
    finally:
        _CONTEXTS.pop()

    if id(model) in replacements:
        return replacements[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):  # not named_children: it dedups
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    if fuse_activations:
        fuse_activations_(model)
    return model
