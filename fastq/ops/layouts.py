"""Layout facts of every fastq tensor format: the one place they are written down.

Invariants: this module imports nothing from fastq, so ``_checks`` (validation), ``reference`` (the
specification), the native launchers (``cpu``, ``cuda``, ``plans``) and the modules (``fastq.nn``)
all read the same numbers without an import cycle. The formats themselves are described next to
their reference ops in ``fastq/ops/reference.py`` and, for the kernels, in ``csrc/api.h``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLT_MIN = torch.finfo(torch.float32).tiny  # the scale of an all-zero row

# ---- quantize / dequantize: granularities as a [rows, cols] view, one scale per row --------------
PER_TENSOR = 0
PER_ROW = -1


class QuantLayout(NamedTuple):
    """How a quantize op sees its input: a contiguous [rows, cols] view, one scale per row."""

    rows: int
    cols: int
    scale_shape: tuple  # shape of the scale / zero_point tensors the op returns


def layout(shape: tuple, group_size: int) -> QuantLayout:
    """The [rows, cols] view and scale shape for ``group_size`` (0 per tensor, -1 per row, g > 0)."""
    if len(shape) == 0:
        raise ValueError("cannot quantize a 0-d tensor; reshape it to at least 1-d")
    numel = 1
    for s in shape:
        numel *= s
    c = shape[-1]
    if group_size == PER_TENSOR:
        return QuantLayout(1, numel, (1,) * len(shape))
    if group_size == PER_ROW:
        # numel // c would lose the rows of an empty last dimension: count them directly.
        rows = 1
        for s in shape[:-1]:
            rows *= s
        return QuantLayout(rows, c, tuple(shape[:-1]) + (1,))
    if group_size < -1:
        raise ValueError(f"group_size must be 0 (per tensor), -1 (per row) or positive, got {group_size}")
    if c % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide the last dimension {c}")
    return QuantLayout(numel // group_size, group_size, tuple(shape[:-1]) + (c // group_size,))


# ---- packed int8 weight (int8_pack_weight) ---------------------------------------------------------
# N_pad = ceil(N / 16) * 16, K_pad = ceil(K / 4) * 4, padding filled with 0; bytes [0, N_pad * K_pad):
# int8 blocks [N_pad/16][K_pad/4][16][4] (block (nb, kg) holds w[nb*16 + n, kg*4 + k] at n*4 + k),
# then N_pad int32 (little endian) column sums sum_k w[n, k].
PACK_NR = 16
PACK_KR = 4


def packed_sizes(n: int, k: int) -> tuple[int, int, int]:
    """(N_pad, K_pad, total bytes) of the packed layout for an [n, k] weight."""
    n_pad = -(-n // PACK_NR) * PACK_NR
    k_pad = -(-k // PACK_KR) * PACK_KR
    return n_pad, k_pad, n_pad * k_pad + 4 * n_pad


# ---- sparse formats ------------------------------------------------------------------------------
SPARSE_ROW_PAD = 16  # CSR rows hold a multiple of this many entries (the kernels' step, no tails)
SPARSE_MAX_COLS = 65536  # 16-bit column indices (int16 storage of unsigned values)
SPARSE_BLOCK_SIZES = (1, 2, 4, 8)  # block-CSR block rows / columns
ELL_ROWS = 16  # sliced ELL: output rows per group (lanes of a step)
ELL_TILE = 32  # sliced ELL: input columns per tile
