"""SharedWeightLinear / SharedWeightConv2d: layers whose weight is drawn from small codebooks (k-means
weight sharing, binary, ternary, power-of-two), run by the ``codebook_linear`` kernels.

Invariants:
  * Weight ``W[n, k] = codebook[r(n), k // gs, code[n, k]] (* scale[n])`` (``fastq.quantization.
    codebook`` defines the encodings). Persistent buffers, shapes fixed by ``init_kwargs`` (the
    save/load contract): ``codebook`` float32 [R, G, 2**bits]; ``scale`` float32 [N] when the
    encoding has one; ``bias`` float32 [N] or absent; and the codes:
      - storage "dense": ``codes`` uint8, packed by ``codebook_pack`` in the lookup-table layout
        when the codebook is shared by all rows (R == 1) and bits <= 4, else the row layout;
      - storage "sparse" (pruned layers): Deep Compression's relative indexing over the row-major
        weight: per stored entry a 4-bit gap to the previous entry (``gaps``, two per byte; a gap
        over 16 inserts filler entries with code 0, the fixed 0.0 entry) and a ``bits``-wide code
        (``codes``, packed little-endian within bytes); positions not stored are 0.
  * forward: dense storage runs the layer's prepared plan in plain eager mode (``fastq.nn._prepared``),
    else calls ``torch.ops.fastq.codebook_linear`` once on a [*, K] view (output dtype = input dtype). Centroid training (``train_centroids_``) or sparse storage builds the
    dense float weight with ``codebook_weight`` (differentiable: each entry's gradient is the sum of
    its members' gradients) and calls ``F.linear``.
  * a table's entry 0 is fixed at 0.0 when ``zero_entry`` (pruned weights stay exactly 0): its
    gradient is zeroed during centroid training.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastq.nn._base import Int8GemmModule, UnsupportedLayerError
from fastq.nn._prepared import NO_PLAN, PreparedLayer
from fastq.nn.conv import ConvGeometry
from fastq.ops import call_op, plans
from fastq.ops._checks import LUT_BITS, codebook_packed_sizes
from fastq.ops.reference import codebook_unpack, codebook_weight

KINDS = ("kmeans", "binary", "ternary", "pow2")
STORAGES = ("dense", "sparse")
GAP_BITS = 4  # relative-index width of sparse storage: gaps of 1..16 positions
_MAX_GAP = 1 << GAP_BITS


# ---- Deep Compression's relative indexing (sparse storage) -----------------------------------------

def _pack_bits(values: Tensor, bits: int) -> Tensor:
    """uint8 values < 2**bits -> bytes, 8 / bits values per byte, the first in the low bits."""
    per = 8 // bits
    v = torch.nn.functional.pad(values.to(torch.int32), (0, (-values.numel()) % per)).reshape(-1, per)
    return (v << (bits * torch.arange(per, dtype=torch.int32))).sum(1).to(torch.uint8)


def _unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    per = 8 // bits
    v = (packed.to(torch.int32).unsqueeze(1) >> (bits * torch.arange(per, dtype=torch.int32, device=packed.device)))
    return (v & ((1 << bits) - 1)).reshape(-1)[:count]


def relative_encode(codes: Tensor, bits: int) -> tuple[Tensor, Tensor, int]:
    """(packed gaps, packed codes, entries) of the nonzero codes of a uint8 [N, K] code matrix."""
    flat = codes.reshape(-1)
    pos = torch.nonzero(flat).squeeze(1)
    prev = torch.cat([pos.new_full((1,), -1), pos[:-1]])
    gap = pos - prev  # >= 1
    fillers = (gap - 1) // _MAX_GAP
    per = fillers + 1  # entries per stored weight: its fillers, then itself
    entries = int(per.sum())
    last = torch.cumsum(per, 0) - 1  # index of each weight's own entry
    gaps = torch.full((entries,), _MAX_GAP, dtype=torch.int64)
    gaps[last] = gap - _MAX_GAP * fillers
    vals = torch.zeros(entries, dtype=torch.uint8)
    vals[last] = flat[pos]
    return _pack_bits((gaps - 1).to(torch.uint8), GAP_BITS), _pack_bits(vals, bits), entries


def relative_decode(gaps: Tensor, codes: Tensor, entries: int, bits: int, n: int, k: int) -> tuple[Tensor, Tensor]:
    """(positions int64 [E], codes int64 [E]) of the stored entries (fillers included: code 0)."""
    gap = _unpack_bits(gaps, GAP_BITS, entries).to(torch.int64) + 1
    pos = torch.cumsum(gap, 0) - 1
    return pos, _unpack_bits(codes, bits, entries).to(torch.int64)


class _CodebookLayer(PreparedLayer):
    """Shared state and methods of SharedWeightLinear and SharedWeightConv2d (an [N, K] GEMM)."""

    # model.half() must not cast the float32 tables, scales and bias (the kernels read float32)
    _KEEP_FLOAT32 = ("codebook", "scale", "bias")

    def _init_codebook(self, n: int, k: int, bias: bool, bits: int, codebook_rows: int, codebook_groups: int,
                       scale: bool, clusters: int, kind: str, zero_entry: bool, storage: str, entries: int) -> None:
        self._init_plan()
        if bits not in (1, 2, 4, 8):
            raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits!r}")
        if n <= 0 or k <= 0:
            raise ValueError(f"the weight must be non-empty, got [{n}, {k}] (out x in)")
        if codebook_rows not in (1, n):
            raise ValueError(f"codebook_rows must be 1 (shared) or out_features={n}, got {codebook_rows}")
        if codebook_groups < 1 or k % codebook_groups:
            raise ValueError(f"codebook_groups must divide K={k}, got {codebook_groups}")
        if not 2 <= clusters <= 1 << bits:
            raise ValueError(f"clusters must be in [2, 2**bits = {1 << bits}], got {clusters}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if storage == "sparse" and (not zero_entry or entries < 0):
            raise ValueError("sparse storage needs zero_entry=True and entries >= 0")
        self._n, self._k = n, k
        self.bits, self.codebook_rows, self.codebook_groups = bits, codebook_rows, codebook_groups
        self.clusters, self.kind, self.zero_entry, self.storage = clusters, kind, zero_entry, storage
        self.entries = entries if storage == "sparse" else 0
        self.lut = codebook_rows == 1 and bits in LUT_BITS
        if storage == "dense":
            self.register_buffer("codes", torch.zeros(codebook_packed_sizes(n, k, bits, self.lut)[2], dtype=torch.uint8))
        else:
            self.register_buffer("gaps", torch.zeros(-(-entries * GAP_BITS // 8), dtype=torch.uint8))
            self.register_buffer("codes", torch.zeros(-(-entries * bits // 8), dtype=torch.uint8))
        self.register_buffer("codebook", torch.zeros(codebook_rows, codebook_groups, 1 << bits, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(n, dtype=torch.float32) if scale else None)
        self.register_buffer("bias", torch.zeros(n, dtype=torch.float32) if bias else None)
        self._codes_cache: Optional[Tensor] = None  # unpacked int64 codes while centroids train

    def _codebook_kwargs(self) -> dict:
        return {"bias": self.bias is not None, "bits": self.bits, "codebook_rows": self.codebook_rows,
                "codebook_groups": self.codebook_groups, "scale": self.scale is not None, "clusters": self.clusters,
                "kind": self.kind, "zero_entry": self.zero_entry, "storage": self.storage, "entries": self.entries}

    @staticmethod
    def _encode(w: Tensor, mask: Optional[Tensor], config, encoded=None) -> tuple:
        """(Encoded, packed sparse storage or None, constructor kwargs) of a float weight [N, K] under a
        codebook config; ``encoded``: an encoding made already (QAT's trained centroids), taken as is."""
        from fastq.quantization.codebook import encode  # no import cycle

        enc = encode(config, w, mask) if encoded is None else encoded
        storage = getattr(config, "storage", "dense")
        entries = 0
        packed = None
        if storage == "sparse":
            packed = relative_encode(enc.codes, enc.bits)
            entries = packed[2]
        kwargs = {"bits": enc.bits, "codebook_rows": enc.codebook.shape[0], "codebook_groups": enc.codebook.shape[1],
                  "scale": enc.scale is not None, "clusters": enc.clusters, "kind": enc.kind,
                  "zero_entry": enc.zero_entry, "storage": storage, "entries": entries}
        return enc, packed, kwargs

    @torch.no_grad()
    def _set_encoded(self, enc, packed, bias: Optional[Tensor]) -> None:
        device = self.codebook.device
        if self.storage == "dense":
            self.codes = torch.ops.fastq.codebook_pack(enc.codes, self.bits, self.lut).to(device)
        else:
            self.gaps, self.codes = packed[0].to(device), packed[1].to(device)
        self.codebook = enc.codebook.to(device)
        if self.scale is not None:
            self.scale = enc.scale.to(device)
        if self.bias is not None:
            self.bias = bias.detach().to(device=device, dtype=torch.float32).clone()
        if self.weight_bytes() >= self.float_weight_bytes():
            raise UnsupportedLayerError(f"too small to gain from a codebook: {self.weight_bytes()} B stored vs "
                                        f"{self.float_weight_bytes()} B in fp32")
        self.prepare()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # keeps the float32 buffers (_KEEP_FLOAT32), rebuilds the plan
        param = self._parameters.get("codebook")  # a table being trained stays float32 too
        if param is not None and param.dtype != torch.float32:
            param.data = param.data.float()
        self._codes_cache = None
        return self

    def _make_plan(self):
        """The codebook_linear plan of dense codes; none while centroids train or for sparse storage
        (both run F.linear on the decoded weight)."""
        if self.storage != "dense" or self.training_centroids:
            return NO_PLAN
        plan = plans.codebook_linear(self.codes, self.codebook, self.scale, self.bias, self._n, self._k, self.bits,
                                     self.lut, where=self._layer_name())
        return NO_PLAN if plan is None else plan

    # ---- the GEMM -------------------------------------------------------------------------------

    def int_codes(self) -> Tensor:
        """uint8 codes [N, K] (unpacked)."""
        if self.storage == "dense":
            return codebook_unpack(self.codes, self._n, self._k, self.bits, self.lut)
        pos, codes = relative_decode(self.gaps, self.codes, self.entries, self.bits, self._n, self._k)
        out = torch.zeros(self._n * self._k, dtype=torch.uint8, device=self.codes.device)
        out[pos] = codes.to(torch.uint8)
        return out.reshape(self._n, self._k)

    def dequantized_weight(self) -> Tensor:
        """float32 [N, K], differentiable in ``codebook`` while its centroids train."""
        codes = self._codes_cache if self._codes_cache is not None else self.int_codes()
        return codebook_weight(codes, self.codebook, self.scale)

    def _gemm(self, x: Tensor) -> Tensor:
        """[*, K] -> [*, N] in x's dtype."""
        if self.storage == "dense" and not self.training_centroids:
            return call_op("codebook_linear", x, self.codes, self.codebook, self.scale, self.bias, self._n, self.bits,
                           self.lut)
        w = self.dequantized_weight()
        return F.linear(x.float(), w, self.bias).to(x.dtype)

    @property
    def training_centroids(self) -> bool:
        """True while ``train_centroids_`` made the codebook a trainable Parameter."""
        return isinstance(self._parameters.get("codebook"), nn.Parameter)

    # the int8 modules' input checks and description, shared rather than rewritten
    _check_input = Int8GemmModule._check_input
    _describe = Int8GemmModule._describe

    # ---- introspection (summary, tests, save/load) ----------------------------------------------

    @property
    def mode(self) -> str:
        return {"kmeans": f"shared{self.clusters}", "binary": "binary", "ternary": "ternary",
                "pow2": "power_of_two"}[self.kind]

    def granularity(self) -> str:
        """Which weights share a table, the code width and storage."""
        if self.kind != "kmeans":
            scope = "per_channel_scale"
        elif self.codebook_rows == 1:
            scope = "layer"
        else:
            scope = "row" if self.codebook_groups == 1 else f"group{self._k // self.codebook_groups}"
        return f"{scope} {self.bits}-bit codes" + (" sparse" if self.storage == "sparse" else "")

    def weight_numel(self) -> int:
        return self._n * self._k

    def weight_sparsity(self) -> float:
        """Fraction of weights that are exactly zero."""
        return float((self.dequantized_weight().detach() == 0).float().mean())

    def weight_bytes(self) -> int:
        """Bytes this layer stores: codes (and gaps), codebook, scale, bias."""
        return sum(t.numel() * t.element_size() for t in (self._buffers.get("gaps"), self.codes, self.codebook,
                                                             self.scale, self.bias) if t is not None)

    def float_weight_bytes(self) -> int:
        """Bytes of the fp32 layer it replaces: weight and bias."""
        return 4 * (self._n * self._k + (self._n if self.bias is not None else 0))

    def bits_per_weight(self) -> float:
        """Stored bits per weight: everything the layer stores (codes, tables, scales, bias) / N*K."""
        return 8 * self.weight_bytes() / (self._n * self._k)

    def codebook_ratio(self) -> float:
        """The weight-sharing compression ratio r = n b / (n log2(k) + k b) of n = N*K weights of
        b = 32 bits drawn from k shared values, summed over every table the layer stores (and its
        per-row scales, counted as one value each); sparse storage: fp32 bytes / stored bytes."""
        if self.storage == "sparse":
            return self.float_weight_bytes() / self.weight_bytes()
        n, b = self._n * self._k, 32
        side = self.codebook_rows * self.codebook_groups * self.clusters + (self._n if self.scale is not None else 0)
        return n * b / (n * math.log2(self.clusters) + side * b)


class SharedWeightLinear(_CodebookLayer):
    """``y = x @ W.T + b`` with W drawn from codebooks (see the module docstring).

    Args:
        in_features, out_features: K and N.
        bias: whether a float32 bias [N] is stored.
        bits: code width (1, 2, 4, 8).
        codebook_rows: 1 (one table for all rows) or N (a table per row).
        codebook_groups: tables along K per row (K / group size).
        scale: whether a per-row float32 scale multiplies the table values.
        clusters: meaningful entries per table (2 .. 2**bits; the rest are 0).
        kind: "kmeans", "binary", "ternary" or "pow2" (how the tables were made).
        zero_entry: entry 0 of every table is a fixed 0.0 (pruned weights).
        storage: "dense" or "sparse" (relative indices; needs zero_entry).
        entries: stored entries of sparse storage.

    Shapes: input [*, K] float32/float16/bfloat16 -> output [*, N] in the input's dtype.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4, codebook_rows: int = 1,
                 codebook_groups: int = 1, scale: bool = False, clusters: int = 16, kind: str = "kmeans",
                 zero_entry: bool = False, storage: str = "dense", entries: int = 0,
                 activation: Optional[str] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_codebook(self.out_features, self.in_features, bool(bias), bits, codebook_rows, codebook_groups,
                            scale, clusters, kind, zero_entry, storage, entries)
        self._init_activation(activation)

    @classmethod
    def from_float(cls, module: nn.Linear, config, encoded=None) -> "SharedWeightLinear":
        """Encode an ``nn.Linear`` (pruned or not) under a codebook config (``WeightSharingConfig``,
        ``BinaryConfig``, ``TernaryConfig``, ``PowerOfTwoConfig``); ``encoded`` (an ``Encoded`` of its
        weight, e.g. QAT's fixed codes and trained centroids) skips the encoder.

        Raises:
            UnsupportedLayerError: NaN/Inf weights, fewer weights per table than clusters, a group
                size not dividing K, sparse storage of an unpruned layer, or no size gain.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"SharedWeightLinear.from_float expects an nn.Linear, got {type(module).__name__}")
        enc, packed, kwargs = cls._encode(module.weight, module._buffers.get("weight_mask"), config, encoded)
        q = cls(module.in_features, module.out_features, module.bias is not None, **kwargs)
        q._set_encoded(enc, packed, module.bias)
        return q

    def _op_forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._describe()}: input of shape {tuple(x.shape)} does not end in "
                             f"in_features={self.in_features} (K mismatch)")
        return self._gemm(x)

    def weight_shape(self) -> tuple:
        return (self.out_features, self.in_features)

    def init_kwargs(self) -> dict:
        """JSON-serialisable constructor arguments: ``SharedWeightLinear(**m.init_kwargs())`` is an empty twin."""
        return {"in_features": self.in_features, "out_features": self.out_features, **self._codebook_kwargs(),
                **self._activation_kwargs()}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.mode}, {self.granularity()}")


