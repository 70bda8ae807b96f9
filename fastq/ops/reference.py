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


def _div(t: Tensor, c: float) -> Tensor:
    """``t / c`` rounded once (IEEE division) on every device. A plain ``t / c`` is not that on CUDA:
    PyTorch's CUDA kernels divide by a Python number by multiplying with its reciprocal, which
    differs in the last bit for divisors such as 127 and 255 that are not powers of two."""
    return t / torch.full((), c, dtype=t.dtype, device=t.device)


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
    * a *wide* asymmetric row (finite, but ``hi - lo`` overflows float32 to +Inf): ``scale =
      max(hi, -lo) / 128`` and ``zp = 128``, so the scale stays finite and every code dequantizes to
      a finite value (code 0 gives exactly ``-max(hi, -lo)``); such a row clamps at most one step.

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
            scale = _poison(torch.clamp_min(_div(amax, 127), FLT_MIN), torch.isfinite(amax))
            zero_point = torch.zeros(lay.rows, dtype=torch.int32, device=x.device)
        else:
            lo = rows.amin(dim=1).clamp_max(0) if not empty else rows.new_zeros(lay.rows)
            hi = rows.amax(dim=1).clamp_min(0) if not empty else rows.new_zeros(lay.rows)
            finite = torch.isfinite(lo) & torch.isfinite(hi)
            span = hi - lo
            wide = finite & torch.isinf(span)  # finite extremes more than FLT_MAX apart
            scale = torch.where(wide, _div(torch.maximum(hi, -lo), 128), torch.clamp_min(_div(span, 255), FLT_MIN))
            scale = _poison(scale, finite)
            zp = torch.clamp(torch.round(-lo * (1.0 / scale)), 0, 255)
            zp = torch.where(wide, torch.full_like(zp, 128), zp)
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

    float64 holds every partial sum exactly (|sum| <= K * 128^2 < 2^53), on any device; K is at
    most 131071 (``_checks.INT8_GEMM_MAX_K``), so the int32 result is exact too."""
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
      acc[m, j] = sum_k qa[m, k] * w[j, k] - zp[m] * colsum[j]         (int32, wrapping)
      y = float32(acc) * (a_scale[m] * w_scale[j])                     (two float32 roundings)
      y = y + bias[j]                                                  (when bias is given)
    then rounded to ``out_dtype``. Native kernels follow this sequence without FMA contraction.
    ``colsum`` is the one stored in ``w_packed``. ``acc`` is the exact integer result: _checks
    refuses K > 66311 (``W8A8_MAX_K``), so |sum_k qa * w| <= 255 * 127 * K stays inside int32 (and
    float64 holds it exactly here); the correction wraps modulo 2^32 as the kernels' int32
    arithmetic does, which matters only for a column sum that does not match the weight.
    """
    k = x.shape[-1]
    w, colsum = int8_unpack_weight(w_packed, n, k)
    qa, a_scale, zp = quantize_int8(x.reshape(-1, k), -1, act_symmetric)
    acc = (qa.double() @ w.double().T).to(torch.int64) - zp.to(torch.int64).reshape(-1, 1) * colsum.to(torch.int64)
    acc = ((acc + 2 ** 31) % 2 ** 32 - 2 ** 31).to(torch.int32)
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
    return torch.where(amax > 0, _div(amax, 127), torch.ones_like(amax))


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


