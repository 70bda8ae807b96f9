"""Native CUDA implementations of the ops (fastq._C, built with CUDA), registered as the ops'
"cuda" kernels, and the launchers CUDA plans (``fastq.ops.plans``) call.

Invariants: each op implementation validates with ``_checks`` first (the same checks as every
other path), allocates outputs with torch on x's device and calls a ``launch_*`` function, which
enters the device and passes the current stream; a plan calls the same launchers with its stored
(validated once) tensors, so both give identical results. Empty inputs are answered by the
reference. Native runs are counted with ``_native.record``.
The sparse linears widen x to float32 (exact) and round y once to x's dtype, except
``sparse_24_linear`` with bfloat16 x on compute capability >= 8.0, which runs on the sparse tensor
cores (mma.sp, csrc/cuda/sparse.cu): x is read as bf16, the kept weights are rounded to bf16,
products accumulate in float32. float32 x keeps the CUDA-core kernel whether or not TF32 is
allowed: the TF32 mma.sp needs 1:2 sparsity, which 2:4 weights do not have.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, reference
from fastq.ops._device_ops import DeviceOps, _contig, _ptr

SPARSE_24_MMA = "sparse_24_linear:mma.sp"  # native_calls key of the tensor-core path
_FUNCTIONS = {"quantize_int8": "quantize_int8_cuda", "quantize_int8_out": "quantize_int8_cuda",
              "dequantize_int8": "dequantize_int8_cuda", "dequantize_int8_out": "dequantize_int8_cuda",
              "int8_gemm": "int8_gemm_cuda", "int8_linear_dynamic": "int8_linear_dynamic_cuda",
              "int8_linear_dynamic_out": "int8_linear_dynamic_cuda",
              "int8_weight_only_linear": "int8_weight_only_linear_cuda",
              "int8_weight_only_linear_out": "int8_weight_only_linear_cuda",
              "sparse_csr_linear": "sparse_csr_linear_cuda", "sparse_24_linear": "sparse_24_linear_cuda"}


def available(op: str) -> bool:
    """Whether this build has a native CUDA kernel for ``op``."""
    if op in _NO_PLAN_OPS:
        return _native.has(f"{op}_cuda")
    return op in _FUNCTIONS and _native.has(_FUNCTIONS[op])


def _stream(t: Tensor) -> int:
    return _native.cuda_stream(t)


# ---- quantize / dequantize ----------------------------------------------------------------------

def _launch_quantize(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor],
                     lay: _checks.QuantLayout, symmetric: bool, dynamic: bool) -> None:
    workspace = torch.zeros(4, dtype=torch.int32, device=x.device) if dynamic and lay.rows == 1 else None
    with torch.cuda.device(x.device):
        _native._C.quantize_int8_cuda(x.data_ptr(), _native.DTYPE_CODES[x.dtype], codes.data_ptr(), scale.data_ptr(),
                                      _ptr(zero_point), lay.rows, lay.cols, 1, symmetric, dynamic, _ptr(workspace),
                                      _stream(x))


def _launch_dequantize(codes: Tensor, symmetric: bool, scale: Tensor, zero_point: Optional[Tensor], y: Tensor,
                       lay: _checks.QuantLayout) -> None:
    with torch.cuda.device(codes.device):
        _native._C.dequantize_int8_cuda(codes.data_ptr(), symmetric, scale.data_ptr(), _ptr(zero_point), y.data_ptr(),
                                        _native.DTYPE_CODES[y.dtype], lay.rows, lay.cols, 1, _stream(codes))


def _launch_gemm(a: Tensor, b: Tensor, c: Tensor) -> None:
    m, k = a.shape
    with torch.cuda.device(a.device):
        _native._C.int8_gemm_cuda(a.data_ptr(), b.data_ptr(), c.data_ptr(), m, b.shape[0], k, _stream(a))


_ops = DeviceOps("cuda", _launch_quantize, _launch_dequantize, _launch_gemm)
quantize_int8 = _ops.quantize_int8
quantize_int8_out = _ops.quantize_int8_out
dequantize_int8 = _ops.dequantize_int8
dequantize_int8_out = _ops.dequantize_int8_out
int8_gemm = _ops.int8_gemm


# ---- int8 GEMM family: x [M, K] contiguous, y [M, N] contiguous ---------------------------------

def launch_linear_dynamic(x2: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                          act_symmetric: bool, y2: Tensor) -> None:
    m, k = x2.shape
    ws_bytes = _native._C.int8_linear_dynamic_workspace_bytes_cuda(m, n, k)
    workspace = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=x2.device)
    with torch.cuda.device(x2.device):
        _native._C.int8_linear_dynamic_cuda(x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.data_ptr(),
                                            w_scale.data_ptr(), _ptr(bias), y2.data_ptr(),
                                            _native.DTYPE_CODES[y2.dtype], m, n, k, act_symmetric,
                                            workspace.data_ptr(), ws_bytes, _stream(x2))


def launch_weight_only(x2: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       y2: Tensor) -> None:
    m, k = x2.shape
    with torch.cuda.device(x2.device):
        _native._C.int8_weight_only_linear_cuda(x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.data_ptr(),
                                                w_scale.data_ptr(), w_scale.shape[1], _ptr(bias), y2.data_ptr(),
                                                _native.DTYPE_CODES[y2.dtype], m, n, k, _stream(x2))


def _linear(op: str, x: Tensor, n: int, dtype: torch.dtype, out: Optional[Tensor], launch) -> Optional[Tensor]:
    y = out if out is not None else torch.empty(tuple(x.shape[:-1]) + (n,), dtype=dtype, device=x.device)
    if y.numel():
        _native.record(op, "cuda")
        launch(x.reshape(-1, x.shape[-1]).contiguous(), y.view(-1, n))
    return y


def int8_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    op = "int8_linear_dynamic"
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, False)
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, x.shape[-1])
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    return _linear(op, x, n, out_dtype, None,
                   lambda x2, y2: launch_linear_dynamic(x2, w_packed, w_scale, bias, n, act_symmetric, y2))


def int8_linear_dynamic_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                            act_symmetric: bool, out: Tensor) -> None:
    op = "int8_linear_dynamic_out"
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, False)
    _checks.check_linear_out(op, x, n, out, out.dtype)
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, x.shape[-1])
    if out.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: out must be float32, float16 or bfloat16, got {out.dtype}")
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    _linear(op, x, n, out.dtype, out,
            lambda x2, y2: launch_linear_dynamic(x2, w_packed, w_scale, bias, n, act_symmetric, y2))


def int8_weight_only_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    op = "int8_weight_only_linear"
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, True)
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, x.shape[-1])
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    return _linear(op, x, n, x.dtype, None, lambda x2, y2: launch_weight_only(x2, w_packed, w_scale, bias, n, y2))


def int8_weight_only_linear_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                                out: Tensor) -> None:
    op = "int8_weight_only_linear_out"
    _checks.check_packed_linear(op, x, w_packed, w_scale, bias, n, True)
    _checks.check_linear_out(op, x, n, out, x.dtype)
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, x.shape[-1])
    w_packed, w_scale, bias = w_packed.contiguous(), w_scale.contiguous(), _contig(bias)
    _linear(op, x, n, x.dtype, out, lambda x2, y2: launch_weight_only(x2, w_packed, w_scale, bias, n, y2))


# ---- sparse masked matmul family: x [M, K] contiguous, y [M, N] contiguous of x's dtype ------------

@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


def sparse_24_uses_tensor_cores(x: Tensor) -> bool:
    """Whether ``sparse_24_linear`` on ``x``'s device and dtype runs on the sparse tensor cores."""
    return (x.device.type == "cuda" and x.dtype == torch.bfloat16 and _native.has("sparse_24_linear_tc_cuda")
            and _capability(x.device.index if x.device.index is not None else torch.cuda.current_device())
            >= (8, 0))


