"""SparseLinear: a pruned nn.Linear stored only as its kept weights, run by the sparse kernels.

Invariants:
  * input is a pruned ``nn.Linear`` following the mask contract: a bool buffer ``weight_mask``
    (the weight's shape, True = kept) and optionally ``fastq_prune_pattern`` ("unstructured",
    "2:4", "4:8", "block4x4", ...); the weight is zero where the mask is False.
  * the module holds persistent buffers of one compressed format and nothing dense; their shapes
    are fixed by ``init_kwargs()``, so ``SparseLinear(**init_kwargs)`` builds an empty module that
    ``load_state_dict`` fills (the project's save/load contract).
  * forward computes ``x @ (W * M)^T + b`` without reading pruned weights; output dtype = input
    dtype (float16 input runs in float32 and is rounded back). Inputs must end in in_features.
  * the buffers are validated (``fastq.ops._checks``) whenever the module builds its native plan
    (``_prepared.PreparedLayer``: creation, load, move, buffer replacement); a bad buffer raises
    ValueError naming the layer and the buffer.

Formats (``fastq.ops.reference`` documents the layouts):
  "csr"  padded CSR, float32 values + 16-bit columns: unstructured and any other pattern;
  "24"   2:4 values [N, K/2] + 2-bit indices: pattern "2:4" (or "1:4") with K % 4 == 0;
  "bsr"  block-CSR: pattern "blockRxC" with R, C in {1, 2, 4, 8};
  "int8" padded CSR with int8 values and a float32 scale per output row (``int8=True``);
  "ell"  sliced ELL (16-row groups x 32-column tiles, gather-free kernel), float32 values;
  "ell_int8" sliced ELL with int8 values and a float32 scale per output row.
Unstructured masks get ``UNSTRUCTURED_DEFAULT`` unless ``format=`` asks for "csr" or "ell" (see
``choose_format`` for the measurements behind the default).
"""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor, nn

from fastq.nn._prepared import NO_PLAN, PreparedLayer
from fastq.ops import _library as L
from fastq.ops import call_op, plans
from fastq.ops.layouts import ELL_ROWS, ELL_TILE, SPARSE_BLOCK_SIZES

FORMATS = ("csr", "24", "bsr", "int8", "ell", "ell_int8")
STORAGE_FORMATS = ("csr", "ell")  # what format= may ask for; int8 picks their int8 variant
_BLOCK = re.compile(r"^block(\d+)x(\d+)$")
_NM = re.compile(r"^(\d+):(\d+)$")


# Storage of unstructured masks (and of int8=True) when format=None. Measured with
# bench/bench_masked_matmul.py's shapes (768x3072 and 4096x4096, 50-95% sparse, M = 1..128, 1 and 2
# threads, Zen 4): on AVX-512 ELL beats CSR at M <= 4 (1.1-4x; int8 1.2-4x) and mostly at M = 8,
# but at M >= 32 it is 0.6-0.9x of CSR above 75% sparsity on the large layer, at M = 1 it is 0.7-0.8x
# on 4096x4096 at 90-95% float32 (ELL's padding bytes, memory-bound), and on AVX2-only CPUs it is
# 0.4-0.5x at M >= 32. Not uniformly better, so CSR stays the default; ask for format="ell" for
# small batches (token-by-token decoding, M <= 8) on AVX-512 CPUs, above all with int8=True, or
# for any batch at <= 50-60% sparsity, where ELL led at every M measured.
UNSTRUCTURED_DEFAULT = "csr"


def _unstructured(storage: str, int8: bool) -> str:
    """The format name of a storage ("csr" / "ell") with float32 or int8 values."""
    return {"csr": "int8", "ell": "ell_int8"}[storage] if int8 else storage


