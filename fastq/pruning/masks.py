"""Keeping pruning masks applied to weights and gradients (the MASK CONTRACT).

Invariants for a pruned module (nn.Linear / nn.Conv2d):
- ``weight_mask`` is a persistent bool buffer with the weight's shape (state_dict keys stay
  "weight" and "weight_mask"; no parametrization renames them), True = kept;
- ``fastq_prune_pattern`` (str) names the pattern ("unstructured", "2:4", "block4x4", ...);
- the weight is zero wherever the mask is False: a gradient hook zeroes masked gradients and a
  forward pre-hook re-zeroes masked weights an optimizer revived (momentum from before pruning),
  writing in place only when something is actually non-zero, so autograd graphs of earlier
  forwards are not invalidated in the common case;
- hooks find the mask through the module at call time (never a captured tensor), so
  ``load_state_dict`` and ``deepcopy`` keep working; the pre-hook is a module-level function (the
  module is picklable) and re-installs the gradient hook when the weight Parameter was replaced.
``remove_masks`` makes pruning permanent: the zeros stay, buffer, attribute and hooks go.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import Tensor, nn

MASK = "weight_mask"
PATTERN_ATTR = "fastq_prune_pattern"

# module -> (weakref to the weight Parameter that carries our grad hook, its handle)
_GRAD_HOOKS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def is_pruned(module: nn.Module) -> bool:
    """True when ``module`` carries a fastq weight mask."""
    return isinstance(module._buffers.get(MASK, None), Tensor)


def _mask_grad(module_ref: "weakref.ref[nn.Module]", grad: Tensor) -> Tensor:
    module = module_ref()
    mask = None if module is None else module._buffers.get(MASK, None)
    if mask is None or mask.shape != grad.shape:  # unpruned since, or a stale Parameter
        return grad
    return grad.masked_fill(~mask, 0)


def _ensure_grad_hook(module: nn.Module) -> None:
    w = module.weight
    entry = _GRAD_HOOKS.get(module)
    if entry is not None and entry[0]() is w:
        return
    if entry is not None:
        entry[1].remove()
    if w.requires_grad:
        handle = w.register_hook(functools.partial(_mask_grad, weakref.ref(module)))
        _GRAD_HOOKS[module] = (weakref.ref(w), handle)
    else:
        _GRAD_HOOKS.pop(module, None)


def _zero_masked_(module: nn.Module) -> None:
    mask = module._buffers[MASK]
    w = module.weight
    with torch.no_grad():
        if bool((w.ne(0) & ~mask).any()):
            w.masked_fill_(~mask, 0)


def _mask_forward_pre_hook(module: nn.Module, args) -> None:
    if not is_pruned(module):
        return
    _ensure_grad_hook(module)
    _zero_masked_(module)


def _has_pre_hook(module: nn.Module) -> bool:
    return any(h is _mask_forward_pre_hook for h in module._forward_pre_hooks.values())


def attach_mask_(module: nn.Module, mask: Tensor, pattern: str) -> None:
    """Install ``mask`` (bool, True = keep, weight's shape) on ``module`` and zero pruned weights.

    Re-pruning copies into the existing buffer (its identity is kept, so references stay valid).
    """
    w = module.weight
    mask = mask.detach().to(device=w.device, dtype=torch.bool).reshape(w.shape)
    existing = module._buffers.get(MASK, None)
    if existing is not None and existing.shape == w.shape:
        existing.copy_(mask)
    else:
        if MASK in module._buffers:
            del module._buffers[MASK]
        elif hasattr(module, MASK):
            raise ValueError(f"{type(module).__name__} already has a non-buffer attribute {MASK!r}")
        module.register_buffer(MASK, mask.clone(), persistent=True)
    setattr(module, PATTERN_ATTR, pattern)
    if not _has_pre_hook(module):
        module.register_forward_pre_hook(_mask_forward_pre_hook)
    _ensure_grad_hook(module)
    with torch.no_grad():
        module.weight.masked_fill_(~module._buffers[MASK], 0)


def apply_masks_(model: nn.Module) -> nn.Module:
    """Zero every pruned weight of ``model`` now (e.g. right after an optimizer step)."""
    for m in model.modules():
        if is_pruned(m):
            _ensure_grad_hook(m)
            _zero_masked_(m)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Make pruning permanent: keep the zeros, drop ``weight_mask``, the pattern attribute and hooks."""
    for m in model.modules():
        if not is_pruned(m):
            continue
        with torch.no_grad():
            m.weight.masked_fill_(~m._buffers[MASK], 0)
        del m._buffers[MASK]
        if hasattr(m, PATTERN_ATTR):
            delattr(m, PATTERN_ATTR)
        for k in [k for k, h in m._forward_pre_hooks.items() if h is _mask_forward_pre_hook]:
            del m._forward_pre_hooks[k]
            getattr(m, "_forward_pre_hooks_with_kwargs", {}).pop(k, None)
        entry = _GRAD_HOOKS.pop(m, None)
        if entry is not None:
            entry[1].remove()
    return model
