"""Sub-8-bit weight quantization: float weight -> intx codes, scales and zero points, with clipping.

Invariants:
  * ``intx_quantize`` is the only place float weights become intx codes; modules pack its output
    with ``intx_pack_weight``. Per group of ``group_size`` consecutive inputs (or the whole row):
      symmetric  (z = 2^(b-1)):  scale = r * amax / ((2^b - 1) / 2)
                                 code = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1) + 2^(b-1)
      asymmetric:                lo = r * min(min w, 0), hi = r * max(max w, 0)
                                 scale = (hi - lo) / (2^b - 1), z = clamp(round(-lo / scale), 0, 2^b - 1)
                                 code = clamp(round(w / scale) + z, 0, 2^b - 1)
    with scale >= FLT_MIN (an all-zero group gets codes equal to its zero point), float32 math and
    round half to even. The symmetric grid spends all 2^b codes (torchao's convention): the step
    is amax / 7.5 for int4, so -amax is exact and +amax clips half a step.
  * ``r`` is the clip ratio: 1 without clipping; with ``clip="weight"`` the per-group ratio in
    ``CLIP_RATIOS`` minimizing the group's squared reconstruction error, with ``clip="output"`` the
    one minimizing it weighted by the mean squared input of each input feature (observed on
    calibration batches with ``observe_inputs``: a diagonal estimate of the layer-output error).
  * Given the inputs' Hessian, codes come from GPTQ (``gptq_quantize``) rather than rounding to
    nearest; the scale formulas above still define each group's grid.
  * NaN/Inf weights raise ``UnsupportedLayerError`` (quantize_ then skips the layer with that reason).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from fastq.nn._base import UnsupportedLayerError
from fastq.quantization.configs import CLIP_MODES

CLIP_RATIOS = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))  # 1.0, 0.975, ..., 0.5
INPUT_STATS_ATTR = "_fastq_input_sq_mean"  # set on nn.Linear layers by observe_inputs
INPUT_HESSIAN_ATTR = "_fastq_input_hessian"  # ... with hessian=True
_FLT_MIN = torch.finfo(torch.float32).tiny
_ROWS_PER_STEP = 512  # rows searched at once: bounds the search's temporaries to a few dozen MB


def _qparams(g: Tensor, bits: int, symmetric: bool, ratio: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, zero) of groups g [R, G, gs] at clip ratios ratio [R, G] (float32, zero as float)."""
    top = float((1 << bits) - 1)
    if symmetric:
        scale = (g.abs().amax(dim=-1) * ratio / (top / 2)).clamp_min(_FLT_MIN)
        return scale, torch.full_like(scale, float(1 << (bits - 1)))
    lo = g.amin(dim=-1).clamp_max(0) * ratio
    hi = g.amax(dim=-1).clamp_min(0) * ratio
    scale = ((hi - lo) / top).clamp_min(_FLT_MIN)
    return scale, torch.clamp(torch.round(-lo / scale), 0, top)


