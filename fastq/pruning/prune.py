"""prune_: mask-based pruning of nn.Linear / nn.Conv2d weights, in place.

Invariants:
- a weight is seen as 2-D [out, K] (K = in_features, or in_channels/groups*kh*kw for Conv2d) and
  cut into groups by the pattern: single elements (unstructured), R x C blocks, whole rows
  (channels), or runs of M consecutive K-elements (N:M, keep N per run);
- the number of groups pruned is exactly round(sparsity * groups) (Python ``round``) per layer,
  or over all chosen layers for scope "global"; ties are broken deterministically by a stable
  sort (lower scores first, then earlier layer, then lower flat index);
- groups already fully pruned by an earlier call score -inf, so re-pruning (gradual schedules)
  never revives them unless the target sparsity went down;
- activation-aware criteria ("wanda", "sparsegpt") rank within each output row: for unstructured
  sparsity every row prunes exactly round(sparsity * K); "sparsegpt" also returns new weights for
  the kept positions, written by ``prune_`` after every layer has been computed;
- a layer left with no kept group raises ValueError naming it, before any module is changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from fastq.pruning import scores as S
from fastq.pruning.config import ACTIVATION_CRITERIA, Pattern, PruneConfig
from fastq.pruning.masks import MASK, attach_mask_

PRUNABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LayerReport:
    """Result for one layer: ``pruned`` of ``numel`` weights are masked (sparsity = pruned / numel)."""

    name: str
    shape: Tuple[int, ...]
    numel: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class PruneReport:
    """What prune_ did: one LayerReport per pruned layer, in module order."""

    pattern: str
    layers: Tuple[LayerReport, ...]

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def sparsity(self) -> Dict[str, float]:
        """{layer name: sparsity reached}."""
        return {r.name: r.sparsity for r in self.layers}

    @property
    def total_sparsity(self) -> float:
        n = sum(r.numel for r in self.layers)
        return sum(r.pruned for r in self.layers) / n if n else 0.0

    def __str__(self) -> str:
        lines = [f"pattern {self.pattern}: total sparsity {self.total_sparsity:.4f}"]
        for r in self.layers:
            lines.append(f"  {r.name:40s} {str(list(r.shape)):>20s} sparsity {r.sparsity:.4f}")
        return "\n".join(lines)


def select_layers(
    model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None
) -> List[Tuple[str, nn.Module]]:
    """(name, module) of the nn.Linear / nn.Conv2d layers ``filter_fn(module, name)`` accepts."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE) and (filter_fn is None or filter_fn(m, name)):
            out.append((name, m))
    if not out:
        raise ValueError("no nn.Linear or nn.Conv2d layer selected (check filter_fn)")
    return out


def weight_2d(module: nn.Module) -> Tensor:
    """The weight as [out, K] (a view when the weight is contiguous)."""
    w = module.weight
    return w.reshape(w.shape[0], -1)


def check_pattern(name: str, module: nn.Module, pat: Pattern) -> None:
    """Raise ValueError naming the layer when ``pat`` does not tile its [out, K] weight."""
    out, k = weight_2d(module).shape
    if pat.kind == "nm" and k % pat.m != 0:
        raise ValueError(
            f"layer {name!r}: pattern {pat.name} needs M={pat.m} to divide the input dimension, "
            f"which is {k}; exclude the layer with filter_fn or pick another M"
        )
    if pat.kind == "block" and (out % pat.rows != 0 or k % pat.cols != 0):
        raise ValueError(
            f"layer {name!r}: block {pat.rows}x{pat.cols} does not tile its [{out}, {k}] weight "
            f"(rows must divide {out}, cols must divide {k})"
        )


