"""``train_``: the one training loop behind every fastq fine-tune (pruning recovery, ``distill_``,
and the fine-tunes other features add: codebook centroids, QAT).

Invariants:
  * Arguments are checked before the first step; a non-finite loss stops training before the
    optimizer steps on it (FloatingPointError naming the step), on every rank alike.
  * Learning rates come from ``fastq.train.schedules.lr_factor`` (a pure function of the step), so
    a run resumed from a checkpoint sets exactly the rates, batches (``batches`` is re-iterated and
    the steps already done are skipped) and optimizer state of the uninterrupted run.
  * Early stopping evaluates ``evaluate(model)`` every ``eval_every`` steps (on rank 0, broadcast);
    after ``patience`` evaluations without an improvement of ``min_delta`` it stops, and with
    ``restore_best`` the model ends with the best evaluated weights.
  * Checkpoints are written by rank 0 only, atomically (a temporary file renamed over the old one),
    as tensors and plain values read back with ``torch.load(weights_only=True)`` (no pickled code).
  * Data parallel under ``torchrun`` follows ``fastq.train.distributed``: N processes fed the same
    global batches end with the model one process would, up to float summation order.
  * The model's train/eval mode is restored on exit, and gradients are left cleared.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from fastq.train import distributed as D
from fastq.train.schedules import SCHEDULES, lr_factor

__all__ = ["CHECKPOINT_FILE", "Cycle", "TrainConfig", "TrainHistory", "default_forward", "train_"]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


def _positive(name: str, v, integer: bool = False, allow_none: bool = True, zero: bool = False) -> None:
    if v is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or (v < 0 if zero else v <= 0):
        what = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {what} {'>= 0' if zero else '> 0'}{' (or None)' if allow_none else ''}, "
                         f"got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train, validated on construction.

    Args:
        steps: optimizer steps (>= 1).
        lr: base learning rate of the default AdamW (None when an optimizer is passed).
        schedule: "constant", "cosine", "linear" or "step" (see ``fastq.train.schedules``).
        warmup_steps: linear warm-up steps before the schedule.
        min_lr_ratio: floor of "cosine" / "linear", as a fraction of the base rate.
        step_size, gamma: "step" multiplies the rate by ``gamma`` every ``step_size`` steps.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        weight_decay: AdamW weight decay of the default optimizer.
        eval_every: evaluate every this many steps (and after the last); needs ``evaluate``.
        patience: stop after this many evaluations without improvement (None: never stop early).
        min_delta: an improvement must beat the best metric by more than this.
        higher_is_better: direction of the validation metric.
        restore_best: end with the best evaluated weights (when evaluating).
        checkpoint_dir: write checkpoints here and resume from one found there.
        checkpoint_every: steps between checkpoints (default: at every evaluation and at the end).
        progress: a tqdm bar on rank 0 (None: when writing to a terminal).
        train_mode: run the model in train mode (dropout on); False keeps eval mode.
        desc: the progress bar's label.
    """

    steps: int
    lr: Optional[float] = None
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: Optional[int] = None
    gamma: float = 0.1
    max_grad_norm: Optional[float] = None
    weight_decay: float = 0.0
    eval_every: Optional[int] = None
    patience: Optional[int] = None
    min_delta: float = 0.0
    higher_is_better: bool = True
    restore_best: bool = True
    checkpoint_dir: Optional[str] = None
    checkpoint_every: Optional[int] = None
    progress: Optional[bool] = False
    train_mode: bool = True
    desc: str = "train"

    def __post_init__(self) -> None:
        _positive("steps", self.steps, integer=True, allow_none=False)
        _positive("lr", self.lr)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _positive("warmup_steps", self.warmup_steps, integer=True, allow_none=False, zero=True)
        if self.warmup_steps >= self.steps and self.warmup_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        m = self.min_lr_ratio
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {m!r}")
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs step_size= (steps between decays)")
        _positive("step_size", self.step_size, integer=True)
        _positive("gamma", self.gamma, allow_none=False)
        _positive("max_grad_norm", self.max_grad_norm)
        _positive("weight_decay", self.weight_decay, allow_none=False, zero=True)
        _positive("eval_every", self.eval_every, integer=True)
        _positive("patience", self.patience, integer=True)
        _positive("min_delta", self.min_delta, allow_none=False, zero=True)
        _positive("checkpoint_every", self.checkpoint_every, integer=True)
        for name in ("higher_is_better", "restore_best", "train_mode"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path, got {type(self.checkpoint_dir).__name__}")

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.steps, self.schedule, self.warmup_steps, self.min_lr_ratio, self.step_size,
                         self.gamma)