# ---- codebook (weight sharing) linear: codebook_pack / codebook_unpack / codebook_linear ----------
# A weight of N x K entries drawn from small tables ("codebooks", k-means centroids or the {-1, +1},
# {-1, 0, +1}, {0, +-2^-j} grids of binary / ternary / power-of-two weights):
#     W[n, k] = codebook[r(n), k // gs, code[n, k]]  (* scale[n] when a per-row scale is given)
# codebook: float32 [R, G, C] with C = 2**bits (unused entries 0), R = 1 (one table for all rows)
# or N (a table per row), G groups of gs = K / G consecutive inputs; codes are bits = 1, 2, 4 or 8
# wide. Two byte layouts (ISA-independent; every kernel reads them, the reference unpacks them):
#   row layout (lut=False; any R, G, bits): each row's codes in 16-byte chunks of 128 / bits codes,
#       K padded to whole chunks with code 0; byte j (0..15) of chunk c holds the codes of inputs
#       c * chunk + 16 s + j at bits [bits * s, bits * (s + 1)), s = 0 .. 8 / bits - 1. A SIMD kernel
#       widens the 16 bytes once and gets 16 codes per shift.
#   lookup-table layout (lut=True; R = 1, bits 1, 2, 4): g = 4 / bits codes per nibble; rows in
#       blocks of 16 (N padded with code 0), K padded to a multiple of 2g; block b is K_pad / 2g
#       16-byte units, byte r of unit u holds row 16 b + r: low nibble = codes of inputs 2g u + j,
#       high nibble = codes of inputs 2g u + g + j, code j at bits [bits * j, bits * (j + 1)). A
#       nibble indexes a 16-entry table of the sums of g activations times codebook entries, so one
#       lookup covers g weights of 16 rows (T-MAC's technique).


def _codebook_geometry(n: int, k: int, bits: int, lut: bool) -> tuple[int, int]:
    from fastq.ops._checks import codebook_packed_sizes

    n_pad, k_pad, _ = codebook_packed_sizes(n, k, bits, lut)
    return n_pad, k_pad


