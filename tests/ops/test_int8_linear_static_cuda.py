"""int8_linear_static's CUDA kernel (csrc/cuda/gemm.cu, static section) against the reference on the
same device: bit for bit (element-wise quantization with the reference's float-op sequence, exact
integer products, the W8A8 epilogue without FMA), through both GEMM paths (M <= 16 weight streaming,
tiled), every dtype, symmetric / asymmetric, with and without SmoothQuant divisors. Skipped without
a CUDA device."""

from __future__ import annotations

import pytest
import torch

import fastq
from fastq import _native
from fastq.ops import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

OP = "int8_linear_static"
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(1, 1, 1), (7, 9, 15), (16, 17, 32), (17, 31, 33), (33, 65, 64), (65, 129, 127), (129, 33, 129),
          (1, 4096, 4096), (64, 576, 1536), (300, 1536, 576)]


def _native_cuda() -> int:
    if not _native.build_info().get("cuda"):
        pytest.skip(f"fastq was built without CUDA ({_native.IMPORT_ERROR or 'CPU-only build'})")
    assert fastq.kernel_for(OP, "cuda") == "native:cuda", "no native CUDA kernel registered"
    return fastq.native_calls(OP, "cuda")


def _args(m, n, k, seed, x_dtype=torch.float32, sym=True, smooth=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    packed = torch.ops.fastq.int8_pack_weight(w).cuda()
    w_scale = (torch.rand(n, generator=g) * 0.02 + 1e-3).cuda()
    bias = torch.randn(n, generator=g).cuda()
    x = (torch.randn(m, k, generator=g) * 3 + 0.5).to(x_dtype).cuda()
    scale = torch.tensor([0.03]).cuda()
    zp = None if sym else torch.tensor([37], dtype=torch.int32).cuda()
    sm = (torch.rand(k, generator=g) * 4 + 0.25).cuda() if smooth else None
    return x, packed, w_scale, bias, n, scale, zp, sm


@pytest.mark.parametrize("m,n,k", SHAPES, ids=[f"m{m}-n{n}-k{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
def test_bit_exact(m, n, k, sym, smooth):
    before = _native_cuda()
    args = _args(m, n, k, m + 7 * n + k, sym=sym, smooth=smooth)
    y = torch.ops.fastq.int8_linear_static(*args, torch.float32)
    assert fastq.native_calls(OP, "cuda") > before
    torch.testing.assert_close(y, reference.int8_linear_static(*args, torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("x_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("m", [3, 40])
def test_dtypes(x_dtype, out_dtype, m):
    _native_cuda()
    args = _args(m, 72, 136, 5, x_dtype, sym=False, smooth=True)
    y = torch.ops.fastq.int8_linear_static(*args, out_dtype)
    assert y.dtype == out_dtype
    torch.testing.assert_close(y, reference.int8_linear_static(*args, out_dtype), rtol=0, atol=0)


def test_nonfinite_inputs_saturate():
    _native_cuda()
    x, *rest = _args(20, 48, 64, 9, sym=False)
    x[0, 0], x[1, 5], x[19, 63] = float("nan"), float("inf"), -float("inf")
    y = torch.ops.fastq.int8_linear_static(x, *rest, torch.float32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, reference.int8_linear_static(x, *rest, torch.float32), rtol=0, atol=0)


def test_module_and_opcheck():
    _native_cuda()
    args = _args(9, 40, 48, 2, sym=False, smooth=True)
    torch.library.opcheck(torch.ops.fastq.int8_linear_static, (*args, torch.float32))
    lin = torch.nn.Linear(48, 40).cuda()
    q = fastq.nn.StaticQuantLinear.from_float(lin, torch.tensor([0.05]), torch.tensor([12]), torch.rand(48) + 0.5)
    x = torch.randn(5, 48, device="cuda")
    torch.testing.assert_close(q(x), reference.int8_linear_static(x, q.weight_packed, q.weight_scale, q.bias, 40,
                                                                   q.act_scale, q.act_zero_point, q.act_smooth,
                                                                   torch.float32), rtol=0, atol=0)
