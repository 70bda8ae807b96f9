"""What bench_search_minilm.py and bench_search_smollm2.py share: the common arguments, running the
search (a NoRecipeError is reported, not raised), its summary lines, and the closing report."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import fastq
from fastq.benchmarking import format_table


def arguments(description: str, budget: str, recipe: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--budget", default=budget, help=f"allowed quality loss (default {budget})")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds for the search (default 600)")
    ap.add_argument("--trials", type=int, default=400, help="trial cap (the time limit usually ends the search)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strategy", default="tpe")
    ap.add_argument("--group-by", default="type")
    ap.add_argument("--storage", help="Optuna storage URL (default in memory)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--recipe", default=recipe, help="where to write the chosen recipe")
    ap.add_argument("--plot", help="speed vs quality plot of the trials")
    return ap


def search(args, model, evaluate, example, title: str, **kwargs):
    """(result, failure message or None, JSON-able summary) of fastq.search with the common arguments."""
    t0 = time.perf_counter()
    try:
        result = fastq.search(model, evaluate, example, args.budget, trials=args.trials, time_limit=args.time_limit,
                              strategy=args.strategy, group_by=args.group_by, storage=args.storage, **kwargs)
        failure = None
    except fastq.recipe_search.NoRecipeError as exc:
        result, failure = exc.result, str(exc)
    wall = time.perf_counter() - t0
    print(result.table())
    print(f"# search wall time {wall:.0f} s; phases " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
          + f"; {len(result.trials)} trials evaluated, {result.skipped} skipped (could not beat the best), "
          f"{len(result.failures)} failed", flush=True)
    if args.plot:
        result.plot(args.plot, title)
    out = {"machine": {"processor": platform.processor(), "threads": torch.get_num_threads(), "isa": fastq.cpu_isa()},
           "config": vars(args), "search_seconds": wall, "phases": result.seconds, "trials": len(result.trials),
           "skipped": result.skipped, "pareto": [t.__dict__ for t in result.pareto], "failure": failure}
    if failure is not None:
        print(f"# no recipe: {failure}")
    else:
        result.save_recipe(args.recipe)
    return result, failure, out


def finish(args, result, rows: list, header: str, out: dict) -> dict:
    """Print the independent check and the chosen recipe; write the JSON."""
    if rows:
        print(header)
        print(format_table(rows))
        choices = result.recipe.transforms()
        print(f"# chosen: trial {result.best.number}, layers per transformation {choices}, "
              f"{len(result.recipe.notes)} layers float; recipe written to {args.recipe}")
        out.update(check=rows, chosen=result.best.__dict__, choices=choices)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return out
