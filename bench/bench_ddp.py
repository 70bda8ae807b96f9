"""Data-parallel recovery fine-tune of pruned all-MiniLM-L6-v2: 2 processes (torchrun, gloo) vs 1.

Run:  PYTHONPATH=. python bench/bench_ddp.py [--steps 10] [--batch 16] [--json out.json]

What it measures (issue 14's DDP target: the 2-process run matches the 1-process run):
- the same recovery fine-tune as bench/bench_minilm_pruning.py (50% unstructured magnitude pruning
  of the encoder linears, ``distill_`` with the cosine loss on pooled embeddings, AdamW, cosine
  schedule with warm-up, clipping) run once in one process and once under
  ``torchrun --nproc_per_node 2`` with the same global batches (each rank gets half of each);
- the largest absolute difference of any trained weight between the two runs, the cosine of the
  two runs' embeddings of held-out sentences, and seconds per step of each run.
The script re-launches itself under torchrun for the 2-process run; ``--worker OUT`` is that mode.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastq  # noqa: E402
from bench_minilm_pruning import encoder_linear, lee_documents, pooled, train_eval_sentences  # noqa: E402
from fastq.models import load_minilm  # noqa: E402
from fastq.pruning import PruneConfig, prune_  # noqa: E402
from fastq.train import init_distributed, is_main  # noqa: E402


def run(out: str, steps: int, batch: int, lr: float) -> None:
    """Prune and fine-tune; rank 0 writes the trained weights and the seconds per step."""
    torch.set_num_threads(1)
    init_distributed()
    docs = lee_documents("/tmp/gs/gensim-*.whl")
    train, _ = train_eval_sentences(docs, n_eval_docs=40, n_eval=64)
    teacher, tok = load_minilm()
    student = load_minilm()[0]
    prune_(student, PruneConfig(sparsity=0.5), filter_fn=encoder_linear)
    student.embeddings.requires_grad_(False)
    rng = random.Random(1)
    batches = [dict(tok(rng.sample(train, batch), padding=True, truncation=True, max_length=64, return_tensors="pt"))
               for _ in range(steps)]
    t0 = time.perf_counter()
    fastq.distill_(student, teacher, batches, loss="cosine", steps=steps, lr=lr, train_mode=False,
                   embed_fn=lambda m, b: pooled(m, b), schedule="cosine", warmup_steps=max(1, steps // 10),
                   max_grad_norm=1.0)
    seconds = (time.perf_counter() - t0) / steps
    if is_main():
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in student.state_dict().items() if v.is_floating_point()}
        save_file(state, out, metadata={"seconds_per_step": str(seconds)})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16, help="global batch (sentences per step)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--json")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run(args.worker, args.steps, args.batch, args.lr)
        return {}
    from safetensors import safe_open

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    outs = {}
    for n in (1, 2):
        out = f"/tmp/fastq_ddp_{n}.safetensors"
        launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={n}"]
        cmd = launcher + [__file__, "--worker", out, "--steps", str(args.steps), "--batch", str(args.batch),
                          "--lr", str(args.lr)]
        subprocess.run(cmd, env=env, check=True)
        with safe_open(out, "pt") as f:
            outs[n] = ({k: f.get_tensor(k) for k in f.keys()}, float(f.metadata()["seconds_per_step"]))
    (one, t1), (two, t2) = outs[1], outs[2]
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    start = load_minilm()[0]
    prune_(start, PruneConfig(sparsity=0.5), filter_fn=encoder_linear)
    start = start.state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    m1, tok = load_minilm()
    m2 = load_minilm()[0]
    m1.load_state_dict(one, strict=False)
    m2.load_state_dict(two, strict=False)
    _, held = train_eval_sentences(lee_documents("/tmp/gs/gensim-*.whl"), n_eval_docs=40, n_eval=128)
    from fastq.models import embed

    with torch.inference_mode():
        cos = (embed(m1, tok, held) * embed(m2, tok, held)).sum(-1)
    result = {"steps": args.steps, "global_batch": args.batch, "max_abs_weight_diff": diff,
              "max_abs_weight_change_in_training": moved, "embedding_cos_mean": float(cos.mean()),
              "embedding_cos_min": float(cos.min()), "seconds_per_step_1proc": t1, "seconds_per_step_2proc": t2}
    print("| run | s per step | max abs weight diff vs 1 process | held-out embedding cosine to 1 process |")
    print("|---|---:|---:|---:|")
    print(f"| 1 process | {t1:.2f} | 0 | 1 |")
    print(f"| 2 processes (gloo) | {t2:.2f} | {diff:.2e} | {float(cos.mean()):.7f} (worst {float(cos.min()):.7f}) |")
    print(f"# {args.steps} steps, global batch {args.batch}; training moved the weights up to {moved:.3g} from the "
          f"pruned start. The runs differ only in float summation order (each rank sums half the batch); AdamW "
          f"normalizes every weight's step, so a weight whose gradient is near zero can step differently on such "
          f"rounding, which bounds the largest difference by the learning rate, not by the rounding itself")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
