"""Prepared layers ("two speeds", DESIGN.md "The native seam"): one linear op over fixed weights,
validated once and run with one native crossing per call.

A plan is built by the functions below from a module's buffers (``fastq.nn`` builds one on
creation, load, move/cast and buffer replacement) or, for every eager call of an op, from the op's
arguments (``fastq.ops.cpu``), so a module and a direct op call run the same launcher on the same
inputs and give bit-identical results. Invariants:

  * a plan is built only from validated buffers: the ``_checks`` shape checks of the op (against a
    stand-in x with the layer's K) and its ``check_*_values`` (row pointers, indices, layouts,
    scales), the same functions every op path runs; a bad buffer raises ValueError naming it;
  * the plan holds the buffers' tensors and storages, so nothing it points to can be freed while it
    lives. In-place writes to a buffer are seen (and cannot make a kernel read out of bounds: the
    kernels re-check indices); a storage swapped under a buffer with ``buf.data = t`` keeps being
    read from the old storage until the plan is rebuilt (``module.prepare()``): replace weights with
    ``module.buf = t`` or ``load_state_dict``, which rebuild it;
  * ``Plan.forward`` is the eager fast path: it checks only x (exact type, no autograd, no
    compile/trace/mode, dtype, device, K) and returns None when x must take the op path instead;
  * CPU plans are ``fastq._C.LinearPlan`` objects (csrc/api.h): sizes, pointers and the tier per
    range of M; scratch and counters live in C++. CUDA plans call the ``fastq.ops.cuda`` launchers
    with the stored tensors. Devices or formats without a native kernel get no plan (None): the
    op path (and its reference) serves them.

Adding a module kind (e.g. an int4 linear): give its op a ``PlanOp`` and a case in
``csrc/cpu/plan.cpp`` (or a ``LinearPlan`` field set), add a builder here that validates its
buffers and calls ``_cpu_plan`` with a ``setup`` function filling the LinearPlan, and make the
module a ``fastq.nn._prepared.PreparedLayer`` whose ``_make_plan`` calls the builder.
"""

from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch
from torch import Tensor

from fastq import _native
from fastq.ops import _checks

_DTYPE_CODES = _native.DTYPE_CODES  # float32 / float16 / bfloat16 cross the seam
_OP_INDEX = {name: i for i, name in enumerate(_native._C.plan_op_names())} if _native.available() else {}


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


# Bound once: each attribute lookup on the fast path costs ~50 ns.
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_tracing = torch._C._get_tracing_state
_grad_enabled = torch.is_grad_enabled
_num_threads = torch.get_num_threads
_empty = torch.empty


def _eager(x: Tensor) -> bool:
    """x may take the native fast path: a plain tensor outside tracing, modes and autograd (the
    caller has ruled out torch.compile before touching the plan)."""
    return (type(x) is Tensor and not (x.requires_grad and _grad_enabled()) and not _function_mode()
            and not _dispatch_modes() and _tracing() is None)


