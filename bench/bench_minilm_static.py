"""all-MiniLM-L6-v2 with static W8A8 (Int8StaticConfig): every observer, SmoothQuant, calibration time.

Run:  PYTHONPATH=. python bench/bench_minilm_static.py [--calib 256] [--eval 256] [--json out.json]

What it measures (issue 13's MiniLM targets):
- calibration: ``fastq.calibrate`` over ``--calib`` real news sentences (gensim's Lee corpus, the
  first 150 stories), 32 sentences per batch, 2 threads, wall time per observer (target < 30 s);
- quality: mean and worst cosine of sentence embeddings to fp32 on ``--eval`` held-out sentences
  (the last 150 stories) plus fastq.models.SENTENCES (target: static mean >= 0.99 with the
  percentile or entropy observer); dynamic per-token W8A8 is the reference point;
- latency: one batch of 32 held-out sentences, fp32 / dynamic / static timed round-robin (median).
Every number is measured in this run; the machine (and whether it was shared) is the reader's to note.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastq  # noqa: E402
from fastq.models import SENTENCES, embed, load_minilm  # noqa: E402
from _text_data import lee_documents, sentences  # noqa: E402

VARIANTS = [  # name, config
    ("static minmax", fastq.Int8StaticConfig(observer="minmax")),
    ("static moving_average", fastq.Int8StaticConfig(observer="moving_average")),
    ("static percentile 99.99", fastq.Int8StaticConfig(observer="percentile")),
    ("static percentile 99.999", fastq.Int8StaticConfig(observer="percentile", percentile=99.999)),
    ("static mse", fastq.Int8StaticConfig(observer="mse")),
    ("static entropy", fastq.Int8StaticConfig(observer="entropy")),
    ("static minmax + SmoothQuant 0.5", fastq.Int8StaticConfig(observer="minmax", smooth_alpha=0.5)),
    ("static percentile 99.99 + SmoothQuant 0.8", fastq.Int8StaticConfig(observer="percentile", smooth_alpha=0.8)),
    ("static entropy + SmoothQuant 0.8", fastq.Int8StaticConfig(observer="entropy", smooth_alpha=0.8)),
    ("static minmax, per-channel scales", fastq.Int8StaticConfig(observer="minmax", act_granularity="per_channel")),
    ("static percentile 99.99, per-channel scales",
     fastq.Int8StaticConfig(observer="percentile", act_granularity="per_channel")),
    ("static entropy, per-channel scales", fastq.Int8StaticConfig(observer="entropy", act_granularity="per_channel")),
]


def batches_of(tok, texts, size=32):
    order = sorted(texts, key=len)
    return [dict(tok(order[i:i + size], padding=True, truncation=True, max_length=256, return_tensors="pt"))
            for i in range(0, len(order), size)]


def cosines(model, tok, texts, ref):
    e = embed(model, tok, texts)
    c = (e * ref).sum(-1)
    return float(c.mean()), float(c.min())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=256, help="calibration sentences")
    ap.add_argument("--eval", type=int, default=256, help="held-out sentences (plus fastq.models.SENTENCES)")
    ap.add_argument("--rounds", type=int, default=7, help="latency rounds")
    ap.add_argument("--only", default="", help="comma-separated substrings of variant names to run")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    docs = lee_documents()
    calib = sentences(docs[:150])[:args.calib]
    held = sentences(docs[150:])[:args.eval] + SENTENCES
    model, tok = load_minilm()
    ref = embed(model, tok, held)
    calib_batches = batches_of(tok, calib)
    print(f"MiniLM static W8A8: {len(calib)} calibration sentences ({len(calib_batches)} batches), "
          f"{len(held)} held-out sentences, {torch.get_num_threads()} threads, ISA {fastq.cpu_isa()}, "
          f"kernel {fastq.kernel_for('int8_linear_static', 'cpu')}")

    rows = []
    dyn = fastq.quantize_(copy.deepcopy(model), fastq.Int8DynamicConfig())
    mean, worst = cosines(dyn, tok, held, ref)
    rows.append({"variant": "dynamic per-token W8A8 (reference)", "calib_s": None, "mean_cos": mean,
                 "worst_cos": worst})
    models = {"fp32": model, "dynamic": dyn}
    only = [s for s in args.only.split(",") if s]
    for name, cfg in VARIANTS:
        if only and not any(s in name for s in only):
            continue
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        fastq.calibrate(m, calib_batches, cfg, progress=False)
        calib_s = time.perf_counter() - t0
        fastq.quantize_(m, cfg)
        mean, worst = cosines(m, tok, held, ref)
        rows.append({"variant": name, "calib_s": calib_s, "mean_cos": mean, "worst_cos": worst,
                     "layers": sum(isinstance(x, fastq.nn.StaticQuantLinear) for x in m.modules())})
        print(f"  {name}: calibrate {calib_s:.1f} s, mean cos {mean:.5f}, worst {worst:.5f}", flush=True)
        if name == "static minmax" or (only and "static" not in models):
            models["static"] = m

    # latency: one batch of 32 held-out sentences, round-robin
    batch = batches_of(tok, held[:32])[0]
    times = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(args.rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(**batch)
                times[k].append(time.perf_counter() - t0)
    lat = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    print("\n| variant | calibrate (s) | mean cos | worst cos |")
    print("|---|--:|--:|--:|")
    for r in rows:
        c = "-" if r["calib_s"] is None else f"{r['calib_s']:.1f}"
        print(f"| {r['variant']} | {c} | {r['mean_cos']:.4f} | {r['worst_cos']:.4f} |")
    seq = batch["input_ids"].shape[1]
    print(f"\nlatency, batch of 32 sentences x {seq} tokens (median of {args.rounds}, round-robin): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "latency_ms": lat, "threads": torch.get_num_threads(),
                                               "calib_sentences": len(calib), "eval_sentences": len(held)},
                                              indent=1))


if __name__ == "__main__":
    main()
