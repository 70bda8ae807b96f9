"""fastq ops: the public, documented entry points of the torch.library ops ``torch.ops.fastq.*``.

Each function here is a thin wrapper that picks the functional or the ``out=`` op; validation,
the reference and the native kernels live behind the op (see ``_library``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastq.ops import _library
from fastq.ops.layouts import PER_ROW, PER_TENSOR
from fastq.ops._library import OPS, kernel_for

__all__ = ["OPS", "PER_ROW", "PER_TENSOR", "QuantizedInt8", "dequantize_int8", "kernel_for", "quantize_int8"]


class QuantizedInt8(NamedTuple):
    codes: Tensor  # int8 (symmetric) or uint8 (asymmetric), the input's shape
    scale: Tensor  # float32, keepdim shape: broadcasts over the quantized groups
    zero_point: Tensor  # int32, like scale (zeros when symmetric)


def quantize_int8(x: Tensor, group_size: int = PER_ROW, symmetric: bool = True, scale: Optional[Tensor] = None,
                  zero_point: Optional[Tensor] = None, *, out: Optional[Tensor] = None) -> QuantizedInt8:
    """Quantize ``x`` (float32/float16/bfloat16) to 8-bit codes; see ``reference.quantize_int8``.

    Args:
        x: input of rank >= 1; quantized along its last dimension.
        group_size: ``PER_TENSOR`` (0), ``PER_ROW`` (-1: per token / per output channel), or a
            positive group size that divides ``x.shape[-1]`` (e.g. 32, 64, 128).
        symmetric: int8 codes in [-127, 127] (True) or uint8 codes with a zero point (False).
        scale, zero_point: static quantization parameters (keepdim shape of the granularity);
            when omitted they are computed from ``x`` (dynamic).
        out: optional contiguous codes buffer to write into (reuse it across calls to avoid
            fresh-page costs on large outputs).

    Returns:
        ``QuantizedInt8(codes, scale, zero_point)``. Rows holding NaN/Inf get a NaN scale (dynamic).
    """
    from fastq.ops._checks import check_group_size

    check_group_size(group_size, symmetric)  # before the op's schema sees a None or a float
    if out is None:
        return QuantizedInt8(*_dispatch("quantize_int8", x, scale, zero_point)(x, group_size, symmetric, scale,
                                                                               zero_point))
    dynamic = scale is None
    if dynamic:
        from fastq.ops._checks import check_quantize

        lay = check_quantize(x, group_size, symmetric, None, None)
        scale = torch.empty(lay.scale_shape, dtype=torch.float32, device=x.device)
        zero_point = torch.zeros(lay.scale_shape, dtype=torch.int32, device=x.device)
    _dispatch("quantize_int8_out", x, out, scale, zero_point)(x, out, scale, zero_point, group_size, symmetric, dynamic)
    if zero_point is None:
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return QuantizedInt8(out, scale, zero_point)


def dequantize_int8(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor] = None,
                    dtype: torch.dtype = torch.float32, *, out: Optional[Tensor] = None) -> Tensor:
    """``(code - zero_point) * scale`` in float32, rounded to ``dtype`` (or ``out.dtype``).

    ``zero_point`` is required for uint8 codes and must be None for int8 codes. The granularity
    is read off ``scale``'s keepdim shape, as returned by ``quantize_int8``.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dequantize_int8: dtype must be a torch.dtype (float32, float16 or bfloat16), got {dtype!r}")
    if isinstance(codes, Tensor) and codes.dtype == torch.int8 and zero_point is not None:
        if zero_point.numel() and bool(torch.all(zero_point == 0)):
            zero_point = None  # the zeros quantize_int8 returns for symmetric codes
    if out is None:
        return _dispatch("dequantize_int8", codes, scale, zero_point)(codes, scale, zero_point, dtype)
    _dispatch("dequantize_int8_out", codes, scale, zero_point, out)(codes, scale, zero_point, out)
    return out


# ---- eager fast path of the quantize/dequantize wrappers ------------------------------------------
# A torch.library op call costs tens of microseconds of Python dispatch (autograd and
# ADInplaceOrView wrappers, default filling), which is the whole time budget of a 1M-element
# quantize. In plain eager calls on ordinary tensors, the wrappers above call the registered native
# kernel directly: the very function the op would reach, so results, validation and native_calls
# are identical. Anything else (torch.compile, jit tracing, fake/functional/batched tensors,
# dispatch or function modes, autograd, devices without a native kernel) goes through the op.

def _plain(t: Optional[Tensor]) -> bool:
    return t is None or (type(t) is Tensor and not t.requires_grad and not torch._is_functional_tensor(t)
                         and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def _dispatch(name: str, *tensors: Optional[Tensor]):
    """The callable serving op ``name`` for these arguments: its native kernel or the op itself."""
    first = tensors[0]
    # is_compiling first: under torch.compile nothing below may be traced.
    if (not torch.compiler.is_compiling() and isinstance(first, Tensor)
            and _library._REGISTERED.get((name, first.device.type)) and all(_plain(t) for t in tensors)
            and torch.utils._python_dispatch._get_current_dispatch_mode() is None
            and not torch._C._is_torch_function_mode_enabled() and torch._C._get_tracing_state() is None):
        return _library.native_impl(name, first.device.type)
    return getattr(_library, name)


def call_op(name: str, *args):
    """Call op ``name`` with ``args`` through the eager fast path above when it applies (so a module's
    forward does not pay the torch.library dispatch cost in plain eager inference), else the op."""
    return _dispatch(name, *(a for a in args if isinstance(a, Tensor)))(*args)
