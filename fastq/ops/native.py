"""Native (fastq._C) implementations of the ops, for "cpu" and "cuda".

Invariants: each implementation validates with ``_checks`` first, makes inputs contiguous (a copy
when they are not), allocates outputs with torch, passes raw pointers to ``_C``, and calls
``_native.record`` so tests can prove the native kernel ran. Empty inputs are answered by the
reference (nothing for a kernel to do). CPU calls get ``torch.get_num_threads()`` threads; CUDA
calls run on the input's device and current stream.
"""

import functools
import threading
from typing import Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks, reference


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _launch_quantize(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor],
                     lay: _checks.QuantLayout, symmetric: bool, dynamic: bool) -> None:
    args = (x.data_ptr(), _native.DTYPE_CODES[x.dtype], codes.data_ptr(), scale.data_ptr(), _ptr(zero_point),
            lay.rows, lay.cols, 1, symmetric, dynamic)
    if x.device.type == "cpu":
        _native._C.quantize_int8_cpu(*args, _native.num_threads())
    else:
        workspace = torch.zeros(4, dtype=torch.int32, device=x.device) if dynamic and lay.rows == 1 else None
        with torch.cuda.device(x.device):
            _native._C.quantize_int8_cuda(*args, _ptr(workspace), _native.cuda_stream(x))


def _launch_dequantize(codes: Tensor, symmetric: bool, scale: Tensor, zero_point: Optional[Tensor], y: Tensor,
                       lay: _checks.QuantLayout) -> None:
    args = (codes.data_ptr(), symmetric, scale.data_ptr(), _ptr(zero_point), y.data_ptr(),
            _native.DTYPE_CODES[y.dtype], lay.rows, lay.cols, 1)
    if codes.device.type == "cpu":
        _native._C.dequantize_int8_cpu(*args, _native.num_threads())
    else:
        with torch.cuda.device(codes.device):
            _native._C.dequantize_int8_cuda(*args, _native.cuda_stream(codes))


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def quantize_int8(x: Tensor, group_size: int, symmetric: bool, scale: Optional[Tensor] = None,
                  zero_point: Optional[Tensor] = None) -> tuple:
    lay = _checks.check_quantize(x, group_size, symmetric, scale, zero_point)
    dynamic = scale is None
    if not dynamic:
        _checks.check_scale_values(scale, zero_point)
    if x.numel() == 0:
        return reference.quantize_int8(x, group_size, symmetric, scale, zero_point)
    _native.record("quantize_int8", x.device.type)
    codes = torch.empty(x.shape, dtype=_checks.code_dtype(symmetric), device=x.device)
    if dynamic:
        scale_out = torch.empty(lay.scale_shape, dtype=torch.float32, device=x.device)
        zp_out = torch.zeros(lay.scale_shape, dtype=torch.int32, device=x.device)
        _launch_quantize(x.contiguous(), codes, scale_out, zp_out, lay, symmetric, True)
    else:
        scale_out = scale.contiguous().clone()
        zp_out = torch.zeros_like(scale_out, dtype=torch.int32) if symmetric else zero_point.contiguous().clone()
        _launch_quantize(x.contiguous(), codes, scale_out, zp_out, lay, symmetric, False)
    return codes, scale_out, zp_out


def quantize_int8_out(x: Tensor, codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], group_size: int,
                      symmetric: bool, dynamic: bool) -> None:
    lay = _checks.check_quantize_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)
    if not dynamic:
        _checks.check_scale_values(scale, zero_point)
    if x.numel() == 0:
        return reference.quantize_int8_out(x, codes, scale, zero_point, group_size, symmetric, dynamic)
    _native.record("quantize_int8_out", x.device.type)
    if dynamic:
        zp = zero_point if not symmetric else None
        _launch_quantize(x.contiguous(), codes, scale, zp, lay, symmetric, True)
        if symmetric and zero_point is not None:
            zero_point.zero_()
    else:
        _launch_quantize(x.contiguous(), codes, scale.contiguous(), _contig(zero_point), lay, symmetric, False)


