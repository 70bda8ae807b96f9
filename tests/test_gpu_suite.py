"""bench/gpu_suite.sh without a GPU: its dry run, its early stop when no CUDA device is present, its
argument handling, and the summary writer (bench/gpu_suite_summary.py) judging synthetic results.

The suite itself needs a GPU (it builds, tests, sanitizes and benchmarks the CUDA kernels); what
can run anywhere is checked here so the one GPU call it gets is not wasted on a typo.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
SUITE = BENCH / "gpu_suite.sh"


def _run(*args, out=None, timeout=120):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    cmd = ["bash", str(SUITE), *args] + (["--out", str(out)] if out is not None else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def summary_mod():
    spec = importlib.util.spec_from_file_location("gpu_suite_summary_under_test", BENCH / "gpu_suite_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_writes_the_summary(tmp_path):
    r = _run("--dry-run", "--steps", "build,tests,bench-linear", out=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dry run" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "dry run"
    assert [s["step"] for s in summary["steps"]] == ["build", "tests", "bench-linear"]
    assert all(s["status"] == "dry run" for s in summary["steps"])
    assert summary["env"]["torch"] == torch.__version__
    assert all(t["met"] is None for t in summary["targets"])  # nothing measured, nothing claimed
    assert "# fastq GPU suite" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "gpu_suite_logs.tar.gz").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")
def test_stops_early_without_a_cuda_device(tmp_path):
    r = _run(out=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no CUDA device" in r.stdout and "Nothing was built" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "no CUDA device"
    assert [s["step"] for s in summary["steps"]] == ["preflight"]  # no build, no test was attempted


@pytest.mark.parametrize("args, message", [
    (["--steps", "build,bogus"], "unknown step 'bogus'"),
    (["--budget", "abc"], "--budget must be"),
    (["--budget", "30"], "--budget must be"),
    (["--arch", "sm90"], "--arch must look like"),
    (["--out"], "--out needs a value"),
    (["--frobnicate"], "unknown argument"),
    (["--python", "/nonexistent/python"], "not found"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    r = _run(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


def test_help():
    r = _run("--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout


# ---- the summary writer on synthetic results ---------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.ops.test_int8_gemm_cuda" name="test_a"/>
<testcase classname="tests.ops.test_int8_gemm_cuda" name="test_b"><failure message="assert 1 == 2">x</failure></testcase>
<testcase classname="tests.ops.test_sparse_matmul_cuda" name="test_c"><skipped message="no sm80"/></testcase>
<testcase classname="tests.ops.test_quantize_int8" name="test_cuda_d"><error message="CUDA error: illegal address"/></testcase>
</testsuite></testsuites>"""

MEMCHECK_CLEAN = "  quantize ... ok\ngpu_sanitize: 0 of 23 cases failed\n========= ERROR SUMMARY: 0 errors\n"
RACECHECK_BAD = ("========= Error: Race reported between Write access at gemm_s8_kernel\n"
                 "gpu_sanitize: 0 of 23 cases failed\n"
                 "========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n")


def _linear(w8a8_vs_bf16, stream_speedup, quant_tbps):
    gemm = [{"m": m, "k": k, "n": k, "fastq_int8_gemm_ms": 1.0, "fastq_int8_gemm_tops": 900.0, "fastq_w8a8_bf16_ms": 1.0,
             "fastq_w8a8_bf16_tops": 900.0, "bf16_mm_ms": w8a8_vs_bf16, "bf16_mm_tops": 600.0, "torch_int_mm_ms": 0.9,
             "torch_int_mm_tops": 1000.0, "quantize_int_mm_ms": 1.1, "w8a8_vs_bf16": w8a8_vs_bf16,
             "w8a8_vs_quantize_int_mm": 1.1, "int8_gemm_vs_int_mm": 0.9, "int8_gemm_vs_bf16": 1.0}
            for k in (4096, 8192) for m in (256, 4096)]
    gemm.append({**gemm[0], "m": 32, "w8a8_vs_bf16": 0.1})  # below M=256: not judged
    stream = [{"m": m, "k": 4096, "n": 11008, "fastq_w8a8_ms": 0.02, "bf16_linear_ms": 0.03, "w8a8_weight_tbps": 2.2,
               "bf16_weight_tbps": 3.0, "speedup_vs_bf16": stream_speedup} for m in (1, 16)]
    return {"copy": [{"tbps": 4.0}], "quantize": [{"dtype": "float32", "fastq_ms": 0.1, "fastq_tbps": quant_tbps,
                                                   "torch_expr_ms": 0.5, "torch_expr_tbps": 0.8}],
            "gemm": gemm, "streaming": stream, "weight_only": []}