def codebook_pack(codes: Tensor, bits: int, lut: bool) -> Tensor:
    """Pack uint8 codes [N, K] (each < 2**bits) into the row (lut=False) or lookup-table layout
    above; returns a 1-D uint8 tensor."""
    n, k = codes.shape
    n_pad, k_pad = _codebook_geometry(n, k, bits, lut)
    c = torch.zeros(n_pad, k_pad, dtype=torch.int32, device=codes.device)
    c[:n, :k] = codes.to(torch.int32)
    if lut:
        g = 4 // bits
        parts = c.reshape(n_pad // 16, 16, k_pad // (2 * g), 2, g)  # [b, r, u, h, j]
        nib = (parts << (bits * torch.arange(g, device=codes.device))).sum(-1)  # [b, r, u, h]
        byte = nib[..., 0] | (nib[..., 1] << 4)  # [b, r, u]
        return byte.permute(0, 2, 1).to(torch.uint8).reshape(-1)
    s_n = 8 // bits
    parts = c.reshape(n, k_pad // (16 * s_n), s_n, 16)  # [n, chunk, s, j]
    shifts = (bits * torch.arange(s_n, device=codes.device)).reshape(1, 1, s_n, 1)
    return (parts << shifts).sum(2).to(torch.uint8).reshape(-1)


def codebook_unpack(packed: Tensor, n: int, k: int, bits: int, lut: bool) -> Tensor:
    """uint8 codes [N, K] back from ``codebook_pack``'s output (exact inverse)."""
    n_pad, k_pad = _codebook_geometry(n, k, bits, lut)
    b = packed.to(torch.int32)
    mask = (1 << bits) - 1
    if lut:
        g = 4 // bits
        byte = b.reshape(n_pad // 16, k_pad // (2 * g), 16).permute(0, 2, 1)  # [b, r, u]
        nib = torch.stack([byte & 15, byte >> 4], dim=-1)  # [b, r, u, h]
        codes = (nib.unsqueeze(-1) >> (bits * torch.arange(g, device=packed.device))) & mask  # [b, r, u, h, j]
        return codes.reshape(n_pad, k_pad)[:n, :k].to(torch.uint8)
    s_n = 8 // bits
    byte = b.reshape(n, k_pad // (16 * s_n), 1, 16)
    shifts = (bits * torch.arange(s_n, device=packed.device)).reshape(1, 1, s_n, 1)
    return ((byte >> shifts) & mask).reshape(n, k_pad)[:, :k].to(torch.uint8)


def codebook_weight(codes: Tensor, codebook: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """float32 [N, K]: ``codebook[r(n), k // gs, codes[n, k]]``, times ``scale[n]`` when given;
    differentiable in ``codebook``: the gradient of an entry is the sum of its members' gradients
    (Deep Compression's centroid update)."""
    n, k = codes.shape
    r, g, c = codebook.shape
    idx = codes.to(torch.int64).reshape(n, g, k // g)
    table = codebook.expand(n, g, c) if r == 1 else codebook
    w = torch.gather(table, 2, idx).reshape(n, k)
    return w * scale[:, None] if scale is not None else w


def codebook_dequantize(packed: Tensor, codebook: Tensor, scale: Optional[Tensor], n: int, k: int, bits: int,
                        lut: bool) -> Tensor:
    """The float32 [N, K] weight a packed codebook layer multiplies by: ``codebook_weight`` of the
    unpacked codes (times ``scale[n]`` when given)."""
    return codebook_weight(codebook_unpack(packed, n, k, bits, lut), codebook, scale)


def codebook_linear(x: Tensor, packed: Tensor, codebook: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
                    n: int, bits: int, lut: bool) -> Tensor:
    """``y = (x @ Wc^T) * scale + bias`` with ``Wc = codebook_weight(codes, codebook)``; x [*, K]
    float32/float16/bfloat16 -> y [*, N] of x's dtype.

    Float-op sequence: x widened to float32 (exact); ``acc[m, n] = sum_k x[m, k] * Wc[n, k]`` in
    float32, summation order unspecified (kernels use fused multiply-adds in SIMD lanes, or add
    table entries that hold sums of g = 4 / bits products, T-MAC style); then ``acc * scale[n]``,
    ``+ bias[n]`` (float32) and one rounding to x's dtype. Native results therefore differ from this
    one by float32 summation error only, bounded by ``(K + 2) * 2**-24 * sum_k |x[m, k] * Wc[n, k]|
    * |scale[n]|`` (the classic gamma_K bound, plus the scale and bias roundings), which is what the
    tests allow. Padding (codes past K, rows past N) never enters a result. IEEE semantics
    otherwise: NaN/Inf in x or in a codebook entry a row uses propagate to that row's outputs
    (0 * Inf is NaN, as in a float matmul).
    """
    k = x.shape[-1]
    w = codebook_weight(codebook_unpack(packed, n, k, bits, lut), codebook)
    y = x.reshape(-1, k).float() @ w.T
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


# ---- static W8A8 linear (int8_linear_static; accuracy toolkit) -----------------------------------
# int8_linear_dynamic with calibrated (static, per-tensor) activation quantization, optionally after
# SmoothQuant's per-input-channel division. No run-time statistics: the activation codes depend on
# x alone, element by element.


def static_act_multiplier(act_scale: Tensor, act_smooth: Optional[Tensor], k: int) -> Tensor:
    """float32 [K]: ``1 / act_scale``, or ``(1 / act_smooth[k]) * (1 / act_scale)`` (each op rounded
    to float32 on its own): the factor every activation of column k is multiplied by."""
    inv = 1.0 / act_scale.reshape(())
    if act_smooth is None:
        return inv.expand(k)
    return (1.0 / act_smooth) * inv


def quantize_static_act(x2: Tensor, mul: Tensor, zero_point: Optional[Tensor]) -> Tensor:
    """Codes of [M, K] activations: ``v = float32(x) * mul[k]``; symmetric (``zero_point`` None)
    ``clamp(round_half_even(v), -127, 127)`` as int8, NaN -> 0; asymmetric
    ``clamp(round_half_even(v) + zp, 0, 255)`` as uint8, NaN -> zp. +-Inf saturate."""
    v = x2.float() * mul
    if zero_point is None:
        q = torch.round(v).clamp(-127, 127)
        return torch.where(torch.isnan(v), torch.zeros_like(q), q).to(torch.int8)
    zp = zero_point.reshape(()).float()
    q = torch.clamp(torch.round(v) + zp, 0, 255)
    return torch.where(torch.isnan(v), zp.expand_as(q), q).to(torch.uint8)


def int8_linear_static(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    """Static W8A8 linear: calibrated per-tensor activation quantization x int8 per-channel weights.

    ``x`` [*, K]; ``w_packed``, ``w_scale`` [n], ``bias`` as in ``int8_linear_dynamic``;
    ``act_scale`` float32 [1] (> 0); ``act_zero_point`` int32 [1] in [0, 255] for asymmetric (uint8)
    activations or None for symmetric int8; ``act_smooth`` float32 [K] SmoothQuant divisors or None.
    Sequence:
      mul = static_act_multiplier(act_scale, act_smooth, K)               (float32 [K])
      qa = quantize_static_act(x, mul, act_zero_point)                    (element-wise)
      acc[m, j] = sum_k qa[m, k] * w[j, k] - zp * colsum[j]               (int32, exact)
      y = float32(acc) * (act_scale * w_scale[j])                         (two float32 roundings)
      y = y + bias[j]                                                     (when bias is given)
    then rounded to ``out_dtype``. Native kernels follow it without FMA contraction (bit-exact).
    """
    k = x.shape[-1]
    w, colsum = int8_unpack_weight(w_packed, n, k)
    qa = quantize_static_act(x.reshape(-1, k), static_act_multiplier(act_scale, act_smooth, k), act_zero_point)
    acc = (qa.double() @ w.double().T).to(torch.int32)
    if act_zero_point is not None:
        acc = acc - act_zero_point.reshape(1, 1) * colsum.reshape(1, -1)
    y = acc.to(torch.float32) * (act_scale.reshape(1, 1) * w_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias
    return y.to(out_dtype).reshape(*x.shape[:-1], n)


# ---- sub-8-bit integer weights (intx family: intx_pack_weight, intx_unpack_weight,
# intx_weight_only_linear, intx_linear_dynamic, intx_embedding) -----------------------------------
# A weight W [N, K] is stored as unsigned codes c in [0, 2^bits) (bits 2..8) with, per output row n
# and group g of K / G consecutive inputs, a float32 scale s[n, g] and an integer zero point z[n, g]:
#     W[n, k] ~= (c[n, k] - z[n, g]) * s[n, g]            (G = 1: per channel)
# Symmetric weights store no zero point: z = 2^(bits-1) implicitly.
#
# Packed layout (ISA-independent, little endian; every kernel reads it, the reference unpacks it).
# Codes sit in "slots" of S = 2 (bits 2), 4 (bits 3-4) or 8 (bits 5-8) bits, P = 8 / S per byte.
# Output rows are cut into blocks of 16 (N_pad = ceil(N / 16) * 16, padding rows: code 0, scale 0,
# zero 0), each group of a block into "chunks" of 4P consecutive k (the group size must be a
# multiple of 4P: 8 for int4, 16 for int2, 4 for 8-bit slots). The buffer is a sequence of records,
# one per (block nb, group g) in (nb, g) order, each
#     [CH chunks of 64 bytes][16 float32 scales][16 uint8 zero points, asymmetric only]
# with CH = (K / G) / 4P. In chunk ch, byte 4r + j (r = row within the block, j = 0..3) holds, for
# p = 0..P-1, the code of W[16 nb + r, g K/G + ch 4P + 4p + j] in bits [S p, S p + S).
# Why: masking a chunk with (v >> S p) & (2^S - 1) per byte gives the int8 GEMM block layout (16 rows
# x 4 consecutive k, one row per 32-bit lane) of k-quad p, which is exactly a VNNI vpdpbusd operand
# (u8 codes x broadcast s8 activations), and one 64-byte load holds all P quads. Scales and zero
# points follow their codes, so a kernel streams one buffer front to back with no gathers.
INTX_BITS = (2, 3, 4, 5, 6, 7, 8)
INTX_ROWS = 16


def intx_slot_bits(bits: int) -> int:
    """Bits of the slot a ``bits``-bit code is stored in: 2, 4 or 8."""
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def intx_chunk_k(bits: int) -> int:
    """Consecutive k per 64-byte chunk (4 codes per row per quad, 8 / slot quads): 16, 8 or 4."""
    return 4 * (8 // intx_slot_bits(bits))


def intx_record_bytes(group_size: int, bits: int, asymmetric: bool) -> int:
    return group_size // intx_chunk_k(bits) * 64 + 64 + (16 if asymmetric else 0)


def intx_packed_bytes(n: int, k: int, groups: int, bits: int, asymmetric: bool) -> int:
    """Size of the packed buffer of an [n, k] weight with ``groups`` groups along k."""
    return -(-n // INTX_ROWS) * groups * intx_record_bytes(k // groups, bits, asymmetric)


def intx_pack_weight(codes: Tensor, scale: Tensor, zero: Optional[Tensor], bits: int) -> Tensor:
    """Pack codes (uint8 [N, K], < 2^bits), scales (float32 [N, G]) and zero points (uint8 [N, G],
    or None for symmetric) into the layout above (1-D uint8)."""
    n, k = codes.shape
    groups = scale.shape[1]
    slot = intx_slot_bits(bits)
    per_byte = 8 // slot
    nb = -(-n // INTX_ROWS)
    n_pad = nb * INTX_ROWS
    c = torch.zeros(n_pad, k, dtype=torch.int32, device=codes.device)
    c[:n] = codes.to(torch.int32)
    # [nb, 16 rows, G, CH, P quads, 4 k] -> [nb, G, CH, 16, 4, P]: the P codes of byte (r, j) last
    c = c.reshape(nb, INTX_ROWS, groups, -1, per_byte, 4).permute(0, 2, 3, 1, 5, 4)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=codes.device) * slot
    code_bytes = (c << shifts).sum(-1).to(torch.uint8).reshape(nb, groups, -1)
    s = torch.zeros(n_pad, groups, dtype=torch.float32, device=codes.device)
    s[:n] = scale
    parts = [code_bytes, s.reshape(nb, INTX_ROWS, groups).permute(0, 2, 1).contiguous().view(torch.uint8)]
    if zero is not None:
        z = torch.zeros(n_pad, groups, dtype=torch.uint8, device=codes.device)
        z[:n] = zero
        parts.append(z.reshape(nb, INTX_ROWS, groups).permute(0, 2, 1))
    return torch.cat(parts, dim=2).reshape(-1)


def _intx_records(packed: Tensor, n: int, k: int, groups: int, bits: int, asymmetric: bool) -> Tensor:
    return packed.reshape(-(-n // INTX_ROWS), groups, intx_record_bytes(k // groups, bits, asymmetric))


def _intx_codes(code_bytes: Tensor, bits: int) -> Tensor:
    """[..., 4] bytes of one row of a chunk -> [..., P, 4] int32 codes (quad p, k j)."""
    slot = intx_slot_bits(bits)
    shifts = torch.arange(8 // slot, dtype=torch.int32, device=code_bytes.device) * slot
    return (code_bytes.to(torch.int32).unsqueeze(-2) >> shifts.reshape(-1, 1)) & ((1 << slot) - 1)


def intx_unpack_weight(packed: Tensor, n: int, k: int, groups: int, bits: int,
                       asymmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of ``intx_pack_weight``: codes uint8 [n, k], scale float32 [n, G] and zero points
    uint8 [n, G] (filled with 2^(bits-1) when symmetric)."""
    rec = _intx_records(packed, n, k, groups, bits, asymmetric)
    nb = rec.shape[0]
    cb = (k // groups) // intx_chunk_k(bits) * 64
    codes = _intx_codes(rec[:, :, :cb].reshape(nb, groups, -1, INTX_ROWS, 4), bits)  # [nb, G, CH, 16, P, 4]
    codes = codes.permute(0, 3, 1, 2, 4, 5).reshape(nb * INTX_ROWS, k)[:n].to(torch.uint8)
    scale = rec[:, :, cb:cb + 64].contiguous().view(torch.float32).permute(0, 2, 1).reshape(-1, groups)[:n]
    if asymmetric:
        zero = rec[:, :, cb + 64:].permute(0, 2, 1).reshape(-1, groups)[:n]
    else:
        zero = torch.full((n, groups), 1 << (bits - 1), dtype=torch.uint8, device=packed.device)
    return codes, scale.clone(), zero.clone()  # copies: outputs never alias the packed input


def intx_dequantize(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """float32 ``(c - z) * s`` for codes [n, k] and per-group scale / zero [n, G] (one rounding)."""
    n, k = codes.shape
    groups = scale.shape[1]
    q = codes.to(torch.int32).reshape(n, groups, -1) - zero.to(torch.int32).unsqueeze(-1)
    return (q.to(torch.float32) * scale.unsqueeze(-1)).reshape(n, k)


def intx_weight_only_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                            asymmetric: bool) -> Tensor:
    """Weight-only linear with intx weights: ``x @ ((c - z) * s).T + bias`` in float32, returned in
    x's dtype.

    The order of the float32 accumulation is not specified: kernels expand codes in registers and
    may form ``s * (sum_k x c - z sum_k x)`` per group in their own summation order. Native results
    therefore match this within the float32 error bound of that computation,
    ``2 (K + 2) eps32 sum_k |x_k| (c_k + z) s`` (plus the output dtype's rounding), not bit for bit.
    """
    k = x.shape[-1]
    w = intx_dequantize(*intx_unpack_weight(packed, n, k, groups, bits, asymmetric))
    y = x.reshape(-1, k).float() @ w.T
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def intx_linear_dynamic(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                        asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    """W4A8 (and W2A8/W3A8): per-token dynamic int8 activations x intx weights, group-wise epilogue.

    Sequence (bits <= 4; G groups of K / G along k):
      qa, a_scale, _ = quantize_int8(x, PER_ROW, symmetric=True)                (exactly that op)
      acc[m, n, g] = sum_{k in g} qa[m, k] * c[n, k] - z[n, g] * sum_{k in g} qa[m, k]   (int32, exact)
      t = float32(acc) * s[n, g]                                              (one rounding)
      r = 0.0; r = r + t   for g = 0, 1, ..., G - 1 in this order             (float32)
      y = r * a_scale[m]; y = y + bias[n] (when given)                          (float32)
    then rounded to ``out_dtype``. Native kernels follow it exactly (no FMA): bit-exact results.
    A token holding NaN/Inf gets a NaN scale (quantize_int8's poisoning), so its outputs are NaN.
    """
    k = x.shape[-1]
    codes, scale, zero = intx_unpack_weight(packed, n, k, groups, bits, asymmetric)
    qa, a_scale, _ = quantize_int8(x.reshape(-1, k), -1, True)
    m, gs = qa.shape[0], k // groups
    qa = qa.reshape(m, groups, gs).double()
    c = codes.reshape(n, groups, gs).double()
    qsum = qa.sum(dim=2)  # [m, G], exact in float64
    r = torch.zeros(m, n, dtype=torch.float32, device=x.device)
    for g in range(groups):
        acc = qa[:, g] @ c[:, g].T - qsum[:, g:g + 1] * zero[:, g].double()  # exact: |acc| < 2^53
        r = r + acc.to(torch.int32).to(torch.float32) * scale[:, g]
    y = r * a_scale.reshape(-1, 1)
    if bias is not None:
        y = y + bias
    return y.to(out_dtype).reshape(*x.shape[:-1], n)


def intx_embedding(indices: Tensor, packed: Tensor, n: int, k: int, groups: int, bits: int, asymmetric: bool,
                   out_dtype: torch.dtype) -> Tensor:
    """Rows ``indices`` of the [n, k] intx weight, dequantized: ``((c - z) * s)`` in float32 (one
    rounding), then rounded to ``out_dtype``; shape ``indices.shape + (k,)``. Only the selected
    rows are read, so a large vocabulary costs nothing per lookup."""
    flat = indices.reshape(-1)
    t = flat.numel()
    rec = _intx_records(packed, n, k, groups, bits, asymmetric)[torch.div(flat, INTX_ROWS, rounding_mode="floor")]
    lane = (flat % INTX_ROWS).reshape(t, 1, 1, 1, 1)
    cb = (k // groups) // intx_chunk_k(bits) * 64
    row_bytes = rec[:, :, :cb].reshape(t, groups, -1, INTX_ROWS, 4)
    row_bytes = row_bytes.gather(3, lane.expand(t, groups, row_bytes.shape[2], 1, 4)).squeeze(3)  # [t, G, CH, 4]
    codes = _intx_codes(row_bytes, bits).reshape(t, groups, -1)  # (CH, P, 4): k order within the group
    scale = rec[:, :, cb:cb + 64].contiguous().view(torch.float32).gather(2, lane.reshape(t, 1, 1).expand(t, groups, 1))
    if asymmetric:
        zero = rec[:, :, cb + 64:].gather(2, lane.reshape(t, 1, 1).expand(t, groups, 1)).to(torch.int32)
    else:
        zero = torch.full((t, groups, 1), 1 << (bits - 1), dtype=torch.int32, device=packed.device)
    w = (codes - zero).to(torch.float32) * scale
    return w.reshape(*indices.shape, k).to(out_dtype)
