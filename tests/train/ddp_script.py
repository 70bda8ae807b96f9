"""Train a small MLP on the real digits with fastq.train_: run alone, or under torchrun for data parallelism.

Usage: [torchrun --standalone --nproc_per_node N] python ddp_script.py OUT.safetensors
Every process sees the same global batches of 63 digits (shards of 31/32 under two processes);
rank 0 writes the final weights. Used by tests/train/test_distributed.py.
"""

import sys

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

import fastq
from fastq.train import init_distributed, is_main, shutdown_distributed


def global_batches(size: int = 63) -> list:
    d = load_digits()
    x = torch.tensor(d.data[:630], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:630], dtype=torch.long)
    return [(x[i:i + 63][:size], y[i:i + 63][:size]) for i in range(0, 630, 63)]


def train(batches: list) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    fastq.train_(model, batches, loss_fn, steps=12, lr=1e-2, schedule="cosine", warmup_steps=2, max_grad_norm=1.0)
    return model


def main(out: str) -> None:
    torch.set_num_threads(1)
    init_distributed()  # gloo on CPU; (0, 1) without torchrun
    model = train(global_batches())
    if is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
