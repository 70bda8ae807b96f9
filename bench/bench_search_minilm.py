"""fastq.search on all-MiniLM-L6-v2: the fastest per-layer recipe within a mean-cosine budget.

Run:  PYTHONPATH=. python bench/bench_search_minilm.py [--time-limit 600] [--budget 0.005] [--json out.json]

What it measures (issue 14's MiniLM target: >= 2.5x fp32 at mean cosine >= 0.995 in < 10 minutes
on 2 threads):
- the search: ``fastq.search`` with the built-in transformations, speed objective, one choice per
  layer role (``group_by="type"``), TPE, quality = mean cosine of the sentence embeddings to fp32's
  over the 64 bundled sentences, timed input = one batch of 32 of them; wall time of every phase;
- the answer, re-checked independently afterwards: fp32, the chosen recipe and plain W8A8
  everywhere (``quantize_(Int8DynamicConfig())``, the best single recipe of ``fastq demo``) timed
  round-robin in one run (median of ``--rounds``), and the cosine on held-out sentences the search
  never saw (gensim's Lee news corpus, when installed);
- the chosen recipe is written next to the JSON (``--recipe``), so ``fastq compress --recipe`` can
  rebuild it.
Invariant: every number printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastq  # noqa: E402
from fastq.benchmarking import format_table, median, time_round_robin  # noqa: E402
from fastq.models import SENTENCES, embed, load_minilm  # noqa: E402


def held_out(n: int) -> list:
    """Real news sentences (gensim's Lee corpus), none of them in fastq.models.SENTENCES."""
    import re

    from fastq.cli_search import default_text, read_text

    path = default_text()
    if path is None:
        return []
    text = read_text(path)
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if len(s.split()) >= 4]
    return list(dict.fromkeys(sents))[:n]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="0.005", help="allowed mean-cosine loss (default 0.005)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the search (default 600)")
    ap.add_argument("--trials", type=int, default=400, help="trial cap (the time limit usually ends the search)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="sentences in the timed batch")
    ap.add_argument("--strategy", default="tpe")
    ap.add_argument("--group-by", default="type")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the independent end-to-end check")
    ap.add_argument("--storage", help="Optuna storage URL (default in memory)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--recipe", default="minilm_search_recipe.json", help="where to write the chosen recipe")
    ap.add_argument("--plot", help="speed vs quality plot of the trials")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    fp32, tok = load_minilm()
    sentences = list(SENTENCES)
    with torch.inference_mode():
        ref = embed(fp32, tok, sentences)

    def evaluate(model) -> float:
        with torch.inference_mode():
            return float((embed(model, tok, sentences) * ref).sum(-1).mean())

    batch = dict(tok(sentences[:args.batch], padding=True, truncation=True, max_length=256, return_tensors="pt"))
    print(f"# all-MiniLM-L6-v2; threads {torch.get_num_threads()}; ISA {fastq.cpu_isa()}; timed batch "
          f"{tuple(batch['input_ids'].shape)}; budget {args.budget} on the mean cosine over {len(sentences)} sentences; "
          f"{args.strategy}, group_by={args.group_by}, time limit {args.time_limit:g} s", flush=True)
    t0 = time.perf_counter()
    try:
        result = fastq.search(fp32, evaluate, batch, args.budget, trials=args.trials, time_limit=args.time_limit,
                              strategy=args.strategy, group_by=args.group_by, storage=args.storage)
        failure = None
    except fastq.recipe_search.NoRecipeError as exc:
        result, failure = exc.result, str(exc)
    wall = time.perf_counter() - t0
    print(result.table())
    print(f"# search wall time {wall:.0f} s; phases " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
          + f"; {len(result.trials)} trials evaluated, {result.skipped} skipped (could not beat the best), "
          f"{len(result.failures)} failed")
    if args.plot:
        result.plot(args.plot, "fastq search: all-MiniLM-L6-v2")
    out = {"machine": {"processor": platform.processor(), "threads": torch.get_num_threads(), "isa": fastq.cpu_isa()},
           "config": vars(args), "search_seconds": wall, "phases": result.seconds, "trials": len(result.trials),
           "pareto": [t.__dict__ for t in result.pareto], "failure": failure}
    if failure is not None:
        print(f"# no recipe: {failure}")
    else:
        result.save_recipe(args.recipe)
        w8a8 = load_minilm()[0]
        fastq.quantize_(w8a8, fastq.Int8DynamicConfig())
        models = {"fp32": fp32, "search": result.model, "w8a8 everywhere": w8a8}
        with torch.inference_mode():
            samples = time_round_robin({k: (lambda m=m: m(**batch)) for k, m in models.items()}, rounds=args.rounds,
                                       warmup=2)
        held = held_out(256)
        rows = []
        for k, m in models.items():
            row = {"model": k, "latency ms": 1e3 * median(samples[k]),
                   "speedup": median(samples["fp32"]) / median(samples[k]),
                   "mean cos (search set)": f"{evaluate(m):.5f}",
                   "size MB": fastq.summary(m).total_bytes / 1e6}
            if held:
                with torch.inference_mode():
                    cos = (embed(m, tok, held) * embed(fp32, tok, held)).sum(-1)
                row["mean cos (held out)"] = f"{float(cos.mean()):.5f}"
                row["worst cos (held out)"] = f"{float(cos.min()):.5f}"
            rows.append(row)
        print(f"# independent check: {args.rounds} rounds round-robin; held-out: {len(held)} Lee-corpus sentences")
        print(format_table(rows))
        choices = {}
        for entry in result.recipe.layers.values():
            choices[entry["transform"]] = choices.get(entry["transform"], 0) + 1
        print(f"# chosen: trial {result.best.number}, layers per transformation {choices}, "
              f"{len(result.recipe.notes)} layers float; recipe written to {args.recipe}")
        out.update(check=rows, chosen=result.best.__dict__, choices=choices)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return out


if __name__ == "__main__":
    main()
