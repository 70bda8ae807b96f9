"""Every fastq op as a torch.library custom op: schema, fake, and kernels.

Invariants: the schema comes from the annotated default implementation below, which validates
(shapes and packed values: the same ``_checks`` every path runs) and runs the PyTorch reference
(the fallback on every device). A native kernel is registered for "cpu"/"cuda" only when that
device's launcher module (``fastq.ops.cpu`` / ``fastq.ops.cuda``) says this build has one.
``kernel_for`` reports which one serves an op on a device. No ``from __future__ import
annotations`` here: custom_op reads these annotations to build the schema.
"""

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, cpu, cuda, reference

_DEVICES = {"cpu": cpu, "cuda": cuda}  # device -> its launcher module
_REGISTERED: Dict[Tuple[str, str], bool] = {}
OPS: Dict[str, object] = {}


def _define(name: str, family: str, mutates_args: tuple, fake: Callable) -> Callable:
    """``family``: the op family the op belongs to (for documentation: ops of a family share kernels)."""
    def decorate(default_impl: Callable):
        op = torch.library.custom_op(f"fastq::{name}", mutates_args=mutates_args)(default_impl)
        op.register_fake(fake)
        for device, module in _DEVICES.items():
            if module.available(name):
                op.register_kernel(device)(getattr(module, name))
                _REGISTERED[(name, device)] = True
        OPS[name] = op
        return op

    return decorate


def native_impl(name: str, device: str) -> Optional[Callable]:
    """The native kernel registered for op ``name`` on ``device`` (None: the reference serves it)."""
    return getattr(_DEVICES[device], name) if _REGISTERED.get((name, device)) else None


def kernel_for(op: str, device: str) -> str:
    """Which kernel serves ``op`` on ``device``: ``"native:<isa>"`` (CPU), ``"native:cuda"`` or
    ``"reference"``."""
    if op not in OPS:
        raise ValueError(f"unknown fastq op {op!r}; ops are {sorted(OPS)}")
    device = torch.device(device).type
    if not _REGISTERED.get((op, device)):
        return "reference"
    return f"native:{_native.cpu_isa()}" if device == "cpu" else f"native:{device}"


# ---- quantize_int8 ------------------------------------------------------------------------------

def _quantize_int8_fake(x, group_size, symmetric, scale=None, zero_point=None):
    lay = _checks.check_quantize(x, group_size, symmetric, scale, zero_point)
    return (x.new_empty(x.shape, dtype=_checks.code_dtype(symmetric)),
            x.new_empty(lay.scale_shape, dtype=torch.float32),
            x.new_empty(lay.scale_shape, dtype=torch.int32))


@_define("quantize_int8", "quantize_int8", (), _quantize_int8_fake)
def quantize_int8(x: Tensor, group_size: int, symmetric: bool, scale: Optional[Tensor] = None,
                  zero_point: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    _checks.check_quantize(x, group_size, symmetric, scale, zero_point)
    if scale is not None:
        _checks.check_scale_values(scale, zero_point)
    return reference.quantize_int8(x, group_size, symmetric, scale, zero_point)


def _quantize_int8_out_fake(x, codes, scale, zero_point, group_size, symmetric, dynamic):
    _checks.check_quantize_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)


@_define("quantize_int8_out", "quantize_int8", ("codes", "scale", "zero_point"), _quantize_int8_out_fake)
def quantize_int8_out(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], group_size: int,
                      symmetric: bool, dynamic: bool) -> None:
    _checks.check_quantize_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)
    if not dynamic:
        _checks.check_scale_values(scale, zero_point)
    reference.quantize_int8_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)


# ---- dequantize_int8 ----------------------------------------------------------------------------

def _dequantize_int8_fake(codes, scale, zero_point, dtype):
    _checks.check_dequantize(codes, scale, zero_point, dtype)
    return codes.new_empty(codes.shape, dtype=dtype)


@_define("dequantize_int8", "dequantize_int8", (), _dequantize_int8_fake)
def dequantize_int8(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    _checks.check_dequantize(codes, scale, zero_point, dtype)
    return reference.dequantize_int8(codes, scale, zero_point, dtype)


def _dequantize_int8_out_fake(codes, scale, zero_point, out):
    _checks.check_dequantize_out(codes, scale, zero_point, out)


@_define("dequantize_int8_out", "dequantize_int8", ("out",), _dequantize_int8_out_fake)
def dequantize_int8_out(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: Tensor) -> None:
    _checks.check_dequantize_out(codes, scale, zero_point, out)
    reference.dequantize_int8_out(codes, scale, zero_point, out)


# ---- int8 GEMM family ---------------------------------------------------------------------------

def _int8_gemm_fake(a, b):
    _checks.check_int8_gemm(a, b)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.int32)


