"""``smooth_quant_``: SmoothQuant (Xiao et al. 2023) — migrate activation outliers into the weights.

For linear layers sharing an input x, ``s[k] = max|x_k|^alpha / max|W[:, k]|^(1 - alpha)`` and
``x @ W.T == (x / s) @ (W * s).T``. The division by s is folded into the operation that produces
x when that is exact (a LayerNorm / RMSNorm whose output feeds only these layers, as in Llama-style
pre-norm blocks; or a linear layer whose output channels map one to one onto x, as v_proj -> o_proj
or up_proj -> down_proj), else the layers are wrapped in ``SmoothedLinear``, which keeps s.

Invariants:
  * Candidate producers come from one traced forward (object identity of tensors: a norm's output
    object is the layers' input object, and no other torch call reads it), and a fold is accepted only if the model's outputs on that
    batch stay within ``tolerance`` (relative RMS change of every output channel) of the original's: a fold that would break a
    residual connection (BERT's post-norm blocks) is detected by running it, and falls back to the
    scale vector. The smoothing never changes what the float model computes beyond rounding.
  * Weights shared with another module (tied embeddings) are never rescaled: such layers are left
    alone and reported.
  * All or nothing: on any error every weight and module is restored.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from fastq.nn.smooth import SmoothedLinear
from fastq.quantization.calibrate import CALIBRATION_ATTR, CalibrationError, collect_stats, run_batches
from fastq.quantization.observers import MinMaxObserver

RECENT_LINEARS = 2  # linear producers considered: the last ones that ran before the group
CHECK_ROWS = 64  # input rows per group kept from the traced forward for the local fold check


class SmoothQuantError(RuntimeError):
    """Smoothing could not be applied (the model was restored)."""


@dataclass
class SmoothQuantReport:
    """What ``smooth_quant_`` did: per group of layers sharing an input, where 1/s went."""

    alpha: float
    groups: list = field(default_factory=list)  # (member names, "folded into <name>" | "SmoothedLinear")
    skipped: list = field(default_factory=list)  # (name, reason)

    def __str__(self) -> str:
        lines = [f"SmoothQuant alpha={self.alpha}: {len(self.groups)} groups"]
        lines += [f"  {', '.join(names)}: {where}" for names, where in self.groups]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be a number in [0, 1] (the migration strength: 0 keeps the "
                         f"difficulty in the activations, 1 moves it all into the weights), got {alpha!r}")
    return float(alpha)


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return (isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")) and isinstance(w, Tensor) \
        and w.dim() == 1


def _tensors(out: Any) -> list:
    """Float tensors of a model output (tensor, sequence, mapping / ModelOutput), in order."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if hasattr(out, "values") and callable(out.values):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _rel_error(a: list, b: list) -> float:
    """Largest per-channel relative RMS change (channels = last dimension; a channel's RMS counts at
    least 1% of the whole tensor's): a model whose outputs are dominated by a few outlier channels
    must not hide a change in the others."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    worst = 0.0
    for x, y in zip(a, b):
        x2, y2 = x.detach().double().reshape(_rows(x)), y.double().reshape(_rows(y))
        ref = y2.pow(2).mean(0).sqrt()
        floor = 1e-2 * float(y2.pow(2).mean().sqrt()) + 1e-30  # near-silent channels: absolute rounding noise
        err = (x2 - y2).pow(2).mean(0).sqrt() / (ref + floor)
        worst = max(worst, float(err.max()) if err.numel() else 0.0)
    return worst if math.isfinite(worst) else math.inf


def _rows(t: Tensor) -> tuple:
    return (-1, t.shape[-1] if t.dim() else 1)


def _first_sample(batch: Any) -> Any:
    """The batch cut to its first sample (leading dimension) wherever it is a tensor."""
    if isinstance(batch, Tensor):
        return batch[:1] if batch.dim() and batch.shape[0] > 1 else batch
    if type(batch) in (list, tuple):
        return type(batch)(_first_sample(b) for b in batch)
    if isinstance(batch, dict) or (hasattr(batch, "items") and hasattr(batch, "keys")):
        return {k: _first_sample(v) for k, v in batch.items()}
    return batch


class _Group:
    def __init__(self, first: nn.Linear):
        self.members = [first]
        self.candidates: list = []  # producer modules, most plausible first
        self.norm_uses: Optional[list] = None  # the norm candidate's output: [weakref, reads] (_UseCounter)
        self.s: Optional[Tensor] = None
        self.where = "SmoothedLinear"
        self.ref_input: Optional[Tensor] = None  # the first member's input rows in the traced forward


_METADATA = {"__get__", "size", "dim", "numel", "stride", "is_floating_point", "is_contiguous", "element_size",
             "__len__", "data_ptr", "get_device", "is_complex"}


class _UseCounter(TorchFunctionMode):
    """Counts the torch calls that read each tracked tensor (metadata queries and calls that return
    the tensor itself, such as eval-mode dropout, excluded): a norm whose output is read by more than
    the linear layers it feeds (a residual connection) cannot absorb 1/s."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict = {}  # id -> [weakref, reads]
        self.paused = False

    def track(self, t: Tensor) -> list:
        self.tracked[id(t)] = entry = [weakref.ref(t), 0]
        return entry

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused and getattr(func, "__name__", "") not in _METADATA:
            for a in list(args) + list(kwargs.values()):
                for t in a if isinstance(a, (list, tuple)) else (a,):
                    entry = self.tracked.get(id(t)) if isinstance(t, Tensor) and t is not out else None
                    if entry is not None and entry[0]() is t:
                        entry[1] += 1
        return out


