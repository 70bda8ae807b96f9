"""Importance scores, kept separate from the pruning algorithms that consume them.

Invariants: an element scorer returns a float32 tensor with the weight's shape, >= 0, where a
higher score means more important; no scorer modifies a weight. Group scores (blocks, N:M
groups, channels) are p-norms of the element scores over the group, p = ``GROUP_NORM[criterion]``
(L1 for magnitude / taylor / random, L2 for "l2"). The threshold criterion is not a score: it
fixes the mask directly (``threshold_mask``). ``compute_gradients`` runs one forward/backward
and restores every ``.grad`` and buffer it touched, so scoring has no side effects on the model.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

GROUP_NORM = {"magnitude": 1, "l2": 2, "random": 1, "taylor": 1}


def magnitude(weight: Tensor) -> Tensor:
    """|w| (L1 magnitude). Returns float32, weight's shape."""
    return weight.detach().abs().float()


def l2(weight: Tensor) -> Tensor:
    """|w|; groups are then scored by their L2 norm sqrt(sum w^2). Returns float32."""
    return weight.detach().abs().float()


def random(weight: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform [0, 1) scores drawn on the CPU from ``generator`` (seeded baseline). float32."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


def taylor(weight: Tensor, grad: Tensor) -> Tensor:
    """First-order Taylor importance |w * dL/dw| (Molchanov et al.). float32, weight's shape."""
    if grad is None or grad.shape != weight.shape:
        raise ValueError("taylor scores need the weight's gradient (pass batch= and loss_fn= to prune_)")
    return (weight.detach().float() * grad.detach().float()).abs()


def threshold_mask(weight: Tensor, threshold: float) -> Tensor:
    """Keep-mask (bool, weight's shape): True where |w| >= threshold, i.e. |w| < t is pruned."""
    return weight.detach().abs() >= threshold


def element_scores(
    criterion: str,
    weight: Tensor,
    grad: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Dispatch to the element scorer named by ``criterion`` (not "threshold")."""
    if criterion == "magnitude":
        return magnitude(weight)
    if criterion == "l2":
        return l2(weight)
    if criterion == "random":
        if generator is None:
            raise ValueError("random scores need a seeded torch.Generator")
        return random(weight, generator)
    if criterion == "taylor":
        return taylor(weight, grad)
    raise ValueError(f"no element score for criterion {criterion!r}")


def group_norm(scores: Tensor, p: int) -> Tensor:
    """p-norm over the last dim: [G, g] float32 -> [G]."""
    return torch.linalg.vector_norm(scores, ord=p, dim=-1)


def run_model(model: nn.Module, inputs: Any) -> Any:
    """model(inputs): a tuple/list is unpacked as positional args, a dict as keyword args."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def compute_gradients(
    model: nn.Module,
    modules: Sequence[nn.Module],
    batch: Any = None,
    loss_fn: Optional[Callable] = None,
) -> Dict[nn.Module, Tensor]:
    """dL/dW for each module's weight from one forward/backward; weights are not changed.

    Args:
        model: the model to run.
        modules: the modules whose ``weight`` gradients are wanted.
        batch: ``(inputs, targets)``; then loss = loss_fn(run_model(model, inputs), targets).
            If None, loss = loss_fn(model) (a callable that runs the model itself).
        loss_fn: see ``batch``; must return a scalar tensor.

    Returns:
        {module: float32 gradient with the weight's shape}. Existing ``.grad`` attributes, buffers
        (BatchNorm statistics) and ``requires_grad`` flags are restored afterwards.
    """
    if loss_fn is None or not callable(loss_fn):
        raise ValueError("criterion 'taylor' needs loss_fn= (and batch=(inputs, targets), or a loss_fn(model))")
    if batch is not None and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("batch must be a pair (inputs, targets); loss = loss_fn(model(inputs), targets)")
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    saved_flags = [p.requires_grad for p in params]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        for p in params:
            p.grad = None
        for m in modules:
            m.weight.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(run_model(model, batch[0]), batch[1]) if batch is not None else loss_fn(model)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor")
            loss.backward()
        grads = {}
        for m in modules:
            g = m.weight.grad
            grads[m] = torch.zeros_like(m.weight, dtype=torch.float32) if g is None else g.detach().float().clone()
        return grads
    finally:
        for p, g, f in zip(params, saved_grads, saved_flags):
            p.grad = g
            p.requires_grad_(f)
        with torch.no_grad():
            for b, saved in saved_buffers:
                b.copy_(saved)
