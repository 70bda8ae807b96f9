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

from fastq.ops.layouts import (ELL_ROWS, ELL_TILE, FLT_MIN, PACK_KR, PACK_NR, SPARSE_MAX_COLS,  # noqa: F401
                               SPARSE_ROW_PAD, layout, packed_sizes)


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
# Packed weight layout (ISA-independent; every kernel reads it, the reference unpacks it): see
# fastq/ops/layouts.py (PACK_NR x PACK_KR blocks, zero padding, then the int32 column sums).


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


# ---- sparse masked matmul family (sparse_csr / sparse_24 / sparse_bsr / sparse_int8) -------------
# Compressed formats of a pruned weight W * M ([N, K], M a bool mask). Packing is exact: unpacking
# gives W * M back bit for bit (a kept -0.0 may come back as +0.0, equal under ==). Column indices
# are narrow: int16 tensors holding *unsigned* 16-bit values (torch has no usable uint16), so K (or
# K / block width) is at most 65536. Every linear computes
#     y[m, n] = sum over the stored (kept) entries j of row n: x[m, col_j] * v_j   (float32)
#     y[m, n] = y[m, n] (* scale[n], sparse_int8 only) + bias[n]                    (float32)
# then rounds once to x's dtype. The sum order is unspecified (native kernels use SIMD partial
# sums), so results agree with this reference within float32 rounding of a K-term dot product,
# not bit for bit. Pruned weights are never read: a NaN/Inf in x reaches y[m, n] only through a
# kept weight of row n (unlike a dense matmul on the masked weight, where 0 * NaN = NaN).
# One documented exception: sparse_24_linear with bfloat16 x on a CUDA GPU of compute capability
# >= 8.0 runs on the sparse tensor cores, whose operands are bfloat16, so each kept weight is
# rounded once to bfloat16 (relative error <= 2^-8) before its exact product is summed in float32.


def _u16(idx: Tensor) -> Tensor:
    """int16 storage of unsigned 16-bit indices -> int64 values."""
    return idx.to(torch.int64) & 0xFFFF


