"""Argument validation shared by every kernel of an op (reference, CPU, CUDA, fake) and by the
prepared layers (``fastq.ops.plans``).

Invariants: every op implementation calls its ``check_*`` first, so bad input raises a clear
Python exception (TypeError for dtypes, ValueError for shapes and values) before any native
code sees a pointer. Checks that read tensor *values* (``check_scale_values``, the ``check_*_values``
of packed weights) are skipped by the fake implementations, which only know shapes; every real path
(native kernels, the reference, plan builds) runs the same ones. Layout facts come from ``layouts``.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch
from torch import Tensor

from fastq.ops.layouts import (ELL_ROWS, ELL_TILE, FLOAT_DTYPES, FLT_MIN, PER_ROW, PER_TENSOR,  # noqa: F401
                               SPARSE_BLOCK_SIZES, SPARSE_MAX_COLS, SPARSE_ROW_PAD, QuantLayout, layout,
                               packed_sizes)


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def _check_same_device(name: str, t: Tensor, ref: Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")


def check_group_size(group_size, symmetric=True) -> None:
    """``group_size`` must be a plain int and ``symmetric`` a bool (no silent float/None coercion)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int: 0 (per tensor), -1 (per row) or a positive group size, "
                        f"got {group_size!r} ({type(group_size).__name__})")
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")


def check_quantize(
    x: Tensor, group_size: int, symmetric: bool, scale: Optional[Tensor], zero_point: Optional[Tensor]
) -> QuantLayout:
    _check_float("x", x)
    check_group_size(group_size, symmetric)
    lay = layout(tuple(x.shape), group_size)
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point was given without scale; pass both for static quantization or neither")
        return lay
    _check_qparams(scale, zero_point, symmetric, lay, x, "x")
    return lay


def _check_qparams(scale: Tensor, zero_point: Optional[Tensor], symmetric: bool, lay: QuantLayout, x: Tensor, x_name: str) -> None:
    if scale.dtype != torch.float32:
        raise TypeError(f"scale must be float32, got {scale.dtype}")
    _check_same_device("scale", scale, x, x_name)
    if tuple(scale.shape) != lay.scale_shape:
        raise ValueError(f"scale has shape {tuple(scale.shape)} but {x_name} of shape {tuple(x.shape)} "
                         f"needs {lay.scale_shape} at this granularity")
    if symmetric:
        if zero_point is not None:
            raise ValueError("symmetric quantization takes no zero_point")
        return
    if zero_point is None:
        raise ValueError("asymmetric static quantization needs a zero_point with the scale")
    if zero_point.dtype != torch.int32:
        raise TypeError(f"zero_point must be int32, got {zero_point.dtype}")
    _check_same_device("zero_point", zero_point, x, x_name)
    if tuple(zero_point.shape) != lay.scale_shape:
        raise ValueError(f"zero_point has shape {tuple(zero_point.shape)}, expected {lay.scale_shape}")


def check_scale_values(scale: Tensor, zero_point: Optional[Tensor]) -> None:
    """Static scales must be finite normal floats (so 1/scale is finite); zero points in [0, 255]."""
    # One fused pass (aminmax propagates NaN, and NaN fails both comparisons).
    if scale.numel() and not _in_range(scale, FLT_MIN, torch.finfo(torch.float32).max):
        raise ValueError("scale must be finite and >= 1.18e-38 (the smallest normal float32) everywhere")
    if zero_point is not None and zero_point.numel():
        if not _in_range(zero_point, 0, 255):
            raise ValueError("zero_point must lie in [0, 255] for uint8 codes")


def _in_range(t: Tensor, lo, hi) -> bool:
    if t.numel() == 1:  # per-tensor: a plain comparison is several times cheaper than a reduction
        v = t.item()
        return lo <= v <= hi  # False for NaN
    mn, mx = torch.aminmax(t)
    return bool(mn >= lo) and bool(mx <= hi)


def code_dtype(symmetric: bool) -> torch.dtype:
    return torch.int8 if symmetric else torch.uint8


def check_quantize_out(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], group_size: int,
                       symmetric: bool, dynamic: bool) -> QuantLayout:
    lay = check_quantize(x, group_size, symmetric, None if dynamic else scale, None if dynamic else zero_point)
    _check_out("codes", codes, tuple(x.shape), code_dtype(symmetric), x)
    if dynamic:
        _check_out("scale", scale, lay.scale_shape, torch.float32, x)
        if not symmetric:
            if zero_point is None:
                raise ValueError("asymmetric quantization needs a zero_point buffer")
            _check_out("zero_point", zero_point, lay.scale_shape, torch.int32, x)
        check_no_alias("quantize_int8", "scale", scale, x=x, codes=codes)
        if zero_point is not None:
            check_no_alias("quantize_int8", "zero_point", zero_point, x=x, codes=codes, scale=scale)
    check_no_alias("quantize_int8", "codes", codes, x=x, scale=scale, zero_point=zero_point)
    return lay


def _byte_span(t: Tensor) -> tuple[int, int]:
    """[first, last) byte addresses a strided tensor can touch (empty tensors touch nothing)."""
    if t.numel() == 0:
        return (0, 0)
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        reach = (size - 1) * stride * t.element_size()
        lo, hi = (lo + reach, hi) if reach < 0 else (lo, hi + reach)
    return lo, hi + t.element_size()


def _has_memory(t) -> bool:
    return type(t) is Tensor and t.device.type != "meta" and not torch._is_functional_tensor(t)


def check_no_alias(op: str, out_name: str, out: Tensor, **inputs: Optional[Tensor]) -> None:
    """An ``out=`` buffer must not share memory with any input: kernels read inputs while they write
    ``out``, so an overlap would give results that depend on the order of the work."""
    if not _has_memory(out):  # fake / meta / functional tensors (compile, export, opcheck): no addresses
        return
    o_lo, o_hi = _byte_span(out)
    for name, t in inputs.items():
        if t is None or not _has_memory(t) or t.device != out.device:
            continue
        i_lo, i_hi = _byte_span(t)
        if o_lo < i_hi and i_lo < o_hi:
            raise ValueError(f"{op}: {out_name} overlaps the memory of {name}; pass a separate output buffer")