def dequantize_int8(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    lay, symmetric = _checks.check_dequantize(codes, scale, zero_point, dtype)
    if codes.numel() == 0:
        return reference.dequantize_int8(codes, scale, zero_point, dtype)
    _native.record("dequantize_int8", codes.device.type)
    y = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    _launch_dequantize(codes.contiguous(), symmetric, scale.contiguous(), _contig(zero_point), y, lay)
    return y


def dequantize_int8_out(codes: Tensor, scale: Tensor, zero_point: Optional[Tensor], out: Tensor) -> None:
    lay, symmetric = _checks.check_dequantize_out(codes, scale, zero_point, out)
    if codes.numel() == 0:
        return
    _native.record("dequantize_int8_out", codes.device.type)
    _launch_dequantize(codes.contiguous(), symmetric, scale.contiguous(), _contig(zero_point), out, lay)


# ---- int8 GEMM family ---------------------------------------------------------------------------
# CPU calls get torch.get_num_threads(); CUDA calls the *_cuda twins with the same arguments and the
# current stream in place of the thread count. x of shape [*, K] runs as [M, K].

def _device_call(name: str, x: Tensor, *args) -> None:
    if x.device.type == "cpu":
        getattr(_native._C, f"{name}_cpu")(*args, _native.num_threads())
    else:
        with torch.cuda.device(x.device):
            getattr(_native._C, f"{name}_cuda")(*args, _native.cuda_stream(x))


def int8_gemm(a: Tensor, b: Tensor) -> Tensor:
    _checks.check_int8_gemm(a, b)
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=torch.int32, device=a.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.zero_()
    _native.record("int8_gemm", a.device.type)
    a, b = a.contiguous(), b.contiguous()
    _device_call("int8_gemm", a, a.data_ptr(), b.data_ptr(), c.data_ptr(), m, n, k)
    return c


_tls = threading.local()
_MAX_CACHED_WORKSPACE = 64 << 20  # larger ones are allocated per call rather than held forever


def _workspace(device: torch.device, nbytes: int) -> Tensor:
    """Scratch for the W8A8 activations, reused across calls on this thread (CPU): a fresh
    multi-MiB buffer per call would pay for new pages every time. CUDA uses the caching allocator."""
    if device.type != "cpu" or nbytes > _MAX_CACHED_WORKSPACE:
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    buf = getattr(_tls, "cpu_workspace", None)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
        _tls.cpu_workspace = buf
    return buf


def _launch_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                           act_symmetric: bool, y: Tensor) -> None:
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if x.device.type == "cpu":
        ws_bytes = _native._C.int8_linear_dynamic_workspace_bytes_cpu(m, n, k)
    else:
        ws_bytes = _native._C.int8_linear_dynamic_workspace_bytes_cuda(m, n, k)
    workspace = _workspace(x.device, ws_bytes)
    bias_c = _contig(bias)
    _device_call("int8_linear_dynamic", x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.contiguous().data_ptr(),
                 w_scale.contiguous().data_ptr(), _ptr(bias_c), y.data_ptr(), _native.DTYPE_CODES[y.dtype], m, n, k,
                 act_symmetric, workspace.data_ptr(), ws_bytes)


def int8_linear_dynamic(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                        act_symmetric: bool, out_dtype: torch.dtype) -> Tensor:
    _checks.check_packed_linear("int8_linear_dynamic", x, w_packed, w_scale, bias, n, False)
    if out_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"int8_linear_dynamic: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    y = torch.empty(tuple(x.shape[:-1]) + (n,), dtype=out_dtype, device=x.device)
    if y.numel() == 0:
        return y
    _native.record("int8_linear_dynamic", x.device.type)
    _launch_linear_dynamic(x, w_packed, w_scale, bias, n, act_symmetric, y)
    return y


def int8_linear_dynamic_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                            act_symmetric: bool, out: Tensor) -> None:
    _checks.check_packed_linear("int8_linear_dynamic_out", x, w_packed, w_scale, bias, n, False)
    _checks.check_linear_out("int8_linear_dynamic_out", x, n, out, out.dtype)
    if out.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"int8_linear_dynamic_out: out must be float32, float16 or bfloat16, got {out.dtype}")
    if out.numel() == 0:
        return
    _native.record("int8_linear_dynamic_out", x.device.type)
    _launch_linear_dynamic(x, w_packed, w_scale, bias, n, act_symmetric, out)