def _trace(model: nn.Module, targets: dict, batch: Any, forward: Callable) -> tuple[list, list]:
    """One forward: groups of targets sharing an input object and their candidate producers; and the
    model's float outputs (the verification reference)."""
    groups: list = []
    inputs: list = []  # (weakref to an input tensor, group) of targets that ran
    norm_out: list = []  # (weakref to a norm's output, norm, use entry)
    order: list = []  # every nn.Linear in execution order
    counter = _UseCounter()

    def norm_hook(m, args, out):
        if isinstance(out, Tensor):
            norm_out.append((weakref.ref(out), m, counter.track(out)))

    def linear_hook(m, args):
        counter.paused = True  # this hook's own reads of x are not uses
        x = args[0] if args else None
        if m in targets and isinstance(x, Tensor):
            group = next((g for ref, g in inputs if ref() is x), None)
            if group is None:
                group = _Group(m)
                group.ref_input = x.detach().reshape(-1, x.shape[-1])[:CHECK_ROWS].clone()
                groups.append(group)
                norms = [(n, uses) for ref, n, uses in norm_out if ref() is x]
                recent = [p for p in reversed(order) if p.out_features == m.in_features][:RECENT_LINEARS]
                group.candidates = [n for n, _ in norms[:1]] + recent
                group.norm_uses = norms[0][1] if norms else None
                inputs.append((weakref.ref(x), group))
            elif m not in group.members:
                group.members.append(m)
        order.append(m)
        counter.paused = False

    handles = [m.register_forward_hook(norm_hook) for m in model.modules() if _is_norm(m)]
    handles += [m.register_forward_pre_hook(linear_hook) for m in model.modules() if type(m) is nn.Linear]
    try:
        with torch.no_grad(), counter:
            out = [t.detach().clone() for t in _tensors(forward(model, batch))]
    finally:
        for h in handles:
            h.remove()
    for g in groups:
        if g.norm_uses is not None and g.norm_uses[1] != len(g.members):  # read elsewhere too
            g.candidates = g.candidates[1:]
    for g in groups:
        g.candidates = [c for c in g.candidates if c not in g.members]
    return groups, out