def _check_out(name: str, t: Tensor, shape: tuple, dtype: torch.dtype, x: Tensor) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    _check_same_device(name, t, x, "x")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place)")


def dequant_layout(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor]) -> tuple[QuantLayout, bool]:
    """Validate dequantize arguments; the granularity is read off the scale's shape."""
    if not isinstance(codes, Tensor) or codes.dtype not in (torch.int8, torch.uint8):
        got = codes.dtype if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"codes must be int8 (symmetric) or uint8 (asymmetric), got {got}")
    if codes.dim() == 0:
        raise ValueError("cannot dequantize a 0-d tensor")
    symmetric = codes.dtype == torch.int8
    if not isinstance(scale, Tensor):
        raise TypeError(f"scale must be a torch.Tensor, got {type(scale).__name__}")
    if scale.dim() != codes.dim():
        raise ValueError(f"scale must have the same rank as codes ({codes.dim()}), got shape {tuple(scale.shape)}")
    c = codes.shape[-1]
    if all(s == 1 for s in scale.shape):
        group_size = PER_TENSOR
    elif tuple(scale.shape[:-1]) == tuple(codes.shape[:-1]) and scale.shape[-1] == 1:
        group_size = PER_ROW  # also right when c == 0 (c // 1 would read as PER_TENSOR)
    elif tuple(scale.shape[:-1]) == tuple(codes.shape[:-1]) and scale.shape[-1] > 0 and c % scale.shape[-1] == 0:
        group_size = c // scale.shape[-1]
    elif tuple(scale.shape[:-1]) == tuple(codes.shape[:-1]) and scale.shape[-1] == 0 and c == 0:
        group_size = 1  # groups of an empty last dimension: any group size gives no scales
    else:
        raise ValueError(f"scale shape {tuple(scale.shape)} fits no granularity of codes {tuple(codes.shape)}: "
                         f"expected all ones (per tensor) or {tuple(codes.shape[:-1])} + (groups,)")
    lay = layout(tuple(codes.shape), group_size)
    _check_qparams(scale, zero_point, symmetric, lay, codes, "codes")
    return lay, symmetric


def check_dequantize(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], dtype: torch.dtype) -> tuple[QuantLayout, bool]:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dequantize output dtype must be float32, float16 or bfloat16, got {dtype}")
    return dequant_layout(codes, scale, zero_point)


def check_dequantize_out(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: Tensor) -> tuple[QuantLayout, bool]:
    lay_sym = check_dequantize(codes, scale, zero_point, out.dtype)
    _check_out("out", out, tuple(codes.shape), out.dtype, codes)
    check_no_alias("dequantize_int8", "out", out, codes=codes, scale=scale, zero_point=zero_point)
    return lay_sym


# ---- int8 GEMM family ---------------------------------------------------------------------------

# ---- int32 accumulator policy -------------------------------------------------------------------
# The integer GEMMs accumulate in int32. fastq refuses a K for which some input could push the exact
# sum out of int32 range, instead of wrapping or saturating silently:
#   int8_gemm:           |a * b| <= 128 * 128 per term      -> K <= (2^31 - 1) // 16384 = 131071
#   int8_linear_dynamic: |code * w| <= 255 * 127 per term   -> K <= (2^31 - 1) // 32385 = 66311
# (uint8 activation codes, and the code + 128 form in which the VNNI kernels feed int8 codes, reach
# 255; one limit for both activation modes keeps every kernel's accumulator exact without wrapping).
# Within these limits the native kernels and the reference agree bit for bit for every input.
INT32_MAX = 2 ** 31 - 1
INT8_GEMM_MAX_K = INT32_MAX // (128 * 128)
W8A8_MAX_K = INT32_MAX // (255 * 127)


def check_int8_gemm(a: Tensor, b: Tensor) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor) or t.dtype != torch.int8:
            raise TypeError(f"int8_gemm: {name} must be an int8 tensor, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"int8_gemm: {name} must be 2-D, got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"int8_gemm: K mismatch: a is {tuple(a.shape)} and b is {tuple(b.shape)} (b is [N, K])")
    if a.shape[1] > INT8_GEMM_MAX_K:
        raise ValueError(f"int8_gemm: K={a.shape[1]} exceeds {INT8_GEMM_MAX_K}, the largest K whose int32 sums "
                         "are exact for every int8 input; split K and add the int32 (or int64) partial products")
    _check_same_device("b", b, a, "a")


def check_int8_pack_weight(w: Tensor) -> None:
    if not isinstance(w, Tensor) or w.dtype != torch.int8 or w.dim() != 2:
        raise TypeError("int8_pack_weight: w must be a 2-D int8 tensor [N, K]")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"int8_pack_weight: empty weight of shape {tuple(w.shape)}")


