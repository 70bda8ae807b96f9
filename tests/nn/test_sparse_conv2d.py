"""SparseConv2d and sparsify_ on convolutions: equal to F.conv2d with the masked weight for every
format and geometry (1x1 and k x k paths, padding modes, dilation, unbatched), the native sparse
kernel runs, dense_weight is the masked weight exactly, save/load round trip, grouped convolutions
stay masked, bad input.

Tolerance: the sparse kernels sum the same float32 products as the dense convolution in another
order, so each output may differ by a few ulps of sum |x * w| over its receptive field (bounded
here by 1e-5 of it); int8 weights are compared against their own dequantized weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastq
from fastq.nn import SparseConv2d, SparseLinear, UnsupportedLayerError

CASES = {  # id: (C, O, Conv2d kwargs, H, W)
    "1x1": (16, 32, dict(kernel_size=1), 9, 7),
    "1x1_stride2_pad1": (16, 24, dict(kernel_size=1, stride=2, padding=1), 9, 8),
    "3x3_pad1": (8, 17, dict(kernel_size=3, padding=1), 9, 11),
    "3x3_stride2_dilation2": (8, 16, dict(kernel_size=3, stride=2, padding=2, dilation=2), 12, 9),
    "5x5_nobias": (4, 8, dict(kernel_size=5, padding=2, bias=False), 12, 12),
    "same_4x4": (8, 16, dict(kernel_size=4, padding="same"), 9, 9),
    "reflect_3x3": (8, 16, dict(kernel_size=3, padding=1, padding_mode="reflect"), 9, 9),
}
PRUNINGS = {  # id: (PruneConfig, expected format, int8)
    "unstructured": (fastq.PruneConfig(sparsity=0.7), "csr", False),
    "2:4": (fastq.PruneConfig(pattern="2:4"), "24", False),
    "block4x4": (fastq.PruneConfig(sparsity=0.5, pattern=(4, 4)), "bsr", False),
    "int8": (fastq.PruneConfig(sparsity=0.6), "int8", True),
}


def _pruned_conv(case: str, pruning: str, seed: int = 0) -> nn.Sequential:
    c, o, kw, _, _ = CASES[case]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(c, o, **kw))
    config = PRUNINGS[pruning][0]
    k = model[0].weight[0].numel()
    if (pruning == "2:4" and k % 4) or (pruning == "block4x4" and (k % 4 or o % 4)):
        pytest.skip(f"{pruning} needs K={k} / O={o} divisible by 4")
    fastq.prune_(model, config)
    return model


def _close(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, out_rounding: float = 0.0) -> None:
    """|y - ref| <= 1e-5 sum|x w| (summation order) + out_rounding |ref| (y's own dtype rounding)."""
    err = (y.float() - ref.float()).abs()
    tol = 1e-5 * bound + out_rounding * ref.abs() + 1e-30
    assert bool((err <= tol).all()), f"max err {err.max().item()}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own note about its reference conv
@pytest.mark.parametrize("pruning", list(PRUNINGS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_masked_conv2d(case, pruning):
    model = _pruned_conv(case, pruning)
    conv = model[0]
    w_masked = (conv.weight * conv.weight_mask).detach()
    fastq.sparsify_(model, int8=PRUNINGS[pruning][2])
    sp = model[0]
    assert type(sp) is SparseConv2d and sp.format == PRUNINGS[pruning][1]
    if not PRUNINGS[pruning][2]:
        assert torch.equal(sp.dense_weight(), w_masked)
    w_eff = sp.dense_weight()  # int8: the dequantized kept weights
    c, _, _, h, w = CASES[case]
    x = torch.randn(2, c, h, w)
    op = f"sparse_{sp.format}_linear"
    before = fastq.native_calls(op, "cpu")
    y = sp(x)
    if fastq.native_available():
        assert fastq.native_calls(op, "cpu") > before
    ref_conv = nn.Conv2d(c, sp.out_channels, **CASES[case][2])
    with torch.no_grad():
        ref_conv.weight.copy_(w_eff)
        if ref_conv.bias is not None:
            ref_conv.bias.copy_(conv.bias)
        ref, ref_b = ref_conv(x), ref_conv(x.bfloat16().float())
        ref_conv.weight.abs_()
        if ref_conv.bias is not None:
            ref_conv.bias.zero_()
        bound = ref_conv(x.abs())
    assert y.shape == ref.shape and y.is_contiguous()
    _close(y, ref, bound)
    _close(sp(x[0]), ref[0], bound[0])  # unbatched
    yb = sp(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    _close(yb, ref_b, bound, out_rounding=2 ** -8)  # bf16 output: at most half an ulp (2^-9 relative)


@pytest.mark.parametrize("pruning", ["unstructured", "2:4", "int8"])
def test_save_load_round_trip(tmp_path, pruning):
    model = _pruned_conv("3x3_pad1", pruning)
    fastq.sparsify_(model, int8=PRUNINGS[pruning][2])
    x = torch.randn(1, 8, 9, 11)
    y = model(x)
    fastq.save(model, tmp_path / "m")
    twin = fastq.load(tmp_path / "m", nn.Sequential(nn.Conv2d(8, 17, kernel_size=3, padding=1)))
    assert type(twin[0]) is SparseConv2d
    assert twin[0].init_kwargs() == model[0].init_kwargs()
    assert torch.equal(twin(x), y)


def test_bytes_and_repr():
    model = _pruned_conv("3x3_pad1", "unstructured")
    fastq.sparsify_(model)
    sp = model[0]
    assert isinstance(sp, SparseLinear)  # one sparse GEMM module: summary and save treat it alike
    assert sp.float_weight_bytes() == 4 * (17 * 8 * 9 + 17)
    assert sp.weight_bytes() < sp.float_weight_bytes()
    assert abs(sp.sparsity - 0.7) < 0.01
    r = repr(sp)
    assert "kernel_size=(3, 3)" in r and "format=csr" in r and "sparsity=" in r
    row = fastq.summary(model).layers[0]
    assert (row.shape, row.bits, row.detail, row.bytes) == ((17, 8, 3, 3), 32, "sparse csr", sp.weight_bytes())
    assert abs(row.sparsity - sp.sparsity) < 1e-12


def test_grouped_convolutions_stay_masked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 8, 1))
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.5))
    fastq.sparsify_(model)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is SparseConv2d
    with pytest.raises(UnsupportedLayerError, match="groups=4"):
        SparseConv2d.from_float(model[0])


