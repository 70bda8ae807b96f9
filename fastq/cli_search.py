"""``fastq search`` and the ``auto`` row of ``fastq demo``: the compression search on a local
transformers model, with built-in quality metrics.

Invariants:
  * Metrics: an encoder is judged by the mean cosine of its mean-pooled sentence embeddings to the
    fp32 model's (``fastq.models.embed``) over the bundled sentences (higher is better); a causal LM
    by its perplexity on a text file, in fixed windows of tokens (lower is better).
  * Speed is the forward pass the user serves: a batch of real sentences (encoders) or
    ``--timing-tokens`` tokens without a cache (causal LMs; 1 = one decoding step).
  * The recipe JSON names the transformers class it was searched on (``meta.auto_class``), so
    ``fastq compress --recipe FILE`` rebuilds it on the same module tree, exactly.
  * User errors (bad directory, budget, storage, a text too short, no recipe within the budget) are
    ``CLIError``: one line on stderr, exit status 2; what was measured is printed first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch

LEE_CORPUS = "test/test_data/lee_background.cor"  # inside the gensim package: real news stories


def is_causal_lm(model_dir: Path) -> bool:
    """Whether ``config.json`` names a ``...ForCausalLM`` architecture."""
    try:
        archs = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in archs)


def default_text() -> Optional[Path]:
    """gensim's Lee news corpus when gensim is installed (its data files ship in the wheel)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / LEE_CORPUS
    return path if path.is_file() else None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")  # the Lee corpus is latin-1