def check_packed_linear(op: str, x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        scale_2d: bool) -> None:
    """Shared checks of the packed-weight linear ops; K comes from x's last dimension."""
    _check_float(f"{op}: x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last dimension (K), got shape {tuple(x.shape)}")
    if n <= 0:
        raise ValueError(f"{op}: n (output features) must be positive, got {n}")
    k = x.shape[-1]
    if not scale_2d and k > W8A8_MAX_K:
        raise ValueError(f"{op}: K={k} exceeds {W8A8_MAX_K}, the largest K whose int32 accumulator is exact for "
                         "every activation (255 x 127 x K < 2^31); use int8 weight-only for this layer")
    if w_packed.dtype != torch.int8 or w_packed.dim() != 1:
        raise TypeError(f"{op}: w_packed must be the 1-D int8 tensor int8_pack_weight returns")
    expected = packed_sizes(n, k)[2]
    if w_packed.numel() != expected:
        raise ValueError(f"{op}: w_packed has {w_packed.numel()} bytes but an [{n}, {k}] weight packs to "
                         f"{expected}: K mismatch between x (K={k}) and the weight?")
    _check_k_padding(op, w_packed, n, k)
    if w_scale.dtype != torch.float32:
        raise TypeError(f"{op}: w_scale must be float32, got {w_scale.dtype}")
    if scale_2d:
        if w_scale.dim() != 2 or w_scale.shape[0] != n or w_scale.shape[1] == 0 or k % w_scale.shape[1]:
            raise ValueError(f"{op}: w_scale must be [n, G] with G dividing K={k}, got {tuple(w_scale.shape)}")
    elif tuple(w_scale.shape) != (n,):
        raise ValueError(f"{op}: w_scale must have shape ({n},), got {tuple(w_scale.shape)}")
    if bias is not None:
        if bias.dtype != torch.float32 or tuple(bias.shape) != (n,):
            raise ValueError(f"{op}: bias must be float32 of shape ({n},), got {bias.dtype} {tuple(bias.shape)}")
        _check_same_device(f"{op}: bias", bias, x, "x")
    _check_same_device(f"{op}: w_packed", w_packed, x, "x")
    _check_same_device(f"{op}: w_scale", w_scale, x, "x")


