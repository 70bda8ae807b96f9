"""The device-independent half of the native quantize / dequantize / int8_gemm implementations.

Invariant: ``DeviceOps(device, launchers)`` gives the ops' native kernels for one device: each
validates with ``_checks`` (the checks every path runs), answers empty inputs with the reference,
allocates outputs with torch on that device, counts the run (``_native.record``) and calls the
device's launcher (``fastq.ops.cpu`` / ``fastq.ops.cuda`` supply them), which only passes pointers.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, reference


def _ptr(t: Optional[Tensor]) -> int:
    """The address native code gets for an optional tensor (0 for None)."""
    return 0 if t is None else t.data_ptr()


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


class DeviceOps:
    """quantize_int8(_out), dequantize_int8(_out) and int8_gemm for one device type.

    Launchers: ``quantize(x, codes, scale, zero_point, layout, symmetric, dynamic)``,
    ``dequantize(codes, symmetric, scale, zero_point, y, layout)``, ``gemm(a, b, c)`` (contiguous
    int8 a [M, K], b [N, K] into int32 c [M, N]; M, N, K > 0)."""

    def __init__(self, device: str, quantize: Callable, dequantize: Callable, gemm: Callable) -> None:
        self.device, self._quantize, self._dequantize, self._gemm = device, quantize, dequantize, gemm

    def quantize_int8(self, x: Tensor, group_size: int, symmetric: bool, scale: Optional[Tensor] = None,
                      zero_point: Optional[Tensor] = None) -> tuple:
        lay = _checks.check_quantize(x, group_size, symmetric, scale, zero_point)
        dynamic = scale is None
        if not dynamic:
            _checks.check_scale_values(scale, zero_point)
        if x.numel() == 0:
            return reference.quantize_int8(x, group_size, symmetric, scale, zero_point)
        _native.record("quantize_int8", self.device)
        codes = torch.empty(x.shape, dtype=_checks.code_dtype(symmetric), device=x.device)
        if dynamic:
            scale_out = torch.empty(lay.scale_shape, dtype=torch.float32, device=x.device)
            zp_out = torch.zeros(lay.scale_shape, dtype=torch.int32, device=x.device)
        else:
            scale_out = scale.contiguous().clone()
            zp_out = torch.zeros_like(scale_out, dtype=torch.int32) if symmetric else zero_point.contiguous().clone()
        self._quantize(x.contiguous(), codes, scale_out, zp_out, lay, symmetric, dynamic)
        return codes, scale_out, zp_out

    def quantize_int8_out(self, x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor],
                          group_size: int, symmetric: bool, dynamic: bool) -> None:
        lay = _checks.check_quantize_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)
        if not dynamic:
            _checks.check_scale_values(scale, zero_point)
        if x.numel() == 0:
            return reference.quantize_int8_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)
        _native.record("quantize_int8_out", self.device)
        if dynamic:
            self._quantize(x.contiguous(), codes, scale, zero_point if not symmetric else None, lay, symmetric, True)
            if symmetric and zero_point is not None:
                zero_point.zero_()
        else:
            self._quantize(x.contiguous(), codes, scale.contiguous(), _contig(zero_point), lay, symmetric, False)

    def dequantize_int8(self, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor],
                        dtype: torch.dtype) -> Tensor:
        lay, symmetric = _checks.check_dequantize(codes, scale, zero_point, dtype)
        if codes.numel() == 0:
            return reference.dequantize_int8(codes, scale, zero_point, dtype)
        _native.record("dequantize_int8", self.device)
        y = torch.empty(codes.shape, dtype=dtype, device=codes.device)
        self._dequantize(codes.contiguous(), symmetric, scale.contiguous(), _contig(zero_point), y, lay)
        return y

    def dequantize_int8_out(self, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: Tensor) -> None:
        lay, symmetric = _checks.check_dequantize_out(codes, scale, zero_point, out)
        if codes.numel() == 0:
            return
        _native.record("dequantize_int8_out", self.device)
        self._dequantize(codes.contiguous(), symmetric, scale.contiguous(), _contig(zero_point), out, lay)

    def int8_gemm(self, a: Tensor, b: Tensor) -> Tensor:
        _checks.check_int8_gemm(a, b)
        m, k = a.shape
        n = b.shape[0]
        c = torch.empty((m, n), dtype=torch.int32, device=a.device)
        if m == 0 or n == 0:
            return c
        if k == 0:
            return c.zero_()
        _native.record("int8_gemm", self.device)
        self._gemm(a.contiguous(), b.contiguous(), c)
        return c