def _codes(g: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    top = float((1 << bits) - 1)
    q = torch.round(g / scale.unsqueeze(-1))
    if symmetric:
        half = float(1 << (bits - 1))
        return torch.clamp(q, -half, half - 1) + half
    return torch.clamp(q + zero.unsqueeze(-1), 0, top)


def _search(g: Tensor, bits: int, symmetric: bool, weight: Optional[Tensor]) -> Tensor:
    """Best clip ratio per group of g [R, G, gs]; weight [G, gs] weights the squared error."""
    best_err = torch.full(g.shape[:2], float("inf"), dtype=torch.float32, device=g.device)
    best = torch.ones_like(best_err)
    for r in CLIP_RATIOS:
        ratio = torch.full_like(best_err, r)
        scale, zero = _qparams(g, bits, symmetric, ratio)
        deq = (_codes(g, scale, zero, bits, symmetric) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
        sq = (deq - g).square()
        err = (sq * weight).sum(-1) if weight is not None else sq.sum(-1)
        better = err < best_err  # ties keep the larger ratio (tried first): no clipping unless it helps
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, ratio, best)
    return best


def intx_quantize(w: Tensor, bits: int, group_size: Optional[int], symmetric: bool, clip: Optional[str] = None,
                  input_sq_mean: Optional[Tensor] = None,
                  hessian: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Quantize a float weight [N, K] to ``bits``-bit codes (see the module docstring).

    Args:
        w: float weight [N, K].
        bits: 2..8.
        group_size: inputs per scale (a divisor of K), or None for one scale per output row.
        symmetric: no zero points (z = 2^(bits-1)) or a per-group zero point.
        clip: None, "weight" or "output" (needs ``input_sq_mean``).
        input_sq_mean: float [K], mean of x_k^2 over calibration inputs (for clip="output").
        hessian: float [K, K], mean of x x^T over calibration inputs: given, the codes are chosen
            by GPTQ (``gptq_quantize``) instead of rounding each weight to its nearest code.

    Returns:
        ``(codes uint8 [N, K], scale float32 [N, G], zero uint8 [N, G] or None when symmetric)``.

    Raises:
        UnsupportedLayerError: the weight holds NaN or Inf, or group_size does not divide K.
    """
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    n, k = w.shape
    gs = k if group_size is None else group_size
    if k % gs:
        raise UnsupportedLayerError(f"group_size {gs} does not divide K={k}")
    w = w.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise UnsupportedLayerError("the weight holds NaN or Inf values")
    groups = k // gs
    weight = None
    if clip == "output":
        if input_sq_mean is None:
            raise ValueError("clip='output' needs the layer's input statistics (fastq.quantization.observe_inputs)")
        weight = input_sq_mean.detach().float().to(w.device).reshape(groups, gs)
    if hessian is not None:
        return gptq_quantize(w, hessian, bits, gs, symmetric, clip, weight)
    codes = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    scale = torch.empty(n, groups, dtype=torch.float32, device=w.device)
    zero = torch.empty(n, groups, dtype=torch.uint8, device=w.device)
    for r0 in range(0, n, _ROWS_PER_STEP):
        g = w[r0:r0 + _ROWS_PER_STEP].reshape(-1, groups, gs)
        ratio = _search(g, bits, symmetric, weight) if clip else torch.ones(g.shape[:2], device=w.device)
        s, z = _qparams(g, bits, symmetric, ratio)
        codes[r0:r0 + _ROWS_PER_STEP] = _codes(g, s, z, bits, symmetric).reshape(-1, k).to(torch.uint8)
        scale[r0:r0 + _ROWS_PER_STEP] = s
        zero[r0:r0 + _ROWS_PER_STEP] = z.to(torch.uint8)
    return codes, scale, None if symmetric else zero


def hessian_inverse_factor(w: Tensor, hessian: Tensor, damp: float = 0.01) -> tuple[Tensor, Tensor]:
    """The shared start of GPTQ and SparseGPT: the weight to update and the upper Cholesky factor of
    the dampened inverse Hessian, through which both spread a column's error over later columns.

    Args:
        w: float weight [N, K].
        hessian: float [K, K], mean x x^T of the layer's calibration inputs.
        damp: added to the diagonal, times its mean (1% in both papers).

    Returns:
        ``(W, U)``: W float32 [N, K], a copy of ``w`` with the columns of never-active inputs
        (H_jj = 0, their weights cannot matter) zeroed; U float32 [K, K] upper triangular with
        U^T U = (H + damp * mean(diag H) * I)^-1, where dead inputs get H_jj = 1.

    Raises:
        ValueError: the Hessian is not [K, K], holds NaN/Inf, or is not positive definite even
            after dampening.
    """
    k = w.shape[1]
    if hessian.dim() != 2 or tuple(hessian.shape) != (k, k):
        raise ValueError(f"the input Hessian has shape {list(hessian.shape)}, the weight [N, K] = {list(w.shape)} "
                         f"needs [{k}, {k}]: record it on this layer with observe_inputs(model, hessian=True)")
    H = hessian.detach().float().to(w.device).clone()
    if not bool(torch.isfinite(H).all()):
        raise ValueError("the input Hessian holds NaN or Inf: the calibration inputs were not finite")
    W = w.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs never active: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, device=w.device)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        L, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ValueError(f"the dampened input Hessian is not positive definite (damp={damp}); "
                         f"raise damp or record more calibration inputs")
    return W, L


def gptq_quantize(w: Tensor, hessian: Tensor, bits: int, group_size: int, symmetric: bool, clip: Optional[str] = None,
                  clip_weight: Optional[Tensor] = None, damp: float = 0.01,
                  block: int = 128) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """GPTQ (Frantar et al., 2022): codes chosen column by column, each column's rounding error
    spread over the columns not yet quantized through the inverse input Hessian, so that the layer
    output X W^T, not the weight, stays close. A group's scale and zero point are fixed (with the
    clip search of ``clip``) when its first column is reached, from the error-updated weights.
    Arguments and result as ``intx_quantize``; ``hessian`` is the mean x x^T [K, K] of calibration
    inputs (``observe_inputs(model, hessian=True)``), dampened by ``damp`` times its mean diagonal."""
    n, k = w.shape
    groups = k // group_size
    W, hinv = hessian_inverse_factor(w, hessian, damp)
    codes = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    scale = torch.empty(n, groups, dtype=torch.float32, device=w.device)
    zero = torch.empty(n, groups, dtype=torch.float32, device=w.device)
    block = group_size * max(1, block // group_size) if group_size <= block else block
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = W[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col // group_size
            if col % group_size == 0:  # a group starts: its scale from the current weights
                cur = torch.cat([w1[:, i:], W[:, i2:col + group_size]], dim=1)[:, :group_size].unsqueeze(1)
                cw = None if clip_weight is None else clip_weight[g:g + 1]
                ratio = _search(cur, bits, symmetric, cw) if clip else torch.ones(n, 1, device=w.device)
                s, z = _qparams(cur, bits, symmetric, ratio)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            c = _codes(w1[:, i].reshape(n, 1, 1), scale[:, g:g + 1], zero[:, g:g + 1], bits, symmetric).reshape(n)
            codes[:, col] = c.to(torch.uint8)
            e = (w1[:, i] - (c - zero[:, g]) * scale[:, g]) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err[:, i] = e
        W[:, i2:] -= err @ hinv[i1:i2, i2:]
    return codes, scale, None if symmetric else zero.to(torch.uint8)


@contextlib.contextmanager
def observe_inputs(model: nn.Module, hessian: bool = False) -> Iterator[None]:
    """Inside this context, forward passes record each ``nn.Linear``'s mean squared input per input
    feature (``INPUT_STATS_ATTR``), which ``clip="output"`` uses, and with ``hessian=True`` the mean
    x x^T [K, K] (``INPUT_HESSIAN_ATTR``, float32: K^2 * 4 bytes per layer), which ``gptq=True``
    uses. Run a few calibration batches::

        with fastq.quantization.observe_inputs(model, hessian=True):
            for batch in batches:
                model(**batch)
        fastq.quantize_(model, Int4WeightOnlyConfig(clip="output", gptq=True))
    """
    sums: dict = {}

    def hook(module: nn.Module, args: tuple, _out) -> None:
        x = args[0].detach()
        flat = x.reshape(-1, x.shape[-1]).float()
        s, h, c = sums.get(module, (0.0, 0.0, 0))
        sums[module] = (s + flat.square().sum(0), h + flat.T @ flat if hessian else None, c + flat.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) is nn.Linear]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        for module, (s, h, c) in sums.items():
            if c:
                setattr(module, INPUT_STATS_ATTR, (s / c).cpu())
                if h is not None:
                    setattr(module, INPUT_HESSIAN_ATTR, (h / c).cpu())


def input_stats(module: nn.Module) -> Optional[Tensor]:
    """The per-feature mean squared input ``observe_inputs`` recorded on ``module``, or None."""
    return getattr(module, INPUT_STATS_ATTR, None)


def input_hessian(module: nn.Module) -> Optional[Tensor]:
    """The mean x x^T ``observe_inputs(hessian=True)`` recorded on ``module``, or None."""
    return getattr(module, INPUT_HESSIAN_ATTR, None)


def reconstruction_error(w: Tensor, codes: Tensor, scale: Tensor, zero: Optional[Tensor], bits: int) -> float:
    """Relative squared error ||W - deq||^2 / ||W||^2 of a quantized weight (for reports and tests)."""
    from fastq.ops.reference import intx_dequantize

    z = zero if zero is not None else torch.full_like(scale, 1 << (bits - 1), dtype=torch.uint8)
    deq = intx_dequantize(codes, scale, z)
    return float((deq - w.float()).square().sum() / w.float().square().sum().clamp_min(_FLT_MIN))