def _check_k_padding(op: str, w_packed: Tensor, n: int, k: int) -> None:
    """K and the next few K pack to the same size (K is padded to a multiple of 4), so the size check
    cannot see an x whose K is 1-3 below the weight's. The padding columns of a weight packed for
    x's K are zero: a nonzero one means a larger K (the kernels would disagree on it: some read the
    stored column sums, which cover it). A value check, cached per tensor version like the sparse
    index checks; fake and meta tensors (compile, export) are skipped."""
    from fastq.ops.reference import PACK_KR, PACK_NR, packed_sizes

    if k % PACK_KR == 0 or not _has_memory(w_packed):
        return
    try:
        key = (w_packed._version, k)
    except RuntimeError:  # an inference tensor has no version counter: scan on every call
        key = None
    if key is not None and getattr(w_packed, "_fastq_k_checked", None) == key:
        return
    n_pad, k_pad, _ = packed_sizes(n, k)
    body = w_packed[: n_pad * k_pad].view(n_pad // PACK_NR, k_pad // PACK_KR, PACK_NR, PACK_KR)
    if bool(body[:, -1, :, k % PACK_KR:].any()):
        raise ValueError(f"{op}: w_packed holds weights past column K={k} (x's last dimension): it was packed "
                         "for a larger K; x's K does not match the weight")
    if key is not None:
        try:
            w_packed._fastq_k_checked = key
        except (AttributeError, RuntimeError):
            pass


def check_out_dtype(op: str, dtype) -> None:
    """The output dtype of a float-output op: float32, float16 or bfloat16 (every path checks it)."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: the output dtype must be float32, float16 or bfloat16, got {dtype}")


def check_linear_out(op: str, x: Tensor, n: int, out: Tensor, dtype: torch.dtype) -> None:
    check_out_dtype(op, out.dtype)
    _check_out(f"{op}: out", out, tuple(x.shape[:-1]) + (n,), dtype, x)
    check_no_alias(op, "out", out, x=x)


# ---- sparse masked matmul family ------------------------------------------------------------------
# Packing validates the dense weight and mask (shape, dtype, N:M pattern, finiteness of kept
# weights, an empty layer). The linears validate dtypes and shapes of the packed tensors on every
# call; their values (row pointers, indices, scales) once per tensor version: see "Packed values".

SPARSE_X_DTYPES = (torch.float32, torch.bfloat16)


def check_sparse_pack(op: str, w: Tensor, mask: Tensor, max_cols: Optional[int] = 65536,
                      check_values: bool = True) -> None:
    _check_float(f"{op}: w", w)
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{op}: w must be a non-empty 2-D [N, K] weight, got shape {tuple(w.shape)}")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{op}: mask must be a bool tensor (True = kept), got {got}")
    if mask.shape != w.shape:
        raise ValueError(f"{op}: mask has shape {tuple(mask.shape)} but w has {tuple(w.shape)}; they must match")
    _check_same_device(f"{op}: mask", mask, w, "w")
    if max_cols is not None and w.shape[1] > max_cols:
        raise ValueError(f"{op}: K={w.shape[1]} exceeds the {max_cols} columns 16-bit indices can address")
    if check_values:
        if not bool(mask.any()):
            raise ValueError(f"{op}: the mask keeps no weight of the whole [{w.shape[0]}, {w.shape[1]}] layer; "
                             "a layer pruned to nothing should be removed, not packed")
        if not bool(torch.isfinite(w[mask]).all()):
            raise ValueError(f"{op}: kept weights hold NaN or Inf; sparse packing needs finite weights")


def check_sparse_24_pack(w: Tensor, mask: Tensor, check_values: bool = True) -> None:
    check_sparse_pack("sparse_24_pack", w, mask, None, check_values)
    if w.shape[1] % 4:
        raise ValueError(f"sparse_24_pack: K={w.shape[1]} is not divisible by 4, so it has no 2:4 groups")
    if check_values and bool((mask.reshape(w.shape[0], -1, 4).sum(dim=2) > 2).any()):
        raise ValueError("sparse_24_pack: the mask keeps more than 2 of some group of 4 inputs; not a 2:4 pattern")


def check_sparse_bsr_pack(w: Tensor, mask: Tensor, block_rows: int, block_cols: int, check_values: bool = True) -> None:
    for name, b in (("block_rows", block_rows), ("block_cols", block_cols)):
        if b not in SPARSE_BLOCK_SIZES:
            raise ValueError(f"sparse_bsr_pack: {name}={b} is not one of the supported {SPARSE_BLOCK_SIZES}")
    check_sparse_pack("sparse_bsr_pack", w, mask, None, check_values)
    if -(-w.shape[1] // block_cols) > 65536:
        raise ValueError(f"sparse_bsr_pack: K={w.shape[1]} has more than 65536 column blocks of {block_cols}")


def _check_sparse_x(op: str, x: Tensor) -> int:
    if not isinstance(x, Tensor) or x.dtype not in SPARSE_X_DTYPES:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{op}: x must be float32 or bfloat16, got {got}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last dimension (K), got shape {tuple(x.shape)}")
    return x.shape[-1]


def _check_t(op: str, name: str, t: Tensor, dtype: torch.dtype, dim: int, x: Tensor, x_name: str = "x") -> None:
    if not isinstance(t, Tensor) or t.dtype != dtype:
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{op}: {name} must be {dtype}, got {got}")
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {tuple(t.shape)}")
    _check_same_device(f"{op}: {name}", t, x, x_name)


def _check_bias(op: str, bias: Optional[Tensor], n: int, x: Tensor) -> None:
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dtype != torch.float32 or tuple(bias.shape) != (n,):
            raise ValueError(f"{op}: bias must be float32 of shape ({n},)")
        _check_same_device(f"{op}: bias", bias, x, "x")


def check_sparse_csr_linear(op: str, x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor,
                            bias: Optional[Tensor], n: int, values_dtype: torch.dtype = torch.float32) -> int:
    k = _check_sparse_x(op, x)
    if n <= 0:
        raise ValueError(f"{op}: n (output features) must be positive, got {n}")
    if k > 65536:
        raise ValueError(f"{op}: K={k} exceeds the 65536 columns 16-bit indices can address")
    _check_t(op, "values", values, values_dtype, 1, x)
    _check_t(op, "cols", cols, torch.int16, 1, x)
    _check_t(op, "row_ptr", row_ptr, torch.int64, 1, x)
    if cols.numel() != values.numel():
        raise ValueError(f"{op}: cols has {cols.numel()} entries but values has {values.numel()}")
    if row_ptr.numel() != n + 1:
        raise ValueError(f"{op}: row_ptr must have n + 1 = {n + 1} entries, got {row_ptr.numel()}")
    _check_bias(op, bias, n, x)
    return k


def check_sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> int:
    op = "sparse_24_linear"
    k = _check_sparse_x(op, x)
    _check_t(op, "values", values, torch.float32, 2, x)
    _check_t(op, "meta", meta, torch.uint8, 2, x)
    n = values.shape[0]
    if k % 4 or values.shape[1] != k // 2 or n == 0:
        raise ValueError(f"{op}: values must be [N, K/2] for x's K={k} (divisible by 4), got {tuple(values.shape)}")
    if tuple(meta.shape) != (n, (k // 2 + 3) // 4):
        raise ValueError(f"{op}: meta must be [{n}, {(k // 2 + 3) // 4}], got {tuple(meta.shape)}")
    _check_bias(op, bias, n, x)
    return k


def check_sparse_bsr_linear(x: Tensor, values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                            n: int) -> int:
    op = "sparse_bsr_linear"
    k = _check_sparse_x(op, x)
    if n <= 0:
        raise ValueError(f"{op}: n (output features) must be positive, got {n}")
    _check_t(op, "values", values, torch.float32, 3, x)
    _check_t(op, "block_col", block_col, torch.int16, 1, x)
    _check_t(op, "row_ptr", row_ptr, torch.int64, 1, x)
    br, bc = values.shape[1], values.shape[2]
    if br not in SPARSE_BLOCK_SIZES or bc not in SPARSE_BLOCK_SIZES:
        raise ValueError(f"{op}: block shape {br}x{bc} is not supported (sizes {SPARSE_BLOCK_SIZES})")
    if block_col.numel() != values.shape[0]:
        raise ValueError(f"{op}: block_col has {block_col.numel()} entries but values has {values.shape[0]} blocks")
    if row_ptr.numel() != -(-n // br) + 1:
        raise ValueError(f"{op}: row_ptr must have ceil(n / {br}) + 1 = {-(-n // br) + 1} entries, got {row_ptr.numel()}")
    _check_bias(op, bias, n, x)
    return k


def check_sparse_int8_linear(x: Tensor, q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor,
                             bias: Optional[Tensor]) -> int:
    op = "sparse_int8_linear"
    _check_t(op, "scale", scale, torch.float32, 1, q)
    return check_sparse_csr_linear(op, x, q, cols, row_ptr, bias, scale.numel(), torch.int8)


# ---- sliced-ELL sparse linear (layout: fastq/ops/reference.py) -----------------------------------
# Shapes and dtypes are checked on every call (fakes included); values under "Packed values".


def check_sparse_ell(op: str, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                     scale: Optional[Tensor], n: int, k: int, ref: Tensor, ref_name: str) -> bool:
    """Shapes, dtypes, devices and contiguity of a packed ELL weight for an [n, k] layer (``ref``
    is the tensor the others must share a device with). Returns whether the values are int8."""
    if n <= 0:
        raise ValueError(f"{op}: n (output features) must be positive, got {n}")
    if not isinstance(values, Tensor) or values.dtype not in (torch.float32, torch.int8):
        got = values.dtype if isinstance(values, Tensor) else type(values).__name__
        raise TypeError(f"{op}: values must be float32 or int8 (sparse_ell_pack's output), got {got}")
    for name, t, dtype, dim in (("values", values, values.dtype, 2), ("offsets", offsets, torch.uint8, 2),
                                ("steps", steps, torch.uint8, 2), ("group_ptr", group_ptr, torch.int64, 1)):
        _check_t(op, name, t, dtype, dim, ref, ref_name)
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (pass what sparse_ell_pack returned)")
    shape = values.shape
    if shape[1] != ELL_ROWS or offsets.shape != shape:
        raise ValueError(f"{op}: values and offsets must both be [steps, {ELL_ROWS}], got "
                         f"{tuple(shape)} and {tuple(offsets.shape)}")
    groups, tiles = -(-n // ELL_ROWS), -(-k // ELL_TILE)
    g_n, t_n = steps.shape
    if g_n != groups:
        raise ValueError(f"{op}: steps has {g_n} row groups but n={n} needs ceil(n / {ELL_ROWS}) = {groups}")
    if t_n != tiles:
        raise ValueError(f"{op}: steps has {t_n} column tiles but K={k} needs ceil(K / {ELL_TILE}) = "
                         f"{tiles}: K mismatch between {ref_name} and the packed weight?")
    if group_ptr.shape[0] != groups + 1:
        raise ValueError(f"{op}: group_ptr must have ceil(n / {ELL_ROWS}) + 1 = {groups + 1} entries, "
                         f"got {group_ptr.numel()}")
    int8 = values.dtype == torch.int8
    if int8:
        if scale is None:
            raise ValueError(f"{op}: int8 values need their float32 scale [{n}]")
        _check_t(op, "scale", scale, torch.float32, 1, ref, ref_name)
        if scale.numel() != n:
            raise ValueError(f"{op}: scale must have n = {n} entries, got {scale.numel()}")
    elif scale is not None and (not isinstance(scale, Tensor) or scale.numel()):
        raise ValueError(f"{op}: float32 values take no scale (None or the empty tensor sparse_ell_pack returns)")
    return int8


def check_sparse_ell_linear(x: Tensor, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                            scale: Optional[Tensor], bias: Optional[Tensor], n: int) -> tuple[int, bool]:
    """(K, int8) after checking every argument's dtype, shape and device."""
    op = "sparse_ell_linear"
    k = _check_sparse_x(op, x)
    int8 = check_sparse_ell(op, values, offsets, steps, group_ptr, scale, n, k, x, "x")
    _check_bias(op, bias, n, x)
    return k, int8


# ---- Packed values ------------------------------------------------------------------------------
# What a packed weight must hold before any kernel reads it: CSR/BSR row pointers from 0 to the
# stored count, never decreasing (CSR rows a multiple of SPARSE_ROW_PAD entries), column indices
# inside K, ELL offsets inside their tile and group pointers matching the step counts, int8 column
# sums matching the codes (zero padding), finite scales and kept weights. The native kernels, the
# references and the plan builds (fastq.ops.plans) call these same functions; messages name the
# buffer. Verdicts are cached on the first tensor per (tensors, versions, sizes), so a layer is
# scanned once, not per call; inference tensors have no version counter and are scanned every time
# they reach an op directly (modules scan once, when they build their plan). Writes that bypass the
# version counter (``.data``, numpy) cannot fool the kernels: they re-check indices as they read.


def _cached(name: str, tensors: tuple, params: tuple, check: Callable[[], None], cache: bool = True) -> None:
    """Run ``check`` unless it already passed for these same tensor objects at these versions
    (``cache=False``: always run it, as plan builds do)."""
    if not cache:
        return check()
    tensors = tuple(t for t in tensors if t is not None)
    head = tensors[0]
    try:
        key = (tuple(t._version for t in tensors), params)
    except RuntimeError:  # inference tensors track no version: no cache
        return check()
    attr = f"_fastq_valid_{name}"
    cached = getattr(head, attr, None)
    if cached is not None and cached[0] == key and all(r() is t for r, t in zip(cached[1], tensors)):
        return
    check()
    try:
        setattr(head, attr, (key, tuple(weakref.ref(t) for t in tensors)))
    except (AttributeError, RuntimeError, TypeError):
        pass


# ---- codebook (weight sharing) linear (layouts: fastq/ops/reference.py, codebook section) ---------
# A codebook weight is W[n, k] = codebook[r(n), k // gs, code[n, k]] (* scale[n]); codes are
# ``bits`` wide and every code indexes a stored entry (the codebook has 2**bits entries), so packed
# codes need no value checks: only shapes, dtypes and devices are validated, on every call.

CODEBOOK_BITS = (1, 2, 4, 8)
LUT_BITS = (1, 2, 4)  # the lookup-table layout; 8-bit codes use the row layout only
CODEBOOK_CHUNK_BYTES = 16  # row layout: codes of a row come in 16-byte chunks


def codebook_chunk(bits: int) -> int:
    """Codes per 16-byte chunk of the row layout (128 // bits)."""
    return 8 * CODEBOOK_CHUNK_BYTES // bits


def lut_group(bits: int) -> int:
    """Codes per 4-bit nibble of the lookup-table layout (4 // bits)."""
    return 4 // bits


def codebook_packed_sizes(n: int, k: int, bits: int, lut: bool) -> tuple[int, int, int]:
    """(N_pad, K_pad, total bytes) of packed [n, k] codes in the row or lookup-table layout."""
    if lut:
        n_pad = -(-n // 16) * 16
        unit = 2 * lut_group(bits)  # k per 16-byte unit (16 rows x two nibbles)
        k_pad = -(-k // unit) * unit
        return n_pad, k_pad, n_pad * k_pad * bits // 8
    chunk = codebook_chunk(bits)
    k_pad = -(-k // chunk) * chunk
    return n, k_pad, n * k_pad * bits // 8


def check_codebook_format(op: str, n: int, k: int, bits: int, lut: bool) -> None:
    if bits not in CODEBOOK_BITS:
        raise ValueError(f"{op}: bits must be one of {CODEBOOK_BITS}, got {bits!r}")
    if lut and bits not in LUT_BITS:
        raise ValueError(f"{op}: the lookup-table layout takes bits in {LUT_BITS}, got {bits} (use lut=False)")
    if n <= 0 or k <= 0:
        raise ValueError(f"{op}: the weight must be non-empty, got n={n}, k={k}")


def check_codebook_pack(codes: Tensor, bits: int, lut: bool) -> None:
    op = "codebook_pack"
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"{op}: codes must be a 2-D uint8 tensor [N, K], got {got}")
    check_codebook_format(op, codes.shape[0], codes.shape[1], bits, lut)


def check_codebook_values(codes: Tensor, bits: int) -> None:
    """Codes fit in ``bits`` bits (reads the tensor: packing only)."""
    if bits < 8 and codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"codebook_pack: a code is >= 2**{bits}; codes index a {1 << bits}-entry codebook")


def check_codebook_packed(op: str, packed: Tensor, n: int, k: int, bits: int, lut: bool, ref: Tensor,
                          ref_name: str) -> None:
    check_codebook_format(op, n, k, bits, lut)
    _check_t(op, "packed", packed, torch.uint8, 1, ref, ref_name)
    expected = codebook_packed_sizes(n, k, bits, lut)[2]
    if packed.numel() != expected:
        raise ValueError(f"{op}: packed has {packed.numel()} bytes but [{n}, {k}] {bits}-bit codes pack to "
                         f"{expected} ({'lookup-table' if lut else 'row'} layout): K, n, bits or lut mismatch?")


def check_codebook_table(op: str, codebook: Tensor, scale: Optional[Tensor], n: int, k: int, bits: int,
                         lut: bool, ref: Tensor, ref_name: str) -> tuple[int, int]:
    """(rows R, groups G) of a codebook float32 [R, G, 2**bits] after checking it (and scale)."""
    _check_t(op, "codebook", codebook, torch.float32, 3, ref, ref_name)
    r, g, c = codebook.shape
    if c != 1 << bits:
        raise ValueError(f"{op}: codebook must have 2**bits = {1 << bits} entries per table (pad unused entries "
                         f"with 0), got {c}")
    if r not in (1, n):
        raise ValueError(f"{op}: codebook must have 1 (shared) or n = {n} (per row) tables, got {r}")
    if lut and r != 1:
        raise ValueError(f"{op}: the lookup-table layout needs a codebook shared by all rows ([1, G, C]), got {r} rows")
    unit = 2 * lut_group(bits) if lut else codebook_chunk(bits)
    if g < 1 or k % g or (g > 1 and (k // g) % unit):
        raise ValueError(f"{op}: {g} codebook groups do not split K={k} into groups that are multiples of {unit} "
                         f"(the {'unit' if lut else 'chunk'} of {bits}-bit codes)")
    if scale is not None:
        _check_t(op, "scale", scale, torch.float32, 1, ref, ref_name)
        if scale.numel() != n:
            raise ValueError(f"{op}: scale must have n = {n} entries, got {scale.numel()}")
    return r, g


def check_codebook_linear(x: Tensor, packed: Tensor, codebook: Tensor, scale: Optional[Tensor],
                          bias: Optional[Tensor], n: int, bits: int, lut: bool) -> int:
    """K after checking every argument of codebook_linear."""
    op = "codebook_linear"
    _check_float(f"{op}: x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last dimension (K), got shape {tuple(x.shape)}")
    k = x.shape[-1]
    check_codebook_packed(op, packed, n, k, bits, lut, x, "x")
    check_codebook_table(op, codebook, scale, n, k, bits, lut, x, "x")
    _check_bias(op, bias, n, x)
    return k


# ---- static W8A8 linear (int8_linear_static; accuracy toolkit) -----------------------------------

def check_static_linear(op: str, x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor]) -> None:
    """Shapes, dtypes and devices of int8_linear_static's arguments (values: check_static_values)."""
    check_packed_linear(op, x, w_packed, w_scale, bias, n, False)
    k = x.shape[-1]
    for name, t, dtype, shape in (("act_scale", act_scale, torch.float32, (1,)),
                                  ("act_zero_point", act_zero_point, torch.int32, (1,)),
                                  ("act_smooth", act_smooth, torch.float32, (k,))):
        if t is None:
            if name == "act_scale":
                raise TypeError(f"{op}: act_scale is required (a float32 tensor of shape (1,))")
            continue
        if not isinstance(t, Tensor) or t.dtype != dtype:
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{op}: {name} must be {dtype}, got {got}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}" + (" (one per input feature K)" if name ==
                                                                        "act_smooth" else "")
                             + f", got {tuple(t.shape)}")
        _check_same_device(f"{op}: {name}", t, x, "x")