@dataclass
class TrainHistory:
    """What ``train_`` did: per step the global loss (before that step's update) and learning rate,
    the evaluations as (step, metric), and how it ended."""

    losses: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    best_step: Optional[int] = None
    best_metric: Optional[float] = None
    stopped_early: bool = False
    resumed_from: int = 0  # steps already done in the checkpoint this run resumed from

    @property
    def steps(self) -> int:
        return len(self.losses)


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(*batch)`` for a tuple/list, ``model(**batch)`` for a mapping."""
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if hasattr(batch, "keys"):
        return model(**batch)
    return model(batch)


class Cycle:
    """Endless batches from a re-iterable; a one-shot iterator that runs out is an error."""

    def __init__(self, batches: Iterable):
        self._src = batches
        self._it = iter(batches)
        self._served = 0

    def next(self) -> Any:
        try:
            b = next(self._it)
        except StopIteration:
            self._it = iter(self._src)
            try:
                b = next(self._it)
            except StopIteration:
                raise ValueError(
                    "batches is empty" if self._served == 0 else
                    f"batches ran out after {self._served} batches and cannot be restarted; pass a list "
                    f"(or any re-iterable) to cycle through, or fewer steps"
                ) from None
        self._served += 1
        return b


def _better(metric: float, best: Optional[float], config: TrainConfig) -> bool:
    if best is None:
        return True
    return metric > best + config.min_delta if config.higher_is_better else metric < best - config.min_delta


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") \
            from None


def _scalar(value: float, device) -> float:
    """The value rank 0 holds, on every rank."""
    rank, size = D.world()
    if size == 1:
        return value
    t = torch.tensor([value if rank == 0 else 0.0], dtype=torch.float64, device=device)
    torch.distributed.broadcast(t, 0)
    return float(t.item())


def train_(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, Any], Tensor],
           config: Optional[TrainConfig] = None, *, optimizer: Optional[torch.optim.Optimizer] = None,
           evaluate: Optional[Callable[[nn.Module], float]] = None,
           after_step: Optional[Callable[[nn.Module], None]] = None,
           shard: Callable[[Any, int, int], tuple] = D.shard_batch, **options) -> TrainHistory:
    """Train ``model`` in place: ``loss_fn(model, batch)`` minimized for ``config.steps`` steps.

    Each step: the next global batch (``batches`` is cycled), this rank's shard of it, the loss,
    backward, gradients averaged over ranks, optional clipping, the scheduled learning rate,
    ``optimizer.step()``, ``after_step(model)`` (e.g. re-applying pruning masks), then evaluation,
    early stopping and checkpoints when due.

    Args:
        model: the module to train (its trainable parameters are optimized).
        batches: a re-iterable of global batches (tensor, tuple or mapping of tensors).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the mean loss over the batch.
        config: a ``TrainConfig``; or pass its fields as keyword ``options``.
        optimizer: over the model's parameters (default AdamW(config.lr, config.weight_decay));
            its learning rates are the base rates the schedule multiplies.
        evaluate: ``evaluate(model) -> float``, a validation metric for early stopping.
        after_step: called after every optimizer step.
        shard: ``shard(batch, rank, world) -> (local batch, weight)`` for data parallelism.

    Returns:
        A TrainHistory.

    Raises:
        ValueError / TypeError: bad arguments (checked before the first step).
        FloatingPointError: the loss became NaN/Inf (that step is not applied).
    """
    if config is None:
        config = TrainConfig(**options)
    elif options:
        raise TypeError(f"pass a TrainConfig or its fields as keywords, not both (got {sorted(options)})")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be a callable (model, batch) -> scalar tensor")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (a sparsify_'d or quantized model stores buffers); "
                         "train before sparsify_ / quantize_")
    if optimizer is None:
        if config.lr is None:
            raise ValueError("pass lr= (for the default AdamW optimizer) or optimizer=")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.lr is not None:
        raise ValueError("pass lr= or an optimizer= (which has its own lr), not both")
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if (config.eval_every or config.patience) and evaluate is None:
        raise ValueError("eval_every= / patience= need evaluate=")
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> float")
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])

    rank, size = D.world()
    device = params[0].device
    history = TrainHistory()
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
    start, bad_evals, best_state = 0, 0, None
    if ckpt_dir is not None and (ckpt_dir / CHECKPOINT_FILE).is_file():
        state = _load(ckpt_dir / CHECKPOINT_FILE)
        if state.get("config", {}).get("steps") != config.steps:
            raise ValueError(f"checkpoint {ckpt_dir / CHECKPOINT_FILE} was written for "
                             f"{state.get('config', {}).get('steps')} steps, this run has {config.steps}; use another "
                             "checkpoint_dir to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        history = TrainHistory(list(state["losses"]), list(state["lrs"]), [tuple(e) for e in state["evals"]],
                               state["best_step"], state["best_metric"], bool(state["stopped_early"]), start)
        bad_evals = int(state["bad_evals"])
        torch.set_rng_state(state["rng"])
        if (ckpt_dir / BEST_FILE).is_file():
            best_state = _load(ckpt_dir / BEST_FILE)
    elif size > 1:
        D.broadcast_module_(model)

    def checkpoint(step: int) -> None:
        if ckpt_dir is None or rank != 0:
            return
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save(ckpt_dir / CHECKPOINT_FILE, {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "losses": history.losses,
            "lrs": history.lrs, "evals": [list(e) for e in history.evals], "best_step": history.best_step,
            "best_metric": history.best_metric, "stopped_early": history.stopped_early, "bad_evals": bad_evals,
            "rng": torch.get_rng_state(), "config": {k: (str(v) if isinstance(v, os.PathLike) else v)
                                                     for k, v in asdict(config).items()}})

    from tqdm.auto import tqdm

    show = None if config.progress is None else bool(config.progress)
    bar = tqdm(total=config.steps, initial=start, desc=config.desc, unit="step",
               disable=(rank != 0) or (None if show is None else not show))
    source = Cycle(batches)
    for _ in range(start):  # the batches the checkpointed run already trained on
        source.next()
    modes = {m: m.training for m in model.modules()}
    try:
        model.train(config.train_mode)
        step = start
        while step < config.steps and not history.stopped_early:
            batch, weight = shard(source.next(), rank, size)
            factor = config.lr_factor(step)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            value = loss_fn(model, batch)
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor, got {type(value).__name__}"
                                f"{'' if not isinstance(value, Tensor) else ' of shape ' + str(tuple(value.shape))}")
            total = value.detach().reshape(()).to(torch.float64) * weight
            if size > 1:
                torch.distributed.all_reduce(total)
            if not bool(torch.isfinite(total)):
                raise FloatingPointError(f"the loss is {float(total)} at step {step}; lower lr= or clip with "
                                         "max_grad_norm=")
            optimizer.zero_grad(set_to_none=True)
            (value * (weight * size)).backward()
            if size > 1:
                D.allreduce_gradients_(params, size)
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            if after_step is not None:
                after_step(model)
            history.losses.append(float(total))
            history.lrs.append(optimizer.param_groups[0]["lr"])
            step += 1
            bar.update(1)
            postfix = {"loss": f"{float(total):.4g}", "lr": f"{history.lrs[-1]:.3g}"}
            every = config.eval_every
            due = evaluate is not None and (step == config.steps or bool(every and step % every == 0))
            if due:
                was = model.training
                model.eval()
                with torch.no_grad():
                    metric = _scalar(float(evaluate(model)) if rank == 0 else 0.0, device)
                model.train(was)
                history.evals.append((step, metric))
                postfix["eval"] = f"{metric:.4g}"
                if not math.isfinite(metric):
                    raise FloatingPointError(f"evaluate(model) returned {metric} after step {step}")
                if _better(metric, history.best_metric, config):
                    history.best_metric, history.best_step, bad_evals = metric, step, 0
                    if config.restore_best:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        if ckpt_dir is not None and rank == 0:
                            ckpt_dir.mkdir(parents=True, exist_ok=True)
                            _save(ckpt_dir / BEST_FILE, best_state)
                else:
                    bad_evals += 1
                    if config.patience is not None and bad_evals >= config.patience:
                        history.stopped_early = True
            bar.set_postfix(postfix)
            every = config.checkpoint_every or config.eval_every
            end = step == config.steps or history.stopped_early
            if ckpt_dir is not None and (end or bool(every and step % every == 0)):
                checkpoint(step)
        if config.restore_best and best_state is not None and history.best_step != len(history.losses):
            model.load_state_dict(best_state)
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        for m, t in modes.items():
            m.train(t)
    return history
