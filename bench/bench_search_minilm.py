"""fastq.search on all-MiniLM-L6-v2: the fastest per-layer recipe within a mean-cosine budget.

Run:  PYTHONPATH=. python bench/bench_search_minilm.py [--time-limit 600] [--budget 0.005] [--json out.json]

What it measures (issue 14's MiniLM target: >= 2.5x fp32 at mean cosine >= 0.995 in < 10 minutes
on 2 threads):
- the search: ``fastq.search`` with the built-in transformations, speed objective, one choice per
  layer role (``group_by="type"``), TPE, quality = mean cosine of the sentence embeddings to fp32's
  over the 64 bundled sentences, timed input = one batch of 32 of them; wall time of every phase;
- the answer, re-checked independently afterwards: fp32, the chosen recipe and plain W8A8
  everywhere (``quantize_(Int8DynamicConfig())``, the best single recipe of ``fastq demo``; also
  with ``fuse_activations=False``, which shows what the GELU fusion contributes) timed
  round-robin in one run (median of ``--rounds``), and the cosine on held-out sentences the search
  never saw (gensim's Lee news corpus, when installed);
- the chosen recipe is written next to the JSON (``--recipe``), so ``fastq compress --recipe`` can
  rebuild it.
Invariant: every number printed is measured in this run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastq  # noqa: E402
from _search_common import arguments, finish, search  # noqa: E402
from fastq.benchmarking import median, time_round_robin  # noqa: E402
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
    ap = arguments(__doc__.split("\n")[0], "0.005", "minilm_search_recipe.json")
    ap.add_argument("--batch", type=int, default=32, help="sentences in the timed batch")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the independent end-to-end check")
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
          f"{tuple(batch['input_ids'].shape)}; budget {args.budget} on the mean cosine over {len(sentences)} "
          f"sentences; {args.strategy}, group_by={args.group_by}, time limit {args.time_limit:g} s", flush=True)
    result, failure, out = search(args, fp32, evaluate, batch, "fastq search: all-MiniLM-L6-v2")
    rows, held = [], held_out(256)
    if failure is None:
        w8a8, unfused = load_minilm()[0], load_minilm()[0]
        fastq.quantize_(w8a8, fastq.Int8DynamicConfig())
        fastq.quantize_(unfused, fastq.Int8DynamicConfig(), fuse_activations=False)
        models = {"fp32": fp32, "search": result.model, "w8a8 everywhere": w8a8,
                  "w8a8 everywhere, GELU not fused": unfused}
        with torch.inference_mode():
            samples = time_round_robin({k: (lambda m=m: m(**batch)) for k, m in models.items()}, rounds=args.rounds,
                                       warmup=2)
        for k, m in models.items():
            row = {"model": k, "latency ms": 1e3 * median(samples[k]),
                   "speedup": median(samples["fp32"]) / median(samples[k]),
                   "mean cos (search set)": f"{evaluate(m):.5f}", "size MB": fastq.summary(m).total_bytes / 1e6}
            if held:
                with torch.inference_mode():
                    cos = (embed(m, tok, held) * embed(fp32, tok, held)).sum(-1)
                row["mean cos (held out)"] = f"{float(cos.mean()):.5f}"
                row["worst cos (held out)"] = f"{float(cos.min()):.5f}"
            rows.append(row)
    return finish(args, result, rows, f"# independent check: {args.rounds} rounds round-robin; held-out: {len(held)} "
                  "Lee-corpus sentences", out)


if __name__ == "__main__":
    main()
