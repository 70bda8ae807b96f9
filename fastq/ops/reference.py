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
    elif symmetric:
        zero_point = torch.zeros(lay.scale_shape, dtype=torch.int32, device=x.device)  # returned, never read
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


# ---- int8 GEMM family ---------------------------------------------------------------------------
# Packed weight layout (ISA-independent; every kernel reads it, the reference unpacks it):
#   N_pad = ceil(N / 16) * 16, K_pad = ceil(K / 4) * 4, padding filled with 0.
#   bytes [0, N_pad * K_pad): int8 blocks [N_pad/16][K_pad/4][16][4]: block (nb, kg) holds
#       w[nb*16 + n, kg*4 + k] at n*4 + k (16 output channels x 4 consecutive k = 64 bytes);
#   then N_pad int32 (little endian) column sums sum_k w[n, k] (for zero-point corrections).
PACK_NR = 16
PACK_KR = 4


def packed_sizes(n: int, k: int) -> tuple[int, int, int]:
    """(N_pad, K_pad, total bytes) of the packed layout for an [n, k] weight."""
    n_pad = -(-n // PACK_NR) * PACK_NR
    k_pad = -(-k // PACK_KR) * PACK_KR
    return n_pad, k_pad, n_pad * k_pad + 4 * n_pad


def int8_gemm(a: Tensor, b: Tensor) -> Tensor:
    """Exact ``a @ b.T`` for int8 ``a`` [M, K] and ``b`` [N, K], as int32 [M, N].

    float64 holds every partial sum exactly (|sum| <= K * 128^2 < 2^53), on any device."""
    return (a.double() @ b.double().T).to(torch.int32)


def int8_pack_weight(w: Tensor) -> Tensor:
    """Pack an int8 [N, K] weight into the layout above (1-D int8 tensor)."""
    n, k = w.shape
    n_pad, k_pad, total = packed_sizes(n, k)
    padded = torch.zeros(n_pad, k_pad, dtype=torch.int8, device=w.device)
    padded[:n, :k] = w
    blocks = padded.reshape(n_pad // PACK_NR, PACK_NR, k_pad // PACK_KR, PACK_KR).permute(0, 2, 1, 3)
    colsum = padded.to(torch.int32).sum(dim=1, dtype=torch.int32)
    return torch.cat([blocks.reshape(-1), colsum.view(torch.int8)])


def int8_unpack_weight(packed: Tensor, n: int, k: int) -> tuple[Tensor, Tensor]:
    """Inverse of ``int8_pack_weight``: (w int8 [n, k], column sums int32 [n])."""
    n_pad, k_pad, _ = packed_sizes(n, k)
    body = packed[: n_pad * k_pad].reshape(n_pad // PACK_NR, k_pad // PACK_KR, PACK_NR, PACK_KR)
    w = body.permute(0, 2, 1, 3).reshape(n_pad, k_pad)[:n, :k]
    colsum = packed[n_pad * k_pad:].view(torch.int32)[:n]
    return w, colsum


def int8_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    """W8A8 linear: per-token dynamic int8 activations x int8 per-channel weights, fused epilogue.

    ``x`` [*, K] (float32/float16/bfloat16); ``w_packed`` from ``int8_pack_weight`` of an [n, K]
    weight; ``w_scale`` float32 [n]; ``bias`` float32 [n] or None. Sequence:
      qa, a_scale, zp = quantize_int8(x, PER_ROW, act_symmetric)      (exactly that op)
      acc[m, j] = sum_k qa[m, k] * w[j, k] - zp[m] * colsum[j]         (int32, exact)
      y = float32(acc) * (a_scale[m] * w_scale[j])                     (two float32 roundings)
      y = y + bias[j]                                                  (when bias is given)
    then rounded to ``out_dtype``. Native kernels follow this sequence without FMA contraction.
    """
    k = x.shape[-1]
    w, colsum = int8_unpack_weight(w_packed, n, k)
    qa, a_scale, zp = quantize_int8(x.reshape(-1, k), -1, act_symmetric)
    acc = (qa.double() @ w.double().T).to(torch.int32) - zp.reshape(-1, 1) * colsum.reshape(1, -1)
    y = acc.to(torch.float32) * (a_scale.reshape(-1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias
    return y.to(out_dtype).reshape(*x.shape[:-1], n)


def int8_weight_only_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    """Weight-only int8 linear: ``x @ (w * scale).T + bias`` in float32, returned in x's dtype.

    ``w_scale`` float32 [n, G]: G = 1 is per channel, otherwise groups of K // G along K. Float
    accumulation order is not specified (kernels dequantize in registers and sum in their own
    order), so native results match this within float32 rounding, not bit for bit.
    """
    k = x.shape[-1]
    w, _ = int8_unpack_weight(w_packed, n, k)
    groups = w_scale.shape[-1]
    w_f = (w.float().reshape(n, groups, k // groups) * w_scale.reshape(n, groups, 1)).reshape(n, k)
    y = x.reshape(-1, k).float() @ w_f.T
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
