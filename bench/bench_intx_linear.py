"""Speed of the intx linears (intx_weight_only_linear, intx_linear_dynamic) against their peers.

    python bench/bench_intx_linear.py [--quick] [--rounds 30] [--rotate 3] [--json out.json]

Rows (issue 11 targets):
  * 4096x11008 (K x N), M=1: fastq int4 weight-only (group 128 symmetric, and group 32) vs fastq
    int8 weight-only (per channel), onnxruntime com.microsoft MatMulNBits (bits 4, block 32,
    accuracy_level 0 = float compute and 4 = int8 compute), torchao int4 on CPU
    (PrototypeInt4WeightOnlyConfig, group 128) and fp32 F.linear; int2 vs int4; W4A8 (fastq int4
    dynamic) at M=1 too.
  * W4A8 at M = 32 and 128 on 4096x11008 and 4096x4096: fastq intx_linear_dynamic vs MatMulNBits
    accuracy level 4 (W4A8 block-wise) and fastq W8A8.
Every candidate is called as a user calls it (fastq through its op's eager path, ``call_op``), all
on ``torch.get_num_threads()`` threads (onnxruntime: the same count, spinning off), interleaved
round-robin in one run (fastq.benchmarking.time_round_robin), medians reported. ``--rotate R``
cycles each candidate through R copies of its weights so that M=1 reads them from DRAM rather than
the 32 MiB L3 (R=1: the L3-resident regime; int4 4096x11008 is 22.5 MB, int8 45 MB). Nothing here
asserts on speed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import fastq
from fastq.benchmarking import format_table, median, time_round_robin
from fastq.ops import call_op
from fastq.ops import _library as L


def _rotating(makers: list[Callable[[], Callable[[], object]]]) -> Callable[[], object]:
    fns = [make() for make in makers]
    cycle = itertools.cycle(fns)
    return lambda: next(cycle)()


def _fastq_intx(x, k, n, bits, group, asym, mode):
    gen = torch.Generator().manual_seed(bits + group)
    groups = k // group
    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=gen)
    scale = torch.rand(n, groups, generator=gen) * 0.01 + 1e-3
    zero = torch.randint(0, 1 << bits, (n, groups), dtype=torch.uint8, generator=gen) if asym else None
    packed = L.intx_pack_weight(codes, scale, zero, bits)
    if mode == "dynamic":
        return lambda: call_op("intx_linear_dynamic", x, packed, None, n, groups, bits, asym, x.dtype)
    return lambda: call_op("intx_weight_only_linear", x, packed, None, n, groups, bits, asym)


def _fastq_int8(x, k, n, dynamic):
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = L.int8_pack_weight(w)
    if dynamic:
        s = torch.rand(n) * 0.01
        return lambda: call_op("int8_linear_dynamic", x, packed, s, None, n, True, x.dtype)
    s = torch.rand(n, 1) * 0.01
    return lambda: call_op("int8_weight_only_linear", x, packed, s, None, n)


def _ort_matmulnbits(x, k, n, level, block=32):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(level)
    blocks = k // block
    b = rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=level)
    graph = helper.make_graph(
        [node], "mnb", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[helper.make_tensor("B", TensorProto.UINT8, b.shape, b.tobytes(), raw=True),
                     helper.make_tensor("scales", TensorProto.FLOAT, scales.shape, scales.tobytes(), raw=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    xa = x.numpy()
    return lambda: sess.run(None, {"A": xa})


def _torchao_int4(x, k, n):
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_

    lin = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False))
    quantize_(lin, PrototypeInt4WeightOnlyConfig(group_size=128))
    return lambda: lin(x)


def _fp32(x, k, n):
    w = torch.randn(n, k) * 0.01
    return lambda: F.linear(x, w)


def _candidates(m: int, k: int, n: int, rotate: int) -> dict:
    x = torch.randn(m, k)
    table = {
        "fastq int4 wo g128": lambda: _fastq_intx(x, k, n, 4, 128, False, "weight_only"),
        "fastq int4 wo g32": lambda: _fastq_intx(x, k, n, 4, 32, False, "weight_only"),
        "fastq int2 wo g128": lambda: _fastq_intx(x, k, n, 2, 128, True, "weight_only"),
        "fastq w4a8 g128": lambda: _fastq_intx(x, k, n, 4, 128, False, "dynamic"),
        "fastq w4a8 g32": lambda: _fastq_intx(x, k, n, 4, 32, False, "dynamic"),
        "fastq w2a8 g128": lambda: _fastq_intx(x, k, n, 2, 128, True, "dynamic"),
        "fastq int8 wo": lambda: _fastq_int8(x, k, n, False),
        "fastq w8a8": lambda: _fastq_int8(x, k, n, True),
        "ort mnb4 acc0": lambda: _ort_matmulnbits(x, k, n, 0),
        "ort mnb4 acc4": lambda: _ort_matmulnbits(x, k, n, 4),
        "torchao int4": lambda: _torchao_int4(x, k, n),
        "fp32": lambda: _fp32(x, k, n),
    }
    if m > 1:  # large M: the W4A8 comparison (weight-only and torchao int4 are far slower there)
        table = {name: make for name, make in table.items()
                 if name in ("fastq w4a8 g128", "fastq w4a8 g32", "fastq w8a8", "ort mnb4 acc4", "fp32",
                             "fastq int4 wo g128")}
    out = {}
    for name, make in table.items():
        try:
            copies = rotate if m == 1 and name != "fp32" else 1  # fp32 (180 MB) never fits in L3 anyway
            out[name] = _rotating([make] * copies)
        except Exception as exc:  # a peer missing on this machine: reported, not fatal
            print(f"skip {name}: {type(exc).__name__}: {str(exc)[:160]}")
    return out


def _ratio(t: dict, a: str, b: str):
    return round(t[b] / t[a], 2) if a in t and b in t else None


def run(shapes, rounds: int, rotate: int) -> list[dict]:
    rows = []
    for (k, n), m in shapes:
        fns = _candidates(m, k, n, rotate)
        samples = time_round_robin(fns, rounds=rounds, warmup=2)
        t = {name: median(s) for name, s in samples.items()}
        row = {"K x N": f"{k}x{n}", "M": m}
        row.update({name: f"{1e3 * v:.3f}" for name, v in t.items()})
        if m == 1:
            i4 = "fastq int4 wo g128"
            row["int4 wo vs int8 wo (>=1.7)"] = _ratio(t, i4, "fastq int8 wo")
            row["int4 wo vs ort acc0 (>=1.3)"] = _ratio(t, i4, "ort mnb4 acc0")
            row["int4 wo vs ort acc4 (>=1.3)"] = _ratio(t, i4, "ort mnb4 acc4")
            row["int4 wo vs torchao (>=5)"] = _ratio(t, i4, "torchao int4")
            row["int2 vs int4 wo (>=1.5)"] = _ratio(t, "fastq int2 wo g128", i4)
            row["w2a8 vs w4a8"] = _ratio(t, "fastq w2a8 g128", "fastq w4a8 g128")
            row["w4a8 vs ort acc4"] = _ratio(t, "fastq w4a8 g32", "ort mnb4 acc4")
        else:
            row["w4a8 g32 vs ort acc4 (>=1.2)"] = _ratio(t, "fastq w4a8 g32", "ort mnb4 acc4")
            row["w4a8 g128 vs ort acc4"] = _ratio(t, "fastq w4a8 g128", "ort mnb4 acc4")
        rows.append(row)
        print(format_table([row]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4096x11008 only, fewer rounds")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rotate", type=int, default=3, help="weight copies per candidate at M=1 (1: L3-resident)")
    ap.add_argument("--threads", type=int, default=0, help="threads for every candidate (default: torch's)")
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [((4096, 11008), 1), ((4096, 11008), 32), ((4096, 11008), 128)]
    if not args.quick:
        shapes += [((4096, 4096), 1), ((4096, 4096), 32), ((4096, 4096), 128)]
    rounds = min(args.rounds, 12) if args.quick else args.rounds
    print(f"machine: {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"CPU ISA {fastq.cpu_isa()}, torch {torch.__version__}; times in ms (median of {rounds} "
          f"interleaved rounds); M=1 weights rotate over {args.rotate} copies")
    rows = run(shapes, rounds, args.rotate)
    print()
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rotate": args.rotate, "rounds": rounds, "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