@_define("int8_gemm", "int8_gemm", (), _int8_gemm_fake)
def int8_gemm(a: Tensor, b: Tensor) -> Tensor:
    _checks.check_int8_gemm(a, b)
    return reference.int8_gemm(a, b)


def _int8_pack_weight_fake(w):
    _checks.check_int8_pack_weight(w)
    return w.new_empty((reference.packed_sizes(w.shape[0], w.shape[1])[2],), dtype=torch.int8)


@_define("int8_pack_weight", "int8_pack_weight", (), _int8_pack_weight_fake)
def int8_pack_weight(w: Tensor) -> Tensor:
    _checks.check_int8_pack_weight(w)
    return reference.int8_pack_weight(w)


def _int8_linear_dynamic_fake(x, w_packed, w_scale, bias, n, act_symmetric, out_dtype):
    _checks.check_packed_linear("int8_linear_dynamic", x, w_packed, w_scale, bias, n, False)
    _checks.check_out_dtype("int8_linear_dynamic", out_dtype)
    return x.new_empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype)


@_define("int8_linear_dynamic", "int8_linear_dynamic", (), _int8_linear_dynamic_fake)
def int8_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    _int8_linear_dynamic_fake(x, w_packed, w_scale, bias, n, act_symmetric, out_dtype)
    _checks.check_packed_weight_values("int8_linear_dynamic", w_packed, w_scale, n, x.shape[-1])
    return reference.int8_linear_dynamic(x, w_packed, w_scale, bias, n, act_symmetric, out_dtype)


def _int8_linear_dynamic_out_fake(x, w_packed, w_scale, bias, n, act_symmetric, out):
    _checks.check_packed_linear("int8_linear_dynamic_out", x, w_packed, w_scale, bias, n, False)
    _checks.check_linear_out("int8_linear_dynamic_out", x, n, out, out.dtype)


@_define("int8_linear_dynamic_out", "int8_linear_dynamic", ("out",), _int8_linear_dynamic_out_fake)
def int8_linear_dynamic_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                            act_symmetric: bool, out: Tensor) -> None:
    _int8_linear_dynamic_out_fake(x, w_packed, w_scale, bias, n, act_symmetric, out)
    _checks.check_packed_weight_values("int8_linear_dynamic_out", w_packed, w_scale, n, x.shape[-1])
    out.copy_(reference.int8_linear_dynamic(x, w_packed, w_scale, bias, n, act_symmetric, out.dtype))


def _int8_weight_only_linear_fake(x, w_packed, w_scale, bias, n):
    _checks.check_packed_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, n, True)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("int8_weight_only_linear", "int8_weight_only_linear", (), _int8_weight_only_linear_fake)
def int8_weight_only_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    _checks.check_packed_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, n, True)
    _checks.check_packed_weight_values("int8_weight_only_linear", w_packed, w_scale, n, x.shape[-1])
    return reference.int8_weight_only_linear(x, w_packed, w_scale, bias, n)


def _int8_weight_only_linear_out_fake(x, w_packed, w_scale, bias, n, out):
    _checks.check_packed_linear("int8_weight_only_linear_out", x, w_packed, w_scale, bias, n, True)
    _checks.check_linear_out("int8_weight_only_linear_out", x, n, out, x.dtype)


@_define("int8_weight_only_linear_out", "int8_weight_only_linear", ("out",), _int8_weight_only_linear_out_fake)
def int8_weight_only_linear_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                                out: Tensor) -> None:
    _int8_weight_only_linear_out_fake(x, w_packed, w_scale, bias, n, out)
    _checks.check_packed_weight_values("int8_weight_only_linear_out", w_packed, w_scale, n, x.shape[-1])
    out.copy_(reference.int8_weight_only_linear(x, w_packed, w_scale, bias, n))


# ---- sparse masked matmul family ----------------------------------------------------------------
# Packing ops are reference-only (run once per layer); their entry counts depend on the mask, so
# the fakes return data-dependent sizes. The linears have native CPU/CUDA kernels.

def _nnz_size():
    return torch.library.get_ctx().new_dynamic_size()