class Plan:
    """A prepared linear [*, K] -> [*, N]; subclasses run it on one device."""

    __slots__ = ("op", "n", "k", "device", "keep")

    def __init__(self, op: str, n: int, k: int, device: torch.device, tensors: tuple) -> None:
        self.op, self.n, self.k, self.device = op, n, k, device
        # tensors and their storages: the plan's pointers stay valid whatever happens to the buffers
        self.keep = tuple((t, t.untyped_storage()) for t in tensors if t is not None)

    def run(self, x: Tensor, out_dtype: Optional[torch.dtype] = None, out: Optional[Tensor] = None) -> Tensor:
        """y = op(x) for a validated x [*, K] (any strides); y in ``out_dtype`` (default x's), or
        written into ``out`` (contiguous, [*, N])."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.op}, n={self.n}, k={self.k}, device={self.device})"


class CpuPlan(Plan):
    __slots__ = ("native",)

    def __init__(self, op: str, n: int, k: int, tensors: tuple, native) -> None:
        super().__init__(op, n, k, torch.device("cpu"), tensors)
        self.native = native

    def forward(self, x: Tensor) -> Optional[Tensor]:
        """The module's eager call: y in x's dtype, or None when x needs the op path. (The conditions
        of ``_eager``, inlined: this is the whole per-call Python of a prepared layer.)"""
        if (type(x) is not Tensor or not x.is_cpu or (x.requires_grad and _grad_enabled()) or _function_mode()
                or _dispatch_modes() or _tracing() is not None):
            return None
        dtype = x.dtype
        code = _DTYPE_CODES.get(dtype)
        shape = x.shape
        if code is None or not shape or shape[-1] != self.k:
            return None
        if not x.is_contiguous():
            x = x.contiguous()
        y = _empty((*shape[:-1], self.n), dtype=dtype)
        m = x.numel() // self.k
        if m:
            self.native.run(x.data_ptr(), code, m, y.data_ptr(), code, _num_threads())
        return y

    def run(self, x: Tensor, out_dtype: Optional[torch.dtype] = None, out: Optional[Tensor] = None) -> Tensor:
        x2 = x.contiguous()
        y = out if out is not None else torch.empty(x.shape[:-1] + (self.n,), dtype=out_dtype or x.dtype)
        m = x2.numel() // self.k
        if m:
            self.native.run(x2.data_ptr(), _DTYPE_CODES[x2.dtype], m, y.data_ptr(), _DTYPE_CODES[y.dtype],
                            torch.get_num_threads())
        return y


def reused(build: Callable[[], Optional[Plan]], tensors: tuple, params: tuple) -> Optional[Plan]:
    """The ops' eager path: the plan ``build()`` makes for these (already validated) weight tensors,
    kept on the first tensor and reused while the same tensor objects keep their data pointers and
    versions, so a compiled graph calling an op per layer builds each layer's plan once. The kept
    plan holds no reference to the tensors (no cycle; the identity check uses weak references);
    inference tensors, which have no version counter, get a fresh plan every call."""
    head = tensors[0]
    try:
        key = (params, tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors))
    except RuntimeError:
        return build()
    cached = getattr(head, "_fastq_op_plan", None)
    if cached is not None and cached[0] == key and all(
            (r is None) if t is None else (r is not None and r() is t) for r, t in zip(cached[1], tensors)):
        return cached[2]
    plan = build()
    if isinstance(plan, CpuPlan):  # a CUDA plan's launcher closes over its tensors: not kept
        light = CpuPlan(plan.op, plan.n, plan.k, (), plan.native)
        try:
            head._fastq_op_plan = (key, tuple(None if t is None else weakref.ref(t) for t in tensors), light)
        except (AttributeError, RuntimeError, TypeError):
            pass
    return plan


class CudaPlan(Plan):
    """Runs ``launch(x2d, y2d)`` of ``fastq.ops.cuda`` on the stored tensors (validated once)."""

    __slots__ = ("launch", "accepts")

    def __init__(self, op: str, n: int, k: int, device: torch.device, tensors: tuple,
                 launch: Callable[[Tensor, Tensor], Tensor], accepts: tuple) -> None:
        super().__init__(op, n, k, device, tensors)
        self.launch, self.accepts = launch, accepts

    def forward(self, x: Tensor) -> Optional[Tensor]:
        if not _eager(x) or x.device != self.device or x.dtype not in self.accepts:
            return None
        if not x.shape or x.shape[-1] != self.k:
            return None
        return self.run(x)

    def run(self, x: Tensor, out_dtype: Optional[torch.dtype] = None, out: Optional[Tensor] = None) -> Tensor:
        shape = x.shape[:-1] + (self.n,)
        x2 = x.reshape(-1, self.k).contiguous()
        y = out if out is not None else torch.empty(shape, dtype=out_dtype or x.dtype, device=x.device)
        if x2.shape[0]:
            _native.record(self.op, "cuda")
            self.launch(x2, y.view(-1, self.n))
        return y


def _proxy_x(k: int, like: Tensor) -> Tensor:
    """A stand-in input of width k on the weights' device, for the ops' shape checks."""
    return torch.empty((0, k), dtype=torch.float32, device=like.device)


def _named(where: str, fn: Callable, *args) -> None:
    """Run a shape check, its message prefixed with the layer (``where``)."""
    try:
        fn(*args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _cpu_plan(op: str, n: int, k: int, tensors: tuple, setup: Callable, bias: Optional[Tensor],
              routes: Optional[list] = None) -> Optional[CpuPlan]:
    if not _native.available():
        return None
    native = _native._C.LinearPlan(_OP_INDEX[op], n, k)
    setup(native)
    native.set_bias(_ptr(bias))
    if routes:
        native.set_routes(routes)
    return CpuPlan(op, n, k, tensors + (bias,), native)


def _cuda_plan(op: str, n: int, k: int, tensors: tuple, launch: Callable, accepts: tuple) -> Optional[CudaPlan]:
    from fastq.ops import cuda

    if not cuda.available(op):
        return None
    return CudaPlan(op, n, k, tensors[0].device, tensors, launch, accepts)


def _contiguous(*ts: Optional[Tensor]) -> tuple:
    for t in ts:
        if t is not None and not t.is_contiguous():
            raise ValueError("packed buffers must be contiguous (pass what the *_pack op returned)")
    return ts


# ---- int8 GEMM family --------------------------------------------------------------------------

def int8_linear_dynamic(w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int, k: int,
                        act_symmetric: bool, *, where: str = "int8_linear_dynamic",
                        validate: bool = True) -> Optional[Plan]:
    """Plan of ``int8_linear_dynamic`` (W8A8) over an [n, k] packed weight."""
    return _gemm_plan("int8_linear_dynamic", w_packed, w_scale, bias, n, k, act_symmetric, where, validate)


def int8_weight_only_linear(w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int, k: int, *,
                            where: str = "int8_weight_only_linear", validate: bool = True) -> Optional[Plan]:
    """Plan of ``int8_weight_only_linear`` over an [n, k] packed weight and [n, G] scales."""
    return _gemm_plan("int8_weight_only_linear", w_packed, w_scale, bias, n, k, True, where, validate)


# ---- weight-only routes: which driver serves which M (bf16 x on AVX512-BF16 CPUs) ----------------
# int8_weight_only_linear with bfloat16 x has two CPU drivers: the op's own (bf16 widened to float32:
# register dequantization at small M, float32 FMA panels above) and, where the CPU has AVX512-BF16
# but the AMX tier is not active, vdpbf16ps on bf16 codes (csrc/cpu/wo_bf16.h: about twice the
# float32 rate, the rate of bf16 F.linear). Which one wins at which M depends on the shape and the
# machine, so the first plan of each (n, k, groups, threads, tier) measures both at a few M and
# keeps the smallest M from which the bf16 path stays faster (cached for the process). The module
# and the op path consult the same cache, so they always take the same route.
# FASTQ_PLAN_CALIBRATE=0 skips the measurement and uses WO_BF16_MIN_M (measured on Zen 4 at
# 768x768 and 768x3072; tests use it, or force a route with ``set_weight_only_bf16_min_m``).
WO_BF16_MIN_M = 8
_CALIBRATION_M = (2, 4, 8, 16, 32, 64)
_wo_routes: dict = {}
_wo_forced: Optional[int] = None


def routing_state() -> tuple:
    """What a weight-only plan's routes depend on besides its shape (the ops' plan cache keys on it)."""
    return (_wo_forced, _native.num_threads(), _native.cpu_isa())


def set_weight_only_bf16_min_m(m: Optional[int]) -> None:
    """Force the bf16 weight-only path from ``m`` rows up for plans built from now on (a huge m
    disables it); None returns to measured thresholds."""
    global _wo_forced
    _wo_forced = m


def _weight_only_routes(native, n: int, k: int, groups: int) -> list:
    big = 2 ** 62
    if (not _native._C.wo_bf16_available() or k % 4 or (k // groups) % 4
            or _native._C.cpu_isa_active() > _native.ISA_NAMES.index("avx512")):
        return []
    if _wo_forced is not None:
        return [(_wo_forced - 1, -1, 0), (big, -1, 1)] if _wo_forced > 1 else [(big, -1, 1)]
    key = (n, k, groups, _native.num_threads(), _native.cpu_isa())
    if key not in _wo_routes:
        import os

        if os.environ.get("FASTQ_PLAN_CALIBRATE", "1") == "0":
            _wo_routes[key] = WO_BF16_MIN_M
        else:
            _wo_routes[key] = _calibrate(native, n, k)
    m_min = _wo_routes[key]
    return [(m_min - 1, -1, 0), (big, -1, 1)]


def _calibrate(native, n: int, k: int) -> int:
    """The smallest of _CALIBRATION_M from which the bf16 path beats the driver at every larger one."""
    import time

    big = 2 ** 62
    faster = []
    for m in _CALIBRATION_M:
        x = torch.randn(m, k, dtype=torch.bfloat16)
        y = torch.empty(m, n, dtype=torch.bfloat16)
        best = {}
        for path in (0, 1, 0, 1, 0, 1):
            native.set_routes([(big, -1, path)])
            t0 = time.perf_counter()
            native.run(x.data_ptr(), _DTYPE_CODES[x.dtype], m, y.data_ptr(), _DTYPE_CODES[y.dtype], _num_threads())
            best[path] = min(best.get(path, float("inf")), time.perf_counter() - t0)
        faster.append(best[1] < best[0])
    native.set_routes([])
    m_min = _CALIBRATION_M[-1] * 2  # the bf16 path only above the measured range
    for m, win in zip(reversed(_CALIBRATION_M), reversed(faster)):
        if not win:
            break
        m_min = m
    return m_min


def _gemm_plan(op: str, w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int, k: int,
               act_symmetric: bool, where: str, validate: bool) -> Optional[Plan]:
    weight_only = op == "int8_weight_only_linear"
    if validate:
        _named(where, _checks.check_packed_linear, op, _proxy_x(k, w_packed), w_packed, w_scale, bias, n, weight_only)
        _checks.check_packed_weight_values(where, w_packed, w_scale, n, k, cache=False)
        w_packed, w_scale, bias = _contiguous(w_packed, w_scale, bias)
    groups = w_scale.shape[1] if weight_only else 1
    if w_packed.device.type == "cuda":
        from fastq.ops import cuda

        if weight_only:
            launch = lambda x2, y2: cuda.launch_weight_only(x2, w_packed, w_scale, bias, n, y2)  # noqa: E731
        else:
            launch = lambda x2, y2: cuda.launch_linear_dynamic(x2, w_packed, w_scale, bias, n,  # noqa: E731
                                                               act_symmetric, y2)
        return _cuda_plan(op, n, k, (w_packed, w_scale, bias), launch, _checks.FLOAT_DTYPES)
    if w_packed.device.type != "cpu":
        return None
    def setup(p):
        p.set_gemm(w_packed.data_ptr(), w_scale.data_ptr(), groups, act_symmetric)
        if weight_only:
            p.set_bias(_ptr(bias))
            p.set_routes(_weight_only_routes(p, n, k, groups))

    return _cpu_plan(op, n, k, (w_packed, w_scale), setup, bias)


# ---- sparse family -----------------------------------------------------------------------------

def sparse_csr_linear(values: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor], n: int, k: int, *,
                      where: str = "sparse_csr_linear", validate: bool = True) -> Optional[Plan]:
    op = "sparse_csr_linear"
    if validate:
        _named(where, _checks.check_sparse_csr_linear, op, _proxy_x(k, values), values, cols, row_ptr, bias, n)
        _checks.check_sparse_csr_values(where, values, cols, row_ptr, k, cache=False)
        values, cols, row_ptr, bias = _contiguous(values, cols, row_ptr, bias)
    if values.device.type == "cuda":
        from fastq.ops import cuda

        launch = lambda x2, y2: cuda.launch_sparse_csr(x2, values, cols, row_ptr, bias, n, y2)  # noqa: E731
        return _cuda_plan(op, n, k, (values, cols, row_ptr, bias), launch, _checks.SPARSE_X_DTYPES)
    return _sparse_cpu(op, n, k, (values, cols, row_ptr), bias, values, None, cols, row_ptr, cols.numel(), None)


def sparse_int8_linear(q: Tensor, scale: Tensor, cols: Tensor, row_ptr: Tensor, bias: Optional[Tensor], k: int, *,
                       where: str = "sparse_int8_linear", validate: bool = True) -> Optional[Plan]:
    op, n = "sparse_int8_linear", scale.numel()
    if validate:
        _named(where, _checks.check_sparse_int8_linear, _proxy_x(k, q), q, scale, cols, row_ptr, bias)
        _checks.check_sparse_csr_values(where, q, cols, row_ptr, k, scale, "q", cache=False)
        q, scale, cols, row_ptr, bias = _contiguous(q, scale, cols, row_ptr, bias)
    return _sparse_cpu(op, n, k, (q, scale, cols, row_ptr), bias, q, scale, cols, row_ptr, cols.numel(), None)


def sparse_24_linear(values: Tensor, meta: Tensor, bias: Optional[Tensor], k: int, *,
                     where: str = "sparse_24_linear", validate: bool = True) -> Optional[Plan]:
    op, n = "sparse_24_linear", values.shape[0]
    if validate:
        _named(where, _checks.check_sparse_24_linear, _proxy_x(k, values), values, meta, bias)
        _checks.check_sparse_24_values(where, values, cache=False)
        values, meta, bias = _contiguous(values, meta, bias)
    if values.device.type == "cuda":
        from fastq.ops import cuda

        launch = lambda x2, y2: cuda.launch_sparse_24(x2, values, meta, bias, y2)  # noqa: E731
        return _cuda_plan(op, n, k, (values, meta, bias), launch, _checks.SPARSE_X_DTYPES)
    return _sparse_cpu(op, n, k, (values, meta), bias, values, None, None, None, 0, meta)


def sparse_bsr_linear(values: Tensor, block_col: Tensor, row_ptr: Tensor, bias: Optional[Tensor], n: int, k: int, *,
                      where: str = "sparse_bsr_linear", validate: bool = True) -> Optional[Plan]:
    op = "sparse_bsr_linear"
    if validate:
        _named(where, _checks.check_sparse_bsr_linear, _proxy_x(k, values), values, block_col, row_ptr, bias, n)
        _checks.check_sparse_bsr_values(where, values, block_col, row_ptr, k, cache=False)
        values, block_col, row_ptr, bias = _contiguous(values, block_col, row_ptr, bias)
    return _sparse_cpu(op, n, k, (values, block_col, row_ptr), bias, values, None, block_col, row_ptr,
                       block_col.numel(), None, values.shape[1], values.shape[2])


def sparse_ell_linear(values: Tensor, offsets: Tensor, steps: Tensor, group_ptr: Tensor, scale: Optional[Tensor],
                      bias: Optional[Tensor], n: int, k: int, *, where: str = "sparse_ell_linear",
                      validate: bool = True) -> Optional[Plan]:
    op = "sparse_ell_linear"
    int8 = values.dtype == torch.int8
    scale = scale if int8 else None
    if validate:
        _named(where, _checks.check_sparse_ell_linear, _proxy_x(k, values), values, offsets, steps, group_ptr,
               scale, bias, n)
        _checks.check_sparse_ell_values(where, values, offsets, steps, group_ptr, scale, cache=False)
        values, offsets, steps, group_ptr, scale, bias = _contiguous(values, offsets, steps, group_ptr, scale, bias)
    if values.device.type != "cpu":
        return None

    def setup(p):
        p.set_ell(values.data_ptr(), int8, offsets.data_ptr(), steps.data_ptr(), group_ptr.data_ptr(),
                  offsets.shape[0], _ptr(scale))

    return _cpu_plan(op, n, k, (values, offsets, steps, group_ptr, scale), setup, bias)


def _sparse_cpu(op: str, n: int, k: int, tensors: tuple, bias: Optional[Tensor], values: Tensor,
                scale: Optional[Tensor], cols: Optional[Tensor], row_ptr: Optional[Tensor], entries: int,
                meta: Optional[Tensor], block_rows: int = 1, block_cols: int = 1) -> Optional[CpuPlan]:
    if values.device.type != "cpu":
        return None

    def setup(p):
        p.set_sparse(values.data_ptr(), _ptr(scale), _ptr(cols), _ptr(row_ptr), entries, _ptr(meta), block_rows,
                     block_cols)

    return _cpu_plan(op, n, k, tensors, setup, bias)


# ---- static W8A8, sub-8-bit integer and codebook weights ----------------------------------------
# CPU only: on CUDA these ops validate and launch per call in fastq.ops.cuda (no plan; the builders
# still validate the buffers, so a module on CUDA fails at load just as on CPU).

def int8_linear_static(w_packed: Tensor, w_scale: Tensor, bias: Optional[Tensor], n: int, k: int, act_scale: Tensor,
                       act_zero_point: Optional[Tensor], act_smooth: Optional[Tensor], *,
                       where: str = "int8_linear_static", validate: bool = True) -> Optional[Plan]:
    """Plan of ``int8_linear_static`` (W8A8 with calibrated activation parameters)."""
    op = "int8_linear_static"
    if validate:
        _named(where, _checks.check_static_linear, op, _proxy_x(k, w_packed), w_packed, w_scale, bias, n, act_scale,
               act_zero_point, act_smooth)
        _checks.check_packed_weight_values(where, w_packed, w_scale, n, k, cache=False)
        _checks.check_static_values(where, act_scale, act_zero_point, act_smooth)
        w_packed, w_scale, bias, act_scale, act_zero_point, act_smooth = _contiguous(
            w_packed, w_scale, bias, act_scale, act_zero_point, act_smooth)
    if w_packed.device.type != "cpu":
        return None

    def setup(p):
        p.set_gemm(w_packed.data_ptr(), w_scale.data_ptr(), 1, act_zero_point is None)
        p.set_static(act_scale.data_ptr(), _ptr(act_zero_point), _ptr(act_smooth))

    return _cpu_plan(op, n, k, (w_packed, w_scale, act_scale, act_zero_point, act_smooth), setup, bias)


def intx_linear(op: str, packed: Tensor, bias: Optional[Tensor], n: int, k: int, groups: int, bits: int,
                asymmetric: bool, *, where: Optional[str] = None, validate: bool = True) -> Optional[Plan]:
    """Plan of ``intx_weight_only_linear`` or ``intx_linear_dynamic`` (``op``) over a packed [n, k]
    weight. Any packed byte is a valid code (the kernels mask codes), so only shapes are checked."""
    if validate:
        _named(where or op, _checks.check_intx_linear, op, _proxy_x(k, packed), packed, bias, n, groups, bits,
               asymmetric, op == "intx_linear_dynamic")
        packed, bias = _contiguous(packed, bias)
    if packed.device.type != "cpu":
        return None
    return _cpu_plan(op, n, k, (packed,), lambda p: p.set_intx(packed.data_ptr(), bits, asymmetric, groups), bias)


def codebook_linear(packed: Tensor, codebook: Tensor, scale: Optional[Tensor], bias: Optional[Tensor], n: int, k: int,
                    bits: int, lut: bool, *, where: str = "codebook_linear", validate: bool = True) -> Optional[Plan]:
    """Plan of ``codebook_linear`` over dense packed codes (every code indexes a 2**bits-entry
    codebook by construction, so only shapes are checked)."""
    if validate:
        _named(where, _checks.check_codebook_linear, _proxy_x(k, packed), packed, codebook, scale, bias, n, bits, lut)
        packed, codebook, scale, bias = _contiguous(packed, codebook, scale, bias)
    if packed.device.type != "cpu":
        return None

    def setup(p):
        p.set_codebook(packed.data_ptr(), bits, lut, codebook.data_ptr(), codebook.shape[0], codebook.shape[1],
                       _ptr(scale))

    return _cpu_plan("codebook_linear", n, k, (packed, codebook, scale), setup, bias)
