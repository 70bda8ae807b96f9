"""Deep Compression end to end on Fashion-MNIST: train, prune, share weights by k-means, fine-tune the
centroids; accuracy and size at every stage.

    python bench/deep_compression.py [--epochs 10] [--sparsity 0.92] [--clusters 16] [--json out.json]

Data: the Debian package ``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``:
idx files under /usr/share/datasets/fashion-mnist/), 60k training and 10k test images.

Stages (Han et al., Deep Compression, ICLR 2016, on LeNet-300-100):
  0. fp32: a 784-300-100-10 MLP (ReLU) trained with Adam; (0b) the same trained for as many more
     epochs as stage 1 retrains, so the accuracy loss is judged against the better of the two.
  1. pruned: ``fastq.prune_`` (magnitude, one global ranking across the three layers, as the paper's
     per-layer rates come out unequal: the 784-wide first layer takes most of the cut) in four steps
     to the final sparsity, each followed by retraining epochs (masks hold the pruned weights at 0).
     Size: the layers stored as ``fastq.sparsify_`` stores them (CSR: float32 values + 16-bit columns).
  2. shared: ``fastq.quantize_`` with ``WeightSharingConfig(scope="layer", init="linear",
     method="lloyd", storage="sparse")`` (the paper's linear init; the pruned zeros keep a fixed
     0.0 entry; kept weights stored as a 4-bit relative index + a code each). No retraining.
  3. fine-tuned: ``fastq.train_centroids_`` then ``fastq.distill_`` from the pruned fp32 model
     (KL on logits) plus label cross-entropy steps of our own loop: every centroid moves by the sum
     of its members' gradients; codes never change.
  (4.) Huffman: the entropy-coded size of stage 3's codes and gaps (computed from their histograms
     with a real Huffman code, not stored): the paper's third step, for comparison.
Sizes count every stored tensor of the model (weights, codebooks, biases), as fastq.save writes
them; ratios are fp32 bytes / stored bytes.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import heapq
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import fastq
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastq

from fastq.benchmarking import format_table

DATA = Path("/usr/share/datasets/fashion-mnist")
THREADS = 1  # LeNet-300-100 matmuls are tiny: a second thread costs more than it brings


def _idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(root: Path = DATA):
    """(x_train, y_train, x_test, y_test): float32 [N, 784] in [0, 1] normalised, int64 labels."""
    def find(stem):
        for name in (stem + ".gz", stem):
            if (root / name).exists():
                return root / name
        raise FileNotFoundError(f"{root / stem}[.gz] missing: `apt-get install -y dataset-fashion-mnist`")

    xs = [torch.from_numpy(_idx(find(f"{s}-images-idx3-ubyte")).copy()).float().reshape(-1, 784) / 255
          for s in ("train", "t10k")]
    ys = [torch.from_numpy(_idx(find(f"{s}-labels-idx1-ubyte")).copy()).long() for s in ("train", "t10k")]
    mean, std = xs[0].mean(), xs[0].std()
    return (xs[0] - mean) / std, ys[0], (xs[1] - mean) / std, ys[1]


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def train_epochs(model, x, y, epochs: int, lr: float, seed: int, batch: int = 128) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean()) * 100


def stored_bytes(model) -> int:
    return fastq.summary(model).total_bytes


def huffman_bits(symbols) -> int:
    """Total bits of ``symbols`` under a Huffman code built from their own histogram."""
    counts = Counter(symbols)
    if len(counts) == 1:
        return len(symbols)
    heap = [(c, i, None) for i, c in enumerate(counts.values())]
    heapq.heapify(heap)
    total, uid = 0, len(heap)
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a[0] + b[0]  # every merge adds one bit to each symbol below it
        heapq.heappush(heap, (a[0] + b[0], uid, None))
        uid += 1
    return total


def huffman_bytes(model) -> int:
    """Stored bytes with each sparse codebook layer's gaps and codes Huffman-coded (everything else as is)."""
    from fastq.nn.codebook import GAP_BITS, _unpack_bits

    total = 0
    for m in model.modules():
        own = [t for t in list(m._parameters.values()) + list(m._buffers.values()) if t is not None]
        if isinstance(m, fastq.SharedWeightLinear) and m.storage == "sparse":
            gaps = _unpack_bits(m.gaps, GAP_BITS, m.entries).tolist()
            codes = _unpack_bits(m.codes, m.bits, m.entries).tolist()
            total += (huffman_bits(gaps) + huffman_bits(codes) + 7) // 8
            own = [t for t in own if t is not m.gaps and t is not m.codes]
        total += sum(t.numel() * t.element_size() for t in own)
    return total