def _aligned16(t: Tensor) -> Tensor:
    """``t`` contiguous with its data on a 16-byte boundary (a copy only for an offset view)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _float_y(x2: Tensor, y2: Tensor, run) -> None:
    """Run a float32 kernel: x widened exactly, y rounded once to y2's dtype."""
    y32 = y2 if y2.dtype == torch.float32 else torch.empty(y2.shape, dtype=torch.float32, device=y2.device)
    with torch.cuda.device(x2.device):
        run(x2.float().contiguous(), y32)
    if y32 is not y2:
        y2.copy_(y32)


def launch_sparse_csr(x2: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor], n: int,
                      y2: Tensor) -> None:
    m, k = x2.shape
    _float_y(x2, y2, lambda xk, y32: _native._C.sparse_csr_linear_cuda(
        xk.data_ptr(), m, n, k, values.data_ptr(), cols.data_ptr(), row_ptr.data_ptr(), _ptr(bias), y32.data_ptr(),
        _stream(xk)))


def launch_sparse_24(x2: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor], y2: Tensor) -> None:
    m, k = x2.shape
    n = values.shape[0]
    if sparse_24_uses_tensor_cores(x2):
        _native.record(SPARSE_24_MMA, "cuda")
        xa, va = _aligned16(x2), _aligned16(values)
        y32 = torch.empty(m, n, dtype=torch.float32, device=x2.device)
        with torch.cuda.device(x2.device):
            _native._C.sparse_24_linear_tc_cuda(xa.data_ptr(), m, n, k, va.data_ptr(), meta.data_ptr(), _ptr(bias),
                                                y32.data_ptr(), _stream(xa))
        y2.copy_(y32)
        return
    _float_y(x2, y2, lambda xk, y32: _native._C.sparse_24_linear_cuda(
        xk.data_ptr(), m, n, k, values.data_ptr(), meta.data_ptr(), _ptr(bias), y32.data_ptr(), _stream(xk)))