def _is_24(mask: Tensor) -> bool:
    n, k = mask.shape
    return k % 4 == 0 and not bool((mask.reshape(n, k // 4, 4).sum(dim=2) > 2).any())


def _is_block(mask: Tensor, br: int, bc: int) -> bool:
    n, k = mask.shape
    if n % br or k % bc or (br == 1 and bc == 1):
        return False
    blocks = mask.reshape(n // br, br, k // bc, bc).any(dim=3).any(dim=1)
    return torch.equal(blocks.repeat_interleave(br, 0).repeat_interleave(bc, 1), mask)


def choose_format(mask: Tensor, pattern: Optional[str], int8: bool,
                  format: Optional[str] = None) -> tuple[str, int, int]:
    """(format, block_rows, block_cols) for a mask and its pattern name (None: detect from the mask).

    ``format`` ("csr" or "ell") forces that storage for any pattern, its int8 variant when int8;
    None keeps structured patterns in their formats and stores unstructured ones (and int8) as
    ``UNSTRUCTURED_DEFAULT`` (see its comment for when "ell" is the better choice).
    """
    if format is not None:
        if format not in STORAGE_FORMATS:
            raise ValueError(f"format must be one of {STORAGE_FORMATS} or None (automatic), got {format!r}")
        return _unstructured(format, int8), 1, 1
    if int8:
        return _unstructured(UNSTRUCTURED_DEFAULT, True), 1, 1
    p = (pattern or "").strip().lower()
    if p:
        nm = _NM.match(p)
        if nm and int(nm.group(2)) == 4 and int(nm.group(1)) <= 2 and _is_24(mask):
            return "24", 1, 1
        blk = _BLOCK.match(p)
        if blk and int(blk.group(1)) in SPARSE_BLOCK_SIZES and int(blk.group(2)) in SPARSE_BLOCK_SIZES \
                and int(blk.group(1)) * int(blk.group(2)) > 1:
            return "bsr", int(blk.group(1)), int(blk.group(2))
        return UNSTRUCTURED_DEFAULT, 1, 1
    # no pattern: detect the structured ones the kernels serve
    if mask.float().mean() <= 0.5 and _is_24(mask):
        return "24", 1, 1
    for br, bc in ((4, 4), (8, 1), (1, 4)):
        if _is_block(mask, br, bc):
            return "bsr", br, bc
    return UNSTRUCTURED_DEFAULT, 1, 1


_BUFFERS = {"csr": ("values", "cols", "row_ptr"), "int8": ("q", "scale", "cols", "row_ptr"),
            "24": ("values", "meta"), "bsr": ("values", "block_col", "row_ptr"),
            # in sparse_ell_pack's output order (float32 ell drops its empty scale)
            "ell": ("values", "offsets", "steps", "group_ptr"), "ell_int8": ("q", "offsets", "steps", "group_ptr", "scale")}


class SparseLinear(PreparedLayer):
    """``y = x @ (W * M)^T + b`` from a compressed pruned weight.

    Shapes: input [*, in_features] float32/bfloat16 (float16 runs in float32) -> output
    [*, out_features] in the input's dtype.

    Args:
        in_features, out_features: K and N of the weight.
        bias: whether a float32 bias buffer [N] exists.
        format: one of ``FORMATS``.
        entries: stored entries (csr/int8: padded entry count; bsr: block count; ell/ell_int8:
            step count; unused for 24).
        kept: number of kept weights (for sparsity reports).
        block_rows, block_cols: bsr block shape.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 entries: int = 0, kept: int = 0, block_rows: int = 1, block_cols: int = 1,
                 activation: Optional[str] = None) -> None:
        super().__init__()
        self._init_plan()
        self._init_activation(activation)
        if format not in FORMATS:
            raise ValueError(f"SparseLinear: format must be one of {FORMATS}, got {format!r}")
        if in_features <= 0 or out_features <= 0 or entries < 0:
            raise ValueError(f"SparseLinear: bad sizes in={in_features} out={out_features} entries={entries}")
        if format == "bsr" and (block_rows not in SPARSE_BLOCK_SIZES or block_cols not in SPARSE_BLOCK_SIZES):
            raise ValueError(f"SparseLinear: block {block_rows}x{block_cols} unsupported (sizes {SPARSE_BLOCK_SIZES})")
        if format == "24" and in_features % 4:
            raise ValueError(f"SparseLinear: 2:4 needs in_features divisible by 4, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.format, self.entries, self.kept = format, entries, kept
        self.block_rows, self.block_cols = block_rows, block_cols
        n, k = out_features, in_features
        f32, i16, i64 = torch.float32, torch.int16, torch.int64
        if format == "csr":
            self.register_buffer("values", torch.zeros(entries, dtype=f32))
            self.register_buffer("cols", torch.zeros(entries, dtype=i16))
            self.register_buffer("row_ptr", torch.zeros(n + 1, dtype=i64))
        elif format == "int8":
            self.register_buffer("q", torch.zeros(entries, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(n, dtype=f32))
            self.register_buffer("cols", torch.zeros(entries, dtype=i16))
            self.register_buffer("row_ptr", torch.zeros(n + 1, dtype=i64))
        elif format == "24":
            self.register_buffer("values", torch.zeros(n, k // 2, dtype=f32))
            self.register_buffer("meta", torch.zeros(n, (k // 2 + 3) // 4, dtype=torch.uint8))
        elif format in ("ell", "ell_int8"):
            q8, groups = format == "ell_int8", -(-n // ELL_ROWS)
            self.register_buffer("q" if q8 else "values", torch.zeros(entries, ELL_ROWS, dtype=torch.int8 if q8 else f32))
            self.register_buffer("offsets", torch.zeros(entries, ELL_ROWS, dtype=torch.uint8))
            self.register_buffer("steps", torch.zeros(groups, -(-k // ELL_TILE), dtype=torch.uint8))
            self.register_buffer("group_ptr", torch.zeros(groups + 1, dtype=i64))
            if q8:
                self.register_buffer("scale", torch.ones(n, dtype=f32))
        else:
            self.register_buffer("values", torch.zeros(entries, block_rows, block_cols, dtype=f32))
            self.register_buffer("block_col", torch.zeros(entries, dtype=i16))
            self.register_buffer("row_ptr", torch.zeros(-(-n // block_rows) + 1, dtype=i64))
        self.register_buffer("bias", torch.zeros(n, dtype=f32) if bias else None)

    @classmethod
    def from_float(cls, module: nn.Linear, int8: bool = False, pattern: Optional[str] = None,
                   format: Optional[str] = None) -> "SparseLinear":
        """Compress a pruned ``nn.Linear`` (see the mask contract above).

        Args:
            module: an ``nn.Linear`` with a bool ``weight_mask`` buffer.
            int8: store kept weights as int8 with a per-output-row scale (sparse-int8).
            pattern: overrides ``module.fastq_prune_pattern`` when given.
            format: "csr" or "ell" to force that storage (see ``choose_format``); None chooses.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"SparseLinear.from_float takes an nn.Linear, got {type(module).__name__}")
        mask = getattr(module, "weight_mask", None)
        if mask is None:
            raise ValueError("SparseLinear.from_float: the layer has no weight_mask buffer; prune it first "
                             "(fastq.prune_) or attach a bool weight_mask")
        w = module.weight.detach()
        mask = mask.to(w.device)
        if pattern is None:
            pattern = getattr(module, "fastq_prune_pattern", None)
        fmt, br, bc = choose_format(mask, pattern, int8, format)
        n, k = w.shape
        if fmt == "csr":
            packed = L.sparse_csr_pack(w, mask)
        elif fmt == "int8":
            packed = L.sparse_int8_pack(w, mask)
        elif fmt == "24":
            packed = L.sparse_24_pack(w, mask)
        elif fmt in ("ell", "ell_int8"):
            packed = L.sparse_ell_pack(w, mask, fmt == "ell_int8")
        else:
            packed = L.sparse_bsr_pack(w, mask, br, bc)
        entries = 0 if fmt == "24" else packed[0].shape[0]
        out = cls(k, n, module.bias is not None, fmt, entries, int(mask.sum()), br, bc).to(w.device)
        for name, t in zip(_BUFFERS[fmt], packed):
            getattr(out, name).copy_(t)
        if module.bias is not None:
            out.bias.copy_(module.bias.detach().float())
        out.prepare()
        return out

    _KEEP_FLOAT32 = ("values", "scale", "bias")  # the kernels read float32: dtype casts move them only

    def _make_plan(self):
        where, b, n, k = self._layer_name(), self.bias, self.out_features, self.in_features
        if self.format == "csr":
            plan = plans.sparse_csr_linear(self.values, self.cols, self.row_ptr, b, n, k, where=where)
        elif self.format == "int8":
            plan = plans.sparse_int8_linear(self.q, self.scale, self.cols, self.row_ptr, b, k, where=where)
        elif self.format == "24":
            plan = plans.sparse_24_linear(self.values, self.meta, b, k, where=where)
        elif self.format == "ell":
            plan = plans.sparse_ell_linear(self.values, self.offsets, self.steps, self.group_ptr, None, b, n, k,
                                           where=where)
        elif self.format == "ell_int8":
            plan = plans.sparse_ell_linear(self.q, self.offsets, self.steps, self.group_ptr, self.scale, b, n, k,
                                           where=where)
        else:
            plan = plans.sparse_bsr_linear(self.values, self.block_col, self.row_ptr, b, n, k, where=where)
        return NO_PLAN if plan is None else plan

    def _check_input(self, x) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"{type(self).__name__}: input must be a floating point tensor, got {got}")

    def _op_forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input of shape {tuple(x.shape)} does not end in "
                             f"in_features={self.in_features} (K mismatch)")
        dtype = x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            x = x.float()
        b, n = self.bias, self.out_features
        if self.format == "csr":
            y = call_op("sparse_csr_linear", x, self.values, self.cols, self.row_ptr, b, n)
        elif self.format == "int8":
            y = call_op("sparse_int8_linear", x, self.q, self.scale, self.cols, self.row_ptr, b)
        elif self.format == "24":
            y = call_op("sparse_24_linear", x, self.values, self.meta, b)
        elif self.format == "ell":
            y = call_op("sparse_ell_linear", x, self.values, self.offsets, self.steps, self.group_ptr, None, b, n)
        elif self.format == "ell_int8":
            y = call_op("sparse_ell_linear", x, self.q, self.offsets, self.steps, self.group_ptr, self.scale, b, n)
        else:
            y = call_op("sparse_bsr_linear", x, self.values, self.block_col, self.row_ptr, b, n)
        return y.to(dtype)

    def dense_weight(self) -> Tensor:
        """The float32 [N, K] weight this module multiplies by (dequantized for int8)."""
        n, k = self.out_features, self.in_features
        if self.format == "csr":
            return L.sparse_csr_unpack(self.values, self.cols, self.row_ptr, n, k)
        if self.format == "int8":
            return L.sparse_int8_unpack(self.q, self.scale, self.cols, self.row_ptr, k)
        if self.format == "24":
            return L.sparse_24_unpack(self.values, self.meta, k)
        if self.format in ("ell", "ell_int8"):
            values = self.q if self.format == "ell_int8" else self.values
            return L.sparse_ell_unpack(values, self.offsets, self.steps, self.group_ptr,
                                       self.scale if self.format == "ell_int8" else None, n, k)
        return L.sparse_bsr_unpack(self.values, self.block_col, self.row_ptr, n, k)

    def init_kwargs(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "format": self.format, "entries": self.entries, "kept": self.kept,
                "block_rows": self.block_rows, "block_cols": self.block_cols, **self._activation_kwargs()}

    def weight_bytes(self) -> int:
        """Bytes this layer stores: every compressed-format buffer and the bias."""
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def float_weight_bytes(self) -> int:
        """Bytes of the fp32 layer it replaces: weight [N, K] and bias [N]."""
        n, k = self.out_features, self.in_features
        return 4 * (n * k + (n if self.bias is not None else 0))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / (self.in_features * self.out_features)

    # ---- what fastq.summary reads ----------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Bits per stored kept weight."""
        return 8 if self.format in ("int8", "ell_int8") else 32

    @property
    def mode(self) -> str:
        return f"sparse {self.format}" if self.format != "bsr" else f"sparse bsr{self.block_rows}x{self.block_cols}"

    def weight_shape(self) -> tuple:
        return (self.out_features, self.in_features)

    def weight_sparsity(self) -> float:
        return self.sparsity

    def extra_repr(self) -> str:
        fmt = f"bsr{self.block_rows}x{self.block_cols}" if self.format == "bsr" else self.format
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={fmt}, sparsity={self.sparsity:.1%}, bytes={self.weight_bytes()} "
                f"({self.weight_bytes() / self.float_weight_bytes():.1%} of fp32)")
