"""IntxLinear and IntxEmbedding: nn.Linear / nn.Embedding with 2..8-bit integer weights.

Invariants:
  * The weight lives in ONE persistent uint8 buffer, ``weight_packed``, in ``intx_pack_weight``'s
    ISA-independent layout (codes, float32 group scales and zero points together; loading needs no
    repacking); IntxLinear adds ``bias`` (float32 [N] or absent). Shapes follow from ``init_kwargs``
    alone, so ``cls(**init_kwargs())`` builds an empty module that ``load_state_dict`` fills.
  * IntxLinear is a prepared layer (``fastq.nn._prepared``): in plain eager mode its forward is its
    plan (one native call), else one op call (``intx_weight_only_linear`` / ``intx_linear_dynamic``,
    which check ``x``); IntxEmbedding's forward is one ``intx_embedding`` call. Linear outputs have
    x's dtype; the float32 bias stays float32 under ``model.half()``.
  * A weight shared by several modules (a tied embedding and LM head) is quantized once per
    ``quantize_`` call and the modules hold the same ``weight_packed`` tensor; the later ones are
    built with ``tied=True`` (their weight bytes are counted at the first) and ``fastq.save`` /
    ``fastq.load`` keep the tensor shared.
  * Float weights become codes only through ``fastq.quantization.intx.intx_quantize``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from fastq.nn._base import UnsupportedLayerError
from fastq.nn._prepared import NO_PLAN, PreparedLayer
from fastq.ops import call_op, plans
from fastq.ops._checks import FLOAT_DTYPES
from fastq.ops.reference import INTX_BITS, intx_chunk_k, intx_dequantize, intx_packed_bytes, intx_slot_bits, intx_unpack_weight

LINEAR_MODES = ("weight_only", "dynamic")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _shared_packed(weight: Tensor, bits: int, group_size: Optional[int], symmetric: bool, clip: Optional[str],
                   stats: Optional[Tensor], hessian: Optional[Tensor] = None) -> tuple[Tensor, Optional[str], bool]:
    """(packed weight, the clip mode used, whether an earlier module of this quantize_ call already
    made it). With ``hessian`` the codes come from GPTQ."""
    from fastq.ops import _library
    from fastq.quantization.api import current_context
    from fastq.quantization.intx import intx_quantize

    ctx = current_context()
    key = ("intx", id(weight), bits, group_size, symmetric, clip, hessian is not None)
    if ctx is not None and key in ctx.memo:
        return ctx.memo[key] + (True,)
    if clip == "output" and stats is None:
        clip = "weight"  # no observed inputs for this layer: the weight error alone
    codes, scale, zero = intx_quantize(weight, bits, group_size, symmetric, clip, stats, hessian)
    packed = _library.intx_pack_weight(codes, scale, zero, bits)
    if ctx is not None:
        ctx.memo[key] = (packed, clip)
    return packed, clip, False


def fit_group_size(k: int, group_size: Optional[int], bits: int) -> Optional[int]:
    """``group_size`` when it divides K (or is None: per channel), else the largest smaller multiple
    of the packed chunk that divides K (K = 576 with groups of 128: 96).

    Raises:
        UnsupportedLayerError: K is not a multiple of the chunk, so no group size fits.
    """
    if group_size is None or k % group_size == 0:
        return group_size
    chunk = intx_chunk_k(bits)
    for g in range(group_size - group_size % chunk, 0, -chunk):
        if k % g == 0:
            return g
    raise UnsupportedLayerError(f"K={k} is not a multiple of {chunk}: {bits}-bit codes pack {chunk // 4} per byte "
                                f"in chunks of {chunk} inputs")


def _group_for(k: int, config) -> tuple[Optional[int], Optional[int]]:
    """(group size to use, the requested one when it had to be fitted)."""
    if not getattr(config, "fit_group_size", False):
        return config.group_size, None
    g = fit_group_size(k, config.group_size, config.bits)
    return g, (config.group_size if g != config.group_size else None)


class _IntxWeight(nn.Module):
    """The packed [N, K] weight shared by IntxLinear and IntxEmbedding."""

    def _init_intx(self, n: int, k: int, bits: int, group_size: Optional[int], symmetric: bool, tied: bool,
                   fitted_from: Optional[int]) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in INTX_BITS:
            raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
        if not isinstance(symmetric, bool) or not isinstance(tied, bool):
            raise TypeError("symmetric and tied must be bools")
        if n <= 0 or k <= 0:
            raise ValueError(f"the weight must be non-empty, got [{n}, {k}]")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0):
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        gs = k if group_size is None else group_size
        if k % gs:
            raise UnsupportedLayerError(f"group_size {gs} does not divide K={k}")
        chunk = intx_chunk_k(bits)
        if gs % chunk:
            what = f"K={k}" if group_size is None else f"group_size {gs}"
            raise UnsupportedLayerError(f"{what} is not a multiple of {chunk}: {bits}-bit codes pack "
                                        f"{chunk // 4} per byte in chunks of {chunk} inputs")
        self._n, self._k = n, k
        self.bits, self.group_size, self.symmetric, self.tied = bits, group_size, symmetric, tied
        self.fitted_from = fitted_from  # the requested group size, when it did not divide K
        self.groups = k // gs
        self.register_buffer("weight_packed", torch.zeros(intx_packed_bytes(n, k, self.groups, bits, not symmetric),
                                                          dtype=torch.uint8))

    def _layout(self) -> tuple:
        """(n, groups, bits, asymmetric): the op arguments describing ``weight_packed``."""
        return self._n, self.groups, self.bits, not self.symmetric

    # ---- introspection (summary, tests, save/load) ----------------------------------------------

    def granularity(self) -> str:
        g = "per_channel" if self.group_size is None else f"group{self.group_size}"
        if self.fitted_from is not None:
            g += f" (fitted: {self.fitted_from} does not divide K={self._k})"
        s = f"{g} {'symmetric' if self.symmetric else 'asymmetric'}"
        if intx_slot_bits(self.bits) != self.bits:
            s += f", {self.bits}-bit codes in {intx_slot_bits(self.bits)}-bit slots"
        return s + (", tied" if self.tied else "")

    def weight_shape(self) -> tuple:
        return (self._n, self._k)

    def unpacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """(codes uint8 [N, K], scale float32 [N, G], zero points uint8 [N, G])."""
        return intx_unpack_weight(self.weight_packed, self._n, self._k, self.groups, self.bits, not self.symmetric)

    def dequantized_weight(self) -> Tensor:
        """float32 [N, K]: (code - zero point) * scale, the weight this module effectively uses."""
        return intx_dequantize(*self.unpacked())

    def weight_sparsity(self) -> float:
        """Fraction of weights that are exactly zero (code equal to its zero point)."""
        codes, _, zero = self.unpacked()
        return float((codes.reshape(self._n, self.groups, -1) == zero.unsqueeze(-1)).float().mean())

    def weight_bytes(self) -> int:
        """Bytes this module stores: the packed weight (0 when tied: counted at its owner) and bias."""
        bias = self._buffers.get("bias")
        return (0 if self.tied else self.weight_packed.numel()) + (bias.numel() * 4 if bias is not None else 0)

    def float_weight_bytes(self) -> int:
        """Bytes of the fp32 layer it replaces (a tied weight counts at its owner)."""
        bias = self._buffers.get("bias")
        return (0 if self.tied else 4 * self._n * self._k) + (4 * self._n if bias is not None else 0)


class IntxLinear(_IntxWeight, PreparedLayer):
    """``y = x @ W.T + b`` with a ``bits``-bit integer weight (2..8), per group or per channel.

    A prepared layer (``fastq.nn._prepared``): the float32 bias keeps its dtype under
    ``model.half()``, and eager calls run the plan built from the validated buffers.

    Args:
        in_features: K.
        out_features: N.
        bias: whether the layer has a float32 bias [N].
        bits: code width, 2..8.
        group_size: inputs per scale, or None for one per output channel.
        symmetric: no zero points (False: a uint8 zero point per group).
        mode: ``"weight_only"`` (float activations) or ``"dynamic"`` (per-token int8 activations on
            the integer dot-product units; bits <= 4).
        tied: the packed weight is shared with a module counted before this one (see module doc).
        clip: how the weight was clipped (recorded for ``summary``; None, "weight" or "output").
        gptq: whether GPTQ chose the codes (recorded for ``summary``).

    Shapes: input [*, K] float32/float16/bfloat16 -> output [*, N] in the input's dtype.
    """

    _KEEP_FLOAT32 = ("bias",)  # the ops read a float32 bias

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 group_size: Optional[int] = 128, symmetric: bool = True, mode: str = "weight_only",
                 tied: bool = False, clip: Optional[str] = None, fitted_from: Optional[int] = None,
                 gptq: bool = False, activation: Optional[str] = None) -> None:
        super().__init__()
        self._init_plan()
        self._init_activation(activation)
        if mode not in LINEAR_MODES:
            raise ValueError(f"mode must be one of {LINEAR_MODES}, got {mode!r}")
        if mode == "dynamic" and bits > 4:
            raise ValueError(f"mode='dynamic' needs bits <= 4 (int8 activations x up-to-4-bit codes), got {bits}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.mode, self.clip, self.gptq = mode, clip, gptq
        self._init_intx(self.out_features, self.in_features, bits, group_size, symmetric, tied, fitted_from)
        self.register_buffer("bias", torch.zeros(self.out_features) if bias else None)

    @classmethod
    def from_float(cls, module: nn.Linear, config) -> "IntxLinear":
        """Quantize an ``nn.Linear`` under an Int4WeightOnlyConfig / Int4DynamicConfig /
        IntxWeightOnlyConfig (or IntxEmbeddingConfig, for a head tied to an embedding).

        Raises:
            UnsupportedLayerError: group size not dividing K, K not a multiple of the packed chunk,
                a weight with NaN/Inf.
        """
        from fastq.quantization.intx import input_hessian, input_stats

        if not isinstance(module, nn.Linear):
            raise TypeError(f"IntxLinear.from_float expects an nn.Linear, got {type(module).__name__}")
        group, fitted_from = _group_for(module.in_features, config)
        q = cls(module.in_features, module.out_features, module.bias is not None, config.bits, group,
                config.symmetric, config.mode, fitted_from=fitted_from)  # validates the layer first
        hessian = input_hessian(module) if getattr(config, "gptq", False) else None
        q.weight_packed, q.clip, q.tied = _shared_packed(module.weight, config.bits, group, config.symmetric,
                                                         config.clip, input_stats(module), hessian)
        q.gptq = hessian is not None
        if module.bias is not None:
            q.bias = module.bias.detach().to(dtype=torch.float32).clone()
        q.prepare()
        return q

    def _op_name(self) -> str:
        return "intx_linear_dynamic" if self.mode == "dynamic" else "intx_weight_only_linear"

    def _make_plan(self):
        n, groups, bits, asym = self._layout()
        plan = plans.intx_linear(self._op_name(), self.weight_packed, self.bias, n, self._k, groups, bits, asym,
                                 where=self._layer_name())
        return NO_PLAN if plan is None else plan

    def _op_forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype not in FLOAT_DTYPES:
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{self._describe()}: input must be float32, float16 or bfloat16, got {got}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._describe()}: input of shape {tuple(x.shape)} does not end in "
                             f"in_features={self.in_features} (K mismatch)")
        if self.mode == "dynamic":
            return call_op("intx_linear_dynamic", x, self.weight_packed, self.bias, *self._layout(), x.dtype)
        return call_op("intx_weight_only_linear", x, self.weight_packed, self.bias, *self._layout())

    def init_kwargs(self) -> dict:
        """JSON-serialisable constructor arguments: ``IntxLinear(**m.init_kwargs())`` is an empty twin."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, "mode": self.mode,
                "tied": self.tied, "clip": self.clip, "fitted_from": self.fitted_from, "gptq": self.gptq,
                **self._activation_kwargs()}

    def _describe(self) -> str:
        return f"IntxLinear({self.extra_repr()})"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode}, bits={self.bits}, weight={self.granularity()}"
                + (f", clip={self.clip}" if self.clip else "") + (", gptq" if self.gptq else ""))