def to_groups(x2d: Tensor, pat: Pattern) -> Tensor:
    """[out, K] -> [G, g]: one row per group of the pattern (N:M: one row per run of M)."""
    out, k = x2d.shape
    if pat.kind == "unstructured":
        return x2d.reshape(-1, 1)
    if pat.kind == "channels":
        return x2d
    if pat.kind == "nm":
        return x2d.reshape(-1, pat.m)
    r, c = pat.rows, pat.cols
    return x2d.reshape(out // r, r, k // c, c).permute(0, 2, 1, 3).reshape(-1, r * c)


def from_groups(keep: Tensor, pat: Pattern, shape2d: Tuple[int, int]) -> Tensor:
    """Inverse of ``to_groups`` for a per-group keep vector [G] (or [G, g] for N:M) -> [out, K]."""
    out, k = shape2d
    if pat.kind in ("unstructured", "nm"):
        return keep.reshape(out, k)
    if pat.kind == "channels":
        return keep[:, None].expand(out, k).contiguous()
    r, c = pat.rows, pat.cols
    b = keep.reshape(out // r, k // c, 1, 1).expand(out // r, k // c, r, c)
    return b.permute(0, 2, 1, 3).reshape(out, k).contiguous()


def group_scores(
    modules: Sequence[nn.Module],
    config: PruneConfig,
    grads: Dict[nn.Module, Tensor],
    generator: Optional[torch.Generator],
    stats: Optional[Dict[nn.Module, Tensor]] = None,
) -> List[Tensor]:
    """Per module: float32 scores, [G] per group (or [G, M] elements for N:M).

    ``grads`` (criterion "taylor") and ``stats`` (mean squared inputs, "wanda") map modules to tensors.

    Groups (elements, for N:M) that an earlier prune_ left fully masked score -inf.
    """
    pat = config.pattern_spec
    out = []
    for m in modules:
        w2 = weight_2d(m)
        s = S.element_scores(config.criterion, w2, grads.get(m, None) if grads else None, generator,
                             stats.get(m, None) if stats else None)
        s = to_groups(s.reshape(w2.shape), pat)
        alive = _alive(m)
        if alive is not None:
            alive = to_groups(alive, pat)
        if pat.kind == "nm":
            if alive is not None:
                s = s.masked_fill(~alive, float("-inf"))
        else:
            s = S.group_norm(s, S.GROUP_NORM[config.criterion])
            if alive is not None:
                s = s.masked_fill(~alive.any(dim=1), float("-inf"))
        out.append(s)
    return out


def select_groups(
    names: Sequence[str], scores: Sequence[Tensor], sparsity: float, scope: str, unit: str = "weights"
) -> List[Tensor]:
    """Keep-masks [G] (bool) pruning exactly round(sparsity * G) lowest-scoring groups.

    Per layer for scope "layer"; across the concatenation of all layers for "global". Raises
    ValueError naming the first layer that would keep nothing.
    """
    keeps = []
    if scope == "layer":
        for name, s in zip(names, scores):
            n = s.numel()
            k = round(sparsity * n)
            if k >= n:
                raise ValueError(
                    f"layer {name!r}: sparsity {sparsity} would prune all {n} of its {unit}; "
                    f"lower the sparsity or exclude the layer with filter_fn"
                )
            keeps.append(_prune_lowest(s.flatten(), k))
    else:
        flat = torch.cat([s.flatten().cpu() for s in scores])
        keep = _prune_lowest(flat, round(sparsity * flat.numel()))
        start = 0
        for name, s in zip(names, scores):
            part = keep[start : start + s.numel()]
            start += s.numel()
            if not bool(part.any()):
                raise ValueError(
                    f"layer {name!r}: global sparsity {sparsity} would prune all of its {unit}; "
                    f"lower the sparsity or exclude the layer with filter_fn"
                )
            keeps.append(part.to(s.device))
    return keeps


def _prune_lowest(s: Tensor, k: int) -> Tensor:
    """Keep-mask pruning the k lowest of ``s`` [n]; among equal scores the lower index goes first.

    Same result as pruning ``argsort(s, stable=True)[:k]``, in O(n) with a selection (kthvalue)
    instead of a full sort: everything below the k-th value goes, then the first of its ties.
    """
    keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
    if k <= 0:
        return keep
    v = torch.kthvalue(s, k).values
    below = s < v
    keep &= ~below
    ties = torch.nonzero(s == v).flatten()
    keep[ties[: k - int(below.sum())]] = False
    return keep


def nm_keep(scores: Tensor, n: int, m: int) -> Tensor:
    """[G, M] scores -> [G, M] keep-mask with exactly N True per row (ties: lower index pruned)."""
    order = torch.argsort(scores, dim=1, stable=True)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, : m - n], False)
    return keep