def _csr_entries(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-major (row, col) of the kept entries, each row padded to a multiple of SPARSE_ROW_PAD.

    Returns rows, cols (int64) and ``is_pad`` (bool) of the padded entry list, plus row_ptr.
    Padding entries repeat the row's last kept column (column 0 for an empty row) with value 0,
    so kernels read only columns the row already reads and never need a tail loop.
    """
    n, k = mask.shape
    counts = mask.sum(dim=1)
    padded = (counts + SPARSE_ROW_PAD - 1) // SPARSE_ROW_PAD * SPARSE_ROW_PAD
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=mask.device)
    row_ptr[1:] = torch.cumsum(padded, 0)
    total = int(row_ptr[-1])
    kept_rows, kept_cols = mask.nonzero(as_tuple=True)
    rows = torch.repeat_interleave(torch.arange(n, device=mask.device), padded)
    pos = torch.arange(total, device=mask.device) - row_ptr[:-1][rows]  # position within the row
    is_pad = pos >= counts[rows]
    cols = torch.zeros(total, dtype=torch.int64, device=mask.device)
    cols[~is_pad] = kept_cols
    # last kept column of each row (0 when the row keeps nothing)
    last = torch.zeros(n, dtype=torch.int64, device=mask.device)
    if kept_cols.numel():
        last.scatter_reduce_(0, kept_rows, kept_cols, reduce="amax")
    cols[is_pad] = last[rows[is_pad]]
    return rows, cols, is_pad, row_ptr


def sparse_csr_pack(w: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pack ``w * mask`` ([N, K]) into padded CSR with 16-bit column indices.

    Returns:
        values: float32 [nnz_pad] (kept weights converted exactly; padding entries are 0),
        cols: int16 [nnz_pad] (unsigned column index, see ``_u16``),
        row_ptr: int64 [N + 1]; row n owns entries [row_ptr[n], row_ptr[n + 1]), a multiple of 16.
    """
    rows, cols, is_pad, row_ptr = _csr_entries(mask)
    values = w.float()[rows, cols]
    values[is_pad] = 0.0
    return values, cols.to(torch.int16), row_ptr


def sparse_csr_unpack(values: Tensor, cols: Tensor, row_ptr: Tensor, n: int, k: int) -> Tensor:
    """The dense float32 [N, K] weight ``W * M`` back from ``sparse_csr_pack``'s output."""
    rows = torch.repeat_interleave(torch.arange(n, device=values.device), row_ptr.diff())
    dense = torch.zeros(n, k, dtype=torch.float32, device=values.device)
    dense.index_put_((rows, _u16(cols)), values, accumulate=True)  # padding adds +0.0: exact
    return dense


def _gather_linear(x: Tensor, rows: Tensor, cols: Tensor, vals: Tensor, n: int) -> Tensor:
    """float32 [M, N]: y[m, rows_j] += x[m, cols_j] * vals_j over the entries j (kept weights only)."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    y = torch.zeros(x2.shape[0], n, dtype=torch.float32, device=x.device)
    step = max(1, (1 << 24) // max(1, vals.numel()))  # bound the [rows, nnz] temporary
    for i in range(0, x2.shape[0], step):
        y[i:i + step].index_add_(1, rows, x2[i:i + step, cols] * vals)
    return y


def _finish(y: Tensor, x: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(tuple(x.shape[:-1]) + (n,))


def sparse_csr_linear(x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    """``x @ (W * M)^T + bias`` from padded CSR. x: float32/bfloat16 [*, K]; bias float32 [N] or None.

    Float-op sequence: float32 products ``x[m, c] * v`` summed in any order, ``+ bias`` once,
    one rounding to x.dtype. Returns [*, N] of x.dtype.
    """
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), row_ptr.diff())
    return _finish(_gather_linear(x, rows, _u16(cols), values, n), x, bias, n)


def sparse_24_pack(w: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Pack a 2:4 weight: every group of 4 consecutive inputs keeps at most 2 (K % 4 == 0).

    Each group stores exactly 2 slots, in increasing column order; a group keeping fewer than 2
    fills the slots with unkept columns holding 0.0.

    Returns:
        values: float32 [N, K / 2], slot s of group g at [n, 2 g + s],
        meta: uint8 [N, ceil(K / 8)]; the 2-bit column-within-group of value j of a row is
        ``(meta[n, j // 4] >> (2 * (j % 4))) & 3`` (column = 4 * (j // 2) + that).
    """
    n, k = w.shape
    g = mask.reshape(n, k // 4, 4)
    # rank kept columns first (stable, so ties keep column order), take 2, then sort by column
    order = torch.argsort((~g).to(torch.int8), dim=2, stable=True)[..., :2]
    sel = torch.sort(order, dim=2).values  # [N, K/4, 2] column within group
    vals = torch.gather((w.float() * mask).reshape(n, k // 4, 4), 2, sel).reshape(n, k // 2)
    codes = sel.reshape(n, k // 2).to(torch.int64)
    nbytes = (k // 2 + 3) // 4
    codes = torch.nn.functional.pad(codes, (0, nbytes * 4 - k // 2)).reshape(n, nbytes, 4)
    meta = (codes << torch.tensor([0, 2, 4, 6], device=w.device)).sum(dim=2).to(torch.uint8)
    return vals, meta


def _24_cols(meta: Tensor, k: int) -> Tensor:
    """int64 [N, K/2] input column of every stored 2:4 value."""
    n = meta.shape[0]
    shifts = torch.tensor([0, 2, 4, 6], device=meta.device)
    codes = ((meta.to(torch.int64).unsqueeze(-1) >> shifts) & 3).reshape(n, -1)[:, : k // 2]
    return codes + torch.arange(k // 2, device=meta.device) // 2 * 4


def sparse_24_unpack(values: Tensor, meta: Tensor, k: int) -> Tensor:
    """The dense float32 [N, K] weight back from ``sparse_24_pack``'s output."""
    n = values.shape[0]
    dense = torch.zeros(n, k, dtype=torch.float32, device=values.device)
    dense.scatter_(1, _24_cols(meta, k), values)
    return dense


def sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x @ (W * M)^T + bias`` for a 2:4 weight; same float-op sequence as ``sparse_csr_linear``."""
    n, k = values.shape[0], x.shape[-1]
    rows = torch.arange(n, device=x.device).repeat_interleave(k // 2)
    return _finish(_gather_linear(x, rows, _24_cols(meta, k).reshape(-1), values.reshape(-1), n), x, bias, n)


def sparse_bsr_pack(w: Tensor, mask: Tensor, block_rows: int, block_cols: int) -> tuple[Tensor, Tensor, Tensor]:
    """Block-CSR of ``w * mask`` with [block_rows, block_cols] blocks (any block holding a kept
    weight is stored whole, pruned entries as 0). N and K need not divide: edge blocks are padded.

    Returns:
        values: float32 [nblocks, block_rows, block_cols],
        block_col: int16 [nblocks] (unsigned index of the block's column, in units of block_cols),
        row_ptr: int64 [ceil(N / block_rows) + 1] over blocks.
    """
    n, k = w.shape
    br, bc = block_rows, block_cols
    nb_r, nb_c = -(-n // br), -(-k // bc)
    wm = torch.zeros(nb_r * br, nb_c * bc, dtype=torch.float32, device=w.device)
    mm = torch.zeros(nb_r * br, nb_c * bc, dtype=torch.bool, device=w.device)
    wm[:n, :k] = w.float() * mask
    mm[:n, :k] = mask
    blocks = wm.reshape(nb_r, br, nb_c, bc).permute(0, 2, 1, 3)  # [R, C, br, bc]
    keep = mm.reshape(nb_r, br, nb_c, bc).any(dim=3).any(dim=1)  # [R, C]
    r_idx, c_idx = keep.nonzero(as_tuple=True)
    row_ptr = torch.zeros(nb_r + 1, dtype=torch.int64, device=w.device)
    row_ptr[1:] = torch.cumsum(keep.sum(dim=1), 0)
    return blocks[r_idx, c_idx].contiguous(), c_idx.to(torch.int16), row_ptr


def sparse_bsr_unpack(values: Tensor, block_col: Tensor, row_ptr: Tensor, n: int, k: int) -> Tensor:
    """The dense float32 [N, K] weight back from ``sparse_bsr_pack``'s output."""
    nb, br, bc = values.shape
    nb_r = row_ptr.numel() - 1
    nb_c = -(-k // bc)
    r_idx = torch.repeat_interleave(torch.arange(nb_r, device=values.device), row_ptr.diff())
    dense = torch.zeros(nb_r, nb_c, br, bc, dtype=torch.float32, device=values.device)
    dense[r_idx, _u16(block_col)] = values
    return dense.permute(0, 2, 1, 3).reshape(nb_r * br, nb_c * bc)[:n, :k].contiguous()


def _bsr_entries(values: Tensor, block_col: Tensor, row_ptr: Tensor, n: int, k: int):
    nb, br, bc = values.shape
    r_idx = torch.repeat_interleave(torch.arange(row_ptr.numel() - 1, device=values.device), row_ptr.diff())
    rr = (r_idx.view(-1, 1, 1) * br + torch.arange(br, device=values.device).view(1, -1, 1)).expand(nb, br, bc)
    cc = (_u16(block_col).view(-1, 1, 1) * bc + torch.arange(bc, device=values.device).view(1, 1, -1)).expand(nb, br, bc)
    inside = (rr < n) & (cc < k)
    return rr[inside], cc[inside], values[inside]


def sparse_bsr_linear(x: Tensor, values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    """``x @ (W * M)^T + bias`` from block-CSR; same float-op sequence as ``sparse_csr_linear``
    (the stored zeros inside kept blocks are multiplied like kept weights)."""
    rows, cols, vals = _bsr_entries(values, block_col, row_ptr, n, x.shape[-1])
    return _finish(_gather_linear(x, rows, cols, vals, n), x, bias, n)


def sparse_int8_pack(w: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Deep-Compression style: the kept weights of padded CSR quantized to int8 per output row.

    Float-op sequence (float32): ``amax = max |kept w| of the row``; ``scale = amax / 127``
    (1.0 for a row keeping nothing or only zeros); ``q = clamp(round_half_even(w / scale), -127, 127)``.

    Returns:
        q: int8 [nnz_pad], scale: float32 [N], cols: int16 [nnz_pad], row_ptr: int64 [N + 1]
        (same entry layout as ``sparse_csr_pack``).
    """
    values, cols, row_ptr = sparse_csr_pack(w, mask)
    scale = _sparse_int8_scale(w, mask)
    rows = torch.repeat_interleave(torch.arange(w.shape[0], device=w.device), row_ptr.diff())
    q = torch.clamp(torch.round(values / scale[rows]), -127, 127).to(torch.int8)
    return q, scale, cols, row_ptr


def _sparse_int8_scale(w: Tensor, mask: Tensor) -> Tensor:
    """float32 [N]: ``amax / 127`` of each row's kept weights, 1.0 for a row keeping no nonzero."""
    amax = (w.float().abs() * mask).amax(dim=1)
    return torch.where(amax > 0, amax / 127, torch.ones_like(amax))


def sparse_int8_unpack(q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor, k: int) -> Tensor:
    """The dense float32 [N, K] dequantized weight ``q * scale[n]`` at the kept positions."""
    dense = sparse_csr_unpack(q.float(), cols, row_ptr, scale.numel(), k)
    return dense * scale.unsqueeze(1)


def sparse_int8_linear(x: Tensor, q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor,
                       bias: Optional[Tensor]) -> Tensor:
    """``x @ (Q * scale)^T + bias``: float32 products ``x[m, c] * float(q)`` summed in any order,
    then ``* scale[n]``, then ``+ bias[n]``, one rounding to x.dtype."""
    n = scale.numel()
    rows = torch.repeat_interleave(torch.arange(n, device=x.device), row_ptr.diff())
    y = _gather_linear(x, rows, _u16(cols), q.float(), n) * scale
    return _finish(y, x, bias, n)


# ---- sliced-ELL sparse linear (sparse_ell_pack / sparse_ell_unpack / sparse_ell_linear) ---------
# W * M ([N, K]) cut into "steps" a SIMD kernel consumes without gathers (csrc/api.h: SparseEllArgs):
#   * output rows in groups of ELL_ROWS = 16: lane r of group g is row 16 g + r (the last group is
#     padded with empty rows); inputs in tiles of ELL_TILE = 32 columns; G = ceil(N / 16) groups,
#     T = ceil(K / 32) tiles;
#   * steps[g, t] (uint8, <= 32) = the most weights any row of group g keeps in tile t;
#   * the s-th step of (g, t) holds, per lane r, the s-th kept weight of row 16 g + r in tile t (in
#     column order): values[j, r] and offsets[j, r] = its column - 32 t (uint8, < 32); rows keeping
#     fewer get padding (value 0, offset 0);
#   * steps are stored in (g, t, s) order; group g owns steps [group_ptr[g], group_ptr[g + 1]).
# values are float32 (exact) or int8 codes with sparse_int8_pack's per-row scale (float32 [N]).
# Every output row reads its tile's x at each of its slots, kept or not, so a group costs
# sum_t steps[g, t] * 16 multiply-adds: ELL pays for the row imbalance within a group and tile
# (about 2x the kept weights at 90% sparsity) to get rid of the gathers.


def sparse_ell_pack(w: Tensor, mask: Tensor, int8: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pack ``w * mask`` ([N, K]) into sliced ELL (layout above); any K.

    int8: kept weights become ``clamp(round_half_even(w / scale[n]), -127, 127)`` with
    ``sparse_int8_pack``'s scale (``amax / 127`` of the row's kept weights, 1.0 for a row keeping
    no nonzero).

    Returns:
        values: [S, 16] float32 (int8 codes when int8), offsets: uint8 [S, 16], steps: uint8 [G, T],
        group_ptr: int64 [G + 1], scale: float32 [N] when int8, else empty [0].
    """
    n, k = w.shape
    g_n, t_n = -(-n // ELL_ROWS), -(-k // ELL_TILE)
    kept = torch.zeros(g_n * ELL_ROWS, t_n * ELL_TILE, dtype=torch.bool, device=w.device)
    kept[:n, :k] = mask
    tiles = kept.reshape(g_n, ELL_ROWS, t_n, ELL_TILE)  # [g, r, t, c]
    steps = tiles.sum(dim=3).amax(dim=1)  # [G, T]
    first = (torch.cumsum(steps, dim=1) - steps).flatten()  # first step of (g, t) within group g
    group_ptr = torch.zeros(g_n + 1, dtype=torch.int64, device=w.device)
    group_ptr[1:] = torch.cumsum(steps.sum(dim=1), 0)
    g, r, t, c = tiles.nonzero(as_tuple=True)  # columns ascend within each (g, r, t)
    s = (torch.cumsum(tiles, dim=3) - 1)[g, r, t, c]  # rank of the weight within its row and tile
    j = group_ptr[g] + first[g * t_n + t] + s
    rows = g * ELL_ROWS + r
    v = w.float()[rows, t * ELL_TILE + c]
    if int8:
        scale = _sparse_int8_scale(w, mask)
        v = torch.clamp(torch.round(v / scale[rows]), -127, 127).to(torch.int8)
    else:
        scale = torch.empty(0, dtype=torch.float32, device=w.device)
    total = int(group_ptr[-1])
    values = torch.zeros(total, ELL_ROWS, dtype=v.dtype, device=w.device)
    offsets = torch.zeros(total, ELL_ROWS, dtype=torch.uint8, device=w.device)
    values[j, r] = v
    offsets[j, r] = c.to(torch.uint8)
    return values, offsets, steps.to(torch.uint8), group_ptr, scale


def _ell_tile_of_steps(steps: Tensor) -> tuple[Tensor, Tensor]:
    """int64 [S] group and tile of every stored step."""
    g_n, t_n = steps.shape
    gt = torch.repeat_interleave(torch.arange(g_n * t_n, device=steps.device), steps.flatten().to(torch.int64))
    return gt // t_n, gt % t_n


def sparse_ell_unpack(values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor, scale: Optional[Tensor],
                      n: int, k: int) -> Tensor:
    """The dense float32 [N, K] weight back from ``sparse_ell_pack``'s output (``q * scale[n]`` at
    the kept positions for int8 values, as ``sparse_int8_unpack``)."""
    g_n, t_n = steps.shape
    g, t = _ell_tile_of_steps(steps)
    rows = g[:, None] * ELL_ROWS + torch.arange(ELL_ROWS, device=values.device)
    cols = t[:, None] * ELL_TILE + offsets.to(torch.int64)
    dense = torch.zeros(g_n * ELL_ROWS, t_n * ELL_TILE, dtype=torch.float32, device=values.device)
    dense.index_put_((rows, cols), values.float(), accumulate=True)  # padding adds +0.0: exact
    dense = dense[:n, :k].contiguous()
    return dense * scale.unsqueeze(1) if values.dtype == torch.int8 else dense


def sparse_ell_linear(x: Tensor, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                      scale: Optional[Tensor], bias: Optional[Tensor], n: int) -> Tensor:
    """``x @ (W * M)^T + bias`` from sliced ELL. x: float32/bfloat16 [*, K]; scale: float32 [N] for
    int8 values (None or empty for float32 values); bias: float32 [N] or None.

    Float-op sequence (float32; the native kernels follow it exactly, so they are bit-exact):
    each output row starts from ``acc = +0.0`` and takes its lane's slots in storage order (tile by
    tile, step by step): ``acc = acc + (v * x[m, 32 t + offset] if v != 0 else +0.0)``; then
    ``acc * scale[n]`` (int8 values), ``+ bias[n]``, one rounding to x.dtype. Slots holding 0
    (padding, or a kept weight equal to 0) are skipped, so a NaN/Inf in x reaches y[m, n] only
    through a nonzero kept weight of row n. Returns [*, N] of x.dtype.
    """
    k = x.shape[-1]
    g_n, t_n = steps.shape
    x2 = torch.nn.functional.pad(x.reshape(-1, k).float(), (0, t_n * ELL_TILE - k))
    per = steps.to(torch.int64)
    first = group_ptr[:-1, None] + torch.cumsum(per, dim=1) - per  # [G, T] first step of (g, t)
    v_all = values.float()
    acc = x2.new_zeros(x2.shape[0], g_n, ELL_ROWS)
    for t in range(t_n):
        for s in range(int(per[:, t].max())):
            live = (per[:, t] > s).nonzero().squeeze(1)  # the groups with an s-th step in tile t
            j = first[live, t] + s
            v = v_all[j]  # [L, 16]
            xv = x2[:, t * ELL_TILE + offsets[j].to(torch.int64)]  # [M, L, 16]
            acc[:, live] = acc[:, live] + torch.where(v != 0, v * xv, 0.0)
    y = acc.reshape(x2.shape[0], g_n * ELL_ROWS)[:, :n]
    if values.dtype == torch.int8:
        y = y * scale
    return _finish(y, x, bias, n)
