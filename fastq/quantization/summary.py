"""``summary(model)``: a per-layer table of how a model is stored, with totals and compression ratio.

Invariants: every module that owns tensors itself (parameters or persistent buffers, not counting
its children) is one row, so the totals are the whole model's bytes. fastq modules report their
own bytes (``weight_bytes``) and those of the fp32 layer they replaced (``float_weight_bytes``);
other modules count as unchanged. compression ratio = original bytes / stored bytes. Layers that
``quantize_`` left as they were carry a note with the reason. Nothing here modifies the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from fastq.quantization.api import SKIP_ATTR


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    shape: tuple  # weight shape: [out, in] for linear layers, [out, in, kh, kw] for convolutions
    bits: int  # bits per weight element as stored
    bytes: int  # bytes the module stores itself (weights, scales, bias, other own tensors)
    original_bytes: int  # bytes before quantization (fp32 for a fastq module, else == bytes)
    sparsity: Optional[float]  # fraction of zero weight elements (None: no weight)
    detail: str = ""  # mode / granularity of fastq modules
    note: Optional[str] = None  # why quantize_ left the layer as it was
    quantized: bool = False  # a fastq module (it reports weight_bytes / float_weight_bytes)
    weight_elements: int = 0  # weight elements stored here (0 for a weight counted at another layer)
    # codebook (weight sharing) layers: n log2 k + k b, the stored bits of the weight-sharing formula
    codebook_bits: float = 0.0

    @property
    def bits_per_weight(self) -> Optional[float]:
        """Stored bits per weight element, scales, zero points and bias included (None: no weight
        of its own, e.g. a head tied to an embedding)."""
        return 8 * self.bytes / self.weight_elements if self.weight_elements else None

    @property
    def compression_ratio(self) -> Optional[float]:
        """The layer's ratio: the weight-sharing formula r = n b / (n log2 k + k b) for codebook
        layers (``Summary.codebook_ratio``), original bytes / stored bytes otherwise (None for a layer
        storing nothing itself, e.g. a tied head)."""
        if self.codebook_bits:
            return 32 * self.weight_elements / self.codebook_bits
        return self.original_bytes / self.bytes if self.bytes else None


def _own_tensors(m: nn.Module) -> list:
    bufs = [b for n, b in m._buffers.items() if b is not None and n not in m._non_persistent_buffers_set]
    return [p for p in m._parameters.values() if p is not None] + bufs


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass
class Summary:
    """Per-layer storage of a model. ``str(summary)`` is a readable table."""

    layers: list = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.layers)

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.layers)

    @property
    def compression_ratio(self) -> float:
        """original bytes / stored bytes of the whole model (1.0 for an untouched model)."""
        return self.original_bytes / self.total_bytes if self.total_bytes else 1.0

    @property
    def quantized(self) -> list:
        return [r for r in self.layers if r.quantized]

    @property
    def quantized_bits_per_weight(self) -> Optional[float]:
        """Stored bits per weight element over the quantized layers (a tied weight counted once)."""
        numel = sum(r.weight_elements for r in self.quantized)
        return 8 * sum(r.bytes for r in self.quantized) / numel if numel else None

    @property
    def notes(self) -> list:
        """(layer name, reason) for every layer quantize_ skipped."""
        return [(r.name, r.note) for r in self.layers if r.note]

    @property
    def codebook_ratio(self) -> Optional[float]:
        """The weight-sharing ratio r = sum n b / sum (n log2 k + k b) over the codebook layers
        (None when there is none)."""
        layers = [r for r in self.layers if r.codebook_bits]
        if not layers:
            return None
        return sum(32 * r.weight_elements for r in layers) / sum(r.codebook_bits for r in layers)

    def __str__(self) -> str:
        head = ("name", "type", "shape", "bits", "bits/w", "bytes", "ratio", "sparsity", "detail")
        rows = [(r.name or "(root)", r.type, "x".join(map(str, r.shape)) if r.shape else "-", str(r.bits),
                 "-" if r.bits_per_weight is None else f"{r.bits_per_weight:.2f}", _fmt_bytes(r.bytes),
                 "-" if r.compression_ratio is None else f"{r.compression_ratio:.2f}x",
                 "-" if r.sparsity is None else f"{100 * r.sparsity:.1f}%",
                 r.detail or ("left as is (see notes)" if r.note else ""))
                for r in self.layers]
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        right = (False, False, False, True, True, True, True, True, False)

        def line(cells) -> str:
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        q = self.quantized
        q_orig, q_now = sum(r.original_bytes for r in q), sum(r.bytes for r in q)
        out.append("")
        out.append(f"total: {_fmt_bytes(self.total_bytes)} (original {_fmt_bytes(self.original_bytes)}), "
                   f"compression ratio {self.compression_ratio:.2f}x")
        if q:
            out.append(f"quantized layers: {len(q)}, {_fmt_bytes(q_now)} (original {_fmt_bytes(q_orig)}), "
                       f"{q_orig / q_now:.2f}x, {self.quantized_bits_per_weight:.2f} bits per weight")
        if self.codebook_ratio is not None:
            out.append(f"weight sharing: r = {self.codebook_ratio:.2f}x over the codebook layers "
                       "(n b / (n log2 k + k b); sparse storage: fp32 bytes / stored bytes)")
        if self.notes:
            out.append("notes (left as they were):")
            out.extend(f"  {name or '(root)'}: {reason}" for name, reason in self.notes)
        return "\n".join(out)


def _bits(t: torch.Tensor) -> int:
    return t.element_size() * 8


@torch.no_grad()
def _layer_info(name: str, m: nn.Module, seen: set) -> Optional[LayerInfo]:
    if hasattr(m, "weight_bytes") and hasattr(m, "float_weight_bytes"):
        shape = tuple(getattr(m, "weight_shape", lambda: ())())
        sparsity = m.weight_sparsity() if hasattr(m, "weight_sparsity") else None
        detail = getattr(m, "mode", "")
        if hasattr(m, "granularity"):
            detail += f" {m.granularity()}"
        if getattr(m, "activation", None):
            detail += f" +{m.activation}"
        elements = 0 if getattr(m, "tied", False) else math.prod(shape)
        cb_bits = 32 * elements / m.codebook_ratio() if hasattr(m, "codebook_ratio") and elements else 0.0
        return LayerInfo(name, type(m).__name__, shape, int(getattr(m, "bits", 8)), int(m.weight_bytes()),
                         int(m.float_weight_bytes()), sparsity, detail.strip(), None, True, elements, cb_bits)
    tensors = _own_tensors(m)
    if not tensors:
        return None
    nbytes = sum(t.numel() * t.element_size() for t in tensors if id(t) not in seen)
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        w = tensors[0]
    elements = 0 if id(w) in seen else w.numel()
    seen.update(id(t) for t in tensors)
    sparsity = float((w == 0).float().mean()) if w.numel() else None
    return LayerInfo(name, type(m).__name__, tuple(w.shape), _bits(w), nbytes, nbytes, sparsity, "",
                     getattr(m, SKIP_ATTR, None), False, elements)


def summary(model: nn.Module) -> Summary:
    """Per-layer storage of ``model``: name, type, weight shape, bits, bytes, sparsity, notes.

    Returns:
        A ``Summary``; print it for the table, or read ``layers``, ``total_bytes``,
        ``original_bytes``, ``compression_ratio`` and ``notes``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary expects an nn.Module, got {type(model).__name__}")
    seen: set = set()  # tensors already counted (a weight tied between two plain modules counts once)
    rows = [_layer_info(name, m, seen) for name, m in model.named_modules()]
    return Summary([r for r in rows if r is not None])
