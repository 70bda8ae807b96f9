"""The only importer of ``fastq._C``.

Invariants:
  * ``FASTQ_DISABLE_NATIVE=1``: ``_C`` is never imported; every op runs its PyTorch reference.
  * ``FASTQ_REQUIRE_NATIVE=1``: a failed import raises (CI sets it, so a broken build fails CI).
  * otherwise a failed import warns once, with the reason, and the references serve every op.
  * ``FASTQ_CPU_ISA=scalar|avx2|avx512|amx`` may only lower the detected ISA; ``set_cpu_isa`` likewise.
    ``amx`` is AVX-512 plus the AMX tiles (from a measured M up, ``amx_min_m``); where AMX is missing
    or the kernel refuses its permission, ``amx_status()`` says why and AVX-512 serves.
  * Native runs are counted (``record(op, device)`` here, C++ counters for plan runs), so tests can
    prove a native kernel ran: ``native_calls``.
"""

from __future__ import annotations

import collections
import os
import warnings

import torch

ISA_NAMES = ("scalar", "avx2", "avx512", "amx")
# Codes of the floating dtypes that cross the native seam (csrc/api.h: enum class DType).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

DISABLED = os.environ.get("FASTQ_DISABLE_NATIVE", "") == "1"
REQUIRED = os.environ.get("FASTQ_REQUIRE_NATIVE", "") == "1"
IMPORT_ERROR: str | None = None
_C = None

if DISABLED and REQUIRED:
    raise RuntimeError("FASTQ_DISABLE_NATIVE=1 and FASTQ_REQUIRE_NATIVE=1 contradict each other; unset one")

if DISABLED:
    IMPORT_ERROR = "disabled by FASTQ_DISABLE_NATIVE=1"
else:
    try:
        from fastq import _C  # noqa: F811
    except ImportError as exc:  # a missing or broken build
        IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        _here = os.path.dirname(os.path.abspath(__file__))
        if os.path.exists(os.path.join(os.path.dirname(_here), "CMakeLists.txt")):
            IMPORT_ERROR += (f" [fastq was imported from the source tree {_here}, which has no compiled _C: "
                             "run from another directory (or use the `fastq`/`pytest` console scripts) so the "
                             "installed package is imported]")
        if REQUIRED:
            raise ImportError(
                f"fastq native extension failed to import ({IMPORT_ERROR}) and FASTQ_REQUIRE_NATIVE=1; "
                "reinstall with `pip install .` and run `fastq doctor`"
            ) from exc
        warnings.warn(
            f"fastq native extension unavailable ({IMPORT_ERROR}); using the PyTorch reference kernels. "
            "Run `fastq doctor` for details.",
            RuntimeWarning,
            stacklevel=2,
        )

_env_isa = os.environ.get("FASTQ_CPU_ISA", "")
if _C is not None and _env_isa:
    if _env_isa not in ISA_NAMES:
        warnings.warn(f"FASTQ_CPU_ISA={_env_isa!r} is not one of {ISA_NAMES}; ignored", RuntimeWarning, stacklevel=2)
    elif ISA_NAMES.index(_env_isa) > _C.cpu_isa_detected():
        _why = f" (AMX {_C.cpu_amx_status()})" if _env_isa == "amx" else ""
        warnings.warn(
            f"FASTQ_CPU_ISA={_env_isa!r} is above what this CPU supports "
            f"({ISA_NAMES[_C.cpu_isa_detected()]}){_why}; it may only lower the ISA, so it is ignored",
            RuntimeWarning,
            stacklevel=2,
        )


def available() -> bool:
    """True when the native extension is loaded."""
    return _C is not None


def has(fn_name: str) -> bool:
    """True when the native extension provides ``fn_name`` (e.g. ``"quantize_int8_cuda"``)."""
    return _C is not None and hasattr(_C, fn_name)


def build_info() -> dict:
    return dict(_C.build_info()) if _C is not None else {}


def detected_cpu_isa() -> str:
    return ISA_NAMES[_C.cpu_isa_detected()] if _C is not None else "none"


def cpu_isa() -> str:
    """The ISA the native CPU kernels use now."""
    return ISA_NAMES[_C.cpu_isa_active()] if _C is not None else "none"


# ---- AMX tier ----
AMX_KINDS = {"int8": 0, "bf16": 1}


def amx_status() -> str:
    """Why the AMX tier is or is not available (CPUID, XCR0, the Linux permission, emulation)."""
    return _C.cpu_amx_status() if _C is not None else f"unknown: native extension not loaded ({IMPORT_ERROR})"


def amx_min_m(kind: str = "int8") -> int:
    """The smallest M the AMX tiles serve: ``"int8"`` (int8_gemm, int8_linear_dynamic) or ``"bf16"``
    (int8_weight_only_linear with bfloat16 x); smaller M runs the AVX-512 kernels."""
    return _C.cpu_amx_min_m(AMX_KINDS[kind])


def amx_calls(kind: str = "int8") -> int:
    """How many native calls ran on the AMX tiles of ``kind`` (tests prove the tier ran with it)."""
    return _C.cpu_amx_calls(AMX_KINDS[kind])


def set_amx_min_m(kind: str, m: int) -> None:
    """Change an AMX M threshold (benchmarks; the defaults were measured)."""
    if kind not in AMX_KINDS:
        raise ValueError(f"unknown AMX threshold kind {kind!r}; choose one of {tuple(AMX_KINDS)}")
    if m < 1:
        raise ValueError(f"AMX threshold must be >= 1, got {m}")
    _C.set_cpu_amx_min_m(AMX_KINDS[kind], int(m))
# ---- end AMX tier ----


def set_cpu_isa(name: str) -> None:
    """Use the ``name`` ISA for the native CPU kernels (may only lower the detected one)."""
    if _C is None:
        raise RuntimeError(f"the fastq native extension is not loaded ({IMPORT_ERROR})")
    if name not in ISA_NAMES:
        raise ValueError(f"unknown CPU ISA {name!r}; choose one of {ISA_NAMES}")
    level = ISA_NAMES.index(name)
    if level > _C.cpu_isa_detected():
        why = f"; AMX {amx_status()}" if name == "amx" else ""
        raise ValueError(f"CPU ISA {name!r} is not supported by this machine (detected {detected_cpu_isa()!r}{why})")
    _C.set_cpu_isa(level)


def num_threads() -> int:
    """The thread count every native CPU call gets: torch's own setting."""
    return torch.get_num_threads()


def cuda_stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


_calls: collections.Counter = collections.Counter()
_PLAN_OPS = tuple(_C.plan_op_names()) if _C is not None and hasattr(_C, "plan_op_names") else ()


def record(op: str, device: str) -> None:
    _calls[(op, device)] += 1


def native_calls(op: str, device: str) -> int:
    """How many times a native kernel of ``op`` ran on ``device`` (``"cpu"``/``"cuda"``): the runs
    counted here plus, for the linear ops, the plan runs C++ counts itself (prepared layers and the
    ops' eager path both run plans; an ``_out`` variant also counts under its base op)."""
    n = _calls[(op, device)]
    if op in _PLAN_OPS and device in ("cpu", "cuda"):
        n += _C.plan_calls(_PLAN_OPS.index(op), 0 if device == "cpu" else 1)
    return n
