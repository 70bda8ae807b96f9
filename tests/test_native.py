"""fastq._native: the environment switches and the ISA controls, each in a fresh interpreter.

Invariants checked here: FASTQ_DISABLE_NATIVE=1 routes every op to the reference and the results
equal the native ones bit for bit; FASTQ_CPU_ISA may only lower the active ISA, and a bogus or too
high value warns and is ignored; set_cpu_isa refuses names it does not know and levels above the
detected one (ValueError in Python, and the native layer checks again).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastq
from fastq import _native

ROOT = Path(__file__).resolve().parents[1]
ISAS = _native.ISA_NAMES
needs_native = pytest.mark.skipif(not fastq.native_available(), reason="fastq._C is not built")


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``env`` added (and the FASTQ_* switches cleared)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTQ_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], env=full_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"child failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _inputs():
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(6, 200, generator=gen) * torch.exp(torch.randn(6, 1, generator=gen))
    x[2, 17] = float("nan")
    return x


@needs_native
def test_disable_native_uses_reference_and_agrees(tmp_path):
    x = _inputs()
    torch.save(x, tmp_path / "x.pt")
    run_python("""
        import torch, fastq
        assert not fastq.native_available()
        for op in ("quantize_int8", "quantize_int8_out", "dequantize_int8", "dequantize_int8_out"):
            assert fastq.kernel_for(op, "cpu") == "reference", (op, fastq.kernel_for(op, "cpu"))
        x = torch.load("x.pt")
        results = {}
        for sym in (True, False):
            for g in (0, -1, 40):
                q, s, z = fastq.quantize_int8(x, g, sym)
                y = fastq.dequantize_int8(q, s, None if sym else z, torch.bfloat16)
                results[(sym, g)] = (q, s, z, y)
        assert fastq.native_calls("quantize_int8", "cpu") == 0
        torch.save(results, "ref.pt")
    """, tmp_path, FASTQ_DISABLE_NATIVE="1")
    ref = torch.load(tmp_path / "ref.pt")
    for (sym, g), (q, s, z, y) in ref.items():
        got = fastq.quantize_int8(x, g, sym)
        assert torch.equal(got.codes, q) and torch.equal(got.zero_point, z)
        assert _same_floats(got.scale, s) and bool(torch.isnan(s).any())  # row 2 is poisoned
        y_native = fastq.dequantize_int8(got.codes, got.scale, None if sym else got.zero_point, torch.bfloat16)
        assert _same_floats(y_native, y)


def _same_floats(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values with NaNs in the same places."""
    na, nb = torch.isnan(a), torch.isnan(b)
    return torch.equal(na, nb) and torch.equal(a.masked_fill(na, 0), b.masked_fill(nb, 0))


def test_disable_and_require_contradict(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import fastq"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "FASTQ_DISABLE_NATIVE": "1",
                               "FASTQ_REQUIRE_NATIVE": "1"}, cwd=tmp_path)
    assert proc.returncode != 0 and "contradict" in proc.stderr


@needs_native
def test_env_cpu_isa_lowers_active_isa(tmp_path):
    proc = run_python("""
        import fastq
        print(fastq.detected_cpu_isa(), fastq.cpu_isa(), fastq.kernel_for("quantize_int8", "cpu"))
    """, tmp_path, FASTQ_CPU_ISA="scalar")
    detected, active, kernel = proc.stdout.split()
    assert detected == fastq.detected_cpu_isa()
    assert active == "scalar" and kernel == "native:scalar"
    assert "Warning" not in proc.stderr


@needs_native
@pytest.mark.parametrize("value", ["bogus"])
def test_env_cpu_isa_bogus_warns_and_is_ignored(tmp_path, value):
    proc = run_python("""
        import fastq
        print(fastq.cpu_isa())
    """, tmp_path, FASTQ_CPU_ISA=value)
    assert proc.stdout.split() == [fastq.detected_cpu_isa()]
    assert "RuntimeWarning" in proc.stderr and f"FASTQ_CPU_ISA={value!r}" in proc.stderr


@needs_native
def test_env_cpu_isa_above_detected_warns(tmp_path):
    detected = fastq.detected_cpu_isa()
    if detected == ISAS[-1]:
        pytest.skip(f"nothing above the detected ISA ({detected}) on this machine")
    higher = ISAS[ISAS.index(detected) + 1]
    proc = run_python("import fastq; print(fastq.cpu_isa())", tmp_path, FASTQ_CPU_ISA=higher)
    assert proc.stdout.split() == [detected] and "may only lower" in proc.stderr


@needs_native
def test_set_cpu_isa_refuses_unknown_and_too_high(monkeypatch):
    saved = fastq.cpu_isa()
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        fastq.set_cpu_isa("avx1024")
    detected = fastq.detected_cpu_isa()
    if detected != ISAS[-1]:
        with pytest.raises(ValueError, match="not supported by this machine"):
            fastq.set_cpu_isa(ISAS[ISAS.index(detected) + 1])
    # The native layer checks again, whatever Python lets through.
    with pytest.raises(RuntimeError, match="not available"):
        _native._C.set_cpu_isa(ISAS.index(detected) + 1)
    # Pretend the CPU only has scalar: everything above must be refused by the Python check.
    monkeypatch.setattr(_native._C, "cpu_isa_detected", lambda: 0)
    for name in ISAS[1:]:
        with pytest.raises(ValueError, match="not supported by this machine"):
            fastq.set_cpu_isa(name)
    monkeypatch.undo()
    assert fastq.cpu_isa() == saved


@needs_native
def test_set_cpu_isa_lowers_and_restores():
    saved = fastq.cpu_isa()
    try:
        for name in ISAS[: ISAS.index(fastq.detected_cpu_isa()) + 1]:
            fastq.set_cpu_isa(name)
            assert fastq.cpu_isa() == name and fastq.kernel_for("quantize_int8", "cpu") == f"native:{name}"
    finally:
        fastq.set_cpu_isa(saved)
    assert fastq.cpu_isa() == saved