def sparse_csr_linear(x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    op = "sparse_csr_linear"
    k = _checks.check_sparse_csr_linear(op, x, values, cols, row_ptr, bias, n)
    _checks.check_sparse_csr_values(op, values, cols, row_ptr, k)
    if x.numel() == 0:
        return reference.sparse_csr_linear(x, values, cols, row_ptr, bias, n)
    values, cols, row_ptr, bias = values.contiguous(), cols.contiguous(), row_ptr.contiguous(), _contig(bias)
    return _linear(op, x, n, x.dtype, None,
                   lambda x2, y2: launch_sparse_csr(x2, values, cols, row_ptr, bias, n, y2))


def sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    op = "sparse_24_linear"
    k = _checks.check_sparse_24_linear(x, values, meta, bias)
    _checks.check_sparse_24_values(op, values)
    if x.numel() == 0:
        return reference.sparse_24_linear(x, values, meta, bias)
    values, meta, bias = values.contiguous(), meta.contiguous(), _contig(bias)
    return _linear(op, x, values.shape[0], x.dtype, None,
                   lambda x2, y2: launch_sparse_24(x2, values, meta, bias, y2))


# ---- codebook, static W8A8 and intx linears (no CUDA plan: each call validates and launches) ----

_NO_PLAN_OPS = ("codebook_linear", "int8_linear_static", "intx_weight_only_linear", "intx_linear_dynamic")


def _call(name: str, x: Tensor, *args) -> None:
    """``_C.<name>_cuda(*args, stream)`` on x's device."""
    with torch.cuda.device(x.device):
        getattr(_native._C, f"{name}_cuda")(*args, _native.cuda_stream(x))


def _cuda_workspace(device: torch.device, nbytes: int) -> Tensor:
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)


# ---- codebook (weight sharing) linear ------------------------------------------------------------
# x is widened to float32 (exact for float16/bfloat16) and y rounded once to x's dtype, the
# reference's sequence.

def codebook_linear(x: Tensor, packed: Tensor, codebook: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
                    n: int, bits: int, lut: bool) -> Tensor:
    k = _checks.check_codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)
    if x.numel() == 0:
        return reference.codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)
    _native.record("codebook_linear", x.device.type)
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(x.shape[:-1] + (n,), dtype=torch.float32, device=x.device)
    codebook, scale, bias, packed = (t if t is None or t.is_contiguous() else t.contiguous()
                                     for t in (codebook, scale, bias, packed))
    args = (x2.data_ptr(), m, n, k, packed.data_ptr(), bits, lut, codebook.data_ptr(), codebook.shape[0],
            codebook.shape[1], _ptr(scale), _ptr(bias), y.data_ptr())
    _call("codebook_linear", x, *args)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


# ---- static W8A8 linear (accuracy toolkit) ----------------------------------------------------
# One native call: x is quantized with the calibrated scale into the workspace, then
# int8_linear_dynamic's GEMMs run. The scale / zero point / smoothing tensors are
# passed as device pointers: a call never reads them on the host.

def int8_linear_static(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    op = "int8_linear_static"
    _checks.check_static_call(x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth, out_dtype)
    _checks.check_packed_weight_values(op, w_packed, w_scale, n, x.shape[-1])
    y = torch.empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype, device=x.device)
    if y.numel() == 0:
        return y
    _native.record(op, x.device.type)
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    ws_bytes = _native._C.int8_linear_static_workspace_bytes_cuda(m, n, k)
    workspace = _cuda_workspace(x.device, ws_bytes)
    zp = _contig(act_zero_point)
    _call(op, x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.contiguous().data_ptr(),
                 w_scale.contiguous().data_ptr(), _ptr(_contig(bias)), y.data_ptr(), _native.DTYPE_CODES[y.dtype], m, n,
                 k, zp is None, act_scale.contiguous().data_ptr(), _ptr(zp), _ptr(_contig(act_smooth)),
                 workspace.data_ptr(), ws_bytes)
    return y


# ---- sub-8-bit integer weights (intx family) ------------------------------------------------------
# Every bits runs natively (2..8 weight-only, 2..4 dynamic): x of shape [*, K] runs as [M, K]; the
# prepared activations live in the workspace.

def _intx_run(name: str, x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
              asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    k = x.shape[-1]
    y = torch.empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype, device=x.device)
    if y.numel() == 0:
        return y
    _native.record(name, x.device.type)
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    m = x2.shape[0]
    ws_bytes = _native._C.intx_linear_workspace_bytes_cuda(m, k, groups)
    workspace = _cuda_workspace(x.device, ws_bytes)
    _call(name, x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], packed.contiguous().data_ptr(), bits,
                 asymmetric, groups, _ptr(_contig(bias)), y.data_ptr(), _native.DTYPE_CODES[out_dtype], m, n, k,
                 workspace.data_ptr(), ws_bytes)
    return y


def intx_weight_only_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                            asymmetric: bool) -> Tensor:
    _checks.check_intx_linear("intx_weight_only_linear", x, packed, bias, n, groups, bits, asymmetric, False)
    return _intx_run("intx_weight_only_linear", x, packed, bias, n, groups, bits, asymmetric, x.dtype)


def intx_linear_dynamic(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                        asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    _checks.check_intx_linear("intx_linear_dynamic", x, packed, bias, n, groups, bits, asymmetric, True)
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"intx_linear_dynamic: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return _intx_run("intx_linear_dynamic", x, packed, bias, n, groups, bits, asymmetric, out_dtype)