def _sparse_csr_pack_fake(w, mask):
    _checks.check_sparse_pack("sparse_csr_pack", w, mask, check_values=False)
    nnz = _nnz_size()
    return (w.new_empty((nnz,), dtype=torch.float32), w.new_empty((nnz,), dtype=torch.int16),
            w.new_empty((w.shape[0] + 1,), dtype=torch.int64))


@_define("sparse_csr_pack", "sparse_pack", (), _sparse_csr_pack_fake)
def sparse_csr_pack(w: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    _checks.check_sparse_pack("sparse_csr_pack", w, mask)
    return reference.sparse_csr_pack(w, mask)


def _sparse_csr_unpack_fake(values, cols, row_ptr, n, k):
    return values.new_empty((n, k), dtype=torch.float32)


@_define("sparse_csr_unpack", "sparse_pack", (), _sparse_csr_unpack_fake)
def sparse_csr_unpack(values: Tensor, cols: Tensor, row_ptr: Tensor, n: int, k: int) -> Tensor:
    return reference.sparse_csr_unpack(values, cols, row_ptr, n, k)


def _sparse_csr_linear_fake(x, values, cols, row_ptr, bias, n):
    _checks.check_sparse_csr_linear("sparse_csr_linear", x, values, cols, row_ptr, bias, n)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("sparse_csr_linear", "sparse_csr_linear", (), _sparse_csr_linear_fake)
def sparse_csr_linear(x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    k = _checks.check_sparse_csr_linear("sparse_csr_linear", x, values, cols, row_ptr, bias, n)
    _checks.check_sparse_csr_values("sparse_csr_linear", values, cols, row_ptr, k)
    return reference.sparse_csr_linear(x, values, cols, row_ptr, bias, n)


def _sparse_24_pack_fake(w, mask):
    _checks.check_sparse_24_pack(w, mask, check_values=False)
    n, k = w.shape
    return (w.new_empty((n, k // 2), dtype=torch.float32), w.new_empty((n, (k // 2 + 3) // 4), dtype=torch.uint8))


@_define("sparse_24_pack", "sparse_pack", (), _sparse_24_pack_fake)
def sparse_24_pack(w: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    _checks.check_sparse_24_pack(w, mask)
    return reference.sparse_24_pack(w, mask)


def _sparse_24_unpack_fake(values, meta, k):
    return values.new_empty((values.shape[0], k), dtype=torch.float32)


@_define("sparse_24_unpack", "sparse_pack", (), _sparse_24_unpack_fake)
def sparse_24_unpack(values: Tensor, meta: Tensor, k: int) -> Tensor:
    return reference.sparse_24_unpack(values, meta, k)


def _sparse_24_linear_fake(x, values, meta, bias):
    _checks.check_sparse_24_linear(x, values, meta, bias)
    return x.new_empty(tuple(x.shape[:-1]) + (values.shape[0],))


@_define("sparse_24_linear", "sparse_24_linear", (), _sparse_24_linear_fake)
def sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    _checks.check_sparse_24_linear(x, values, meta, bias)
    _checks.check_sparse_24_values("sparse_24_linear", values)
    return reference.sparse_24_linear(x, values, meta, bias)


def _sparse_bsr_pack_fake(w, mask, block_rows, block_cols):
    _checks.check_sparse_bsr_pack(w, mask, block_rows, block_cols, check_values=False)
    nb = _nnz_size()
    return (w.new_empty((nb, block_rows, block_cols), dtype=torch.float32), w.new_empty((nb,), dtype=torch.int16),
            w.new_empty((-(-w.shape[0] // block_rows) + 1,), dtype=torch.int64))


@_define("sparse_bsr_pack", "sparse_pack", (), _sparse_bsr_pack_fake)
def sparse_bsr_pack(w: Tensor, mask: Tensor, block_rows: int, block_cols: int) -> Tuple[Tensor, Tensor, Tensor]:
    _checks.check_sparse_bsr_pack(w, mask, block_rows, block_cols)
    return reference.sparse_bsr_pack(w, mask, block_rows, block_cols)


def _sparse_bsr_unpack_fake(values, block_col, row_ptr, n, k):
    return values.new_empty((n, k), dtype=torch.float32)


@_define("sparse_bsr_unpack", "sparse_pack", (), _sparse_bsr_unpack_fake)
def sparse_bsr_unpack(values: Tensor, block_col: Tensor, row_ptr: Tensor, n: int, k: int) -> Tensor:
    return reference.sparse_bsr_unpack(values, block_col, row_ptr, n, k)


def _sparse_bsr_linear_fake(x, values, block_col, row_ptr, bias, n):
    _checks.check_sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("sparse_bsr_linear", "sparse_bsr_linear", (), _sparse_bsr_linear_fake)
def sparse_bsr_linear(x: Tensor, values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    k = _checks.check_sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    _checks.check_sparse_bsr_values("sparse_bsr_linear", values, block_col, row_ptr, k)
    return reference.sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)


def _sparse_int8_pack_fake(w, mask):
    _checks.check_sparse_pack("sparse_int8_pack", w, mask, check_values=False)
    nnz = _nnz_size()
    return (w.new_empty((nnz,), dtype=torch.int8), w.new_empty((w.shape[0],), dtype=torch.float32),
            w.new_empty((nnz,), dtype=torch.int16), w.new_empty((w.shape[0] + 1,), dtype=torch.int64))


@_define("sparse_int8_pack", "sparse_pack", (), _sparse_int8_pack_fake)
def sparse_int8_pack(w: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _checks.check_sparse_pack("sparse_int8_pack", w, mask)
    return reference.sparse_int8_pack(w, mask)


def _sparse_int8_unpack_fake(q, scale, cols, row_ptr, k):
    return q.new_empty((scale.shape[0], k), dtype=torch.float32)


@_define("sparse_int8_unpack", "sparse_pack", (), _sparse_int8_unpack_fake)
def sparse_int8_unpack(q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor, k: int) -> Tensor:
    return reference.sparse_int8_unpack(q, scale, cols, row_ptr, k)


def _sparse_int8_linear_fake(x, q, scale, cols, row_ptr, bias):
    _checks.check_sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    return x.new_empty(tuple(x.shape[:-1]) + (scale.shape[0],))


@_define("sparse_int8_linear", "sparse_int8_linear", (), _sparse_int8_linear_fake)
def sparse_int8_linear(x: Tensor, q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor,
                       bias: Optional[Tensor]) -> Tensor:
    k = _checks.check_sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    _checks.check_sparse_csr_values("sparse_int8_linear", q, cols, row_ptr, k, scale, "q")
    return reference.sparse_int8_linear(x, q, scale, cols, row_ptr, bias)


# ---- sliced-ELL sparse linear -----------------------------------------------------------------
# Packing is reference-only (its step count depends on the mask: a dynamic size in the fake). The
# linear has a native CPU kernel; CUDA (and any other device) runs the reference.

def _sparse_ell_pack_fake(w, mask, int8=False):
    _checks.check_sparse_pack("sparse_ell_pack", w, mask, max_cols=None, check_values=False)
    n, k = w.shape
    groups, tiles = -(-n // _checks.ELL_ROWS), -(-k // _checks.ELL_TILE)
    total = _nnz_size()
    return (w.new_empty((total, _checks.ELL_ROWS), dtype=torch.int8 if int8 else torch.float32),
            w.new_empty((total, _checks.ELL_ROWS), dtype=torch.uint8), w.new_empty((groups, tiles), dtype=torch.uint8),
            w.new_empty((groups + 1,), dtype=torch.int64), w.new_empty((n if int8 else 0,), dtype=torch.float32))


@_define("sparse_ell_pack", "sparse_pack", (), _sparse_ell_pack_fake)
def sparse_ell_pack(w: Tensor, mask: Tensor, int8: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _checks.check_sparse_pack("sparse_ell_pack", w, mask, max_cols=None)
    return reference.sparse_ell_pack(w, mask, int8)


def _sparse_ell_unpack_fake(values, offsets, steps, group_ptr, scale, n, k):
    _checks.check_sparse_ell("sparse_ell_unpack", values, offsets, steps, group_ptr, scale, n, k, values, "k")
    return values.new_empty((n, k), dtype=torch.float32)


@_define("sparse_ell_unpack", "sparse_pack", (), _sparse_ell_unpack_fake)
def sparse_ell_unpack(values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor, scale: Optional[Tensor],
                      n: int, k: int) -> Tensor:
    int8 = _checks.check_sparse_ell("sparse_ell_unpack", values, offsets, steps, group_ptr, scale, n, k, values, "k")
    _checks.check_sparse_ell_values("sparse_ell_unpack", values, offsets, steps, group_ptr, scale if int8 else None)
    return reference.sparse_ell_unpack(values, offsets, steps, group_ptr, scale, n, k)


def _sparse_ell_linear_fake(x, values, offsets, steps, group_ptr, scale, bias, n):
    _checks.check_sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("sparse_ell_linear", "sparse_ell_linear", (), _sparse_ell_linear_fake)
def sparse_ell_linear(x: Tensor, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                      scale: Optional[Tensor], bias: Optional[Tensor], n: int) -> Tensor:
    """``x @ (W * M)^T + bias`` from sparse_ell_pack's output (reference.sparse_ell_linear states
    the float-op sequence). Native kernel on CPU only (scalar / AVX2 / AVX-512, bit-exact with the
    reference); CUDA and other devices run the reference."""
    _, int8 = _checks.check_sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    _checks.check_sparse_ell_values("sparse_ell_linear", values, offsets, steps, group_ptr, scale if int8 else None)
    return reference.sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)


# ---- codebook (weight sharing) linear -----------------------------------------------------------
# Packing is reference-only (once per layer). The linear has native CPU kernels (scalar / AVX2 /
# AVX-512: table lookups at small M, dequantization in registers otherwise) and a CUDA kernel.

def _codebook_pack_fake(codes, bits, lut):
    _checks.check_codebook_pack(codes, bits, lut)
    size = _checks.codebook_packed_sizes(codes.shape[0], codes.shape[1], bits, lut)[2]
    return codes.new_empty((size,), dtype=torch.uint8)


@_define("codebook_pack", "codebook_pack", (), _codebook_pack_fake)
def codebook_pack(codes: Tensor, bits: int, lut: bool) -> Tensor:
    """uint8 codes [N, K] -> the packed row (lut=False) or lookup-table (lut=True) layout
    (``reference.codebook_pack``)."""
    _checks.check_codebook_pack(codes, bits, lut)
    _checks.check_codebook_values(codes, bits)
    return reference.codebook_pack(codes, bits, lut)


def _codebook_unpack_fake(packed, n, k, bits, lut):
    _checks.check_codebook_packed("codebook_unpack", packed, n, k, bits, lut, packed, "packed")
    return packed.new_empty((n, k), dtype=torch.uint8)


@_define("codebook_unpack", "codebook_pack", (), _codebook_unpack_fake)
def codebook_unpack(packed: Tensor, n: int, k: int, bits: int, lut: bool) -> Tensor:
    _codebook_unpack_fake(packed, n, k, bits, lut)
    return reference.codebook_unpack(packed, n, k, bits, lut)


def _codebook_linear_fake(x, packed, codebook, scale, bias, n, bits, lut):
    _checks.check_codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("codebook_linear", "codebook_linear", (), _codebook_linear_fake)
def codebook_linear(x: Tensor, packed: Tensor, codebook: Tensor, scale: Optional[Tensor], bias: Optional[Tensor],
                    n: int, bits: int, lut: bool) -> Tensor:
    """``x @ (codebook[codes] * scale)^T + bias`` (``reference.codebook_linear`` states the
    float-op sequence and the error bound native kernels keep)."""
    _checks.check_codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)
    return reference.codebook_linear(x, packed, codebook, scale, bias, n, bits, lut)


# ---- static W8A8 linear (accuracy toolkit) ----------------------------------------------------
# int8_linear_dynamic with calibrated activation quantization (reference.int8_linear_static states
# the sequence); native CPU kernels (scalar / AVX2 / AVX-512) and CUDA, bit-exact with the reference.

def _int8_linear_static_fake(x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth, out_dtype):
    _checks.check_static_linear("int8_linear_static", x, w_packed, w_scale, bias, n, act_scale, act_zero_point,
                                act_smooth)
    return x.new_empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype)


@_define("int8_linear_static", "int8_linear_static", (), _int8_linear_static_fake)
def int8_linear_static(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                       act_scale: Tensor, act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor],
                       out_dtype: torch.dtype) -> Tensor:
    _checks.check_static_call(x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth, out_dtype)
    return reference.int8_linear_static(x, w_packed, w_scale, bias, n, act_scale, act_zero_point, act_smooth,
                                        out_dtype)


# ---- sub-8-bit integer weights (intx family) ------------------------------------------------------
# Packing and unpacking are reference-only (once per layer). The linears have native CPU kernels
# (scalar / AVX2 / AVX-512) and CUDA kernels; the embedding lookup is reference-only (it reads only
# the selected rows). Layout and float-op sequences: fastq/ops/reference.py.

def _intx_pack_weight_fake(codes, scale, zero, bits):
    _checks.check_intx_pack(codes, scale, zero, bits, check_values=False)
    n, k = codes.shape
    size = reference.intx_packed_bytes(n, k, scale.shape[1], bits, zero is not None)
    return codes.new_empty((size,), dtype=torch.uint8)


@_define("intx_pack_weight", "intx_pack", (), _intx_pack_weight_fake)
def intx_pack_weight(codes: Tensor, scale: Tensor, zero: Optional[Tensor], bits: int) -> Tensor:
    _checks.check_intx_pack(codes, scale, zero, bits)
    return reference.intx_pack_weight(codes, scale, zero, bits)


def _intx_unpack_weight_fake(packed, n, k, groups, bits, asymmetric):
    _checks.check_intx_packed("intx_unpack_weight", packed, n, k, groups, bits, asymmetric, packed, "packed")
    return (packed.new_empty((n, k), dtype=torch.uint8), packed.new_empty((n, groups), dtype=torch.float32),
            packed.new_empty((n, groups), dtype=torch.uint8))


@_define("intx_unpack_weight", "intx_pack", (), _intx_unpack_weight_fake)
def intx_unpack_weight(packed: Tensor, n: int, k: int, groups: int, bits: int,
                       asymmetric: bool) -> Tuple[Tensor, Tensor, Tensor]:
    _checks.check_intx_packed("intx_unpack_weight", packed, n, k, groups, bits, asymmetric, packed, "packed")
    return reference.intx_unpack_weight(packed, n, k, groups, bits, asymmetric)


def _intx_weight_only_linear_fake(x, packed, bias, n, groups, bits, asymmetric):
    _checks.check_intx_linear("intx_weight_only_linear", x, packed, bias, n, groups, bits, asymmetric, False)
    return x.new_empty(tuple(x.shape[:-1]) + (n,))


@_define("intx_weight_only_linear", "intx_weight_only_linear", (), _intx_weight_only_linear_fake)
def intx_weight_only_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                            asymmetric: bool) -> Tensor:
    """``x @ ((c - z) * s).T + bias`` with float activations; output in x's dtype."""
    _checks.check_intx_linear("intx_weight_only_linear", x, packed, bias, n, groups, bits, asymmetric, False)
    return reference.intx_weight_only_linear(x, packed, bias, n, groups, bits, asymmetric)


def _intx_linear_dynamic_fake(x, packed, bias, n, groups, bits, asymmetric, out_dtype):
    _checks.check_intx_linear("intx_linear_dynamic", x, packed, bias, n, groups, bits, asymmetric, True)
    return x.new_empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype)


@_define("intx_linear_dynamic", "intx_linear_dynamic", (), _intx_linear_dynamic_fake)
def intx_linear_dynamic(x: Tensor, packed: Tensor, bias: Optional[Tensor], n: int, groups: int, bits: int,
                        asymmetric: bool, out_dtype: torch.dtype) -> Tensor:
    """Per-token int8 activations x intx weights (bits <= 4), group-wise float epilogue."""
    _checks.check_intx_linear("intx_linear_dynamic", x, packed, bias, n, groups, bits, asymmetric, True)
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"intx_linear_dynamic: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    return reference.intx_linear_dynamic(x, packed, bias, n, groups, bits, asymmetric, out_dtype)


def _intx_embedding_fake(indices, packed, n, k, groups, bits, asymmetric, out_dtype):
    _checks.check_intx_embedding(indices, packed, n, k, groups, bits, asymmetric, out_dtype)
    return packed.new_empty(tuple(indices.shape) + (k,), dtype=out_dtype)


@_define("intx_embedding", "intx_embedding", (), _intx_embedding_fake)
def intx_embedding(indices: Tensor, packed: Tensor, n: int, k: int, groups: int, bits: int, asymmetric: bool,
                   out_dtype: torch.dtype) -> Tensor:
    """Rows ``indices`` of an intx-packed [n, k] table, dequantized to ``out_dtype``."""
    _checks.check_intx_embedding(indices, packed, n, k, groups, bits, asymmetric, out_dtype)
    _checks.check_intx_indices(indices, n)
    return reference.intx_embedding(indices, packed, n, k, groups, bits, asymmetric, out_dtype)
