"""Pure-PyTorch references: the specification of every fastq op.

Each function is the ``"default"`` kernel of its torch.library op (the fallback on every device)
and the oracle the native kernels are tested against. Native kernels follow the float-op sequence
stated in each docstring exactly, so where the arithmetic is integer or a single rounding they
match bit for bit. Inputs arrive validated (see ``_checks``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastq.ops._checks import FLT_MIN, layout


def _poison(scale: Tensor, finite: Tensor) -> Tensor:
    return torch.where(finite, scale, torch.full_like(scale, float("nan")))


def quantize_int8(
    x: Tensor, group_size: int, symmetric: bool, scale: Optional[Tensor] = None, zero_point: Optional[Tensor] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize ``x`` to int8 (symmetric) or uint8 + zero point (asymmetric).

    ``x`` (float32/float16/bfloat16, rank >= 1) is viewed as rows of ``group_size`` elements along
    its last dimension (0: the whole tensor is one row; -1: rows are x's last dimension). Float-op
    sequence, all in float32 (``x`` is converted exactly first):

    * dynamic symmetric:   ``scale = max(amax(|row|) / 127, FLT_MIN)``
    * dynamic asymmetric:  ``lo = min(min(row), 0)``, ``hi = max(max(row), 0)``,
      ``scale = max((hi - lo) / 255, FLT_MIN)``, ``zp = clamp(round(-lo * (1 / scale)), 0, 255)``
    * codes: ``inv = 1 / scale``; symmetric ``clamp(round(x * inv), -127, 127)``; asymmetric
      ``clamp(round(x * inv) + zp, 0, 255)``. ``round`` is half to even.

    Non-finite policy: a dynamic row holding NaN or +-Inf is *poisoned*: its scale is NaN, its zero
    point 0 and its codes 0, so dequantizing it gives NaN rather than plausible numbers. With static
    scales, NaN maps to code 0 (symmetric) or the zero point (asymmetric) and +-Inf saturate.
    An empty row quantizes as if it were all zeros (scale FLT_MIN).

    Returns:
        codes (x's shape; int8 or uint8), scale (float32) and zero_point (int32, zeros when
        symmetric), both of the layout's scale shape (keepdim: they broadcast against x).
    """
    lay = layout(tuple(x.shape), group_size)
    rows = x.float().reshape(lay.rows, lay.cols)
    empty = lay.cols == 0
    if scale is None:
        if symmetric:
            amax = rows.abs().amax(dim=1) if not empty else rows.new_zeros(lay.rows)
            scale = _poison(torch.clamp_min(amax / 127, FLT_MIN), torch.isfinite(amax))
            zero_point = torch.zeros(lay.rows, dtype=torch.int32, device=x.device)
        else:
            lo = rows.amin(dim=1).clamp_max(0) if not empty else rows.new_zeros(lay.rows)
            hi = rows.amax(dim=1).clamp_min(0) if not empty else rows.new_zeros(lay.rows)
            finite = torch.isfinite(lo) & torch.isfinite(hi)
            scale = _poison(torch.clamp_min((hi - lo) / 255, FLT_MIN), finite)
            zp = torch.clamp(torch.round(-lo * (1.0 / scale)), 0, 255)
            zero_point = torch.where(finite, zp, torch.zeros_like(zp)).to(torch.int32)
    scale_rows = scale.reshape(-1).expand(lay.rows)
    v = rows * (1.0 / scale_rows)[:, None]
    if symmetric:
        q = torch.round(v).clamp(-127, 127)
        q = torch.where(torch.isnan(v), torch.zeros_like(q), q)
    else:
        zp_rows = zero_point.reshape(-1).expand(lay.rows).float()[:, None]
        q = torch.clamp(torch.round(v) + zp_rows, 0, 255)
        q = torch.where(torch.isnan(v), zp_rows.expand_as(q), q)
    codes = q.to(torch.int8 if symmetric else torch.uint8).reshape(x.shape)
    return codes, scale.reshape(lay.scale_shape).clone(), zero_point.reshape(lay.scale_shape).clone()


def dequantize_int8(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``y = float32(code - zero_point) * scale``, then rounded (to nearest even) to ``dtype``.

    ``codes`` are int8 (symmetric, no zero point) or uint8 (asymmetric); ``scale`` (and
    ``zero_point``) have the keepdim shape ``quantize_int8`` returns, which fixes the granularity.
    """
    if codes.numel() == 0:
        return torch.empty(codes.shape, dtype=dtype, device=codes.device)
    # One (scale, zero point) per row of this view, whatever the granularity.
    q = codes.reshape(scale.numel(), -1).to(torch.int32)
    if zero_point is not None:
        q = q - zero_point.reshape(-1, 1)
    return (q.to(torch.float32) * scale.reshape(-1, 1)).to(dtype).reshape(codes.shape)


def quantize_int8_out(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], group_size: int,
                      symmetric: bool, dynamic: bool) -> None:
    """``quantize_int8`` writing into ``codes`` (and, when ``dynamic``, into ``scale``/``zero_point``).

    With ``dynamic=False``, ``scale`` and ``zero_point`` are read (static quantization)."""
    c, s, z = quantize_int8(x, group_size, symmetric, None if dynamic else scale, None if dynamic else zero_point)
    codes.copy_(c)
    if dynamic:
        scale.copy_(s)
        if zero_point is not None:
            zero_point.copy_(z)


def dequantize_int8_out(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: Tensor) -> None:
    """``dequantize_int8`` writing into ``out`` (whose dtype is the output dtype)."""
    out.copy_(dequantize_int8(codes, scale, zero_point, out.dtype))
