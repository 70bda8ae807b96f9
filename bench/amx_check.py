"""amx_check: a quick look at fastq's AMX tier on a machine that has it (or under FASTQ_AMX_EMULATE=1
for the correctness part only: emulated tiles are far too slow to time).

    python bench/amx_check.py [--threads 2,16] [--quick] [--json out.json]

1. What the machine offers: the lscpu/cpuinfo AMX flags, fastq's AMX status (CPUID, XCR0, the Linux
   permission request) and the M thresholds.
2. Correctness of the tiles (threshold forced to 1, so every M runs them): W8A8 and int8_gemm bit for
   bit against the reference, weight-only (bfloat16 x) within the float32 bound of the op tests.
3. Timing, one interleaved run per (threads, shape, M) row (fastq.benchmarking.time_round_robin):
   fastq W8A8 on the AMX tiles and on AVX-512 VNNI, fastq weight-only (bfloat16 x) on the bf16 tiles
   and on AVX-512, bf16 and fp32 F.linear, torch.ao quantize_dynamic (onednn and x86 engines). Weights
   of 4096x11008 are 45 MB int8 / 90 MB bf16: cache-resident on a 300+ MiB L3, DRAM-bound on small ones.
   Prints a markdown table; writes JSON to --json, or to $OUT/amx_check.json when OUT is set.

Nothing here asserts on speed. Invariant: every fastq candidate restores the ISA and thresholds it
changed, and each candidate sets the global state it needs before every call (ISA, threshold,
quantized engine), so interleaving cannot leak one candidate's setting into another.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import fastq
except ImportError:  # run as `python bench/amx_check.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq import _native
from fastq.benchmarking import format_table, median, time_round_robin
from fastq.ops import _library, reference

SHAPES = [(4096, 4096), (4096, 11008)]  # (K, N)
M_LIST = [1, 2, 4, 5, 8, 16, 32, 128, 512]
QUICK_M = [1, 8, 32, 128, 512]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    return sorted({f for f in (flags.group(1).split() if flags else []) if f.startswith("amx") or f in
                   ("avx512_bf16", "avx512_vnni", "avx512_fp16")})


def cpu_model() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m.group(1) if m else platform.processor()
    except OSError:
        return platform.processor()


def with_tier(isa: str, kind: str, threshold: int):
    """A wrapper that sets the ISA and the AMX threshold of ``kind`` before calling."""
    def wrap(fn):
        def call():
            _native.set_cpu_isa(isa)
            if isa == "amx":
                _native.set_amx_min_m(kind, threshold)
            return fn()
        return call
    return wrap


# ---- correctness -------------------------------------------------------------------------------

def check_correctness() -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for m, n, k in [(1, 33, 70), (8, 64, 256), (17, 100, 1000), (33, 129, 4096), (128, 256, 4096), (130, 48, 520)]:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
        packed = _library.int8_pack_weight(w)
        w_scale = torch.rand(n, generator=gen) * 0.02 + 1e-3
        bias = torch.randn(n, generator=gen)
        x = torch.randn(m, k, generator=gen) * 3 + 0.5
        _native.set_cpu_isa("amx")
        _native.set_amx_min_m("int8", 1)
        _native.set_amx_min_m("bf16", 1)
        calls = (_native.amx_calls("int8"), _native.amx_calls("bf16"))
        ok_w8a8 = all(torch.equal(_library.int8_linear_dynamic(x, packed, w_scale, bias, n, sym, torch.float32),
                                  reference.int8_linear_dynamic(x, packed, w_scale, bias, n, sym, torch.float32))
                      for sym in (True, False))
        a = torch.randint(-128, 128, (max(m, 5), k), dtype=torch.int8, generator=gen)
        ok_gemm = torch.equal(_library.int8_gemm(a, w), reference.int8_gemm(a, w))
        xb = x.bfloat16()
        y = _library.int8_weight_only_linear(xb, packed, w_scale.reshape(n, 1), bias, n).double()
        exact = xb.double() @ (w.double() * w_scale.double().reshape(n, 1)).T + bias.double()
        bound = 2 * (k + 2) * torch.finfo(torch.float32).eps * (xb.double().abs() @ (w.double().abs() * w_scale.double().reshape(n, 1)).T)
        bound = bound + 2 * torch.finfo(torch.bfloat16).eps * exact.abs()
        worst = float(((y - exact).abs() / (bound + 1e-30)).max())
        ran = (_native.amx_calls("int8") - calls[0], _native.amx_calls("bf16") - calls[1])
        rows.append({"m": m, "n": n, "k": k, "w8a8 bit-exact": ok_w8a8, "int8_gemm bit-exact": ok_gemm,
                     "wo bf16 err/bound": round(worst, 3), "wo ok": worst <= 1.0,
                     "amx calls (int8, bf16)": f"{ran[0]}, {ran[1]}"})
    return rows


# ---- timing ------------------------------------------------------------------------------------

def candidates(k: int, n: int, m: int, gen: torch.Generator) -> dict:
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) / k ** 0.5)
        lin.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    w = lin.weight.detach()
    w_scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
    packed = _library.int8_pack_weight(q)
    bias = lin.bias.detach().clone()
    x = torch.randn(m, k, generator=gen)
    xb = x.bfloat16()
    wb, bb = w.bfloat16(), bias.bfloat16()
    s1 = w_scale.reshape(n, 1).contiguous()

    def w8a8():
        return _library.int8_linear_dynamic(x, packed, w_scale, bias, n, True, torch.float32)

    def wo():
        return _library.int8_weight_only_linear(xb, packed, s1, bias, n)

    fns = {
        "w8a8 amx": with_tier("amx", "int8", 1)(w8a8),
        "w8a8 vnni": with_tier("avx512", "int8", 1)(w8a8),
        "wo bf16 amx": with_tier("amx", "bf16", 1)(wo),
        "wo avx512": with_tier("avx512", "bf16", 1)(wo),
        "bf16 F.linear": lambda: F.linear(xb, wb, bb),
        "fp32 F.linear": lambda: F.linear(x, w, bias),
    }
    model = nn.Sequential(lin).eval()
    for engine in ("onednn", "x86"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        qm = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)

        def ao(qm=qm, engine=engine):
            torch.backends.quantized.engine = engine
            with torch.no_grad():
                return qm(x)
        fns[f"ao {engine}"] = ao
    return fns


def time_rows(threads: int, shapes, m_list, rounds: int) -> list[dict]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for k, n in shapes:
        for m in m_list:
            fns = candidates(k, n, m, gen)
            # Calls per sample so that a sample is >= ~2 ms (noise of the timer and the scheduler).
            probe = time_round_robin(fns, rounds=1, warmup=1)
            inner = max(1, min(50, int(2e-3 / max(1e-6, min(v[0] for v in probe.values())))))
            samples = time_round_robin(fns, rounds=rounds, warmup=1, inner=inner)
            ms = {name: median(s) * 1e3 for name, s in samples.items()}
            row = {"threads": threads, "K": k, "N": n, "M": m}
            row.update({name: round(v, 4) for name, v in ms.items()})
            row["amx/vnni"] = round(ms["w8a8 vnni"] / ms["w8a8 amx"], 2)
            row["amx/bf16"] = round(ms["bf16 F.linear"] / ms["w8a8 amx"], 2)
            if "ao onednn" in ms:
                row["amx/onednn"] = round(ms["ao onednn"] / ms["w8a8 amx"], 2)
            row["wo amx/bf16"] = round(ms["bf16 F.linear"] / ms["wo bf16 amx"], 2)
            rows.append(row)
            print(f"  threads {threads} K {k} N {n} M {m}: " +
                  ", ".join(f"{name} {v:.3f}" for name, v in ms.items()) + " ms", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--quick", action="store_true", help=f"M in {QUICK_M} only")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", help="write the results here (default $OUT/amx_check.json when OUT is set)")
    args = p.parse_args()

    report = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "torch": torch.__version__,
              "fastq_detected": _native.detected_cpu_isa(), "amx_status": _native.amx_status(),
              "amx_min_m": {"int8": _native.amx_min_m("int8"), "bf16": _native.amx_min_m("bf16")},
              "quantized_engines": list(torch.backends.quantized.supported_engines)}
    print(f"CPU: {report['cpu']}; flags: {' '.join(report['cpu_flags']) or '(none)'}")
    print(f"fastq: detected {report['fastq_detected']}; AMX {report['amx_status']}; "
          f"thresholds int8 M >= {report['amx_min_m']['int8']}, bf16 M >= {report['amx_min_m']['bf16']}")
    if _native.detected_cpu_isa() != "amx":
        print("no amx tier here: nothing to check")
        return 0
    saved = (_native.cpu_isa(), _native.amx_min_m("int8"), _native.amx_min_m("bf16"))
    try:
        report["correctness"] = check_correctness()
        print("\n## correctness (AMX tiles at every M)\n\n" + format_table(report["correctness"]))
        if _native.amx_status().startswith("emulated"):
            print("\nemulated tiles: timing skipped")
        else:
            rows = []
            for t in (int(s) for s in args.threads.split(",")):
                rows += time_rows(t, SHAPES, QUICK_M if args.quick else M_LIST, args.rounds)
            report["timing_ms"] = rows
            print("\n## ms per call (median of interleaved rounds)\n\n" + format_table(rows))
    finally:
        _native.set_cpu_isa(saved[0])
        _native.set_amx_min_m("int8", saved[1])
        _native.set_amx_min_m("bf16", saved[2])
    out = args.json or (os.path.join(os.environ["OUT"], "amx_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