def compute_pruning(
    layers: Sequence[Tuple[str, nn.Module]],
    model: nn.Module,
    config: PruneConfig,
    batch: Any = None,
    loss_fn: Optional[Callable] = None,
) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """Per layer ``(keep-mask, new weight or None)``, both with the weight's shape; changes nothing.

    The new weight is given only by criterion "sparsegpt" (float32, zero where the mask is False).
    """
    pat = config.pattern_spec
    names = [n for n, _ in layers]
    modules = [m for _, m in layers]
    for name, m in layers:
        check_pattern(name, m, pat)
        if not bool(torch.isfinite(m.weight.detach()).all()):
            raise ValueError(f"layer {name!r} has NaN or Inf weights; cannot rank them for pruning")
    if config.criterion == "threshold":
        masks = []
        for name, m in layers:
            keep = S.threshold_mask(m.weight, config.threshold)
            if not bool(keep.any()):
                raise ValueError(
                    f"layer {name!r}: threshold {config.threshold} would prune all its weights "
                    f"(max |w| = {float(m.weight.detach().abs().max()):g})"
                )
            masks.append((keep, None))
        return masks
    stats = {}
    if config.criterion in ACTIVATION_CRITERIA:
        for name, m in layers:
            stats[m] = S.input_statistics(name, m, config.criterion)
            k = weight_2d(m).shape[1]
            if pat.kind == "unstructured" and round(config.final_sparsity * k) >= k:
                raise ValueError(
                    f"layer {name!r}: sparsity {config.final_sparsity} would prune all {k} weights of each row; "
                    f"lower the sparsity or exclude the layer with filter_fn"
                )
    if config.criterion == "sparsegpt":
        from fastq.pruning.sparsegpt import sparsegpt_prune

        out = []
        for name, m in layers:
            alive = _alive(m)
            try:
                keep, w = sparsegpt_prune(weight_2d(m), stats[m], pat, config.final_sparsity or 0.0, alive)
            except ValueError as e:
                raise ValueError(f"layer {name!r}: {e}") from None
            out.append((keep.reshape(m.weight.shape), w.reshape(m.weight.shape)))
        return out
    grads = S.compute_gradients(model, modules, batch, loss_fn) if config.criterion == "taylor" else {}
    gen = torch.Generator().manual_seed(config.seed) if config.criterion == "random" else None
    scores = group_scores(modules, config, grads, gen, stats)
    if pat.kind == "nm":
        keeps = [nm_keep(s, pat.n, pat.m) for s in scores]
    elif config.criterion in ACTIVATION_CRITERIA:  # Wanda's comparison group: each output row
        keeps = [_row_keep(s.reshape(weight_2d(m).shape), config.final_sparsity) for s, m in zip(scores, modules)]
    else:
        unit = "output channels" if pat.kind == "channels" else ("blocks" if pat.kind == "block" else "weights")
        keeps = select_groups(names, scores, config.final_sparsity, config.scope, unit)
    return [(from_groups(k, pat, tuple(weight_2d(m).shape)).reshape(m.weight.shape), None)
            for k, m in zip(keeps, modules)]


def _alive(module: nn.Module) -> Optional[Tensor]:
    """The module's existing keep-mask as [out, K], or None when it is not pruned."""
    mask = module._buffers.get(MASK, None)
    if mask is None or mask.shape != module.weight.shape:
        return None
    return mask.reshape(weight_2d(module).shape)


def _row_keep(scores: Tensor, sparsity: float) -> Tensor:
    """[out, K] scores -> keep-mask pruning exactly round(sparsity * K) of each row (ties: lower index)."""
    k = scores.shape[1]
    return nm_keep(scores, k - round(sparsity * k), k)


def prune_(
    model: nn.Module,
    config: PruneConfig,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    *,
    batch: Any = None,
    loss_fn: Optional[Callable] = None,
) -> PruneReport:
    """Prune ``model`` in place with masks (see ``fastq.pruning.masks`` for the mask contract).

    Args:
        model: any nn.Module; its nn.Linear and nn.Conv2d layers are candidates.
        config: a PruneConfig.
        filter_fn: ``filter_fn(module, name) -> bool`` choosing among the candidates (default all).
        batch: ``(inputs, targets)`` for criterion "taylor"; loss = loss_fn(model(inputs), targets).
        loss_fn: for "taylor": see ``batch``; with batch=None, ``loss_fn(model)`` returns the loss.

    Returns:
        A PruneReport with the sparsity reached per layer.

    Raises:
        ValueError: pattern not dividing a layer, a layer pruned to nothing, missing gradient
            inputs ("taylor") or input statistics ("wanda", "sparsegpt"), a bad input Hessian.
            All checks run before any module is modified.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
    layers = select_layers(model, filter_fn)
    results = compute_pruning(layers, model, config, batch, loss_fn)
    reports = []
    for (name, m), (keep, weight) in zip(layers, results):
        if weight is not None:  # sparsegpt: the kept weights were updated too
            with torch.no_grad():
                m.weight.copy_(weight)
        attach_mask_(m, keep, config.pattern)
        reports.append(LayerReport(name, tuple(m.weight.shape), m.weight.numel(), int((~keep).sum())))
    return PruneReport(config.pattern, tuple(reports))
