"""Benchmark of quantize_int8 / dequantize_int8 against PyTorch's routes, at 1M and 16M fp32 elements.

Two ways to run it:
  python bench/bench_quantize.py [--rounds N] [--sizes 1M,16M]   # markdown table, round-robin timing
  python -m pytest bench/bench_quantize.py --benchmark-enable     # pytest-benchmark, one test per row

What is timed: one call producing int8 codes (and scales) from a float32 [rows, cols] tensor, or
float32 from int8 codes. Bytes moved per call = fp32 read + int8 write (5 bytes per element) for
quantize and int8 read + fp32 write for dequantize; scales are negligible. GB/s = bytes / median
time; "best GB/s" uses the fastest sample (the machine undisturbed by other processes). "x copy"
divides the median time of a plain memory copy moving the same bytes, timed round-robin in the
same run (so machine noise hits both alike), by the candidate's. "outputs" says whether the call
wrote into a reused buffer ("out=") or allocated fresh outputs ("fresh"; large fresh outputs pay
page faults on first touch). Candidates:
  fastq          the public API (fastq.quantize_int8 / dequantize_int8): native kernel, eager path
  fastq op       torch.ops.fastq.* (the torch.library op, as torch.compile sees it)
  reference      fastq.ops.reference (the pure-PyTorch specification)
  torch q        torch.quantize_per_tensor(_dynamic) / torch.quantize_per_channel (+ amax for dynamic)
  torch expr     the plain expression: scale = amax / 127; (x / scale).round().clamp(-127, 127).to(int8)
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

if __package__ in (None, ""):  # `python bench/bench_quantize.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastq  # noqa: E402
from fastq.benchmarking import QUANTIZE_SIZES, format_table, median, time_round_robin  # noqa: E402
from fastq.ops import reference  # noqa: E402

# torch's quantized-tensor constructors warn that they are deprecated; they are the baseline here.
warnings.filterwarnings("ignore", message=".*quantize.*deprecated.*")

SHAPES = {"1M": (1024, 1024), "16M": (4096, 4096)}
assert all(r * c == QUANTIZE_SIZES[k] for k, (r, c) in SHAPES.items())


@dataclass(frozen=True)
class Spec:
    """One benchmark row: what is computed (op, granularity, scales) and by whom (impl, outputs)."""

    op: str           # "quantize" or "dequantize"
    granularity: str  # "per-tensor", "per-token/channel" (one scale per row), "group-128"
    scales: str       # "dynamic" (computed) or "static" (given)
    impl: str
    outputs: str      # "out=" (reused buffer) or "fresh"
    make: Callable[[dict], Callable[[], object]]

    @property
    def id(self) -> str:
        return "-".join((self.op, self.granularity.replace("/", "_"), self.scales, self.impl.replace(" ", "_"),
                         self.outputs))


@functools.lru_cache(maxsize=1)
def inputs(size: str) -> dict:
    """Random inputs and reusable output buffers for one size (cached: 16M tensors are 64 MB)."""
    rows, cols = SHAPES[size]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=gen) * torch.exp(torch.randn(rows, 1, generator=gen))
    s_tensor = (x.abs().amax() / 127).reshape(1, 1)
    s_row = x.abs().amax(dim=1, keepdim=True) / 127
    s_g128 = x.reshape(rows, cols // 128, 128).abs().amax(dim=-1) / 127
    codes = torch.randint(-127, 128, (rows, cols), generator=gen, dtype=torch.int8)
    return {
        "x": x, "s_tensor": s_tensor, "s_row": s_row, "s_g128": s_g128, "codes": codes,
        "codes_out": torch.empty(rows, cols, dtype=torch.int8), "y_out": torch.empty(rows, cols),
        "zp_row": torch.zeros(rows, dtype=torch.int64),
        "q_row": torch.quantize_per_channel(x, s_row.flatten().double(), torch.zeros(rows, dtype=torch.int64), 0,
                                            torch.qint8),
    }


def _g(granularity: str) -> int:
    return {"per-tensor": fastq.PER_TENSOR, "per-token/channel": fastq.PER_ROW, "group-128": 128}[granularity]


def _scale_key(granularity: str) -> str:
    return {"per-tensor": "s_tensor", "per-token/channel": "s_row", "group-128": "s_g128"}[granularity]


def _quantize_specs(granularity: str, scales: str) -> list[Spec]:
    g, sk, static = _g(granularity), _scale_key(granularity), scales == "static"

    def fastq_out(i):
        s = i[sk] if static else None
        return lambda: fastq.quantize_int8(i["x"], g, True, s, out=i["codes_out"])

    def fastq_fresh(i):
        s = i[sk] if static else None
        return lambda: fastq.quantize_int8(i["x"], g, True, s)

    def fastq_op(i):
        s = i[sk] if static else None
        return lambda: torch.ops.fastq.quantize_int8(i["x"], g, True, s, None)

    def ref(i):
        s = i[sk] if static else None
        return lambda: reference.quantize_int8(i["x"], g, True, s, None)

    def expr(i):
        x = i["x"]
        if granularity == "group-128":
            x = x.reshape(x.shape[0], -1, 128)

        def run():
            if static:
                s = i[sk] if granularity != "group-128" else i[sk].unsqueeze(-1)
            elif granularity == "per-tensor":
                s = x.abs().amax() / 127
            else:
                s = x.abs().amax(dim=-1, keepdim=True) / 127
            return (x / s).round().clamp(-127, 127).to(torch.int8)
        return run

    specs = [Spec("quantize", granularity, scales, "fastq", "out=", fastq_out),
             Spec("quantize", granularity, scales, "fastq", "fresh", fastq_fresh),
             Spec("quantize", granularity, scales, "fastq op", "fresh", fastq_op),
             Spec("quantize", granularity, scales, "reference", "fresh", ref),
             Spec("quantize", granularity, scales, "torch expr", "fresh", expr)]
    if granularity == "per-tensor":
        if static:
            tq = (lambda i: lambda: torch.quantize_per_tensor(i["x"], float(i["s_tensor"]), 0, torch.qint8))
        else:
            tq = (lambda i: lambda: torch.quantize_per_tensor_dynamic(i["x"], torch.qint8, False))
        specs.append(Spec("quantize", granularity, scales, "torch q", "fresh", tq))
    elif granularity == "per-token/channel":
        def tq(i):
            def run():
                s = i["s_row"] if static else i["x"].abs().amax(dim=1, keepdim=True) / 127
                return torch.quantize_per_channel(i["x"], s.flatten().double(), i["zp_row"], 0, torch.qint8)
            return run
        specs.append(Spec("quantize", granularity, scales, "torch q", "fresh", tq))
    return specs


def _dequantize_specs(granularity: str) -> list[Spec]:
    sk = _scale_key(granularity)

    def scale(i):
        return i[sk]

    specs = [
        Spec("dequantize", granularity, "static", "fastq", "out=",
             lambda i: lambda: fastq.dequantize_int8(i["codes"], scale(i), out=i["y_out"])),
        Spec("dequantize", granularity, "static", "fastq", "fresh",
             lambda i: lambda: fastq.dequantize_int8(i["codes"], scale(i))),
        Spec("dequantize", granularity, "static", "reference", "fresh",
             lambda i: lambda: reference.dequantize_int8(i["codes"], scale(i), None, torch.float32)),
        Spec("dequantize", granularity, "static", "torch expr", "fresh",
             lambda i: lambda: i["codes"].float() * scale(i) if granularity != "group-128" else
             (i["codes"].reshape(i["codes"].shape[0], -1, 128).float() * scale(i).unsqueeze(-1))),
    ]
    if granularity == "per-token/channel":
        specs.append(Spec("dequantize", granularity, "static", "torch q", "fresh",
                          lambda i: lambda: i["q_row"].dequantize()))
    return specs


SPECS: list[Spec] = []
for _gran in ("per-tensor", "per-token/channel", "group-128"):
    for _scales in ("dynamic", "static"):
        SPECS += _quantize_specs(_gran, _scales)
for _gran in ("per-tensor", "per-token/channel"):
    SPECS += _dequantize_specs(_gran)


def bytes_moved(size: str) -> int:
    return 5 * QUANTIZE_SIZES[size]  # 4-byte float + 1-byte code per element, either direction


def copy_fn(size: str) -> Callable[[], object]:
    """A memory copy moving the same bytes as one call (reads + writes = bytes_moved)."""
    src = torch.randint(0, 256, (bytes_moved(size) // 2,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


# ---- pytest-benchmark ----------------------------------------------------------------------------

def _pytest_params():
    import pytest

    return [pytest.param(size, spec, id=f"{size}-{spec.id}") for size in SHAPES for spec in SPECS]


try:
    import pytest

    @pytest.mark.parametrize("size, spec", _pytest_params())
    def test_quantize_bench(benchmark, size, spec, copy_gbs):
        fn = spec.make(inputs(size))
        benchmark.group = f"{size} {spec.op} {spec.granularity} {spec.scales}"
        benchmark.extra_info.update(shape=list(SHAPES[size]), impl=spec.impl, outputs=spec.outputs)
        benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable (a one-call smoke run)
            gbs = bytes_moved(size) / stats.stats.median / 1e9
            benchmark.extra_info.update(gbs=round(gbs, 2), x_copy=round(gbs / copy_gbs(bytes_moved(size) // 2), 3))
except ImportError:  # pytest is only needed for the pytest-benchmark mode
    pass


# ---- standalone: one round-robin run, markdown table ------------------------------------------------

def run(sizes: list[str], rounds: int) -> list[dict]:
    rows = []
    for size in sizes:
        inp = inputs(size)
        fns = {"copy": copy_fn(size)}
        for spec in SPECS:
            fns[spec.id] = spec.make(inp)
        inner = 10 if QUANTIZE_SIZES[size] <= (1 << 20) else 1
        times = time_round_robin(fns, rounds=rounds, warmup=2, inner=inner)
        t_copy = median(times["copy"])
        nbytes = bytes_moved(size)
        for spec in SPECS:
            t = median(times[spec.id])
            base = next(s for s in SPECS if (s.op, s.granularity, s.scales, s.impl, s.outputs)
                        == (spec.op, spec.granularity, spec.scales, "fastq", "out="))
            rows.append({
                "size": size, "shape": "x".join(map(str, SHAPES[size])), "op": spec.op,
                "granularity": spec.granularity, "scales": spec.scales, "impl": spec.impl, "outputs": spec.outputs,
                "us": t * 1e6, "GB/s": nbytes / t / 1e9, "x copy": t_copy / t,
                "best GB/s": nbytes / min(times[spec.id]) / 1e9, "x fastq(out=)": t / median(times[base.id]),
            })
        rows.append({"size": size, "shape": "x".join(map(str, SHAPES[size])), "op": "copy", "granularity": "",
                     "scales": "", "impl": "Tensor.copy_", "outputs": "out=", "us": t_copy * 1e6,
                     "GB/s": nbytes / t_copy / 1e9, "x copy": 1.0, "best GB/s": nbytes / min(times["copy"]) / 1e9,
                     "x fastq(out=)": float("nan")})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="round-robin rounds (samples per candidate)")
    parser.add_argument("--sizes", default=",".join(SHAPES), help="comma-separated: " + ",".join(SHAPES))
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in SHAPES:
            parser.error(f"unknown size {s!r}; choose from {list(SHAPES)}")
    print(f"fastq {fastq.__version__}, kernel {fastq.kernel_for('quantize_int8', 'cpu')}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} rounds\n")
    print(format_table(run(sizes, args.rounds)))


if __name__ == "__main__":
    main()