class IntxEmbedding(_IntxWeight):
    """``nn.Embedding`` with ``bits``-bit rows (a scale per row, or per group of the embedding dim).

    Args:
        num_embeddings: rows (vocabulary size).
        embedding_dim: columns.
        bits, group_size, symmetric, tied: as for ``IntxLinear``.
        padding_idx: kept for nn.Embedding compatibility (it only affects training).
        dtype: output dtype name ("float32", "float16", "bfloat16"); follows model.half() / .to().

    Shapes: indices (int64/int32) of any shape -> ``indices.shape + (embedding_dim,)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 8, group_size: Optional[int] = None,
                 symmetric: bool = True, tied: bool = False, padding_idx: Optional[int] = None,
                 dtype: str = "float32", fitted_from: Optional[int] = None) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx, self.out_dtype = padding_idx, _DTYPES[dtype]
        self._init_intx(self.num_embeddings, self.embedding_dim, bits, group_size, symmetric, tied, fitted_from)

    @property
    def mode(self) -> str:
        return "embedding"

    @classmethod
    def from_float(cls, module: nn.Embedding, config) -> "IntxEmbedding":
        """Quantize an ``nn.Embedding`` under an ``IntxEmbeddingConfig``.

        Raises:
            UnsupportedLayerError: max_norm set (rows are renormalized at lookup), an embedding dim
                that is not a multiple of the packed chunk, NaN/Inf weights.
        """
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"IntxEmbedding.from_float expects an nn.Embedding, got {type(module).__name__}")
        if module.max_norm is not None:
            raise UnsupportedLayerError("max_norm is set: nn.Embedding renormalizes looked-up rows in place")
        dtype = str(module.weight.dtype).removeprefix("torch.")
        group, fitted_from = _group_for(module.embedding_dim, config)
        q = cls(module.num_embeddings, module.embedding_dim, config.bits, group, config.symmetric,
                padding_idx=module.padding_idx, dtype=dtype if dtype in _DTYPES else "float32", fitted_from=fitted_from)
        q.weight_packed, _, q.tied = _shared_packed(module.weight, config.bits, group, config.symmetric, None, None)
        return q

    def forward(self, indices: Tensor) -> Tensor:
        if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32):
            got = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
            raise TypeError(f"IntxEmbedding: indices must be int64 or int32, got {got}")
        return call_op("intx_embedding", indices, self.weight_packed, self._n, self._k, self.groups, self.bits,
                       not self.symmetric, self.out_dtype)

    def _apply(self, fn, recurse=True):
        # Follow float dtype conversions of the model (half(), to(bfloat16)) in the output dtype.
        probe = fn(torch.empty(0, dtype=self.out_dtype))
        if probe.is_floating_point():
            self.out_dtype = probe.dtype
        return super()._apply(fn, recurse)

    def init_kwargs(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim, "bits": self.bits,
                "group_size": self.group_size, "symmetric": self.symmetric, "tied": self.tied,
                "padding_idx": self.padding_idx, "dtype": str(self.out_dtype).removeprefix("torch."),
                "fitted_from": self.fitted_from}

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, weight={self.granularity()}, "
                f"dtype={str(self.out_dtype).removeprefix('torch.')}")


def tied_linear_handler(module: nn.Linear, config) -> nn.Module:
    """IntxEmbeddingConfig's nn.Linear handler: a linear whose weight is an embedding's that this
    quantize_ call converts becomes a weight-only IntxLinear over the same packed buffer; any other
    linear is returned unchanged (this config does not quantize linears)."""
    from fastq.quantization.api import current_context

    ctx = current_context()
    if ctx is None or not any(type(m) is nn.Embedding and ctx.will_convert(m) for m in ctx.owners(module.weight)):
        return module
    return IntxLinear.from_float(module, _TiedHead(config))


class _TiedHead:
    """An IntxEmbeddingConfig seen as a weight-only linear config (same codes as the embedding)."""

    mode, clip = "weight_only", None

    def __init__(self, config) -> None:
        self.bits, self.group_size, self.symmetric = config.bits, config.group_size, config.symmetric
        self.fit_group_size = config.fit_group_size