def check_static_call(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                      act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                      out_dtype: torch.dtype) -> None:
    """Every check of an int8_linear_static call on real tensors: shapes, out_dtype, the activation
    parameters' values (check_static_values)."""
    op = "int8_linear_static"
    check_static_linear(op, x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    check_static_values(op, act_scale, act_zero_point, act_smooth)


def check_static_values(op: str, act_scale: Tensor, act_zero_point: Optional[Tensor],
                        act_smooth: Optional[Tensor]) -> None:
    """Values native code trusts: scale and smoothing divisors finite normal floats (so their
    reciprocals are finite), zero point in [0, 255]. Cached per tensor version, so a layer's
    calibrated parameters are read once, not on every call."""
    for name, t, lo, hi in (("act_scale", act_scale, FLT_MIN, torch.finfo(torch.float32).max),
                            ("act_zero_point", act_zero_point, 0, 255),
                            ("act_smooth", act_smooth, FLT_MIN, torch.finfo(torch.float32).max)):
        if t is None:
            continue
        try:
            version = t._version
        except RuntimeError:  # inference tensors have no version counter: checked every time
            version = None
        if version is not None and getattr(t, "_fastq_range_ok", None) == version:
            continue
        if not _in_range(t, lo, hi):
            raise ValueError(f"{op}: {name} must lie in [{lo:g}, {hi:g}] (finite, positive normal floats for scales); "
                             f"got values outside it (NaN/Inf/zero/negative?)")
        if version is not None:
            try:
                t._fastq_range_ok = version
            except (AttributeError, RuntimeError):
                pass


# ---- sub-8-bit integer weights (intx family; layout: fastq/ops/reference.py) ---------------------
# The packed bytes need no value checks before native code reads them: any byte is a valid code (the
# kernels mask codes to their slot), scales are plain floats and zero points plain bytes. Packing
# checks its inputs' values; embeddings bounds-check their indices on every call.

INTX_DYNAMIC_BITS = (2, 3, 4)  # the W4A8 kernels' u8 x s8 products need codes < 16


def check_intx_format(op: str, n: int, k: int, groups: int, bits: int) -> None:
    """The (n, k, groups, bits) of an intx weight: bits in 2..8, groups dividing k into groups whose
    size is a multiple of the layout's chunk (8 for int4, 16 for int2, 4 for 5..8 bits)."""
    from fastq.ops.reference import INTX_BITS, intx_chunk_k

    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in INTX_BITS:
        raise ValueError(f"{op}: bits must be an int in 2..8, got {bits!r}")
    if n <= 0 or k <= 0:
        raise ValueError(f"{op}: the weight must be non-empty, got n={n}, k={k}")
    if groups <= 0 or k % groups:
        raise ValueError(f"{op}: groups={groups} must be a positive divisor of K={k}")
    chunk = intx_chunk_k(bits)
    if (k // groups) % chunk:
        what = "K" if groups == 1 else f"the group size {k // groups}"
        raise ValueError(f"{op}: {what} must be a multiple of {chunk} for {bits}-bit codes "
                         f"({chunk // 4} per byte, {chunk} k per packed chunk)")


def check_intx_packed(op: str, packed: Tensor, n: int, k: int, groups: int, bits: int, asymmetric: bool,
                      ref: Tensor, ref_name: str) -> None:
    from fastq.ops.reference import intx_packed_bytes

    check_intx_format(op, n, k, groups, bits)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise TypeError(f"{op}: packed must be the 1-D uint8 tensor intx_pack_weight returns")
    expected = intx_packed_bytes(n, k, groups, bits, asymmetric)
    if packed.numel() != expected:
        raise ValueError(f"{op}: packed has {packed.numel()} bytes but an [{n}, {k}] {bits}-bit weight with "
                         f"{groups} group(s){' and zero points' if asymmetric else ''} packs to {expected}: "
                         f"K, groups, bits or asymmetric do not match the packed weight")
    _check_same_device(f"{op}: packed", packed, ref, ref_name)


def check_intx_pack(codes: Tensor, scale: Tensor, zero: Optional[Tensor], bits: int, check_values: bool = True) -> None:
    op = "intx_pack_weight"
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2:
        raise TypeError(f"{op}: codes must be a 2-D uint8 tensor [N, K]")
    n, k = codes.shape
    _check_t(op, "scale", scale, torch.float32, 2, codes, "codes")
    if scale.shape[0] != n:
        raise ValueError(f"{op}: scale must be [N={n}, G], got {tuple(scale.shape)}")
    check_intx_format(op, n, k, scale.shape[1], bits)
    if zero is not None:
        _check_t(op, "zero", zero, torch.uint8, 2, codes, "codes")
        if zero.shape != scale.shape:
            raise ValueError(f"{op}: zero must have scale's shape {tuple(scale.shape)}, got {tuple(zero.shape)}")
    if check_values:
        top = (1 << bits) - 1
        if bool((codes > top).any()):
            raise ValueError(f"{op}: codes must lie in [0, {top}] for {bits}-bit weights")
        if zero is not None and bool((zero > top).any()):
            raise ValueError(f"{op}: zero points must lie in [0, {top}] for {bits}-bit weights")
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"{op}: scales must be finite (a NaN/Inf weight has no intx form)")


def check_intx_linear(op: str, x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                      asymmetric: bool, dynamic: bool) -> int:
    """K after checking every argument of intx_weight_only_linear / intx_linear_dynamic."""
    _check_float(f"{op}: x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last dimension (K), got shape {tuple(x.shape)}")
    k = x.shape[-1]
    check_intx_packed(op, packed, n, k, groups, bits, asymmetric, x, "x")
    if dynamic and bits not in INTX_DYNAMIC_BITS:
        raise ValueError(f"{op}: dynamic int8 activations need codes of at most 4 bits, got bits={bits}; "
                         "use intx_weight_only_linear")
    _check_bias(op, bias, n, x)
    return k


def check_intx_embedding(indices: Tensor, packed: Tensor, n: int, k: int, groups: int, bits: int, asymmetric: bool,
                         out_dtype: torch.dtype) -> None:
    op = "intx_embedding"
    if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32):
        got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
        raise TypeError(f"{op}: indices must be an int64 or int32 tensor, got {got}")
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    check_intx_packed(op, packed, n, k, groups, bits, asymmetric, indices, "indices")


