"""Shared helpers of the sparse op tests: masks built here (random / top-k / 2:4 / block), ISA
forcing, seeded generators. Pruning algorithms live in fastq.pruning; these tests only need masks."""

from __future__ import annotations


import torch


TAILS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)
SPARSITIES = (0.5, 0.75, 0.9, 0.95)
BLOCKS = ((1, 4), (4, 4), (8, 1), (2, 8), (4, 1), (1, 2), (8, 8), (8, 2))





def with_threads(threads: int, fn):
    """``fn()`` run under ``torch.set_num_threads(threads)``; the previous setting is restored."""
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return fn()
    finally:
        torch.set_num_threads(saved)


def random_mask(n: int, k: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Bernoulli mask keeping about 1 - sparsity, with at least one kept weight."""
    m = torch.rand(n, k, generator=gen) >= sparsity
    m[0, 0] = True
    return m


def topk_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the largest |w| per layer (exactly round((1 - sparsity) * numel), at least 1)."""
    keep = max(1, round((1 - sparsity) * w.numel()))
    idx = w.abs().flatten().topk(keep).indices
    m = torch.zeros(w.numel(), dtype=torch.bool)
    m[idx] = True
    return m.reshape(w.shape)


def mask_24(n: int, k: int, gen: torch.Generator, keep_per_group: int = 2) -> torch.Tensor:
    """A random 2:4 mask (k % 4 == 0) keeping ``keep_per_group`` (<= 2) of every 4 inputs."""
    r = torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2)
    return (r < keep_per_group).reshape(n, k)


def block_mask(n: int, k: int, br: int, bc: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Whole [br, bc] blocks kept or pruned (edge blocks clipped), at least one block kept."""
    keep = torch.rand(-(-n // br), -(-k // bc), generator=gen) >= sparsity
    keep[0, 0] = True
    return keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k].contiguous()
