"""SmolLM2-135M with static W8A8: news perplexity with and without SmoothQuant, and prefill speed.

Run:  PYTHONPATH=. python bench/bench_smollm2_static.py [--calib 16] [--eval 40] [--json out.json]

What it measures (issue 13's SmolLM2 targets):
- perplexity on gensim's Lee news stories (joined by newlines), non-overlapping 512-token windows:
  ``--calib`` windows calibrate the static variants, the next ``--eval`` windows are scored (fp32 is
  also scored on every window, the 30.9 reference of MODELS.md). Every decoder nn.Linear is
  quantized; lm_head (tied to the embeddings) stays float in every variant. Target: static W8A8 +
  SmoothQuant within 5% of fp32; static without smoothing reported too; dynamic per-token W8A8 as
  the reference point;
- prefill latency at M = 32 and 128 tokens (one sequence), fp32 / dynamic / static round-robin,
  medians over ``--rounds`` (target: static >= 1.1x dynamic at M >= 32).
Every number is measured in this run.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastq  # noqa: E402
from _text_data import lee_documents, load_smollm2  # noqa: E402

VARIANTS = [
    ("dynamic per-token W8A8", fastq.Int8DynamicConfig()),
    ("static minmax", fastq.Int8StaticConfig(observer="minmax")),
    ("static percentile 99.99", fastq.Int8StaticConfig(observer="percentile")),
    ("static minmax + SmoothQuant 0.5", fastq.Int8StaticConfig(observer="minmax", smooth_alpha=0.5)),
    ("static minmax + SmoothQuant 0.8", fastq.Int8StaticConfig(observer="minmax", smooth_alpha=0.8)),
    ("static percentile + SmoothQuant 0.8", fastq.Int8StaticConfig(observer="percentile", smooth_alpha=0.8)),
]


def not_lm_head(module, name):
    return not name.endswith("lm_head")


def forward(model, ids):
    return model(ids, use_cache=False)


@torch.no_grad()
def perplexity(model, windows) -> float:
    nll, n = 0.0, 0
    for w in windows:
        out = model(w[None], labels=w[None], use_cache=False)
        nll += float(out.loss) * (w.numel() - 1)
        n += w.numel() - 1
    return math.exp(nll / n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens")
    ap.add_argument("--eval", type=int, default=40, help="scored windows (after the calibration ones)")
    ap.add_argument("--rounds", type=int, default=9, help="latency rounds")
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names to run")
    ap.add_argument("--skip-full-fp32", action="store_true", help="do not score fp32 on every window")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    model, tok = load_smollm2()
    ids = tok("\n".join(lee_documents()), return_tensors="pt").input_ids[0]
    windows = [ids[i:i + 512] for i in range(0, ids.numel() - 511, 512)]
    calib = [w[None] for w in windows[:args.calib]]  # [1, 512] batches
    scored = windows[args.calib:args.calib + args.eval]
    print(f"SmolLM2-135M: {ids.numel()} tokens, {len(windows)} windows of 512; calibrate on {len(calib)}, "
          f"score {len(scored)}; {torch.get_num_threads()} threads, ISA {fastq.cpu_isa()}", flush=True)
    results = {"fp32 (scored windows)": {"ppl": perplexity(model, scored)}}
    if not args.skip_full_fp32:
        results["fp32 (all windows)"] = {"ppl": perplexity(model, windows)}
    for k, v in results.items():
        print(f"  {k}: ppl {v['ppl']:.2f}", flush=True)

    timed = {"fp32": model}
    only = [s for s in args.only.split(",") if s]
    for name, cfg in VARIANTS:
        if only and not any(s in name for s in only):
            continue
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        if isinstance(cfg, fastq.Int8StaticConfig):
            fastq.calibrate(m, calib, cfg, forward_fn=forward, progress=False)
            if cfg.smooth_alpha is not None:
                folds = sum(isinstance(x, fastq.nn.SmoothedLinear) for x in m.modules())
                print(f"    SmoothQuant kept {folds} scale vectors in SmoothedLinear modules (the rest folded)")
        calib_s = time.perf_counter() - t0
        fastq.quantize_(m, cfg, filter_fn=not_lm_head)
        ppl = perplexity(m, scored)
        results[name] = {"ppl": ppl, "calib_s": calib_s}
        print(f"  {name}: ppl {ppl:.2f} (calibration {calib_s:.0f} s)", flush=True)
        if name in ("dynamic per-token W8A8", "static minmax", "static minmax + SmoothQuant 0.8"):
            timed[name] = m
        else:
            del m
            gc.collect()

    latency = {}
    for length in (32, 128):
        x = windows[-1][:length][None]
        ts = {k: [] for k in timed}
        with torch.no_grad():
            for k, m in timed.items():
                m(x, use_cache=False)
            for _ in range(args.rounds):
                for k, m in timed.items():
                    t0 = time.perf_counter()
                    m(x, use_cache=False)
                    ts[k].append(time.perf_counter() - t0)
        latency[length] = {k: statistics.median(v) * 1e3 for k, v in ts.items()}

    base = results["fp32 (scored windows)"]["ppl"]
    print("\n| variant | perplexity | vs fp32 |")
    print("|---|--:|--:|")
    for k, v in results.items():
        print(f"| {k} | {v['ppl']:.2f} | {100 * (v['ppl'] / base - 1):+.1f}% |")
    print("\nprefill latency, one sequence (median ms, round-robin):")
    for length, lat in latency.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in lat.items())
        print(f"  M={length}: {parts}")
        dyn = lat.get("dynamic per-token W8A8")
        for k, v in lat.items():
            if k.startswith("static") and dyn:
                print(f"    {k} vs dynamic: {dyn / v:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"perplexity": results, "latency_ms": latency,
                                               "calib_windows": len(calib), "scored_windows": len(scored)}, indent=1))


if __name__ == "__main__":
    main()
