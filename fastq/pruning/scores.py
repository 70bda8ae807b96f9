"""Importance scores, kept separate from the pruning algorithms that consume them.

Invariants: an element scorer returns a float32 tensor with the weight's shape, >= 0, where a
higher score means more important; no scorer modifies a weight. Group scores (blocks, N:M
groups, channels) are p-norms of the element scores over the group, p = ``GROUP_NORM[criterion]``
(L1 for magnitude / taylor / random, L2 for "l2"). The threshold criterion is not a score: it
fixes the mask directly (``threshold_mask``). The activation-aware criteria read the input
statistics ``fastq.quantization.observe_inputs`` left on a layer (``input_statistics`` checks them):
"wanda" is an element score here, "sparsegpt" is an algorithm (``fastq.pruning.sparsegpt``).
``compute_gradients`` runs one forward/backward and restores every ``.grad`` and buffer it
touched, so scoring has no side effects on the model.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

GROUP_NORM = {"magnitude": 1, "l2": 2, "random": 1, "taylor": 1, "wanda": 1}


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


def wanda(weight: Tensor, input_sq_mean: Tensor) -> Tensor:
    """Wanda (Sun et al. 2023): |w_ij| * sqrt(mean x_j^2), the weight times its input's RMS.

    Args:
        weight: [out, K].
        input_sq_mean: float [K], mean of x_j^2 over calibration inputs.

    Returns:
        float32 [out, K].
    """
    return weight.detach().abs().float() * input_sq_mean.detach().float().to(weight.device).sqrt()


def input_statistics(name: str, module: nn.Module, criterion: str) -> Tensor:
    """The calibration statistic ``criterion`` needs, checked: mean x^2 [K] for "wanda", the mean
    x x^T [K, K] for "sparsegpt" (as recorded by ``fastq.quantization.observe_inputs``).

    Raises:
        ValueError: not recorded (naming the layer and how to record it), wrong shape, NaN/Inf or
            negative values.
    """
    from fastq.quantization.intx import input_hessian, input_stats

    k = module.weight[0].numel()
    hessian = criterion == "sparsegpt"
    stat = input_hessian(module) if hessian else input_stats(module)
    if stat is None:
        how = "observe_inputs(model, hessian=True)" if hessian else "observe_inputs(model)"
        raise ValueError(
            f"layer {name!r}: criterion {criterion!r} needs its input statistics; run calibration batches "
            f"inside `with fastq.quantization.{how}:` before prune_ (it records nn.Linear layers only; "
            f"exclude other layers with filter_fn)"
        )
    want = (k, k) if hessian else (k,)
    if tuple(stat.shape) != want:
        raise ValueError(
            f"layer {name!r}: recorded input statistics have shape {list(stat.shape)}, the layer needs "
            f"{list(want)}; record them again on this model with observe_inputs"
        )
    if not bool(torch.isfinite(stat).all()):
        raise ValueError(f"layer {name!r}: recorded input statistics hold NaN or Inf (non-finite calibration inputs)")
    if not hessian and bool((stat < 0).any()):
        raise ValueError(f"layer {name!r}: recorded mean squared inputs are negative; record them with observe_inputs")
    return stat


def threshold_mask(weight: Tensor, threshold: float) -> Tensor:
    """Keep-mask (bool, weight's shape): True where |w| >= threshold, i.e. |w| < t is pruned."""
    return weight.detach().abs() >= threshold


def element_scores(
    criterion: str,
    weight: Tensor,
    grad: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    input_sq_mean: Optional[Tensor] = None,
) -> Tensor:
    """Dispatch to the element scorer named by ``criterion`` (not "threshold" or "sparsegpt")."""
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
    if criterion == "wanda":
        if input_sq_mean is None:
            raise ValueError("wanda scores need the layer's mean squared inputs (fastq.quantization.observe_inputs)")
        return wanda(weight, input_sq_mean)
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
