"""CUDA kernels of the intx linears (csrc/cuda/intx.cu) against the reference.

Invariants: ops are called as users call them (``torch.ops.fastq.*``); each test checks that the
native CUDA kernel serves the op and that it ran (``fastq.native_calls``). The W4A8 epilogue is a
fixed float sequence (no FMA) on exact int32 group sums, so it must match the reference bit for bit
(the reference runs on the CPU copy: integer and float32 steps are device-independent); weight-only
results are compared with the float32 bound shared with the CPU tests. Modules run on the GPU too.
Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.nn import IntxLinear
from fastq.ops import reference

from _compare import assert_bits_equal
from _intx_util import DYNAMIC_FORMATS, FORMATS, assert_within, fmt_id, random_weight, weight_only_bound

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ops = torch.ops.fastq
DEV = "cuda"
TAILS = (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _native_cuda(op: str) -> int:
    if not _native.build_info().get("cuda"):
        pytest.skip(f"fastq was built without CUDA ({_native.IMPORT_ERROR or 'CPU-only build'})")
    assert fastq.kernel_for(op, "cuda") == "native:cuda", f"{op}: no native CUDA kernel registered"
    return fastq.native_calls(op, "cuda")


def _x(m: int, k: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=gen) * 2 + 0.25).to(dtype)


def _k(bits: int, chunks: int) -> int:
    return chunks * reference.intx_chunk_k(bits)


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("n", TAILS)
def test_weight_only_matches_reference(fmt, n):
    bits, asym = fmt
    before = _native_cuda("intx_weight_only_linear")
    for m, chunks, groups in ((1, 16, 2), (5, 8, 1), (9, 24, 3), (17, 4, 4)):
        k = _k(bits, chunks)
        gen = torch.Generator().manual_seed(n * 7 + m + bits)
        codes, scale, zero, packed = random_weight(n, k, groups, bits, asym, gen)
        bias = torch.randn(n, generator=gen)
        x = _x(m, k, n + m)
        parts = weight_only_bound(x, codes, scale, zero, bias, n)
        y = ops.intx_weight_only_linear(x.to(DEV), packed.to(DEV), bias.to(DEV), n, groups, bits, asym)
        assert y.device.type == "cuda" and y.shape == (m, n)
        assert_within(y, *parts)
    assert fastq.native_calls("intx_weight_only_linear", "cuda") == before + 4


@pytest.mark.parametrize("fmt", DYNAMIC_FORMATS, ids=fmt_id)
@pytest.mark.parametrize("n", TAILS)
def test_dynamic_matches_reference_bit_for_bit(fmt, n):
    bits, asym = fmt
    before = _native_cuda("intx_linear_dynamic")
    for m, chunks, groups in ((1, 16, 2), (5, 8, 1), (9, 96, 48), (17, 4, 4), (3, 512, 1)):
        k = _k(bits, chunks)
        gen = torch.Generator().manual_seed(n * 11 + m + bits)
        packed = random_weight(n, k, groups, bits, asym, gen)[3]
        bias = torch.randn(n, generator=gen)
        x = _x(m, k, n + m)
        x[0, 0] = float("nan") if m > 2 else x[0, 0]  # a poisoned token
        want = reference.intx_linear_dynamic(x, packed, bias, n, groups, bits, asym, torch.float32)
        y = ops.intx_linear_dynamic(x.to(DEV), packed.to(DEV), bias.to(DEV), n, groups, bits, asym, torch.float32)
        assert_bits_equal(y.cpu(), want, f"m={m} k={k} g={groups}")
    assert fastq.native_calls("intx_linear_dynamic", "cuda") == before + 5


@pytest.mark.parametrize("x_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
def test_dtypes(x_dtype, out_dtype):
    _native_cuda("intx_linear_dynamic")
    n, k, groups = 40, 128, 4
    gen = torch.Generator().manual_seed(3)
    codes, scale, zero, packed = random_weight(n, k, groups, 4, True, gen)
    x = _x(13, k, 2, x_dtype)
    want = reference.intx_linear_dynamic(x, packed, None, n, groups, 4, True, out_dtype)
    y = ops.intx_linear_dynamic(x.to(DEV), packed.to(DEV), None, n, groups, 4, True, out_dtype)
    assert_bits_equal(y.cpu(), want)
    y = ops.intx_weight_only_linear(x.to(DEV), packed.to(DEV), None, n, groups, 4, True)
    assert y.dtype == x_dtype
    assert_within(y, *weight_only_bound(x, codes, scale, zero, None, n))


@pytest.mark.parametrize("shape", [(1, 11008, 4096, 32), (128, 4096, 4096, 32), (64, 4096, 11008, 86)], ids=str)
def test_real_shapes(shape):
    _native_cuda("intx_linear_dynamic")
    m, n, k, groups = shape
    gen = torch.Generator().manual_seed(m)
    codes, scale, zero, packed = random_weight(n, k, groups, 4, False, gen)
    x = _x(m, k, 1)
    pd, xd = packed.to(DEV), x.to(DEV)
    y = ops.intx_linear_dynamic(xd, pd, None, n, groups, 4, False, torch.float32)
    assert_bits_equal(y.cpu(), reference.intx_linear_dynamic(x, packed, None, n, groups, 4, False, torch.float32))
    y = ops.intx_weight_only_linear(xd, pd, None, n, groups, 4, False)
    assert_within(y, *weight_only_bound(x, codes, scale, zero, None, n))


@pytest.mark.parametrize("cfg", [fastq.Int4WeightOnlyConfig(64), fastq.Int4DynamicConfig(128, False)], ids=["wo", "w4a8"])
def test_module_on_gpu_matches_cpu(cfg):
    _native_cuda("intx_linear_dynamic")
    lin = torch.nn.Linear(512, 200)
    q = IntxLinear.from_float(lin, cfg)
    x = torch.randn(6, 512)
    y_cpu = q(x)
    y_gpu = q.to(DEV)(x.to(DEV))
    if cfg.mode == "dynamic":
        assert torch.equal(y_gpu.cpu(), y_cpu)
    else:
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)


def test_empty_and_bad_input():
    _native_cuda("intx_weight_only_linear")
    gen = torch.Generator().manual_seed(0)
    packed = random_weight(16, 32, 2, 4, False, gen)[3].to(DEV)
    y = ops.intx_weight_only_linear(torch.randn(0, 32, device=DEV), packed, None, 16, 2, 4, False)
    assert y.shape == (0, 16)
    with pytest.raises(ValueError, match="on cpu"):
        ops.intx_weight_only_linear(torch.randn(2, 32), packed, None, 16, 2, 4, False)