def _launch_weight_only(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int, y: Tensor) -> None:
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    w_scale_c = w_scale.contiguous()
    bias_c = _contig(bias)
    _device_call("int8_weight_only_linear", x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype],
                 w_packed.contiguous().data_ptr(), w_scale_c.data_ptr(), w_scale_c.shape[1], _ptr(bias_c),
                 y.data_ptr(), _native.DTYPE_CODES[y.dtype], m, n, k)


def int8_weight_only_linear(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int) -> Tensor:
    _checks.check_packed_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, n, True)
    y = torch.empty(tuple(x.shape[:-1]) + (n,), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _native.record("int8_weight_only_linear", x.device.type)
    _launch_weight_only(x, w_packed, w_scale, bias, n, y)
    return y


def int8_weight_only_linear_out(x: Tensor, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int,
                                out: Tensor) -> None:
    _checks.check_packed_linear("int8_weight_only_linear_out", x, w_packed, w_scale, bias, n, True)
    _checks.check_linear_out("int8_weight_only_linear_out", x, n, out, x.dtype)
    if out.numel() == 0:
        return
    _native.record("int8_weight_only_linear_out", x.device.type)
    _launch_weight_only(x, w_packed, w_scale, bias, n, out)

# ---- sparse masked matmul family ----------------------------------------------------------------
# bfloat16 x is widened to float32 (exact) before the kernel and y rounded once to x's dtype, the
# reference's sequence. On CPU, batches of SPARSE_TRANSPOSE_MIN_M rows or more are passed
# transposed and zero-padded to a multiple of 16 rows ([K, M_pad]); see csrc/api.h.
# The one exception is sparse_24_linear with bfloat16 x on a CUDA device of compute capability
# >= 8.0: it runs on the sparse tensor cores (mma.sp, csrc/cuda/sparse.cu), which take x as it is
# and round the kept weights to bfloat16 (float32 accumulation, y rounded once to bfloat16 as
# above). float32 x keeps the CUDA-core kernel, whether or not TF32 matmuls are allowed: the TF32
# mma.sp needs 1:2 sparsity, which 2:4 weights do not have.
SPARSE_TRANSPOSE_MIN_M = 8
SPARSE_24_MMA = "sparse_24_linear:mma.sp"  # native_calls key of the tensor-core path


@functools.lru_cache(maxsize=None)
def _cuda_capability(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


def sparse_24_uses_tensor_cores(x: Tensor) -> bool:
    """Whether ``sparse_24_linear`` on ``x``'s device and dtype runs on the sparse tensor cores."""
    return (x.device.type == "cuda" and x.dtype == torch.bfloat16 and _native.has("sparse_24_linear_tc_cuda")
            and _cuda_capability(x.device.index if x.device.index is not None else torch.cuda.current_device())
            >= (8, 0))


def _aligned16(t: Tensor) -> Tensor:
    """``t`` contiguous with its data on a 16-byte boundary (a copy only for an offset view)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _sparse_24_mma(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    k = x.shape[-1]
    n = values.shape[0]
    x2 = _aligned16(x.reshape(-1, k))
    m = x2.shape[0]
    _native.record("sparse_24_linear", "cuda")
    _native.record(SPARSE_24_MMA, "cuda")
    values, meta, bias = _aligned16(values), meta.contiguous(), _contig(bias)
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        _native._C.sparse_24_linear_tc_cuda(x2.data_ptr(), m, n, k, values.data_ptr(), meta.data_ptr(), _ptr(bias),
                                            y.data_ptr(), _native.cuda_stream(x))
    return y.to(x.dtype).reshape(tuple(x.shape[:-1]) + (n,))


def _sparse_run(op: str, x: Tensor, n: int, k_pad: int, values: Tensor, scale: Optional[Tensor],
                cols: Optional[Tensor], row_ptr: Optional[Tensor], meta: Optional[Tensor], block: tuple,
                bias: Optional[Tensor]) -> Tensor:
    k = x.shape[-1]
    x2 = x if x.dim() == 2 else x.reshape(-1, k)
    m = x2.shape[0]
    _native.record(op, x.device.type)
    # y is allocated in its final shape, so a float32 call ends without reshape/cast (small layers:
    # each of those costs a microsecond next to a kernel of a few)
    y = torch.empty(x.shape[:-1] + (n,), dtype=torch.float32, device=x.device)
    # packed tensors come contiguous from the *_pack ops; only views need a copy
    values, scale, cols, row_ptr, meta, bias = (
        t if t is None or t.is_contiguous() else t.contiguous() for t in (values, scale, cols, row_ptr, meta, bias))
    if x.device.type == "cpu":
        if m >= SPARSE_TRANSPOSE_MIN_M:
            ld = -(-m // 16) * 16
            xk = torch.empty(k_pad, ld, dtype=torch.float32)
            x2 = x2.contiguous()
            _native._C.sparse_transpose_x_cpu(x2.data_ptr(), x2.dtype == torch.bfloat16, m, k, k_pad, ld,
                                              xk.data_ptr(), _native.num_threads())
            transposed = True
        else:
            ld = 0
            x2 = x2.float()
            xk = x2.contiguous() if k_pad == k else torch.nn.functional.pad(x2, (0, k_pad - k)).contiguous()
            transposed = False
        getattr(_native._C, f"{op}_cpu")(
            xk.data_ptr(), transposed, ld, m, n, k_pad, values.data_ptr(), _ptr(scale), _ptr(cols), _ptr(row_ptr),
            _ptr(meta), block[0], block[1], _ptr(bias), y.data_ptr(), _native.num_threads())
    else:
        xk = x2.float().contiguous()
        with torch.cuda.device(x.device):
            if op == "sparse_csr_linear":
                _native._C.sparse_csr_linear_cuda(xk.data_ptr(), m, n, k, values.data_ptr(), cols.data_ptr(),
                                                  row_ptr.data_ptr(), _ptr(bias), y.data_ptr(), _native.cuda_stream(x))
            else:
                _native._C.sparse_24_linear_cuda(xk.data_ptr(), m, n, k, values.data_ptr(), meta.data_ptr(),
                                                 _ptr(bias), y.data_ptr(), _native.cuda_stream(x))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


_check_csr_values = _checks.check_csr_index_values  # the same value checks as the reference path


def sparse_csr_linear(x: Tensor, values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    k = _checks.check_sparse_csr_linear("sparse_csr_linear", x, values, cols, row_ptr, bias, n)
    _check_csr_values("sparse_csr_linear", cols, row_ptr, k, "K")
    if x.numel() == 0:
        return reference.sparse_csr_linear(x, values, cols, row_ptr, bias, n)
    return _sparse_run("sparse_csr_linear", x, n, k, values, None, cols, row_ptr, None, (1, 1), bias)


def sparse_int8_linear(x: Tensor, q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor,
                       bias: Optional[Tensor]) -> Tensor:
    k = _checks.check_sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    _check_csr_values("sparse_int8_linear", cols, row_ptr, k, "K")
    if x.numel() == 0:
        return reference.sparse_int8_linear(x, q, scale, cols, row_ptr, bias)
    return _sparse_run("sparse_int8_linear", x, scale.numel(), k, q, scale, cols, row_ptr, None, (1, 1), bias)


def sparse_24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    k = _checks.check_sparse_24_linear(x, values, meta, bias)
    if x.numel() == 0:
        return reference.sparse_24_linear(x, values, meta, bias)
    if sparse_24_uses_tensor_cores(x):
        return _sparse_24_mma(x, values, meta, bias)
    return _sparse_run("sparse_24_linear", x, values.shape[0], k, values, None, None, None, meta, (1, 1), bias)


def sparse_bsr_linear(x: Tensor, values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor],
                      n: int) -> Tensor:
    k = _checks.check_sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    br, bc = values.shape[1], values.shape[2]
    k_pad = -(-k // bc) * bc
    _check_csr_values("sparse_bsr_linear", block_col, row_ptr, k_pad // bc, "K / block_cols")
    if x.numel() == 0:
        return reference.sparse_bsr_linear(x, values, block_col, row_ptr, bias, n)
    return _sparse_run("sparse_bsr_linear", x, n, k_pad, values, None, block_col, row_ptr, None, (br, bc), bias)


# ---- sliced-ELL sparse linear (CPU only) ----------------------------------------------------------
# x stays row-major for every M (the kernel blocks activation rows itself); bfloat16 x is widened to
# float32 exactly and y rounded once to x's dtype, as in _sparse_run.

def sparse_ell_linear(x: Tensor, values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor,
                      scale: Optional[Tensor], bias: Optional[Tensor], n: int) -> Tensor:
    op = "sparse_ell_linear"
    k, int8 = _checks.check_sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    _checks.check_sparse_ell_values(op, offsets, steps, group_ptr)
    if x.numel() == 0:
        return reference.sparse_ell_linear(x, values, offsets, steps, group_ptr, scale, bias, n)
    _native.record(op, x.device.type)
    x2 = x if x.dim() == 2 else x.reshape(-1, k)  # reshape and .to cost a microsecond each:
    if x2.dtype != torch.float32:  # skip them when they would do nothing (small M is the use)
        x2 = x2.float()
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(x.shape[:-1] + (n,), dtype=torch.float32)  # final shape: no reshape at the end
    scale = _contig(scale) if int8 else None
    bias = _contig(bias)
    _native._C.sparse_ell_linear_cpu(x2.data_ptr(), m, n, k, values.data_ptr(), int8, offsets.data_ptr(),
                                     steps.data_ptr(), group_ptr.data_ptr(), _ptr(scale), _ptr(bias), y.data_ptr(),
                                     _native.num_threads())
    return y if x.dtype == torch.float32 else y.to(x.dtype)


# ---- codebook (weight sharing) linear ------------------------------------------------------------
# x is widened to float32 (exact for float16/bfloat16) and y rounded once to x's dtype, the
# reference's sequence. CPU lookup tables live in the thread's reused workspace.

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
    if x.device.type == "cpu":
        threads = _native.num_threads()
        ws_bytes = _native._C.codebook_linear_workspace_bytes_cpu(m, k, bits, lut, 0, threads)
        ws = _workspace(x.device, ws_bytes) if ws_bytes else None
        _native._C.codebook_linear_cpu(*args, _ptr(ws), ws_bytes, threads, 0)
    else:
        with torch.cuda.device(x.device):
            _native._C.codebook_linear_cuda(*args, _native.cuda_stream(x))
    return y if x.dtype == torch.float32 else y.to(x.dtype)
# ---- static W8A8 linear (accuracy toolkit) ----------------------------------------------------
# One native call: CPU quantizes x with the calibrated scale straight into the GEMM's activation
# format inside the GEMM's own parallel region (csrc/cpu/gemm_static.cpp); CUDA quantizes into the
# workspace, then runs int8_linear_dynamic's GEMMs. The scale / zero point / smoothing tensors are
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
    cpu = x.device.type == "cpu"
    ws_bytes = getattr(_native._C, f"{op}_workspace_bytes_{'cpu' if cpu else 'cuda'}")(m, n, k)
    workspace = _workspace(x.device, ws_bytes)
    zp = _contig(act_zero_point)
    _device_call(op, x, x2.data_ptr(), _native.DTYPE_CODES[x2.dtype], w_packed.contiguous().data_ptr(),
                 w_scale.contiguous().data_ptr(), _ptr(_contig(bias)), y.data_ptr(), _native.DTYPE_CODES[y.dtype], m, n,
                 k, zp is None, act_scale.contiguous().data_ptr(), _ptr(zp), _ptr(_contig(act_smooth)),
                 workspace.data_ptr(), ws_bytes)
    return y
# ---- sub-8-bit integer weights (intx family) ------------------------------------------------------
# The linears run natively on CPU and CUDA for every bits (2..8 weight-only, 2..4 dynamic): x of
# shape [*, K] runs as [M, K]; the prepared activations live in the reused workspace (_workspace).

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
    ws_bytes = getattr(_native._C, f"intx_linear_workspace_bytes_{x.device.type}")(m, k, groups)
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
