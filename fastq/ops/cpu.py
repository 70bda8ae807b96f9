"""Native CPU implementations of the ops (fastq._C), registered as the ops' "cpu" kernels.

Invariants: each implementation validates with ``_checks`` first (shapes on every call, packed
values once per tensor version), allocates outputs with torch and passes raw pointers to ``_C``.
The linear ops run through a plan (``fastq.ops.plans``; built once per set of weight tensors and
reused while they are unchanged, ``plans.reused``): the same native launcher a module's prepared
plan uses, so a direct op call and a module give bit-identical results. Empty inputs are answered by the reference (nothing for a kernel to do). Native runs are
counted (``fastq.native_calls``): by ``_native.record`` here, by C++ for plan runs. Every call gets
``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, plans, reference
from fastq.ops._device_ops import DeviceOps, _contig, _ptr

# ops served by a LinearPlan (they need the plan binding); the others by their own _C function
_PLAN_OPS = ("int8_linear_dynamic", "int8_linear_dynamic_out", "int8_weight_only_linear",
             "int8_weight_only_linear_out", "sparse_csr_linear", "sparse_int8_linear", "sparse_24_linear",
             "sparse_bsr_linear", "sparse_ell_linear", "int8_linear_static", "intx_weight_only_linear",
             "intx_linear_dynamic", "codebook_linear")
_FUNCTIONS = {"quantize_int8": "quantize_int8_cpu", "quantize_int8_out": "quantize_int8_cpu",
              "dequantize_int8": "dequantize_int8_cpu", "dequantize_int8_out": "dequantize_int8_cpu",
              "int8_gemm": "int8_gemm_cpu"}


def available(op: str) -> bool:
    """Whether this build has a native CPU kernel for ``op``."""
    if op in _PLAN_OPS:
        return _native.has("LinearPlan")
    return op in _FUNCTIONS and _native.has(_FUNCTIONS[op])


# ---- quantize / dequantize ----------------------------------------------------------------------

def _launch_quantize(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor],
                     lay: _checks.QuantLayout, symmetric: bool, dynamic: bool) -> None:
    _native._C.quantize_int8_cpu(x.data_ptr(), _native.DTYPE_CODES[x.dtype], codes.data_ptr(), scale.data_ptr(),
                                 _ptr(zero_point), lay.rows, lay.cols, 1, symmetric, dynamic, _native.num_threads())


def _launch_dequantize(codes: Tensor, symmetric: bool, scale: Tensor, zero_point: Optional[Tensor], y: Tensor,
                       lay: _checks.QuantLayout) -> None:
    _native._C.dequantize_int8_cpu(codes.data_ptr(), symmetric, scale.data_ptr(), _ptr(zero_point), y.data_ptr(),
                                   _native.DTYPE_CODES[y.dtype], lay.rows, lay.cols, 1, _native.num_threads())


def _launch_gemm(a: Tensor, b: Tensor, c: Tensor) -> None:
    m, k = a.shape
    _native._C.int8_gemm_cpu(a.data_ptr(), b.data_ptr(), c.data_ptr(), m, b.shape[0], k, _native.num_threads())


_ops = DeviceOps("cpu", _launch_quantize, _launch_dequantize, _launch_gemm)
quantize_int8 = _ops.quantize_int8
quantize_int8_out = _ops.quantize_int8_out
dequantize_int8 = _ops.dequantize_int8
dequantize_int8_out = _ops.dequantize_int8_out
int8_gemm = _ops.int8_gemm


# ---- int8 GEMM family: linears through plans ----------------------------------------------------

def _dynamic_plan(op: str, x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                  act_symmetric: bool) -> plans.Plan:
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, False)
    k = x.shape[-1]
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, k)
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    return plans.reused(lambda: plans.int8_linear_dynamic(w_packed, w_scale, bias, n, k, act_symmetric, validate=False),
                        (w_packed, w_scale, bias), ("w8a8", n, k, act_symmetric))


def int8_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    plan = _dynamic_plan("int8_linear_dynamic", x, w_packed, w_scale, bias, n, act_symmetric)
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"int8_linear_dynamic: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return plan.run(x, out_dtype)


def int8_linear_dynamic_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                            act_symmetric: bool, out: Tensor) -> None:
    plan = _dynamic_plan("int8_linear_dynamic_out", x, w_packed, w_scale, bias, n, act_symmetric)
    _checks.check_linear_out("int8_linear_dynamic_out", x, n, out, out.dtype)
    if out.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"int8_linear_dynamic_out: out must be float32, float16 or bfloat16, got {out.dtype}")
    if out.numel():
        _native.record("int8_linear_dynamic_out", "cpu")
        plan.run(x, out=out)


def _weight_only_plan(op: str, x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor],
                      n: int) -> plans.Plan:
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, True)
    k = x.shape[-1]
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, k)
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    return plans.reused(lambda: plans.int8_weight_only_linear(w_packed, w_scale, bias, n, k, validate=False),
                        (w_packed, w_scale, bias), ("wo", n, k, plans.routing_state()))


def int8_weight_only_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    return _weight_only_plan("int8_weight_only_linear", x, w_packed, w_scale, bias, n).run(x)


def int8_weight_only_linear_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                                out: Tensor) -> None:
    plan = _weight_only_plan("int8_weight_only_linear_out", x, w_packed, w_scale, bias, n)
    _checks.check_linear_out("int8_weight_only_linear_out", x, n, out, x.dtype)
    if out.numel():
        _native.record("int8_weight_only_linear_out", "cpu")
        plan.run(x, out=out)


# ---- sparse masked matmul family ----------------------------------------------------------------
# bfloat16 x is widened to float32 (exact) inside the plan run and y rounded once to x's dtype,
# the reference's sequence (csrc/cpu/plan.cpp).

def sparse_csr_linear(x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    op = "sparse_csr_linear"
    k = _checks.check_sparse_csr_linear(op, x, values, cols, row_ptr, bias, n)
    _checks.check_sparse_csr_values(op, values, cols, row_ptr, k)
    if x.numel() == 0:
        return reference.sparse_csr_linear(x, values, cols, row_ptr, bias, n)
    values, cols, row_ptr, bias = values.contiguous(), cols.contiguous(), row_ptr.contiguous(), _contig(bias)
    return plans.reused(lambda: plans.sparse_csr_linear(values, cols, row_ptr, bias, n, k, validate=False),
                        (values, cols, row_ptr, bias), (op, n, k)).run(x)


def sparse_int8_linear(x: Tensor, q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor,
                       bias: Optional[Tensor]) -> Tensor:
    op = "sparse_int8_linear"
    k = _checks.check_sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    _checks.check_sparse_csr_values(op, q, cols, row_ptr, k, scale, "q")
    if x.numel() == 0:
        return reference.sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    q, scale, cols, row_ptr, bias = q.contiguous(), scale.contiguous(), cols.contiguous(), row_ptr.contiguous(), \
        _contig(bias)
    return plans.reused(lambda: plans.sparse_int8_linear(q, scale, cols, row_ptr, bias, k, validate=False),
                        (q, scale, cols, row_ptr, bias), (op, k)).run(x)


def sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    op = "sparse_24_linear"
    k = _checks.check_sparse_24_linear(x, values, meta, bias)
    _checks.check_sparse_24_values(op, values)
    if x.numel() == 0:
        return reference.sparse_24_linear(x, values, meta, bias)
    values, meta, bias = values.contiguous(), meta.contiguous(), _contig(bias)
    return plans.reused(lambda: plans.sparse_24_linear(values, meta, bias, k, validate=False),
                        (values, meta, bias), (op, k)).run(x)


def sparse_bsr_linear(x: Tensor, values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    op = "sparse_bsr_linear"
    k = _checks.check_sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    _checks.check_sparse_bsr_values(op, values, block_col, row_ptr, k)
    if x.numel() == 0:
        return reference.sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    values, block_col, row_ptr, bias = values.contiguous(), block_col.contiguous(), row_ptr.contiguous(), \
        _contig(bias)
    return plans.reused(lambda: plans.sparse_bsr_linear(values, block_col, row_ptr, bias, n, k, validate=False),
                        (values, block_col, row_ptr, bias), (op, n, k)).run(x)


def sparse_ell_linear(x: Tensor, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                      scale: Optional[Tensor], bias: Optional[Tensor], n: int) -> Tensor:
    op = "sparse_ell_linear"
    k, int8 = _checks.check_sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    _checks.check_sparse_ell_values(op, values, offsets, steps, group_ptr, scale if int8 else None)
    if x.numel() == 0:
        return reference.sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    scale, bias = _contig(scale) if int8 else None, _contig(bias)
    return plans.reused(lambda: plans.sparse_ell_linear(values, offsets, steps, group_ptr, scale, bias, n, k,
                                                        validate=False),
                        (values, offsets, steps, group_ptr, scale, bias), (op, n, k)).run(x)


# ---- static W8A8, sub-8-bit integer and codebook weights ----------------------------------------

def int8_linear_static(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    op = "int8_linear_static"
    _checks.check_static_call(x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth, out_dtype)
    k = x.shape[-1]
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, k)
    ts = tuple(_contig(t) for t in (w_packed, w_scale, bias, act_scale, act_zero_point, act_smooth))
    return plans.reused(lambda: plans.int8_linear_static(*ts[:3], n, k, *ts[3:], validate=False), ts,
                        (op, n, k)).run(x, out_dtype)


def _intx(op: str, x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
          asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    k = _checks.check_intx_linear(op, x, packed, bias, n, groups, bits, asymmetric, op == "intx_linear_dynamic")
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    packed, bias = packed.contiguous(), _contig(bias)
    return plans.reused(lambda: plans.intx_linear(op, packed, bias, n, k, groups, bits, asymmetric, validate=False),
                        (packed, bias), (op, n, k, groups, bits, asymmetric)).run(x, out_dtype)


def intx_weight_only_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                            asymmetric: bool) -> Tensor:
    return _intx("intx_weight_only_linear", x, packed, bias, n, groups, bits, asymmetric, x.dtype)


def intx_linear_dynamic(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                        asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    return _intx("intx_linear_dynamic", x, packed, bias, n, groups, bits, asymmetric, out_dtype)


def codebook_linear(x: Tensor, packed: Tensor, codebook: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
                    n: int, bits: int, lut: bool) -> Tensor:
    k = _checks.check_codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)
    ts = tuple(_contig(t) for t in (packed, codebook, scale, bias))
    return plans.reused(lambda: plans.codebook_linear(*ts, n, k, bits, lut, validate=False), ts,
                        ("codebook_linear", n, k, bits, lut)).run(x)
