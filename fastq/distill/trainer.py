"""distill_: train a student in place toward a frozen teacher (e.g. recovery after pruning).

Invariants:
- the teacher is never changed: its outputs are computed under ``torch.no_grad`` in eval mode, and
  its train/eval mode is restored afterwards (as is the student's);
- pruning masks hold throughout and after: fastq.pruning's gradient hook zeroes masked gradients,
  and ``apply_masks_`` re-zeroes masked weights after every optimizer step, so an optimizer whose
  state predates the pruning (momentum, weight decay) cannot revive a pruned weight — after
  ``distill_`` returns, every masked weight is exactly 0 and masks are unchanged;
- arguments are all checked before the first step; a non-finite loss stops training before the
  optimizer steps on it (FloatingPointError naming the step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from fastq.distill.losses import LOSSES
from fastq.pruning.masks import apply_masks_
from fastq.train.trainer import TrainConfig, TrainHistory, default_forward, train_


@dataclass(frozen=True)
class DistillConfig:
    """The numbers of a distillation run, validated on construction.

    Args:
        loss: "cosine" (embeddings), "kl" (logits, Hinton) or "mse" (hidden states).
        steps: optimizer steps (>= 1); ``batches`` is cycled when it runs out.
        lr: learning rate of the default AdamW optimizer (None when an optimizer is given).
        temperature: softening temperature for "kl" (> 0; ignored by other losses).
        max_grad_norm: clip the student's gradient norm to this (None: no clipping).
        train_mode: run the student in train mode (dropout on). False keeps eval mode, which
            converges faster in short recovery runs where the teacher is the student's own
            dense self.
    """

    loss: str = "cosine"
    steps: int = 100
    lr: Optional[float] = None
    temperature: float = 1.0
    max_grad_norm: Optional[float] = None
    train_mode: bool = True

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown distillation loss {self.loss!r}: use one of {sorted(LOSSES)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        for name in ("lr", "max_grad_norm"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise ValueError(f"{name} must be a finite number > 0 (or None), got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        if not isinstance(self.train_mode, bool):
            raise TypeError(f"train_mode must be a bool, got {self.train_mode!r}")


@dataclass(frozen=True)
class DistillHistory:
    """What ``distill_`` did: the loss of every step (before that step's update), in order."""

    losses: Tuple[float, ...]
    config: DistillConfig
    train: Optional[TrainHistory] = None  # the trainer's record: learning rates, evaluations, early stop

    @property
    def initial(self) -> float:
        return self.losses[0]

    @property
    def final(self) -> float:
        return self.losses[-1]

    def mean(self, first: int = 0, last: Optional[int] = None) -> float:
        """Mean loss over steps [first, last)."""
        xs = self.losses[first:last]
        return sum(xs) / len(xs)


def _as_target(out: Any, who: str) -> Any:
    if isinstance(out, Tensor) or (isinstance(out, (tuple, list)) and all(isinstance(t, Tensor) for t in out)):
        return out
    raise TypeError(
        f"the {who}'s output is a {type(out).__name__}, not a tensor; pass embed_fn=lambda model, batch: ... "
        f"returning the tensor to distill (e.g. pooled embeddings or logits)"
    )


def distill_(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    *,
    loss: str = "cosine",
    steps: int,
    lr: Optional[float] = None,
    embed_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    temperature: float = 1.0,
    max_grad_norm: Optional[float] = None,
    train_mode: bool = True,
    schedule: str = "constant",
    warmup_steps: int = 0,
    evaluate: Optional[Callable[[nn.Module], float]] = None,
    eval_every: Optional[int] = None,
    patience: Optional[int] = None,
    higher_is_better: bool = True,
    checkpoint_dir: Optional[str] = None,
    progress: Optional[bool] = False,
) -> DistillHistory:
    """Train ``student`` in place so its outputs match the frozen ``teacher``'s on ``batches``.

    Each step: ``t = embed_fn(teacher, batch)`` (no grad), ``s = embed_fn(student, batch)``,
    ``L = loss(s, t)``, backward, optional clipping, optimizer step, re-apply pruning masks.

    Args:
        student: the model to train (e.g. a pruned copy of the teacher); fastq pruning masks on
            it are respected (pruned weights stay exactly 0).
        teacher: the reference model; never modified.
        batches: an iterable of model inputs (tensor, tuple or mapping), cycled for ``steps``.
        loss: "cosine" (``cosine_embedding_loss``), "kl" (``kl_div_loss`` with ``temperature``)
            or "mse" (``mse_loss``; embed_fn may return a sequence of hidden states).
        steps: number of optimizer steps.
        lr: AdamW learning rate; required unless ``optimizer`` is given (then it must be None).
        embed_fn: ``embed_fn(model, batch) -> Tensor`` (or a sequence for "mse"): what to
            compare. Default: the model's output on the batch (see ``default_forward``).
        optimizer: an optimizer over the student's parameters (default AdamW(lr), no decay).
        temperature, max_grad_norm, train_mode: see ``DistillConfig``.
        schedule, warmup_steps, evaluate, eval_every, patience, higher_is_better, checkpoint_dir,
            progress: the trainer's learning-rate schedule, early stopping on ``evaluate(student)``,
            checkpoint / resume and progress bar (see ``fastq.train.TrainConfig``).

    Returns:
        A DistillHistory with the loss at each step (and the trainer's full record in ``train``).

    Raises:
        ValueError: unknown loss, bad numbers, student is teacher, no trainable parameters,
            outputs of different shapes, empty or exhausted batches.
        FloatingPointError: the loss became NaN/Inf (the step is not applied).
    """
    config = DistillConfig(loss=loss, steps=steps, lr=lr, temperature=temperature,
                           max_grad_norm=max_grad_norm, train_mode=train_mode)
    for who, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{who} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError("student and teacher are the same module; distill a copy (copy.deepcopy(teacher))")
    teacher_params = {id(p) for p in teacher.parameters()}
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the student has no trainable parameters (a sparsify_'d or quantized model stores buffers); "
            "distill before sparsify_ / quantize_"
        )
    if any(id(p) in teacher_params for p in params):
        raise ValueError("student and teacher share parameters; distill a deep copy of the teacher")
    if optimizer is None:
        if lr is None:
            raise ValueError("pass lr= (for the default AdamW optimizer) or optimizer=")
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    elif lr is not None:
        raise ValueError("pass lr= or an optimizer= (which has its own lr), not both")
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    forward = embed_fn if embed_fn is not None else default_forward
    loss_fn = LOSSES[config.loss]
    kwargs = {"temperature": config.temperature} if config.loss == "kl" else {}
    train_config = TrainConfig(steps=config.steps, schedule=schedule, warmup_steps=warmup_steps,
                               max_grad_norm=config.max_grad_norm, eval_every=eval_every, patience=patience,
                               higher_is_better=higher_is_better, checkpoint_dir=checkpoint_dir, progress=progress,
                               train_mode=config.train_mode, desc="distill")

    def distill_loss(model: nn.Module, batch: Any) -> Tensor:
        with torch.no_grad():
            target = _as_target(forward(teacher, batch), "teacher")
        return loss_fn(_as_target(forward(model, batch), "student"), target, **kwargs)

    teacher_mode = {m: m.training for m in teacher.modules()}
    try:
        teacher.eval()
        apply_masks_(student)
        history = train_(student, batches, distill_loss, train_config, optimizer=optimizer, evaluate=evaluate,
                         after_step=apply_masks_)
    finally:
        for m, t in teacher_mode.items():
            m.train(t)
    return DistillHistory(tuple(history.losses), config, history)