def perplexity_metric(tok, text: str, window: int, windows: int) -> Callable:
    """``evaluate(model) -> perplexity`` over the first ``windows`` windows of ``window`` tokens."""
    from fastq.cli import CLIError

    ids = tok(text, return_tensors="pt")["input_ids"][0]
    n = min(windows, ids.numel() // window)
    if n < 1:
        raise CLIError(f"the text has {ids.numel()} tokens, fewer than one window of {window}; pass a longer --text "
                       "or a smaller --window")
    batch = ids[:n * window].reshape(n, window)

    def evaluate(model) -> float:
        with torch.inference_mode():
            return math.exp(float(model(input_ids=batch, labels=batch, use_cache=False).loss))

    return evaluate


def cosine_metric(fp32, tok, sentences: list) -> Callable:
    """``evaluate(model) -> mean cosine`` of the sentence embeddings to fp32's."""
    from fastq.models import embed

    with torch.inference_mode():
        ref = embed(fp32, tok, sentences).float()

    def evaluate(model) -> float:
        with torch.inference_mode():
            return float((embed(model, tok, sentences).float() * ref).sum(-1).mean())

    return evaluate


def run_search(model, evaluate, example_inputs, budget, higher_is_better: bool, *, trials: int,
               time_limit: Optional[float], storage=None, study: str = "fastq-search", objective: str = "speed",
               strategy: str = "tpe", group_by: str = "type", transformations=None, seed: int = 0,
               auto_class: str = "AutoModel"):
    """fastq.search with CLIError for user errors; returns the SearchResult (None when nothing beats
    fp32 within the budget, with the reason)."""
    from fastq.cli import CLIError
    from fastq.recipe_search import NoRecipeError, SearchError, channel_transforms, search

    pairs, channels = "auto", None
    if transformations is not None:  # named channel prunings act on pairs, the rest on layers
        names = {t.name for t in channel_transforms()}
        channels = [n for n in transformations if n in names]
        transformations = [n for n in transformations if n not in names]
        pairs = "auto" if channels else None
    try:
        result = search(model, evaluate, example_inputs, budget, objective=objective, strategy=strategy, trials=trials,
                        time_limit=time_limit, storage=storage, study_name=study, group_by=group_by,
                        transformations_=transformations, pairs=pairs, channels=channels,
                        higher_is_better=higher_is_better, seed=seed)
    except NoRecipeError as exc:
        return exc.result, str(exc)
    except SearchError as exc:
        raise CLIError(str(exc)) from None
    result.recipe.meta["auto_class"] = auto_class
    return result, None


def _load(model_dir: Path, verbose: bool, causal: bool):
    from fastq.cli import _load_transformers

    return _load_transformers(model_dir, verbose, auto_class="AutoModelForCausalLM" if causal else "AutoModel")


def cmd_search(args: argparse.Namespace) -> int:
    from fastq.cli import CLIError, _sentences, _table
    from fastq.models import SENTENCES
    from fastq.recipe_search import Budget, SearchError

    model_dir = Path(args.model_dir)
    try:
        budget = Budget.parse(args.budget)
    except SearchError as exc:
        raise CLIError(str(exc)) from None
    if args.trials < 1:
        raise CLIError(f"--trials must be >= 1, got {args.trials}")
    if args.threads:
        torch.set_num_threads(args.threads)
    causal = is_causal_lm(model_dir) if model_dir.is_dir() else False
    text_path = None
    if causal:
        text_path = Path(args.text) if args.text else default_text()
        if text_path is None:
            raise CLIError("a causal LM is judged by perplexity on a text: pass --text FILE (or pip install gensim "
                           "for its news corpus)")
        if not text_path.is_file():
            raise CLIError(f"--text {text_path} is not a file")
    fp32, tok = _load(model_dir, args.verbose, causal)
    if causal:
        evaluate = perplexity_metric(tok, read_text(text_path), args.window, args.windows)
        example = {"input_ids": tok(read_text(text_path), return_tensors="pt")["input_ids"][:, :args.timing_tokens],
                   "use_cache": False}
        what = (f"perplexity on {text_path.name} ({args.windows} x {args.window} tokens, lower is better); timed: "
                f"a forward pass of {example['input_ids'].shape[1]} token(s) without a cache")
    else:
        sentences = _sentences(args.sentences)
        evaluate = cosine_metric(fp32, tok, list(SENTENCES))
        example = dict(tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt"))
        what = (f"mean cosine of sentence embeddings to fp32 over {len(SENTENCES)} sentences (higher is better); "
                f"timed: a batch of {len(sentences)} sentences")
    print(f"model: {model_dir} ({type(fp32).__name__}); quality: {what}")
    print(f"budget: {budget}; objective: {args.objective}; strategy: {args.strategy}; trials: {args.trials}"
          f"{'' if args.time_limit is None else f' (time limit {args.time_limit:g} s)'}; threads: "
          f"{torch.get_num_threads()}; storage: {args.storage or 'in memory'}")
    names = [t.strip() for t in args.transformations.split(",")] if args.transformations else None
    result, failure = run_search(fp32, evaluate, example, budget, not causal, trials=args.trials,
                                 time_limit=args.time_limit, storage=args.storage, study=args.study,
                                 objective=args.objective, strategy=args.strategy, group_by=args.group_by,
                                 transformations=names, seed=args.seed,
                                 auto_class="AutoModelForCausalLM" if causal else "AutoModel")
    print(result.table())
    if args.plot:
        result.plot(args.plot, f"fastq search: {model_dir.name}")
        print(f"plot written to {args.plot}")
    if failure is not None:
        raise CLIError(failure)
    best = result.best
    out = result.save_recipe(args.out)
    print(f"chosen: trial {best.number}: {best.changed} layers changed, {best.measured_speedup:.2f}x fp32 measured "
          f"end to end, quality {best.quality:.5g} (fp32 {result.baseline['quality']:.5g}), "
          f"{best.size_bytes / 1e6:.1f} MB (fp32 {result.baseline['size_bytes'] / 1e6:.1f} MB)")
    print(f"recipe written to {out}; apply it with: fastq compress {model_dir} --recipe {out} --out DIR")
    return 0


def auto_model(fp32, tok, sentences: list, seconds: float, budget: str, batch: dict):
    """The demo's ``auto`` row: (model, note) found by a speed search within ``seconds``."""
    import copy

    from fastq.models import SENTENCES

    if importlib.util.find_spec("optuna") is None:  # the demo goes on without its search
        return copy.deepcopy(fp32), "no search: Optuna is not installed (pip install \"fastq-compress[search]\"): fp32"
    evaluate = cosine_metric(fp32, tok, list(SENTENCES))
    result, failure = run_search(fp32, evaluate, batch, budget, True, trials=10_000, time_limit=seconds)
    if failure is not None or result.model is None:
        return copy.deepcopy(fp32), f"search found nothing faster within the budget {budget}: fp32"
    best = result.best
    return result.model, f"search, {len(result.trials)} trials in {seconds:g} s: {best.changed} layers changed"


def add_parser(sub, parents: list) -> None:
    """``fastq search``'s arguments."""
    from fastq.recipe_search.engine import OBJECTIVES, STRATEGIES

    p = sub.add_parser("search", parents=parents,
                       help="search per-layer compression for the fastest (or smallest) model within a quality budget")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local transformers model directory")
    p.add_argument("--budget", required=True,
                   help="allowed quality loss: a number (absolute: 0.005 lets an encoder's mean cosine fall to "
                        "0.995) or a percentage (relative: 3%% lets a causal LM's perplexity rise 3%%)")
    p.add_argument("--trials", type=int, default=50, help="trials to run now (default 50; a stored study resumes)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage: sqlite:///search.db or any database URL "
                                                     "(resumable; several workers can share it); default in memory")
    p.add_argument("--study", default="fastq-search", help="study name inside --storage")
    p.add_argument("--objective", choices=OBJECTIVES, default="speed")
    p.add_argument("--strategy", choices=STRATEGIES, default="tpe",
                   help="tpe (Bayesian), nsga2 (speed/quality Pareto front), random, grid")
    p.add_argument("--group-by", choices=("layer", "type", "block"), default="type",
                   help="one choice per layer, per layer role across blocks (default), or per block")
    p.add_argument("--transformations", metavar="A,B,...", help="choose among these (default: every registered one)")
    p.add_argument("--time-limit", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--sentences", type=int, default=32, help="encoders: the timed batch of sentences (default 32)")
    p.add_argument("--text", metavar="FILE", help="causal LMs: text for perplexity (default: gensim's news corpus)")
    p.add_argument("--window", type=int, default=256, help="causal LMs: tokens per perplexity window (default 256)")
    p.add_argument("--windows", type=int, default=4, help="causal LMs: perplexity windows (default 4)")
    p.add_argument("--timing-tokens", type=int, default=1,
                   help="causal LMs: tokens in the timed forward pass (default 1: one decoding step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="fastq_search_recipe.json", metavar="FILE.json",
                   help="where to write the chosen recipe (default fastq_search_recipe.json)")
    p.add_argument("--plot", metavar="FILE.png", help="draw speed vs quality of every trial")
    p.set_defaults(func=cmd_search)
