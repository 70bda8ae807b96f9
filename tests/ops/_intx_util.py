"""Shared helpers of the intx op tests: random packed weights and the weight-only error bound.

Imported by bare name (tests/ops has no __init__.py). The CPU and CUDA tests use the same bound.
"""

from __future__ import annotations

import torch

from fastq.ops import _library, reference

EPS32 = torch.finfo(torch.float32).eps
# (bits, asymmetric) pairs covering every slot width (2, 4, 8 bits) and both zero-point kinds; 3-bit
# symmetric has a zero point (4) other than half its slot's range (8), which tables fold in.
FORMATS = [(4, False), (4, True), (2, False), (2, True), (3, False), (3, True), (8, False), (5, True)]
DYNAMIC_FORMATS = [f for f in FORMATS if f[0] <= 4]


def fmt_id(f) -> str:
    return f"int{f[0]}{'a' if f[1] else 's'}"


def activations(m: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fresh Gaussian activations with an offset (never zeros), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=gen) * 2 + 0.25).to(dtype)


def random_weight(n: int, k: int, groups: int, bits: int, asymmetric: bool, gen: torch.Generator,
                  device: str = "cpu"):
    """Random codes, scales (and zero points) of an [n, k] weight and its packing."""
    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=gen)
    scale = torch.rand(n, groups, generator=gen) * 0.02 + 1e-3
    zero = torch.randint(0, 1 << bits, (n, groups), dtype=torch.uint8, generator=gen) if asymmetric else None
    packed = _library.intx_pack_weight(codes, scale, zero, bits)
    if zero is None:
        zero = torch.full((n, groups), 1 << (bits - 1), dtype=torch.uint8)
    return tuple(t.to(device) for t in (codes, scale, zero, packed))


def weight_only_bound(x: torch.Tensor, codes, scale, zero, bias, n: int):
    """(exact float64 result, bound) of the weight-only linear: kernels sum x c and x per group in
    float32 (any order) and form s (sum x c - z sum x), so each output is within
    2 (K + 2) eps32 sum_k |x_k| (c_k + z) s of the exact value (the gamma_K bound of a float32 sum,
    doubled for the two sums and the epilogue), plus one rounding of a 16-bit output dtype."""
    k = x.shape[-1]
    groups = scale.shape[1]
    xd = x.reshape(-1, k).double().cpu()
    c = codes.double().cpu().reshape(n, groups, -1)
    z = zero.double().cpu().unsqueeze(-1)
    s = scale.double().cpu().unsqueeze(-1)
    w = ((c - z) * s).reshape(n, k)
    exact = xd @ w.T + (bias.double().cpu() if bias is not None else 0)
    bound = 2 * (k + 2) * EPS32 * (xd.abs() @ ((c + z) * s).reshape(n, k).T)
    if x.dtype != torch.float32:
        bound = bound + 2 * torch.finfo(x.dtype).eps * exact.abs()
    return exact, bound


def assert_within(y: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor) -> None:
    n = exact.shape[-1]
    err = (y.reshape(-1, n).double().cpu() - exact).abs()
    worst = float((err / (bound + 1e-30)).max()) if err.numel() else 0.0
    assert bool((err <= bound + 1e-30).all()), f"error exceeds the float32 bound (worst ratio {worst:.2f})"


def check_reference_bound(x, packed, bias, n, groups, bits, asym, parts) -> None:
    """The bound must hold for the reference itself (else it is not a bound)."""
    ref = reference.intx_weight_only_linear(x.cpu(), packed.cpu(), None if bias is None else bias.cpu(), n, groups,
                                            bits, asym)
    assert_within(ref, *parts)