class SharedWeightConv2d(ConvGeometry, _CodebookLayer):
    """2-D convolution (groups=1) with a codebook weight, as one [*, C*kh*kw] -> [*, O] GEMM
    (``ConvGeometry``; the weight's columns in ``F.unfold`` order).

    Args: the ``nn.Conv2d`` geometry (groups must be 1), then as ``SharedWeightLinear``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", bits: int = 4, codebook_rows: int = 1,
                 codebook_groups: int = 1, scale: bool = False, clusters: int = 16, kind: str = "kmeans",
                 zero_entry: bool = False, storage: str = "dense", entries: int = 0) -> None:
        super().__init__()
        k = self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, padding_mode)
        self._init_codebook(self.out_channels, k, bool(bias), bits, codebook_rows, codebook_groups, scale, clusters,
                            kind, zero_entry, storage, entries)

    @classmethod
    def from_float(cls, module: nn.Conv2d, config, encoded=None) -> "SharedWeightConv2d":
        """Encode an ``nn.Conv2d`` (groups=1; pruned or not) under a codebook config (``encoded`` as in
        ``SharedWeightLinear.from_float``, of the [O, C*kh*kw] weight).

        Raises:
            UnsupportedLayerError: grouped convolution, or as ``SharedWeightLinear.from_float``.
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"SharedWeightConv2d.from_float expects an nn.Conv2d, got {type(module).__name__}")
        if module.groups != 1:
            raise UnsupportedLayerError(f"grouped convolution (groups={module.groups}) is not supported")
        mask = module._buffers.get("weight_mask")
        o = module.out_channels
        enc, packed, kwargs = cls._encode(module.weight.reshape(o, -1), None if mask is None else mask.reshape(o, -1),
                                          config, encoded)
        q = cls(module.in_channels, o, module.kernel_size, module.stride, module.padding, module.dilation,
                module.bias is not None, module.padding_mode, **kwargs)
        q._set_encoded(enc, packed, module.bias)
        return q

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        gemm = self._gemm if torch.compiler.is_compiling() else self._run  # the plan's fast path, eager only
        return self._conv(x, gemm, self._describe())

    def _op_forward(self, cols: Tensor) -> Tensor:
        return self._gemm(cols)

    def init_kwargs(self) -> dict:
        """JSON-serialisable constructor arguments: ``SharedWeightConv2d(**m.init_kwargs())`` is an empty twin."""
        return {**self.geometry_kwargs(), **self._codebook_kwargs()}

    def extra_repr(self) -> str:
        return f"{self.geometry_repr()}, bias={self.bias is not None}, {self.mode}, {self.granularity()}"


