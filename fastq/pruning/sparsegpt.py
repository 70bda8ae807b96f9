"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning that reconstructs the layer output.

Invariants:
- it works on the weight [N, K] and the mean x x^T [K, K] of the layer's calibration inputs; the
  dampened inverse-Hessian factor comes from ``fastq.quantization.intx.hessian_inverse_factor``,
  the same one GPTQ uses;
- columns are processed left to right in blocks; the mask is chosen from the *current* (already
  error-updated) weights by the score w^2 / [H^-1]_jj^2 (adaptive mask selection): for
  unstructured sparsity s, row r prunes round(s * i2) - (weights it pruned so far) of the columns
  of the block ending at i2, so every row ends at exactly round(s * K) pruned; for N:M, the lowest
  M - N of each run of M, chosen when the run's first column is reached;
- each pruned weight is set to exactly 0 and its error, divided by the pivot of the factor, is
  spread over the columns not yet processed, exactly as GPTQ does for rounding; kept weights
  therefore change, pruned ones stay 0;
- weights already masked (``alive`` False) are pruned again first (they score -inf) and count
  toward the row's or group's quota, so re-pruning never revives them; a quota smaller than the
  number of such weights prunes them all;
- ties are broken by index: among equal scores the lower column is pruned first.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from fastq.pruning.config import Pattern


def lowest_per_row(scores: Tensor, count: Tensor) -> Tensor:
    """Prune-mask [R, C] (bool, True = prune) with the ``count[r]`` lowest scores of each row pruned
    (count [R] int64, clamped to [0, C]); among equal scores the lower index goes first."""
    order = torch.argsort(scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order).contiguous())
    return rank < count.clamp(0, scores.shape[1]).unsqueeze(1)


def sparsegpt_prune(
    w: Tensor,
    hessian: Tensor,
    pattern: Pattern,
    sparsity: float,
    alive: Optional[Tensor] = None,
    damp: float = 0.01,
    block: int = 128,
) -> Tuple[Tensor, Tensor]:
    """Prune ``w`` by SparseGPT; see the module docstring for the algorithm.

    Args:
        w: float weight [N, K].
        hessian: float [K, K], mean x x^T of the layer's calibration inputs
            (``fastq.quantization.observe_inputs(model, hessian=True)``).
        pattern: "unstructured" or N:M (M must divide K).
        sparsity: the fraction pruned per row (unstructured; ignored for N:M).
        alive: optional bool [N, K], False where an earlier prune_ masked the weight.
        damp: Hessian dampening, times its mean diagonal.
        block: columns per block (a multiple of M for N:M).

    Returns:
        ``(keep bool [N, K], new weight float32 [N, K])``, the new weight zero where keep is False.

    Raises:
        ValueError: see ``hessian_inverse_factor`` (shape, NaN/Inf, not positive definite).
    """
    from fastq.quantization.intx import hessian_inverse_factor

    n, k = w.shape
    W, hinv = hessian_inverse_factor(w, hessian, damp)
    nm = pattern.kind == "nm"
    if nm:
        block = pattern.m * max(1, block // pattern.m)
    forced = torch.zeros(n, k, dtype=torch.bool, device=W.device) if alive is None else ~alive.to(W.device)
    prune = torch.zeros(n, k, dtype=torch.bool, device=W.device)
    done = torch.zeros(n, dtype=torch.int64, device=W.device)  # weights pruned so far per row
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = W[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d = torch.diag(h1)
        p1 = prune[:, i1:i2]
        f1 = forced[:, i1:i2]
        if not nm:
            score = (w1.square() / d.square()).masked_fill(f1, float("-inf"))
            quota = torch.maximum(round(sparsity * i2) - done, f1.sum(1))
            p1.copy_(lowest_per_row(score, quota))
            done += p1.sum(1)
        for i in range(i2 - i1):
            if nm and i % pattern.m == 0:
                j = slice(i, i + pattern.m)
                score = (w1[:, j].square() / d[j].square()).masked_fill(f1[:, j], float("-inf"))
                quota = f1[:, j].sum(1).clamp_min(pattern.m - pattern.n)
                p1[:, j] = lowest_per_row(score, quota)
            q = w1[:, i].masked_fill(p1[:, i], 0.0)
            e = (w1[:, i] - q) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        W[:, i1:i2] = w1
        W[:, i2:] -= err @ hinv[i1:i2, i2:]
    keep = ~prune
    return keep, W.masked_fill(prune, 0.0)
