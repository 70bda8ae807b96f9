"""bench_masked_matmul: fastq's sparse masked matmul kernels against dense and sparse peers.

Run as a script for the interleaved comparison table (markdown):

    python bench/bench_masked_matmul.py [--quick] [--threads 2]

or under pytest-benchmark (one benchmark per candidate x case; a small grid):

    PYTHONPATH=. python -m pytest bench/bench_masked_matmul.py --benchmark-enable

Invariants:
  * Every candidate computes y = x @ (W * M)^T for the same Gaussian W, mask and x; all run with
    torch.set_num_threads(threads) (scipy is single-threaded: it is what scipy offers).
  * fastq runs as SparseLinear calls it (fastq.ops.call_op: the eager fast path to the native
    kernel, no torch.library dispatch cost). Unstructured rows time both storages, padded CSR
    ("fastq_csr") and sliced ELL ("fastq_ell"), and int8 rows both int8 variants. The fastq
    column ("fastq_ms", "fmt", "met") is the storage ``sparsify_`` picks by default
    (``fastq.nn.sparse.choose_format`` with format=None): what a user gets. "best_ms" / "best_fmt" /
    "met_best" are the faster storage, labelled as such: reaching it needs ``format=`` by hand.
  * Ratios come from ONE run: per row, the candidates are timed in interleaved rounds (one call
    each per round, median over rounds; the first candidate of each round rotates, so none always
    runs after the same other one), so load from other processes on a shared machine hits them
    alike. Peers: dense F.linear on the pruned weight, torch.sparse CSR with int32 indices,
    torch.sparse BSR (block rows), scipy CSR.
  * Nothing asserts on speed; the target/met columns report the targets of issue 4.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

try:
    import fastq
except ImportError:  # run as `python bench/bench_masked_matmul.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq.ops import _library as L
from fastq.ops import call_op

SHAPES = [(4096, 4096), (768, 3072)]  # (N, K): a Llama-7B-sized square layer, the BERT FFN down
MS = [1, 8, 32, 128]
SPARSITIES = [0.5, 0.6, 0.75, 0.9, 0.95]
BLOCK_SHAPES = [(4, 4), (1, 4), (8, 1)]
BLOCK_SPARSITIES = [0.6, 0.9]


def time_round_robin(fns: dict, rounds: int, budget_s: float = 20.0) -> dict:
    """Median seconds per call of each fn, one call of each per round (after a warm-up call)."""
    for f in fns.values():
        f()
    samples = {k: [] for k in fns}
    names = list(fns)
    start = time.perf_counter()
    for r in range(rounds):
        for j in range(len(names)):
            k = names[(r + j) % len(names)]
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: statistics.median(v) for k, v in samples.items()}


def make_case(n: int, k: int, kind: str, sparsity: float, gen: torch.Generator):
    """(pruned weight, mask) for kind 'unstructured' | '2:4' | 'block RxC'."""
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    if kind == "2:4":
        mask = (torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2) < 2).reshape(n, k)
    elif kind.startswith("block"):
        br, bc = map(int, kind[5:].split("x"))
        keep = torch.rand(n // br, k // bc, generator=gen) >= sparsity
        mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    else:
        mask = torch.rand(n, k, generator=gen) >= sparsity
    return w * mask, mask


def candidates(wm: torch.Tensor, mask: torch.Tensor, x: torch.Tensor, kind: str, int8: bool = False) -> dict:
    """name -> zero-argument callable computing y (or y^T for the torch/scipy sparse peers)."""
    n = wm.shape[0]
    out: dict = {"dense": lambda: F.linear(x, wm)}
    if kind == "2:4":
        values, meta = L.sparse_24_pack(wm, mask)
        out["fastq"] = lambda: call_op("sparse_24_linear", x, values, meta, None)
    elif kind.startswith("block"):
        br, bc = map(int, kind[5:].split("x"))
        packed = L.sparse_bsr_pack(wm, mask, br, bc)
        out["fastq"] = lambda: call_op("sparse_bsr_linear", x, *packed, None, n)
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        try:
            bsr = wm.to_sparse_bsr((br, bc))
            torch.mm(bsr, x.t())
            out["torch_bsr"] = lambda: torch.mm(bsr, x.t())
        except (RuntimeError, NotImplementedError):
            pass
    else:
        packed = L.sparse_csr_pack(wm, mask)
        out["fastq_csr"] = lambda: call_op("sparse_csr_linear", x, *packed, None, n)
        ell = L.sparse_ell_pack(wm, mask)
        out["fastq_ell"] = lambda: call_op("sparse_ell_linear", x, *ell, None, n)
        if int8:
            q = L.sparse_int8_pack(wm, mask)
            out["fastq_csr_int8"] = lambda: call_op("sparse_int8_linear", x, *q, None)
            ell8 = L.sparse_ell_pack(wm, mask, True)
            out["fastq_ell_int8"] = lambda: call_op("sparse_ell_linear", x, *ell8, None, n)
    if not kind.startswith("block") and not int8:
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")  # torch.sparse beta notices
        csr64 = wm.to_sparse_csr()
        csr = torch.sparse_csr_tensor(csr64.crow_indices().int(), csr64.col_indices().int(), csr64.values(),
                                      size=wm.shape)
        out["torch_csr"] = lambda: torch.mm(csr, x.t())
        try:
            import scipy.sparse as sps

            s = sps.csr_matrix(wm.numpy())
            xt = x.t().contiguous().numpy()
            out["scipy_csr"] = lambda: s @ xt
        except ImportError:
            pass
    return out


PEERS = ("torch_csr", "torch_bsr", "scipy_csr")


def fastq_times(t: dict, best: bool = False) -> dict:
    """Times with each fastq storage's time moved under its short name ("csr", "ell", "csr_int8",
    "ell_int8") and "fastq" / "fastq_int8" set to the storage ``sparsify_`` uses by default
    (``UNSTRUCTURED_DEFAULT``), or with ``best`` to the faster one; "fmt" / "fmt_int8" name it.
    Other rows pass through."""
    from fastq.nn.sparse import UNSTRUCTURED_DEFAULT

    out = {k: v for k, v in t.items() if not k.startswith("fastq_")}
    for suffix in ("", "_int8"):
        fmts = {f"{s}{suffix}": t[f"fastq_{s}{suffix}"] for s in ("csr", "ell") if f"fastq_{s}{suffix}" in t}
        if fmts:
            out.update(fmts)
            out[f"fmt{suffix}"] = min(fmts, key=fmts.get) if best else f"{UNSTRUCTURED_DEFAULT}{suffix}"
            out[f"fastq{suffix}"] = fmts[out[f"fmt{suffix}"]]
    out.setdefault("fmt", "")
    return out


def target_for(kind: str, m: int, sparsity: float, int8: bool) -> tuple[str, Optional[Callable[[dict], bool]], str]:
    """(target text, check(times) -> bool, which ratio it uses) for a row, or no target."""
    def vs_dense(name: str, x: float, strict: bool = False):
        return lambda t: t["dense"] / t[name] > x if strict else t["dense"] / t[name] >= x

    if int8:
        return (">=12x dense", vs_dense("fastq_int8", 12.0), "int8") if m == 1 else ("", None, "")
    if kind == "unstructured":
        if m == 1:
            goal = {0.5: 1.0, 0.75: 2.3, 0.9: 5.0, 0.95: 8.0}.get(sparsity)
            if goal is None:
                return ("", None, "")
            strict = goal == 1.0  # "faster than dense"
            return (f"{'>' if strict else '>='}{goal:g}x dense", vs_dense("fastq", goal, strict), "")
        if m >= 32 and sparsity == 0.6:
            return (">1x dense (crossover <=60%)", vs_dense("fastq", 1.0), "")
        if m >= 32 and sparsity >= 0.9:
            return (">=1.3x best peer", lambda t: min(v for k, v in t.items() if k == "dense" or k in PEERS) / t["fastq"] >= 1.3, "")
        return ("", None, "")
    if kind == "2:4":
        goal = {1: 1.3, 32: 1.1, 128: 1.0}.get(m)
        return (f">={goal:g}x dense", vs_dense("fastq", goal), "") if goal else ("", None, "")
    # blocks
    def block_ok(t):
        ok = "torch_bsr" not in t or t["torch_bsr"] / t["fastq"] >= 1.2
        return ok and (sparsity != 0.6 or t["dense"] / t["fastq"] >= 1.0)
    return (">=1.2x torch BSR" + (", >1x dense" if sparsity == 0.6 else ""), block_ok, "")


def run(quick: bool, threads: int) -> list:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    shapes = SHAPES
    ms = [1, 32, 128] if quick else MS
    plan = []
    for n, k in shapes:
        small = (n, k) != SHAPES[0]
        for m in ms:
            if quick and small and m == 128:
                continue
            for sp in SPARSITIES:
                if m == 1 and sp == 0.6 or m > 1 and sp == 0.5 and quick:
                    continue
                plan.append((n, k, m, "unstructured", sp, False))
            plan.append((n, k, m, "2:4", 0.5, False))
            for bs in (BLOCK_SHAPES[:1] if quick else BLOCK_SHAPES):
                for sp in BLOCK_SPARSITIES:
                    plan.append((n, k, m, f"block{bs[0]}x{bs[1]}", sp, False))
        plan.append((n, k, 1, "unstructured", 0.9, True))
    cache = {}
    for n, k, m, kind, sp, int8 in plan:
        key = (n, k, kind, sp)
        if key not in cache:
            cache.clear()
            cache[key] = make_case(n, k, kind, sp, gen)
        wm, mask = cache[key]
        x = torch.randn(m, k, generator=gen)
        fns = candidates(wm, mask, x, kind, int8)
        rounds = (7 if m >= 32 else 31) if quick else (15 if m >= 32 else 61)
        raw = time_round_robin(fns, rounds, budget_s=6.0 if quick else 20.0)
        t, tb = fastq_times(raw), fastq_times(raw, best=True)
        text, check, _ = target_for(kind, m, sp, int8)
        fq = t["fastq_int8"] if int8 else t["fastq"]
        fq_best = tb["fastq_int8"] if int8 else tb["fastq"]
        peers = {k2: v for k2, v in t.items() if k2 in PEERS}
        best_peer = min(peers.values()) if peers else None
        rows.append({
            "shape": f"{n}x{k}", "M": m, "pattern": kind + (" +int8" if int8 else ""), "sparsity": sp,
            "dense_ms": t["dense"] * 1e3, "fastq_ms": fq * 1e3, "fmt": t["fmt_int8" if int8 else "fmt"],
            "csr_ms": t.get("csr_int8" if int8 else "csr", float("nan")) * 1e3,
            "ell_ms": t.get("ell_int8" if int8 else "ell", float("nan")) * 1e3,
            "torch_csr_ms": t.get("torch_csr", float("nan")) * 1e3, "torch_bsr_ms": t.get("torch_bsr", float("nan")) * 1e3,
            "scipy_ms": t.get("scipy_csr", float("nan")) * 1e3,
            "x_dense": t["dense"] / fq, "x_best_peer": (best_peer / fq) if best_peer else float("nan"),
            "target": text, "met": ("yes" if check(t) else "NO") if check else "",
            "best_ms": fq_best * 1e3, "best_fmt": tb["fmt_int8" if int8 else "fmt"],
            "met_best": ("yes" if check(tb) else "NO") if check else "",
        })
        print(_fmt_row(rows[-1]), flush=True)
    return rows


COLUMNS = ["shape", "M", "pattern", "sparsity", "dense_ms", "fastq_ms", "fmt", "csr_ms", "ell_ms", "torch_csr_ms",
           "torch_bsr_ms", "scipy_ms", "x_dense", "x_best_peer", "target", "met", "best_ms", "best_fmt", "met_best"]


def _cell(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.0%}" if v < 1 and v in SPARSITIES + BLOCK_SPARSITIES else f"{v:.3g}"
    return str(v)


def _fmt_row(r: dict) -> str:
    return "| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |"


def _header() -> str:
    return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def markdown(rows: list) -> str:
    return _header() + "\n" + "\n".join(_fmt_row(r) for r in rows)


# ---- pytest-benchmark ---------------------------------------------------------------------------
try:
    import pytest

    _BENCH = [(m, kind, sp) for m in (1, 32) for kind, sp in (("unstructured", 0.9), ("2:4", 0.5), ("block4x4", 0.9))]

    @pytest.mark.parametrize("m,kind,sp", _BENCH, ids=lambda v: str(v))
    @pytest.mark.parametrize("who", ["dense", "fastq", "fastq_csr", "fastq_ell", "torch_csr", "torch_bsr", "scipy_csr"])
    def test_masked_matmul(benchmark, who, m, kind, sp):
        torch.set_num_threads(2)
        wm, mask = make_case(4096, 4096, kind, sp, torch.Generator().manual_seed(0))
        fns = candidates(wm, mask, torch.randn(m, 4096), kind)
        if who not in fns:
            pytest.skip(f"{who} does not serve {kind}")
        benchmark(fns[who])
except ImportError:  # script use without pytest
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, M values and rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    print(f"fastq {fastq.__version__}, isa {fastq.cpu_isa()}, torch {torch.__version__}, threads {args.threads}")
    print(_header(), flush=True)  # rows stream below as they are measured; the whole table at the end
    rows = run(args.quick, args.threads)
    met = [r["met"] for r in rows if r["met"]]
    met_best = [r["met_best"] for r in rows if r["met_best"]]
    print(f"\ntargets met with sparsify_'s default storage: {met.count('yes')}/{len(met)}; "
          f"with the faster storage per row (format= by hand): {met_best.count('yes')}/{len(met_best)}")
    print("\n" + markdown(rows))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"threads": args.threads, "isa": fastq.cpu_isa(), "rows": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
