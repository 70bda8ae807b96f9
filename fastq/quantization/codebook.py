"""Codebook configs (weight sharing, binary, ternary, power-of-two) and their weight encoders.

Every config turns a float weight [N, K] into the one codebook contract of ``fastq.nn.codebook``:
uint8 codes [N, K] (``bits`` wide), a float32 codebook [R, G, 2**bits] (R = 1 shared or N per row,
G groups along K; unused entries 0) and an optional float32 per-row scale [N], with

    W[n, k] = codebook[r(n), k // (K / G), code[n, k]] * scale[n].

Invariants: configs are frozen dataclasses that validate themselves (impossible values raise with
what to pass instead); encoders are deterministic for a given weight and config (seeded), never
modify the weight, and raise ``UnsupportedLayerError`` (quantize_ then skips the layer and
summary prints the reason) for layer-dependent problems: NaN/Inf weights, fewer weights per table
than clusters, a group size that does not split K.

Definitions (per output row n of W, with mean over the row's K weights):
  * Binary (XNOR-Net weights): W = alpha[n] * sign(W), alpha = mean |W[n]| (the L2-optimal scale
    for a fixed sign pattern); sign(0) = +1.
  * Ternary (TWN): delta = threshold * mean |W[n]| (threshold 0.7 is TWN's approximation of the
    optimum for Gaussian-like weights); W = alpha * sign(W) where |W| > delta, else 0, with
    alpha = mean |W| over the kept entries (the L2-optimal value for that support).
  * Power of two: W = s[n] * v, v in {0 (optional), +-2^0, +-2^-1, ..., +-2^-(E-1)}, s = 2^e a power
    of two calibrated per row (the better of e = ceil(log2 max|W[n]|) and that minus 1 in squared
    error), each weight rounded to the nearest value: every stored weight is +-2^k exactly, k in
    [e - E + 1, e] (multiplication by it is a shift).
  * Weight sharing: k-means (1-D) of the weights of each table (the whole layer, each row, or each
    row's group of group_size inputs); see ``fastq.quantization.clustering``. Pruned layers (a
    fastq ``weight_mask``) keep their zeros exactly: entry 0 of every table is 0.0 and holds the
    pruned weights, the kept ones share the other clusters - 1 entries (Deep Compression).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fastq.nn._base import UnsupportedLayerError
from fastq.ops._checks import CODEBOOK_BITS, codebook_chunk, lut_group
from fastq.quantization.clustering import INITS, METHODS, kmeans_1d, nearest

SCOPES = ("layer", "row", "group")
STORAGES = ("dense", "sparse")


def _int(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")


def index_bits_for(clusters: int) -> int:
    """The narrowest code width the kernels take (1, 2, 4 or 8) that indexes ``clusters`` entries."""
    for b in CODEBOOK_BITS:
        if clusters <= 1 << b:
            return b
    raise ValueError(f"{clusters} clusters need more than 8-bit codes; use at most 256")


@dataclass(frozen=True)
class WeightSharingConfig:
    """Weight sharing by 1-D k-means: each table of weights keeps ``clusters`` shared values.

    Args:
        clusters: shared values per table (2 .. 2**bits), e.g. 16 (4-bit codes) or 256 (8-bit).
        scope: "layer" (one table for the whole layer: lookup-table kernels, T-MAC tables at
            1-2 bits), "row" (a table per output row), or "group" (a table per output row and
            ``group_size`` consecutive inputs).
        group_size: inputs per table for scope="group": a multiple of 128 / bits (the kernels'
            16-byte chunk of codes), e.g. 128 for any code width; layers whose K it does not
            divide are skipped.
        init: Lloyd's starting centroids: "linear" (evenly spaced between min and max: Deep
            Compression's choice, keeps the rare large weights), "density" (CDF quantiles),
            "random" (Forgy, seeded) or "kmeans++" (seeded). Used by method="lloyd" only.
        method: "exact" (the optimal clustering, least squared error; needs the kmeans1d
            package) or "lloyd" (local optimum from ``init``; no extra package).
        seed: seed of the random inits (results are identical for identical inputs and seed).
        bits: code width (1, 2, 4 or 8); None picks the narrowest that holds ``clusters``.
        iters: Lloyd iterations at most.
        storage: "dense" (codes for every weight: the fast kernels) or "sparse" (pruned layers
            only: Deep Compression's relative indices, a 4-bit gap and a code per kept weight,
            decoded to a dense weight at each forward; smallest on disk, float speed).
        keep_zeros: pruned layers keep their pruned weights exactly 0 (a reserved 0.0 entry).
    """

    clusters: int = 16
    scope: str = "row"
    group_size: int = 128
    init: str = "linear"
    method: str = "exact"
    seed: int = 0
    bits: Optional[int] = None
    iters: int = 100
    storage: str = "dense"
    keep_zeros: bool = True

    def __post_init__(self) -> None:
        _int("WeightSharingConfig.clusters", self.clusters, 2)
        if self.bits is not None and self.bits not in CODEBOOK_BITS:
            raise ValueError(f"WeightSharingConfig.bits must be one of {CODEBOOK_BITS} or None, got {self.bits!r}")
        if self.clusters > 1 << self.index_bits:
            raise ValueError(f"WeightSharingConfig: {self.clusters} clusters do not fit {self.index_bits}-bit codes "
                             f"(at most {1 << self.index_bits}); raise bits or lower clusters")
        if self.scope not in SCOPES:
            raise ValueError(f"WeightSharingConfig.scope must be one of {SCOPES}, got {self.scope!r}")
        _int("WeightSharingConfig.group_size", self.group_size, 1)
        if self.scope == "group" and self.group_size % codebook_chunk(self.index_bits):
            raise ValueError(f"WeightSharingConfig.group_size must be a multiple of {codebook_chunk(self.index_bits)} "
                             f"for {self.index_bits}-bit codes (the kernels' 16-byte chunk), got {self.group_size}")
        if self.init not in INITS:
            raise ValueError(f"WeightSharingConfig.init must be one of {INITS}, got {self.init!r}")
        if self.method not in METHODS:
            raise ValueError(f"WeightSharingConfig.method must be one of {METHODS}, got {self.method!r}")
        _int("WeightSharingConfig.seed", self.seed, 0)
        _int("WeightSharingConfig.iters", self.iters, 1)
        if self.storage not in STORAGES:
            raise ValueError(f"WeightSharingConfig.storage must be one of {STORAGES}, got {self.storage!r}")
        if not isinstance(self.keep_zeros, bool):
            raise TypeError(f"WeightSharingConfig.keep_zeros must be a bool, got {self.keep_zeros!r}")

    @property
    def index_bits(self) -> int:
        return self.bits if self.bits is not None else index_bits_for(self.clusters)


@dataclass(frozen=True)
class BinaryConfig:
    """1-bit weights: sign(W) times a per-output-channel scale mean |W| (XNOR-Net). Lookup-table
    kernels (4 weights of 16 rows per table lookup)."""


@dataclass(frozen=True)
class TernaryConfig:
    """2-bit ternary weights {-a, 0, +a} per output channel (TWN).

    Args:
        threshold: weights with |w| <= threshold * mean |W[n]| become 0 (TWN: 0.7); in [0, 1).
    """

    threshold: float = 0.7

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t < 1:
            raise ValueError(f"TernaryConfig.threshold must be a number in [0, 1), got {t!r}")


@dataclass(frozen=True)
class PowerOfTwoConfig:
    """4-bit power-of-two weights: each weight is +-2^k (or 0) with k in a per-channel calibrated
    range of ``exponents`` consecutive values.

    Args:
        zero: include 0 among the values (then at most 7 exponents fit 4-bit codes, else 8).
        exponents: consecutive exponents per channel; None: the most that fit (7 or 8).
    """

    zero: bool = True
    exponents: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.zero, bool):
            raise TypeError(f"PowerOfTwoConfig.zero must be a bool, got {self.zero!r}")
        most = 7 if self.zero else 8
        if self.exponents is not None:
            _int("PowerOfTwoConfig.exponents", self.exponents, 1)
            if self.exponents > most:
                raise ValueError(f"PowerOfTwoConfig.exponents: at most {most} fit 16 codes "
                                 f"{'with' if self.zero else 'without'} zero, got {self.exponents}")

    @property
    def n_exponents(self) -> int:
        return self.exponents if self.exponents is not None else (7 if self.zero else 8)


CODEBOOK_CONFIGS = (WeightSharingConfig, BinaryConfig, TernaryConfig, PowerOfTwoConfig)


class Encoded(NamedTuple):
    """A weight in the codebook contract (module docstring)."""

    codes: Tensor  # uint8 [N, K]
    codebook: Tensor  # float32 [R, G, 2**bits]
    scale: Optional[Tensor]  # float32 [N] or None
    bits: int
    clusters: int  # meaningful entries per table (k of the compression ratio)
    kind: str  # "kmeans", "binary", "ternary", "pow2"
    zero_entry: bool  # entry 0 of every table is a fixed 0.0 (pruned weights)


def _check_weight(w: Tensor) -> Tensor:
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise UnsupportedLayerError(f"the weight must be a non-empty [N, K] matrix, got {tuple(w.shape)}")
    w = w.detach().float().cpu()
    if not bool(torch.isfinite(w).all()):
        raise UnsupportedLayerError("the weight holds NaN or Inf values")
    return w


def _table(entries: Tensor, bits: int) -> Tensor:
    """[..., k] entries -> [..., 2**bits] (unused entries 0)."""
    pad = (1 << bits) - entries.shape[-1]
    return torch.nn.functional.pad(entries, (0, pad)) if pad else entries


def encode(config, w: Tensor, mask: Optional[Tensor] = None) -> Encoded:
    """Encode a float weight [N, K] (``mask``: its pruning mask, True = kept, or None) under a
    codebook config. Raises UnsupportedLayerError for layers the config cannot take."""
    w = _check_weight(w)
    if isinstance(config, WeightSharingConfig):
        return _encode_kmeans(config, w, None if mask is None else mask.detach().cpu().bool())
    if isinstance(config, BinaryConfig):
        return _encode_binary(w)
    if isinstance(config, TernaryConfig):
        return _encode_ternary(config, w)
    if isinstance(config, PowerOfTwoConfig):
        return _encode_pow2(config, w)
    raise TypeError(f"not a codebook config: {type(config).__name__}")


def _encode_kmeans(cfg: WeightSharingConfig, w: Tensor, mask: Optional[Tensor]) -> Encoded:
    n, k = w.shape
    bits = cfg.index_bits
    zero = cfg.keep_zeros and mask is not None
    if cfg.storage == "sparse" and not zero:
        raise UnsupportedLayerError("storage='sparse' needs a pruned layer (a fastq weight_mask) and keep_zeros=True")
    if cfg.scope == "layer":
        tables, per = 1, n * k
    elif cfg.scope == "row":
        tables, per = n, k
    else:
        if k % cfg.group_size:
            raise UnsupportedLayerError(f"group_size {cfg.group_size} does not divide K={k}")
        tables, per = n * (k // cfg.group_size), cfg.group_size
    if per < cfg.clusters:
        raise UnsupportedLayerError(f"a {cfg.scope} table holds {per} weights, fewer than clusters={cfg.clusters}")
    values = w.reshape(tables, per)
    valid = mask.reshape(tables, per) if zero else None
    shared = cfg.clusters - 1 if zero else cfg.clusters
    centroids, codes = kmeans_1d(values, shared, method=cfg.method, init=cfg.init, seed=cfg.seed, iters=cfg.iters,
                                 valid=valid)
    if zero:
        centroids = torch.cat([centroids.new_zeros(tables, 1), centroids], dim=1)
        codes = torch.where(valid, codes + 1, torch.zeros_like(codes))
    rows, groups = (1, 1) if cfg.scope == "layer" else (n, tables // n)
    codebook = _table(centroids, bits).reshape(rows, groups, 1 << bits).contiguous()
    return Encoded(codes.reshape(n, k).to(torch.uint8), codebook, None, bits, cfg.clusters, "kmeans", zero)


def _encode_binary(w: Tensor) -> Encoded:
    alpha = w.abs().mean(dim=1)
    codes = (w >= 0).to(torch.uint8)  # 0: -1, 1: +1
    codebook = torch.tensor([-1.0, 1.0]).reshape(1, 1, 2)
    return Encoded(codes, codebook, alpha.contiguous(), 1, 2, "binary", False)


def _encode_ternary(cfg: TernaryConfig, w: Tensor) -> Encoded:
    a = w.abs()
    delta = cfg.threshold * a.mean(dim=1, keepdim=True)
    kept = a > delta
    count = kept.sum(dim=1)
    alpha = torch.where(count > 0, (a * kept).sum(dim=1) / count.clamp_min(1), torch.zeros_like(delta[:, 0]))
    codes = torch.where(kept, torch.where(w > 0, 2, 0), 1).to(torch.uint8)  # entries -1, 0, +1
    codebook = _table(torch.tensor([-1.0, 0.0, 1.0]), 2).reshape(1, 1, 4)
    return Encoded(codes, codebook, alpha.contiguous(), 2, 3, "ternary", False)


def pow2_values(cfg: PowerOfTwoConfig) -> Tensor:
    """The sorted base values {-(2^0..2^-(E-1)), [0,] 2^-(E-1)..2^0} (float32)."""
    mags = 2.0 ** -torch.arange(cfg.n_exponents, dtype=torch.float64)
    parts = [-mags, torch.zeros(1, dtype=torch.float64)] if cfg.zero else [-mags]
    return torch.sort(torch.cat(parts + [mags])).values.float()


def _encode_pow2(cfg: PowerOfTwoConfig, w: Tensor) -> Encoded:
    base = pow2_values(cfg)
    amax = w.abs().amax(dim=1)
    e_hi = torch.ceil(torch.log2(amax.clamp_min(torch.finfo(torch.float32).tiny)))
    best_err, best_codes, best_scale = None, None, None
    for e in (e_hi - 1, e_hi):  # calibrate the per-row range: keep the better top exponent
        scale = torch.where(amax > 0, torch.exp2(e), torch.ones_like(e))
        codes = nearest(w / scale[:, None], base.expand(w.shape[0], -1))  # dividing by 2^e is exact
        err = ((w - base[codes] * scale[:, None]) ** 2).sum(dim=1)
        if best_err is None:
            best_err, best_codes, best_scale = err, codes, scale
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_codes = torch.where(better[:, None], codes, best_codes)
            best_scale = torch.where(better, scale, best_scale)
    codebook = _table(base, 4).reshape(1, 1, 16)
    return Encoded(best_codes.to(torch.uint8), codebook, best_scale.contiguous(), 4, base.numel(), "pow2", False)


def _register() -> None:
    from fastq.nn.codebook import SharedWeightConv2d, SharedWeightLinear
    from fastq.quantization.api import register_handler

    for config in CODEBOOK_CONFIGS:
        register_handler(config, torch.nn.Linear, SharedWeightLinear.from_float)
        register_handler(config, torch.nn.Conv2d, SharedWeightConv2d.from_float)


_register()
