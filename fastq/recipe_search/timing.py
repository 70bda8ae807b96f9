"""Per-layer latency measured on this machine, cached by what determines it.

Invariants:
  * Every number is a measurement (``time_round_robin``: the float layer and its candidates
    interleaved round by round, so a loaded machine slows them alike; per layer the fastest sample,
    end to end the median); nothing is predicted from FLOPs or bytes.
  * A timing is keyed by (module type, weight shape, input shape and dtype, transformation, threads,
    CPU ISA): layers that share a key share the measurement, which is what keeps a search over a
    36-layer model to a handful of measurements. The cache can be saved as JSON and reloaded, so
    resumed or parallel searches reuse it.
  * Inputs are captured from one forward pass over the caller's ``example_inputs`` (the first call
    of each layer), so layers are timed on the activation shapes they really see.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from fastq.benchmarking import time_round_robin
from fastq.train.trainer import default_forward

__all__ = ["TimingCache", "capture_inputs", "default_forward", "layer_key", "time_candidates", "time_models"]


def capture_inputs(model: nn.Module, layers: dict, example_inputs: Any,
                   forward: Callable = default_forward) -> dict:
    """name -> the first positional input tensor each layer of ``layers`` received (detached)."""
    seen: dict = {}
    hooks = []
    for name, module in layers.items():
        def hook(mod, args, name=name):
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()
        hooks.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            forward(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _isa() -> str:
    import fastq

    return fastq.cpu_isa()


def layer_key(module: nn.Module, x: torch.Tensor, transform: str) -> str:
    w = getattr(module, "weight", None)
    shape = "x".join(map(str, w.shape)) if isinstance(w, torch.Tensor) else "?"
    if isinstance(module, nn.Conv2d):
        shape += f"/k{module.kernel_size}s{module.stride}p{module.padding}d{module.dilation}g{module.groups}"
    xs = "x".join(map(str, x.shape))
    return (f"{type(module).__name__}|w{shape}|x{xs}:{str(x.dtype).removeprefix('torch.')}|{transform}"
            f"|t{torch.get_num_threads()}|{_isa()}")


class TimingCache:
    """key -> seconds per call, optionally backed by a JSON file."""

    def __init__(self, path: Optional[os.PathLike] = None) -> None:
        self.path = Path(path) if path is not None else None
        self.seconds: dict = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"timing cache {self.path}: not a readable JSON file ({exc})") from None
            if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
                raise ValueError(f"timing cache {self.path}: expected an object of key -> seconds")
            self.seconds.update(data)

    def get(self, key: str) -> Optional[float]:
        return self.seconds.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.seconds[key] = float(seconds)

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(json.dumps(self.seconds, indent=0, sort_keys=True) + "\n")
            os.replace(tmp, self.path)


def _inner(fn: Callable, target_s: float = 1e-3) -> int:
    """Calls per sample so that one sample lasts about ``target_s``."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, min(200, int(math.ceil(target_s / max(dt, 1e-7)))))


def time_candidates(modules: dict, x: torch.Tensor, *, rounds: int = 15, warmup: int = 2) -> dict:
    """Seconds per call of each module of ``modules`` (name -> module) on input ``x``, measured
    round-robin in one run: the fastest of ``rounds`` samples, each repeating the call for about
    1 ms. The minimum, not the median: other processes on a shared machine only ever add time, so
    the fastest sample is the one closest to the layer's own cost, and it ranks candidates the same
    way on a loaded machine as on a quiet one."""
    with torch.inference_mode():
        calls = {name: (lambda m=m: m(x)) for name, m in modules.items()}
        reps = {name: _inner(f) for name, f in calls.items()}
        fns = {name: (lambda f=f, k=reps[name]: [f() for _ in range(k)]) for name, f in calls.items()}
        samples = time_round_robin(fns, rounds=rounds, warmup=warmup)
    return {name: min(s) / reps[name] for name, s in samples.items()}


def time_models(models: dict, example_inputs: Any, *, forward: Callable = default_forward, rounds: int = 10,
                warmup: int = 1, on_call: Optional[Callable[[], None]] = None) -> dict:
    """name -> all samples (seconds) of one forward pass of each model, round-robin in one run."""

    def call(m):
        def f():
            forward(m, example_inputs)
            if on_call is not None:
                on_call()
        return f

    with torch.inference_mode():
        return time_round_robin({n: call(m) for n, m in models.items()}, rounds=rounds, warmup=warmup)