def run(epochs: int, sparsity: float, clusters: int, finetune_epochs: int, seed: int,
        retrain_epochs: int = 2) -> list[dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    x, y, xt, yt = load_fashion_mnist()
    fp32 = lenet_300_100()
    t0 = time.perf_counter()
    train_epochs(fp32, x, y, epochs, 1e-3, seed)
    base_bytes = stored_bytes(fp32)
    rows = []

    def stage(name, model, nbytes, note=""):
        rows.append({"stage": name, "accuracy %": accuracy(model, xt, yt), "bytes": nbytes,
                     "ratio": base_bytes / nbytes, "note": note, "elapsed s": time.perf_counter() - t0})

    stage("0 fp32", fp32, base_bytes)
    longer = copy.deepcopy(fp32)  # the same training budget as the pruned model, for a fair baseline
    for step in range(4):
        train_epochs(longer, x, y, retrain_epochs, 5e-4, seed + 1 + step)
    stage("0b fp32, +retraining epochs", longer, base_bytes, f"{4 * retrain_epochs} more epochs, as stage 1 gets")

    pruned = copy.deepcopy(fp32)
    for step, s in enumerate((sparsity * 0.55, sparsity * 0.8, sparsity * 0.93, sparsity)):
        fastq.prune_(pruned, fastq.PruneConfig(sparsity=s, scope="global"))
        train_epochs(pruned, x, y, retrain_epochs, 5e-4, seed + 1 + step)
    csr = fastq.sparsify_(copy.deepcopy(pruned))
    kept = [float(m.weight_mask.float().mean()) for m in pruned.modules() if isinstance(m, nn.Linear)]
    stage("1 pruned", pruned, stored_bytes(csr), f"{sparsity:.0%} pruned (kept per layer: "
          + ", ".join(f"{100 * k:.1f}%" for k in kept) + "), CSR storage")

    shared = copy.deepcopy(pruned)
    cfg = fastq.WeightSharingConfig(clusters=clusters, scope="layer", init="linear", method="lloyd",
                                    storage="sparse", seed=seed)
    fastq.quantize_(shared, cfg)
    stage("2 shared", shared, stored_bytes(shared), f"{clusters} clusters per layer (one is 0.0), no retraining")

    tuned = copy.deepcopy(shared)
    fastq.train_centroids_(tuned)
    batches = [x[i:i + 256] for i in range(0, x.shape[0], 256)]
    steps = finetune_epochs * len(batches)
    fastq.distill_(tuned, pruned, batches, loss="kl", steps=steps, lr=1e-4, train_mode=False)
    train_epochs(tuned, x, y, 1, 5e-5, seed + 9)  # a label pass: Deep Compression retrains on labels
    fastq.train_centroids_(tuned, False)
    stage("3 fine-tuned", tuned, stored_bytes(tuned), "centroids trained (distill_ + labels), codes fixed")
    stage("(4) Huffman", tuned, huffman_bytes(tuned), "stage 3 with Huffman-coded gaps and codes (computed)")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--retrain-epochs", type=int, default=2, help="retraining epochs after each pruning step")
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = run(args.epochs, args.sparsity, args.clusters, args.finetune_epochs, args.seed, args.retrain_epochs)
    print(f"Fashion-MNIST, LeNet-300-100, threads {THREADS}, load average {os.getloadavg()[0]:.1f}")
    print(format_table(rows))
    base = max(rows[:2], key=lambda r: r["accuracy %"])  # the better fp32 baseline
    final = rows[4]
    loss = base["accuracy %"] - final["accuracy %"]
    print(f"targets: >= 20x smaller: {final['ratio']:.1f}x ({'met' if final['ratio'] >= 20 else 'not met'}); "
          f"<= 0.5 point accuracy loss after fine-tuning: {loss:.2f} ({'met' if loss <= 0.5 else 'not met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