def test_summary_judges_every_target(tmp_path, summary_mod):
    (tmp_path / "cuda_tests.xml").write_text(JUNIT)
    (tmp_path / "memcheck.log").write_text(MEMCHECK_CLEAN)
    (tmp_path / "racecheck.log").write_text(RACECHECK_BAD)
    (tmp_path / "bench_linear.json").write_text(json.dumps(_linear(1.6, 1.2, 3.6)))
    (tmp_path / "bench_sparse.json").write_text(json.dumps({"rows": [
        {"m": 256, "n": 4096, "k": 4096, "fastq_ms": 1.0, "dense_ms": 1.2, "dense_over_fastq": 1.2,
         "cusparselt_over_fastq": 0.97},
        {"m": 16, "n": 4096, "k": 4096, "fastq_ms": 1.0, "dense_ms": 1.0, "dense_over_fastq": 1.0,
         "cusparselt_over_fastq": 0.5}]}))
    (tmp_path / "steps.jsonl").write_text(
        json.dumps({"step": "build", "status": "passed", "seconds": 40, "rc": 0, "note": "sm_90"}) + "\n"
        + json.dumps({"step": "racecheck", "status": "failed", "seconds": 60, "rc": 86, "note": ""}) + "\n")
    s = summary_mod.summarize(str(tmp_path))
    assert s["verdict"] == "steps failed: racecheck"
    assert s["tests"]["passed"] == 1 and s["tests"]["failed"] == 1 and s["tests"]["errors"] == 1
    assert s["tests"]["skipped"] == 1 and {f["test"].split("::")[1] for f in s["tests"]["failures"]} == {"test_b",
                                                                                                      "test_cuda_d"}
    met = {t["target"]: t["met"] for t in s["targets"]}
    assert met["every CUDA test passes (1 passed, 1 skipped)"] is False
    assert met["compute-sanitizer memcheck: no error"] is True
    assert met["compute-sanitizer racecheck: no error"] is False
    assert s["sanitizers"]["racecheck"]["hazards"] == 2 and s["sanitizers"]["racecheck"]["errors"] == 1
    assert met["quantize per token float32 64M elements vs copy bandwidth"] is True  # 3.6 / 4.0 = 90%
    assert met["W8A8 vs bf16 F.linear, M=256 4096x4096"] is True
    assert not any("M=32 " in t for t in met)  # rows below M=256 are not judged against 1.5x
    assert met["W8A8 weight streaming vs bf16, M=1 4096x11008"] is False  # 1.2 < 1.5
    assert met["2:4 mma.sp vs cuSPARSELt (time ratio), M=256 N=4096 K=4096"] is True
    assert not any("M=16 N=4096" in t for t in met)
    md = summary_mod.to_markdown(s)
    assert "| W8A8 vs bf16 F.linear, M=4096 8192x8192 | 1.60 | 1.5 x | yes |" in md
    assert "test_b" in md and "illegal address" in md


def test_summary_survives_missing_and_broken_inputs(tmp_path, summary_mod):
    (tmp_path / "cuda_tests.xml").write_text("<not xml")
    (tmp_path / "bench_linear.json").write_text("{truncated")
    (tmp_path / "memcheck.log").write_text("killed before the end\n")
    s = summary_mod.summarize(str(tmp_path))
    assert s["tests"] is None and s["bench"]["linear"] is None
    assert s["sanitizers"]["memcheck"]["errors"] is None
    assert all(t["met"] is None for t in s["targets"])
    out = tmp_path / "out"
    assert summary_mod.main(["--work", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "summary.md").exists() and json.loads((out / "summary.json").read_text())["targets"]
    assert summary_mod.main(["--work", str(tmp_path / "nope"), "--out", str(out)]) == 2