def check_intx_indices(indices: Tensor, n: int) -> None:
    """Every index in [0, n) (reads the values: not for fakes)."""
    if indices.numel():
        lo, hi = torch.aminmax(indices)
        if int(lo) < 0 or int(hi) >= n:
            raise IndexError(f"intx_embedding: index out of range: indices span [{int(lo)}, {int(hi)}] "
                             f"but the table has {n} rows")


def _finite(where: str, name: str, t: Optional[Tensor]) -> None:
    if t is not None and t.numel() and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: {name} holds NaN or Inf")


def check_packed_weight_values(where: str, w_packed: Tensor, w_scale: Tensor, n: int, k: int,
                               cache: bool = True) -> None:
    """An int8_pack_weight layout for [n, k]: zero padding, column sums equal to the codes' sums
    (W8A8 kernels correct their unsigned activations with them), finite scales."""
    def check():
        n_pad, k_pad, _ = packed_sizes(n, k)
        body = w_packed[: n_pad * k_pad].view(n_pad // 16, k_pad // 4, 16, 4)
        colsum = w_packed[n_pad * k_pad:].view(torch.int32)
        step = 64  # 16-column blocks per chunk: bounds the int32 temporary
        for b0 in range(0, n_pad // 16, step):
            w = body[b0:b0 + step].permute(0, 2, 1, 3).reshape(-1, k_pad)  # [16 * blocks, k_pad]
            rows = torch.arange(b0 * 16, b0 * 16 + w.shape[0], device=w.device)
            if bool((w[:, k:] != 0).any()) or bool((w[rows >= n] != 0).any()):
                raise ValueError(f"{where}: w_packed has nonzero padding; it is not what int8_pack_weight "
                                 f"returns for an [{n}, {k}] weight (wrong in_features?)")
            if not torch.equal(w.sum(dim=1, dtype=torch.int32), colsum[b0 * 16: b0 * 16 + w.shape[0]]):
                raise ValueError(f"{where}: w_packed column sums do not match its codes (corrupted buffer, "
                                 "or packed for another shape)")
        _finite(where, "w_scale", w_scale)
    _cached("packed", (w_packed, w_scale), (n, k), check, cache)


def _check_pointers(where: str, name: str, ptr: Tensor, entries: int, step: int) -> None:
    d = ptr.diff()
    if (int(ptr[0]) != 0 or int(ptr[-1]) != entries or bool((d < 0).any())
            or (step > 1 and bool((d % step != 0).any()))):
        rule = f", each row a multiple of {step} entries" if step > 1 else ""
        raise ValueError(f"{where}: {name} is not a valid pointer array over the {entries} stored entries "
                         f"(from 0 to {entries}, never decreasing{rule}); pass what the matching *_pack op "
                         "returned")


def _check_indices(where: str, name: str, idx: Tensor, limit: int, what: str) -> None:
    if idx.numel() and int((idx.to(torch.int32) & 0xFFFF).max()) >= limit:
        raise ValueError(f"{where}: {name} holds an index >= {what}={limit}: the input's K does not match the "
                         "packed weight (wrong in_features?), or a corrupted buffer")


def _check_sorted_rows(where: str, name: str, idx: Tensor, ptr: Tensor) -> None:
    """Indices strictly increase within each row (the order the pack ops write): a row pointer
    shifted by a few entries then shows as a row whose indices go backwards."""
    if idx.numel() < 2:
        return
    c = idx.to(torch.int32) & 0xFFFF
    ok = c[1:] > c[:-1]
    starts = ptr[1:-1]
    starts = starts[(starts > 0) & (starts < idx.numel())]
    ok[starts - 1] = True  # a new row may start anywhere
    if not bool(ok.all()):
        raise ValueError(f"{where}: {name} is not strictly increasing within a row (pack ops write each row's "
                         "indices in order): the row pointers or indices were changed (corrupted buffer?)")


def check_sparse_csr_values(where: str, values: Tensor, cols: Tensor, row_ptr: Tensor, k: int,
                            scale: Optional[Tensor] = None, values_name: str = "values", cache: bool = True) -> None:
    """Padded CSR (csr and int8 formats): row pointers, column indices < k, finite values/scale."""
    def check():
        _check_pointers(where, "row_ptr", row_ptr, cols.numel(), SPARSE_ROW_PAD)
        _check_indices(where, "cols", cols, k, "K")
        _finite(where, values_name, values)
        _finite(where, "scale", scale)
    _cached("csr", (row_ptr, cols, values, scale), (k,), check, cache)


def check_sparse_bsr_values(where: str, values: Tensor, block_col: Tensor, row_ptr: Tensor, k: int,
                            cache: bool = True) -> None:
    def check():
        bc = values.shape[2]
        _check_pointers(where, "row_ptr", row_ptr, block_col.numel(), 1)
        _check_indices(where, "block_col", block_col, -(-k // bc), "K / block_cols")
        _check_sorted_rows(where, "block_col", block_col, row_ptr)
        _finite(where, "values", values)
    _cached("bsr", (row_ptr, block_col, values), (k,), check, cache)


def check_sparse_24_values(where: str, values: Tensor, cache: bool = True) -> None:
    """2:4: any metadata byte is a valid set of in-group positions, so only the values are read."""
    _cached("s24", (values,), (), lambda: _finite(where, "values", values), cache)


def check_sparse_ell_values(where: str, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                            scale: Optional[Tensor] = None, cache: bool = True) -> None:
    """Sliced ELL: offsets < 32, steps <= 32, group_ptr = [0, running sums of each group's steps]
    ending at the stored step count; finite values and scale."""
    def check():
        if offsets.numel() and int(offsets.max()) >= ELL_TILE:
            raise ValueError(f"{where}: offsets: an offset is >= {ELL_TILE}: offsets hold columns within a "
                             f"{ELL_TILE}-column tile")
        if steps.numel() and int(steps.max()) > ELL_TILE:
            raise ValueError(f"{where}: steps: a step count exceeds {ELL_TILE}, the columns of a tile")
        if (int(group_ptr[0]) != 0 or int(group_ptr[-1]) != offsets.shape[0]
                or not torch.equal(group_ptr.diff(), steps.to(torch.int64).sum(dim=1))):
            raise ValueError(f"{where}: group_ptr does not match steps and the {offsets.shape[0]} stored steps "
                             "(step counts inconsistent with the values' length?); pass what sparse_ell_pack "
                             "returned")
        _finite(where, "values", values)
        _finite(where, "scale", scale)
    _cached("ell", (group_ptr, steps, offsets, values, scale), (), check, cache)