def test_bad_input_raises_clear_errors():
    model = _pruned_conv("1x1", "unstructured")
    fastq.sparsify_(model)
    sp = model[0]
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\]"):
        sp(torch.randn(1, 15, 4, 4))
    with pytest.raises(TypeError, match="floating point"):
        sp(torch.ones(1, 16, 4, 4, dtype=torch.int64))
    small = nn.Sequential(nn.Conv2d(4, 4, 5))
    fastq.prune_(small, fastq.PruneConfig(sparsity=0.5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        SparseConv2d.from_float(small[0])(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="weight_mask"):
        SparseConv2d.from_float(nn.Conv2d(4, 4, 3))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        SparseConv2d.from_float(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="bare Conv2d"):
        fastq.sparsify_(nn.Conv2d(4, 4, 1))


@pytest.mark.parametrize("int8", (False, True))
def test_ell_format(tmp_path, int8):
    """format="ell" reaches SparseConv2d through sparsify_: the sliced-ELL kernel runs and save/load round-trips."""
    model = _pruned_conv("3x3_pad1", "unstructured")
    bias = model[0].bias.detach().clone()
    fastq.sparsify_(model, int8=int8, format="ell")
    sp = model[0]
    assert type(sp) is SparseConv2d and sp.format == ("ell_int8" if int8 else "ell")
    x = torch.randn(2, 8, 9, 11)
    before = fastq.native_calls("sparse_ell_linear", "cpu")
    y = sp(x)
    if fastq.native_available():
        assert fastq.native_calls("sparse_ell_linear", "cpu") > before
    w = sp.dense_weight()
    _close(y, F.conv2d(x, w, bias, padding=1), F.conv2d(x.abs(), w.abs(), None, padding=1))
    fastq.save(model, tmp_path / "m")
    twin = fastq.load(tmp_path / "m", nn.Sequential(nn.Conv2d(8, 17, kernel_size=3, padding=1)))
    assert torch.equal(twin(x), y)
