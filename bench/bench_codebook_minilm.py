"""bench_codebook_minilm: quality of codebook weights on all-MiniLM-L6-v2 (no fine-tuning), against
int4 group-128 round-to-nearest, as mean / worst cosine of sentence embeddings to fp32.

    python bench/bench_codebook_minilm.py [--quick] [--json out.json]

Invariants:
  * Every variant starts from a fresh fp32 copy of the model; all 37 nn.Linear layers are
    converted (``fastq.quantize_``), embeddings and LayerNorms stay fp32. Embeddings are
    ``fastq.models.embed`` (sentence-transformers' mean pooling) of ``fastq.models.SENTENCES``.
  * int4 g128 RTN is a plain reference quantizer written here (fastq's int4 kernels are issue
    11): per row and group of 128 inputs, symmetric (scale = amax / 7, codes in [-8, 7]) and
    asymmetric (scale = (max - min) / 15, zero point rounded), weights replaced by their
    dequantized values in fp32 layers. Its bits per weight (4 + a float32 scale, and a zero point,
    per 128) are in the table next to the codebooks'.
  * "weight bits" = stored bytes of the converted layers * 8 / their weight count (codes, tables,
    scales and biases); the model's ratio counts every tensor (summary).
  * Clustering time is wall time of ``quantize_`` (one run; the machine's load is printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

try:
    import fastq
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq.benchmarking import format_table
from fastq.models import SENTENCES, embed, load_minilm

THREADS = 2


@torch.no_grad()
def int4_rtn_(model: nn.Module, group: int = 128, symmetric: bool = True) -> float:
    """Replace every nn.Linear weight by its int4 group-wise round-to-nearest version, in place;
    returns the bits per weight it would store (codes + float32 scale (+ zero point) per group)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = m.weight
            g = w.reshape(-1, group)
            if symmetric:
                scale = (g.abs().amax(1, keepdim=True) / 7).clamp_min(torch.finfo(torch.float32).tiny)
                q = torch.clamp(torch.round(g / scale), -8, 7)
                deq = q * scale
            else:
                lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
                scale = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)
                zp = torch.round(-lo / scale)
                q = torch.clamp(torch.round(g / scale) + zp, 0, 15)
                deq = (q - zp) * scale
            w.copy_(deq.reshape(w.shape))
    return 4 + 32 / group * (1 if symmetric else 2)


def cosines(ref: torch.Tensor, emb: torch.Tensor) -> tuple[float, float]:
    c = torch.nn.functional.cosine_similarity(ref, emb, dim=-1)
    return float(c.mean()), float(c.min())


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(THREADS)
    base, tok = load_minilm()
    sentences = SENTENCES
    ref = embed(base, tok, sentences)
    rows = []
    for name, sym in (("int4 g128 RTN symmetric", True), ("int4 g128 RTN asymmetric", False)):
        m = copy.deepcopy(base)
        bits = int4_rtn_(m, 128, sym)
        mean, worst = cosines(ref, embed(m, tok, sentences))
        rows.append({"variant": name, "weight bits": bits, "mean cos": f"{mean:.4f}", "worst cos": f"{worst:.4f}",
                     "time s": 0.0, "_mean": mean})
    variants = {
        "k-means row 16 (exact)": fastq.WeightSharingConfig(clusters=16, scope="row"),
        "k-means row 16 (lloyd, linear init)": fastq.WeightSharingConfig(clusters=16, scope="row", method="lloyd"),
        "k-means group128 16 (exact)": fastq.WeightSharingConfig(clusters=16, scope="group", group_size=128),
        "k-means layer 16 (exact)": fastq.WeightSharingConfig(clusters=16, scope="layer"),
        "k-means layer 256 (exact)": fastq.WeightSharingConfig(clusters=256, scope="layer"),
        "k-means row 4 (exact)": fastq.WeightSharingConfig(clusters=4, scope="row"),
        "power of two (4-bit)": fastq.PowerOfTwoConfig(),
        "ternary (TWN 0.7)": fastq.TernaryConfig(),
        "binary (XNOR)": fastq.BinaryConfig(),
    }
    if quick:
        variants = {k: v for k, v in variants.items() if "row 16 (exact)" in k or "ternary" in k}
    for name, cfg in variants.items():
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        fastq.quantize_(m, cfg)
        secs = time.perf_counter() - t0
        s = fastq.summary(m)
        q = s.quantized
        bits = 8 * sum(r.bytes for r in q) / sum(r.weight_elements for r in q)
        mean, worst = cosines(ref, embed(m, tok, sentences))
        rows.append({"variant": name, "weight bits": bits, "mean cos": f"{mean:.4f}", "worst cos": f"{worst:.4f}",
                     "time s": secs, "r (formula)": s.codebook_ratio or 0.0, "model ratio": s.compression_ratio,
                     "_mean": mean})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only k-means row 16 and ternary")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = run(args.quick)
    print(f"all-MiniLM-L6-v2, {len(SENTENCES)} sentences, threads {THREADS}, load average {os.getloadavg()[0]:.1f}")
    print(format_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]))
    target = next(r for r in rows if r["variant"].startswith("k-means row 16 (exact)"))
    rtn = max(r["_mean"] for r in rows if "RTN" in r["variant"])
    print(f"target: k-means row 16 mean cosine {target['_mean']:.4f} >= best int4 g128 RTN {rtn:.4f}: "
          f"{'met' if target['_mean'] >= rtn else 'not met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