# ---- centroid fine-tuning (Deep Compression) --------------------------------------------------------

def _zero_entry_grad(grad: Tensor) -> Tensor:
    grad = grad.clone()
    grad[..., 0] = 0
    return grad


def train_centroids_(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Make the codebooks of ``model``'s k-means weight-sharing layers trainable (or freeze them).

    While enabled, each ``codebook`` of a ``kind == "kmeans"`` layer is an ``nn.Parameter``; the
    forward builds the dense weight by a gather from it, so autograd gives every centroid the sum of
    its members' gradients (Deep Compression's centroid fine-tuning) and any optimizer, including
    ``fastq.distill_``'s, updates the shared values. The codes never change; a fixed 0.0 entry
    (pruned weights) gets no gradient and stays 0. Disabling turns the codebooks back into buffers
    and the forward back to the codebook kernels. Binary / ternary / power-of-two layers are left
    alone (training their tables would break their definitions). The state_dict keys do not change.

    Returns:
        ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"train_centroids_ expects an nn.Module, got {type(model).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    for m in model.modules():
        if not isinstance(m, _CodebookLayer) or m.kind != "kmeans":
            continue
        if enabled and not m.training_centroids:
            table = m._buffers.pop("codebook")
            m.codebook = nn.Parameter(table.detach().clone())
            if m.zero_entry:
                m.codebook.register_hook(_zero_entry_grad)
            m._codes_cache = m.int_codes().to(torch.int64)
            m.prepare()  # no plan while the table trains (F.linear on the gathered weight)
        elif not enabled and m.training_centroids:
            table = m._parameters.pop("codebook").detach().clone()
            if m.zero_entry:
                table[..., 0] = 0
            m.register_buffer("codebook", table)
            m._codes_cache = None
            m.prepare()
    return model
