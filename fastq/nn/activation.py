"""Activations fused into the fastq linear layer that feeds them (``fuse_activations_``).

Why: on CPU an elementwise activation can cost less than the fresh [M, N] tensor it allocates per
call (page faults on first touch). MiniLM's erf-GELU at 704 x 1536 on 2 threads, in one profiled
process: 1.29 ms per call out of place, 0.33 ms in place on the layer's own output; whole-model
gains measured 0.5-2.4% (bench/bench_search_minilm.py, "GELU not fused" row).

Invariants:
  * a fused pair computes bit for bit what the unfused pair computed: the layer applies the same
    torch function to its output (in place on its fresh output when nothing records gradients and
    nothing traces; out of place otherwise), and the activation's place holds a ``FusedActivation``
    that returns its input;
  * a pair is fused only after two checks on the live modules: the activation module computes one
    of ``KINDS`` exactly (probe tensor, bitwise), and the parent's output on a random input is
    bitwise the same before and after the fusion (in eval mode, then restored). So an activation
    whose input is also used elsewhere (a residual), one applied to another layer's output, or an
    activation of another formula (tanh-GELU written in Python, quick-GELU) is never fused;
  * only layers whose forward is ``PreparedLayer.forward`` (a fresh [*, N] output; not the
    convolutions) take an activation.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastq.nn._prepared import PreparedLayer

# kind -> (out of place, in place); each pair gives identical bits (tests/nn/test_activation.py).
KINDS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "gelu": (F.gelu, torch.ops.aten.gelu_),
    "gelu_tanh": (lambda y: F.gelu(y, approximate="tanh"), lambda y: torch.ops.aten.gelu_(y, approximate="tanh")),
    "relu": (torch.relu, torch.relu_),
    "silu": (F.silu, lambda y: F.silu(y, inplace=True)),
}


def check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"activation must be one of {sorted(KINDS)}, got {kind!r}")
    return kind


def apply_activation(kind: str, y: Tensor) -> Tensor:
    """``kind`` applied to a layer's fresh output ``y``: in place where that is invisible."""
    out_of_place, in_place = KINDS[kind]
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and y.requires_grad):
        return out_of_place(y)
    return in_place(y)


class FusedActivation(nn.Module):
    """Stands where an activation was fused into the layer before it: returns its input unchanged."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = check_kind(kind)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def init_kwargs(self) -> dict:
        return {"kind": self.kind}

    def extra_repr(self) -> str:
        return f"{self.kind}, applied by the layer before"


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Tensor, dict]:
    """A probe tensor (never written) and each kind's output on it."""
    g = torch.Generator().manual_seed(0)
    body = torch.randn(509, generator=g) * 6
    x = torch.cat([body, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 1e4, -1e4])])
    return x, {kind: fn(x) for kind, (fn, _) in KINDS.items()}


def activation_kind(module: nn.Module) -> Optional[str]:
    """The kind ``module`` computes exactly (bitwise on a probe tensor), or None."""
    if isinstance(module, (FusedActivation, PreparedLayer)) or next(module.children(), None) is not None:
        return None
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    x, expected = _probe()
    try:
        with torch.no_grad():
            y = module(x.clone())
    except Exception:  # not a one-tensor elementwise module
        return None
    if not isinstance(y, Tensor) or y.shape != x.shape or y.dtype != x.dtype:
        return None
    return next((kind for kind, want in expected.items() if torch.equal(y, want)), None)


def _fusible(layer: nn.Module) -> bool:
    """A fastq linear without an activation yet, whose forward is PreparedLayer's (not a conv)."""
    return (isinstance(layer, PreparedLayer) and type(layer).forward is PreparedLayer.forward
            and layer.activation is None and isinstance(getattr(layer, "in_features", None), int))


def _same_output(a, b) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same_output(x, y) for x, y in zip(a, b))
    return False


def _parent_input(parent: nn.Module, layer: nn.Module) -> list:
    """Random inputs the parent may take: [2, 3, K] for the K of its first layer, then of ``layer``."""
    ks = [getattr(c, "in_features", None) for c in parent.children()] + [layer.in_features]
    ks = list(dict.fromkeys(k for k in ks if isinstance(k, int) and k > 0))
    floats = [p for p in parent.parameters() if p.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.float32
    device = layer.bias.device if getattr(layer, "bias", None) is not None else next(layer.buffers()).device
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, k, generator=g).to(device=device, dtype=dtype) for k in ks[:2]]


def _try_fuse(parent: nn.Module, layer: nn.Module, act_name: str, kind: str) -> bool:
    act = parent._modules[act_name]
    for x in _parent_input(parent, layer):
        try:
            ref = parent(x)
        except Exception:  # this parent takes other inputs: try the next size, or give up
            continue
        layer.activation = kind
        parent._modules[act_name] = FusedActivation(kind)
        try:
            fused = parent(x)
        except Exception:
            fused = None
        if _same_output(ref, fused):
            return True
        del layer.activation  # back to the class default (None)
        parent._modules[act_name] = act
    return False


@torch.no_grad()
def fuse_activations_(model: nn.Module) -> list[str]:
    """Fuse every activation module into the fastq linear layer that feeds it (in place).

    Looks at each module's direct children: an activation child (GELU, tanh-GELU, ReLU, SiLU: see
    ``KINDS``) and a fastq linear child (``QuantLinear``, ``IntxLinear``, ``SparseLinear``, ...) are
    fused when the parent's output stays bitwise the same (module docstring). Returns the qualified
    names of the activations fused. Layers kept float are left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_activations_ expects an nn.Module, got {type(model).__name__}")
    fused = []
    for parent_name, parent in list(model.named_modules()):
        acts = [(name, kind) for name, child in parent._modules.items()
                if child is not None and (kind := activation_kind(child)) is not None]
        if not acts:
            continue
        modes = [(m, m.training) for m in parent.modules()]
        parent.eval()  # dropout would make the comparison random; fusion does not depend on the mode
        try:
            for act_name, kind in acts:
                for layer in [c for c in parent._modules.values() if c is not None and _fusible(c)]:
                    if _try_fuse(parent, layer, act_name, kind):
                        fused.append(f"{parent_name}.{act_name}" if parent_name else act_name)
                        break
        finally:
            for m, training in modes:
                m.training = training
    return fused
