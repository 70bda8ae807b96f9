"""CUDA implementations of the linear ops that run without a plan on CUDA (codebook, static W8A8,
sub-8-bit integer weights), which ``fastq.ops.cuda`` registers where this build has
``_C.<op>_cuda``. (On CPU these ops run through plans: ``fastq.ops.cpu``.)

Invariants: each implementation validates with ``_checks`` first (the checks every path runs),
answers empty inputs without a kernel, allocates outputs and workspaces with torch on x's device
(the caching allocator), counts the run (``_native.record``) and passes raw pointers plus x's
current stream to ``_C``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, reference
from fastq.ops._device_ops import _contig, _ptr

OPS = ("codebook_linear", "int8_linear_static", "intx_weight_only_linear", "intx_linear_dynamic")


def _device_call(name: str, x: Tensor, *args) -> None:
    """``_C.<name>_cuda(*args, stream)`` on x's device."""
    with torch.cuda.device(x.device):
        getattr(_native._C, f"{name}_cuda")(*args, _native.cuda_stream(x))


def _workspace(device: torch.device, nbytes: int) -> Tensor:
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
    _device_call("codebook_linear", x, *args)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


# ---- static W8A8 linear (accuracy toolkit) ----------------------------------------------------
# One native call: x is quantized with the calibrated scale into the workspace, then
# int8_linear_dynamic's GEMMs run. The scale / zero point / smoothing tensors are
# passed as device pointers: a call never reads them on the host.

def int8_linear_static(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    op = "int8_linear_static"
    _checks.check_static_linear(op, x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth)
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    _checks.check_static_values(op, act_scale, act_zero_point, act_smooth)
    y = torch.empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype, device=x.device)
    if y.numel() == 0:
        return y
    _native.record(op, x.device.type)
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    ws_bytes = _native._C.int8_linear_static_workspace_bytes_cuda(m, n, k)
    workspace = _workspace(x.device, ws_bytes)
    zp = _contig(act_zero_point)
    _device_call(op, x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.contiguous().data_ptr(),
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
    workspace = _workspace(x.device, ws_bytes)
    _device_call(name, x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], packed.contiguous().data_ptr(), bits,
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
