"""The AMX tier: int8 tiles (int8_linear_dynamic, int8_gemm) and bf16 tiles (int8_weight_only_linear
with bfloat16 x), chosen per call by M (fastq._native.amx_min_m).

These tests run wherever the amx tier exists: on AMX hardware (CPUID, XCR0 and the Linux
permission) and, on any AVX-512 machine, under FASTQ_AMX_EMULATE=1, a software model of the tiles
that runs the same kernels and drivers (CI runs this file that way). Elsewhere they skip, except
the fallback checks, which run in fresh interpreters. Checked here:
  * W8A8 and int8_gemm match the reference bit for bit at every M, on both sides of the threshold,
    with tails in M, N and K; the AMX call counter proves the tiles ran exactly when M >= threshold;
  * weight-only with bfloat16 x stays within test_int8_weight_only_linear's float32 bound (bf16 x
    times an int8 weight is exact in float32; only the summation order and the per-group scaling
    differ), and groups that do not fall on 32-k tiles keep the AVX-512 kernel;
  * FASTQ_CPU_ISA=amx on a machine without AMX warns with the reason and keeps the detected ISA.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import _library, reference

from _gemm_util import forced_isa, needs_native, random_packed
from test_int8_weight_only_linear import assert_within_bound



@contextlib.contextmanager
def amx_threshold(kind: str, m: int):
    before = _native.amx_min_m(kind)
    _native.set_amx_min_m(kind, m)
    try:
        yield
    finally:
        _native.set_amx_min_m(kind, before)


def _w8a8_inputs(m, n, k, seed, x_dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    _, packed = random_packed(n, k, gen, full_range=True)
    w_scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 3 + 0.5).to(x_dtype)
    return x, packed, w_scale, bias


# M around every published threshold (2..16) and the 16/32-row tiles; N and K with tile tails.
W8A8_M = [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 65, 129, 160]
W8A8_NK = [(17, 33), (32, 64), (33, 129), (48, 200), (20, 1100)]  # 1100: three 512-k blocks, a tail


@needs_native
@pytest.mark.parametrize("n,k", W8A8_NK, ids=[f"n{n}-k{k}" for n, k in W8A8_NK])
@pytest.mark.parametrize("m", W8A8_M)
def test_w8a8_bit_exact_across_threshold(m, n, k):
    x, packed, w_scale, bias = _w8a8_inputs(m, n, k, m * 1000 + n * 7 + k)
    with forced_isa("amx"):
        threshold = _native.amx_min_m("int8")
        for sym in (True, False):
            for b in (bias, None):
                y = torch.full((m, n), float("nan"))  # poisoned
                before, calls = fastq.native_calls("int8_linear_dynamic_out", "cpu"), _native.amx_calls("int8")
                _library.int8_linear_dynamic_out(x, packed, w_scale, b, n, sym, y)
                assert fastq.native_calls("int8_linear_dynamic_out", "cpu") == before + 1
                assert _native.amx_calls("int8") == calls + (m >= threshold), "tier chosen against the threshold"
                assert torch.equal(y, reference.int8_linear_dynamic(x, packed, w_scale, b, n, sym, torch.float32))


@needs_native
@pytest.mark.parametrize("m", [1, 3, 8, 17, 40])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_w8a8_tiles_at_every_m(m, out_dtype):
    # Threshold 1: the tiles serve every M, so small M is checked on them too (16-row tiles, 1 real).
    x, packed, w_scale, bias = _w8a8_inputs(m, 37, 75, m + 3, torch.bfloat16)
    with forced_isa("amx"), amx_threshold("int8", 1):
        for sym in (True, False):
            calls = _native.amx_calls("int8")
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, 37, sym, out_dtype)
            assert _native.amx_calls("int8") == calls + 1
            assert torch.equal(y, reference.int8_linear_dynamic(x, packed, w_scale, bias, 37, sym, out_dtype))


@needs_native
def test_w8a8_nonfinite_rows_poison_only_their_row():
    x, packed, w_scale, bias = _w8a8_inputs(20, 33, 70, 9)
    x[3, 5] = float("nan")
    x[17, 0] = float("-inf")
    with forced_isa("amx"):
        for sym in (True, False):
            y = _library.int8_linear_dynamic(x, packed, w_scale, bias, 33, sym, torch.float32)
            ref = reference.int8_linear_dynamic(x, packed, w_scale, bias, 33, sym, torch.float32)
            torch.testing.assert_close(y, ref, rtol=0, atol=0, equal_nan=True)
            assert torch.isnan(y[[3, 17]]).all() and torch.isfinite(y[[0, 4, 16, 19]]).all()


# int8_gemm: M above its small-M path (4), K across its 512-k chunks.
GEMM_CASES = [(5, 17, 33), (8, 32, 64), (16, 33, 100), (33, 64, 513), (49, 20, 1030), (100, 40, 64)]


@needs_native
@pytest.mark.parametrize("m,n,k", GEMM_CASES, ids=[f"m{m}-n{n}-k{k}" for m, n, k in GEMM_CASES])
def test_int8_gemm_bit_exact(m, n, k):
    gen = torch.Generator().manual_seed(m + n + k)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    with forced_isa("amx"), amx_threshold("int8", 5):
        calls = _native.amx_calls("int8")
        c = _library.int8_gemm(a, b)
        assert _native.amx_calls("int8") == calls + 1
    assert torch.equal(c, reference.int8_gemm(a, b))


# Weight-only, bfloat16 x: (m, n, k, groups). Groups of 32-k multiples (or one group, any K) take
# the tiles; others keep the AVX-512 kernel. M past one 128-row block, K past one 256-k chunk.
WO_CASES = [(8, 17, 70, 1), (9, 32, 64, 2), (31, 33, 96, 3), (33, 48, 256, 4), (130, 40, 520, 1),
            (20, 65, 640, 2), (16, 16, 99, 3)]


@needs_native
@pytest.mark.parametrize("m,n,k,groups", WO_CASES, ids=[f"m{m}-n{n}-k{k}-g{g}" for m, n, k, g in WO_CASES])
def test_weight_only_bf16_tiles(m, n, k, groups):
    gen = torch.Generator().manual_seed(m * 31 + n + k + groups)
    w, packed = random_packed(n, k, gen)
    w_scale = torch.rand(n, groups, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    x = (torch.randn(m, k, generator=gen) * 2 + 0.25).to(torch.bfloat16)
    tiles = groups == 1 or (k // groups) % 32 == 0
    with forced_isa("amx"), amx_threshold("bf16", 8):
        for b in (bias, None):
            y = torch.full((m, n), float("nan"), dtype=torch.bfloat16)  # poisoned
            calls = _native.amx_calls("bf16")
            _library.int8_weight_only_linear_out(x, packed, w_scale, b, n, y)
            assert _native.amx_calls("bf16") == calls + tiles
            assert_within_bound(y, x, w, w_scale, b, n, k)


@needs_native
def test_weight_only_other_dtypes_and_small_m_keep_avx512():
    gen = torch.Generator().manual_seed(4)
    w, packed = random_packed(24, 64, gen)
    w_scale = torch.rand(24, 1, generator=gen) * 0.02 + 1e-3
    with forced_isa("amx"):
        threshold = _native.amx_min_m("bf16")
        for dtype, m in ((torch.float32, 40), (torch.float16, 40), (torch.bfloat16, max(1, threshold - 1))):
            x = torch.randn(m, 64, generator=gen).to(dtype)
            calls = _native.amx_calls("bf16")
            y = _library.int8_weight_only_linear(x, packed, w_scale, None, 24)
            assert _native.amx_calls("bf16") == calls, f"{dtype} m={m} must not take the bf16 tiles"
            assert_within_bound(y, x, w, w_scale, None, 24, 64)


@needs_native
def test_opcheck_on_amx():
    x, packed, w_scale, bias = _w8a8_inputs(20, 19, 45, 2)
    with forced_isa("amx"):
        torch.library.opcheck(_library.int8_linear_dynamic, (x, packed, w_scale, bias, 19, True, torch.float32))
        torch.library.opcheck(_library.int8_linear_dynamic, (x, packed, w_scale, None, 19, False, torch.bfloat16))
        wo_scale = torch.rand(19, 1) * 0.02 + 1e-3
        torch.library.opcheck(_library.int8_weight_only_linear, (x.bfloat16(), packed, wo_scale, bias, 19))


@needs_native
def test_threshold_setter_validates():
    with pytest.raises(ValueError, match="kind"):
        _native.set_amx_min_m("int4", 8)
    with pytest.raises(ValueError, match=">= 1"):
        _native.set_amx_min_m("int8", 0)
    with pytest.raises(KeyError):
        _native.amx_min_m("fp8")


# ---- the fallback, in fresh interpreters -------------------------------------------------------

def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("FASTQ_CPU_ISA", "FASTQ_AMX_EMULATE")}
    # Import the same fastq this process imported (the installed one in CI, whose _C is built; the
    # source tree has no _C there), from a neutral directory so the cwd cannot shadow it.
    full.update(PYTHONPATH=str(Path(fastq.__file__).resolve().parent.parent), **env)
    proc = subprocess.run([sys.executable, "-c", code], env=full, cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@needs_native
def test_env_amx_without_amx_warns_and_falls_back():
    probe = _run("import fastq; from fastq import _native; print(fastq.detected_cpu_isa()); print(_native.amx_status())")
    detected, status = probe.stdout.splitlines()
    if detected == "amx":
        pytest.skip(f"this machine has the amx tier ({status})")
    assert status.startswith("not available: "), status
    proc = _run("import fastq; print(fastq.cpu_isa())", FASTQ_CPU_ISA="amx")
    assert proc.stdout.split() == [detected]
    assert "RuntimeWarning" in proc.stderr and "FASTQ_CPU_ISA='amx'" in proc.stderr and status in proc.stderr
    refused = _run("import fastq\ntry:\n    fastq.set_cpu_isa('amx')\nexcept ValueError as e:\n    print(e)").stdout
    assert "'amx' is not supported" in refused and status in refused


@needs_native
def test_emulation_switch():
    base = _run("import fastq; print(fastq.detected_cpu_isa())").stdout.strip()
    proc = _run("import fastq; from fastq import _native; print(fastq.cpu_isa()); print(_native.amx_status())",
                FASTQ_AMX_EMULATE="1")
    active, status = proc.stdout.splitlines()
    if base in ("avx512", "amx"):
        assert active == "amx" and status.startswith("emulated"), proc.stdout
    else:
        assert active == base and "needs the avx512 tier" in status, proc.stdout
