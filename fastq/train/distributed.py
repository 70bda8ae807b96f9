"""Data parallelism over ``torch.distributed`` (started by ``torchrun``): gloo on CPU, NCCL on GPU.

Invariants:
  * Every rank starts from rank 0's parameters and buffers (``broadcast_module_``) and applies the
    same averaged gradients, so all ranks hold the same model after every step.
  * A global batch is split along dim 0 into ``world`` contiguous shards (``shard_batch``); each
    rank's loss is weighted by its share of the examples, so the all-reduced gradient equals the
    gradient of the global batch's mean loss, however unevenly the batch divides. Training with N
    processes therefore matches one process fed the same global batches, up to float summation order.
  * Gradients are averaged with explicit bucketed all-reduces after ``backward`` (not by wrapping the
    model in ``DistributedDataParallel``): loss functions keep calling the user's own module (its
    attributes, submodules and ``is`` checks work), fastq's pruning-mask hooks run unchanged, and a
    parameter that got no gradient on one rank still joins the collective (as zeros).
  * A group ``init_distributed`` creates is destroyed before the interpreter shuts down (explicitly by
    ``shutdown_distributed`` or by an ``atexit`` hook): gloo's worker threads that outlive the
    interpreter abort the process ("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["allreduce_gradients_", "broadcast_module_", "init_distributed", "is_main", "shard_batch",
           "shutdown_distributed", "world"]

_BUCKET_BYTES = 25 << 20


def init_distributed(backend: Optional[str] = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (RANK / WORLD_SIZE / MASTER_ADDR env vars).

    Args:
        backend: "gloo" or "nccl"; default NCCL when CUDA is available, else gloo.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` without torchrun (nothing is initialized then). With
        NCCL, the current CUDA device is set to ``LOCAL_RANK``.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    atexit.register(_destroy_group)  # runs while the interpreter is still whole
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the process group; a no-op when none is initialized.

    Call it at the end of a training script, after the last collective: a rank that exits while a
    peer still talks to it makes the peer fail.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    _destroy_group()


def _destroy_group() -> None:
    # No barrier here (the atexit hook): at exit after an error the peers may never arrive.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group, or ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def _batch_size(batch: Any) -> Optional[int]:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    if isinstance(batch, Mapping) or hasattr(batch, "keys"):
        items = [batch[k] for k in batch.keys()]
    elif isinstance(batch, (tuple, list)):
        items = list(batch)
    else:
        return None
    sizes = {s for s in (_batch_size(v) for v in items) if s is not None}
    if len(sizes) > 1:
        raise ValueError(f"shard_batch: the tensors of a batch disagree on the batch size (dim 0): {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.dim() else batch
    if hasattr(batch, "keys") and not isinstance(batch, (tuple, list)):
        out = {k: _slice(batch[k], start, stop) for k in batch.keys()}
        try:
            return type(batch)(out)  # dict, BatchEncoding, OrderedDict ...
        except Exception:
            return out
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_slice(v, start, stop) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(v, start, stop) for v in batch)
    return batch


def shard_batch(batch: Any, rank: int, world_size: int) -> tuple[Any, float]:
    """This rank's contiguous share of a global batch (tensors split along dim 0) and its weight
    ``n_local / n_global``. Non-tensor leaves are given to every rank whole."""
    if world_size == 1:
        return batch, 1.0
    n = _batch_size(batch)
    if n is None:
        raise ValueError("shard_batch: the batch holds no tensor with a batch dimension to split across ranks; "
                         "pass shard=... to split it yourself")
    if n < world_size:
        raise ValueError(f"shard_batch: a global batch of {n} examples cannot feed {world_size} ranks")
    bounds = [(n * r) // world_size for r in range(world_size + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    return _slice(batch, start, stop), (stop - start) / n


def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def allreduce_gradients_(params: list, world_size: int) -> None:
    """Average the gradients of ``params`` over the ranks (missing gradients count as zeros)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket, size = [], 0
    for g in grads + [None]:
        if g is not None and (not bucket or (size + g.numel() * g.element_size() <= _BUCKET_BYTES
                                             and g.dtype == bucket[0].dtype and g.device == bucket[0].device)):
            bucket.append(g)
            size += g.numel() * g.element_size()
            continue
        if bucket:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat.div_(world_size)
            for dst, src in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                dst.copy_(src)
        bucket, size = ([g], g.numel() * g.element_size()) if g is not None else ([], 0)