@torch.no_grad()
def smooth_quant_(model: nn.Module, batches: Iterable, alpha: float = 0.5, *, forward_fn: Optional[Callable] = None,
                  progress: bool = True, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
                  fold: bool = True, tolerance: float = 1e-3) -> SmoothQuantReport:
    """Apply SmoothQuant to ``model``'s nn.Linear layers in place (float model, before ``quantize_``).

    Works with every weight config afterwards: dynamic and static W8A8 (``Int8StaticConfig(smooth_alpha=...)``
    calls this itself), and any config that quantizes ``nn.Linear``.

    Args:
        model: the float model.
        batches: representative inputs (iterated once for statistics; the first sample of the first
            batch also serves the structure trace and the fold checks).
        alpha: migration strength in [0, 1] (0.5 in the paper; 0.8-0.9 for harder models).
        forward_fn: ``forward_fn(model, batch)``, as in ``calibrate``.
        progress: tqdm progress bar for the statistics pass.
        filter_fn: ``(module, name) -> bool``; False leaves that linear layer alone.
        fold: try to fold 1/s into the producing norm / linear (False: always ``SmoothedLinear``).
        tolerance: relative RMS change per channel a fold may cause, at the model's outputs and at the
            smoothed layers' inputs (float rounding is ~1e-6).

    Returns:
        A SmoothQuantReport (printable).

    Raises:
        ValueError: alpha outside [0, 1]; CalibrationError: no batches or NaN/Inf activations;
        SmoothQuantError: the model's outputs are not reproducible (it was restored).
    """
    alpha = check_alpha(alpha)
    if not isinstance(model, nn.Module):
        raise TypeError(f"smooth_quant_ expects an nn.Module, got {type(model).__name__}")
    from fastq.quantization.calibrate import _default_forward

    forward = forward_fn or _default_forward
    batches = list(batches) if iter(batches) is batches else batches
    report = SmoothQuantReport(alpha)
    owners: dict = {}
    for _, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(m)
    targets = {}
    for name, m in model.named_modules():
        if type(m) is not nn.Linear or (filter_fn is not None and not filter_fn(m, name)):
            continue
        if name.endswith(".linear") and isinstance(model.get_submodule(name.rpartition(".")[0]), SmoothedLinear):
            report.skipped.append((name, "already smoothed"))
        elif len(owners[id(m.weight)]) > 1:
            report.skipped.append((name, "its weight is shared with another module (tied)"))
        else:
            targets[m] = name
    if not targets:
        raise ValueError("smooth_quant_: no nn.Linear layer to smooth (all excluded, shared or already smoothed)")

    first = next(iter(batches), None)
    if first is None:
        raise CalibrationError("smooth_quant_: batches is empty; pass at least one batch of representative inputs")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        try:  # structure and fold checks on one sample: every check is a forward pass
            first_full, first = first, _first_sample(first)
            groups, reference = _trace(model, targets, first, forward)
        except Exception:  # a model that needs its whole batch
            first = first_full
            groups, reference = _trace(model, targets, first, forward)
    finally:
        for m, t in modes.items():
            m.train(t)
    stats = collect_stats(model, [(targets[m], m) for g in groups for m in g.members], batches, MinMaxObserver, (),
                          forward_fn, progress, "smooth_quant_", channel_absmax=True)

    saved = {}  # module -> {param name: original data}, for all-or-nothing
    parents = {}  # member -> (parent, child name) where it sits now

    def save(m: nn.Module) -> None:
        if m not in saved:
            saved[m] = {n: p.detach().clone() for n, p in m.named_parameters(recurse=False)}

    for name, m in model.named_modules():
        for child_name, child in m._modules.items():
            if child in targets:
                parents[child] = (m, child_name)

    def verify() -> bool:
        """The model's outputs are unchanged, and every group's first member sees x / s: the global
        check catches other uses of a producer (residuals), the local one non-linear paths whose
        effect the rest of the model would dilute."""
        seen = {}

        def capture(g: _Group):
            def hook(m, args):  # returns None: the input is only read
                seen.setdefault(g, args[0].detach().reshape(-1, args[0].shape[-1])[:CHECK_ROWS].clone())
            return hook

        hooks = [g.members[0].register_forward_pre_hook(capture(g)) for g in groups]
        run_model = {mm: mm.training for mm in model.modules()}
        model.eval()
        try:
            out = _tensors(forward(model, first))
        finally:
            for h in hooks:
                h.remove()
            for mm, t in run_model.items():
                mm.train(t)
        if _rel_error(out, reference) > tolerance:
            return False
        return all(g in seen and _rel_error([seen[g]], [g.ref_input.double() / g.s.double()]) <= tolerance
                   for g in groups)

    try:
        for g in groups:
            act = torch.stack([stats[m].channel_absmax for m in g.members]).amax(0)
            w = torch.stack([m.weight.detach().float().abs().amax(0) for m in g.members]).amax(0)
            s = act.pow(alpha) / w.pow(1 - alpha)
            s = torch.where((act > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s)).clamp(1e-5, 1e5)
            g.s = s
            for m in g.members:
                save(m)
                m.weight.mul_(s.to(m.weight.dtype))

        def wrap(g: _Group) -> None:
            for m in g.members:
                parent, child = parents[m]
                setattr(parent, child, SmoothedLinear.wrap(m, g.s))

        def unwrap(g: _Group) -> None:
            for m in g.members:
                parent, child = parents[m]
                setattr(parent, child, m)

        def apply_fold(g: _Group, producer: nn.Module) -> dict:
            """Divide the producer's output channels by s; returns its previous parameters."""
            save(producer)
            before = {n: p.detach().clone() for n, p in producer.named_parameters(recurse=False)}
            f = (1.0 / g.s).to(producer.weight.device)
            producer.weight.mul_((f[:, None] if isinstance(producer, nn.Linear) else f).to(producer.weight.dtype))
            if getattr(producer, "bias", None) is not None:
                producer.bias.mul_(f.to(producer.bias.dtype))
            return before

        def attempt(gs: list, rank: int) -> bool:
            undo = []
            for g in gs:
                unwrap(g)
                undo.append((g.candidates[rank], apply_fold(g, g.candidates[rank])))
            if verify():
                return True
            for producer, before in reversed(undo):  # exact restore (no multiply-then-divide drift)
                for n, t in before.items():
                    getattr(producer, n).copy_(t)
            for g in gs:
                wrap(g)
            return False

        for g in groups:
            wrap(g)
        if not verify():
            raise SmoothQuantError("the model's outputs changed beyond rounding after an exact rescaling; is it "
                                   "deterministic in eval mode (same batch, same output)?")
        pending = [g for g in groups if g.candidates] if fold else []
        rank = 0
        while pending:
            trial = [g for g in pending if len(g.candidates) > rank]
            if not trial:
                break
            # all of this rank at once (one forward when they are all exact), else one by one
            done = trial if attempt(trial, rank) else [g for g in trial if len(trial) > 1 and attempt([g], rank)]
            names = {mm: n for n, mm in model.named_modules()}
            for g in done:
                g.where = f"folded into {names[g.candidates[rank]]}"
            pending = [g for g in pending if g not in done]
            rank += 1
    except BaseException:
        for m, params in saved.items():
            for n, t in params.items():
                getattr(m, n).copy_(t)
        for g in groups:
            for m in g.members:
                if m in parents:
                    parent, child = parents[m]
                    setattr(parent, child, m)
        raise
    for g in groups:
        for m in g.members:
            if hasattr(m, CALIBRATION_ATTR):
                delattr(m, CALIBRATION_ATTR)  # statistics of the unsmoothed input are stale
        report.groups.append(([targets[m] for m in g.members], g.where))
    return report
