"""SparseLinear and sparsify_: equal to the masked dense Linear for every format (float32 and
bfloat16 input), format choice from fastq_prune_pattern or the mask, state_dict and init_kwargs
round trips (the save/load contract), byte accounting, and that sparsify_ swaps only masked
nn.Linear layers accepted by filter_fn."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fastq
from fastq.nn.sparse import SparseLinear


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pruned_linear(k: int, n: int, kind: str, gen: torch.Generator, bias: bool = True) -> nn.Linear:
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    if kind == "2:4":
        mask = (torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2) < 2).reshape(n, k)
    elif kind.startswith("block"):
        br, bc = map(int, kind[5:].split("x"))
        keep = torch.rand(-(-n // br), -(-k // bc), generator=gen) > 0.7
        keep[0, 0] = True
        mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k].contiguous()
    else:
        mask = torch.rand(n, k, generator=gen) > 0.8
        mask[0, 0] = True
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    lin.fastq_prune_pattern = kind
    return lin


CASES = [("unstructured", "csr", False), ("2:4", "24", False), ("block4x4", "bsr", False),
         ("block1x4", "bsr", False), ("block8x1", "bsr", False), ("4:8", "csr", False),
         ("unstructured", "int8", True), ("2:4", "int8", True)]


@pytest.mark.parametrize("pattern,fmt,int8", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("m", (1, 9))
def test_matches_masked_dense(pattern, fmt, int8, m):
    gen = _gen(hash((pattern, int8, m)) % 1000)
    lin = _pruned_linear(96, 40, pattern, gen)
    sp = SparseLinear.from_float(lin, int8=int8)
    assert sp.format == fmt
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, m, 96, generator=gen).to(dtype)
        y = sp(x)
        assert y.dtype == dtype and y.shape == (2, m, 40)
        ref = nn.functional.linear(x.float(), sp.dense_weight(), lin.bias.detach())
        tol = 1e-5 * (x.float().abs() @ sp.dense_weight().abs().t() + lin.bias.abs()) + 1e-6
        if dtype == torch.bfloat16:
            tol = tol + ref.abs() * 2 ** -7
        assert bool(((y.float() - ref).abs() <= tol).all())
        if not int8:  # the stored weight is the masked weight exactly
            assert torch.equal(sp.dense_weight(), lin.weight.detach() * lin.weight_mask)
        else:  # int8: half a quantization step per kept weight
            err = (sp.dense_weight() - lin.weight.detach()).abs()
            assert bool((err <= sp.scale[:, None] / 2 + 1e-7).all())


def test_format_detected_without_pattern():
    gen = _gen(1)
    for pattern, fmt in (("2:4", "24"), ("block4x4", "bsr"), ("block8x1", "bsr"), ("unstructured", "csr")):
        lin = _pruned_linear(64, 32, pattern, gen)
        del lin.fastq_prune_pattern
        assert SparseLinear.from_float(lin).format == fmt


@pytest.mark.parametrize("pattern,int8,fmt", [("unstructured", False, None), ("2:4", False, None),
                                              ("block4x4", False, None), ("unstructured", True, None),
                                              ("unstructured", False, "ell"), ("unstructured", True, "ell")], ids=str)
def test_state_dict_and_init_kwargs_round_trip(pattern, int8, fmt):
    gen = _gen(7)
    sp = SparseLinear.from_float(_pruned_linear(64, 24, pattern, gen), int8=int8, format=fmt)
    kwargs = json.loads(json.dumps(sp.init_kwargs()))  # JSON-serialisable
    empty = SparseLinear(**kwargs)
    empty.load_state_dict(sp.state_dict())
    x = torch.randn(5, 64, generator=gen)
    assert torch.equal(empty(x), sp(x))
    assert set(sp.state_dict()) >= {"bias"} and "weight" not in sp.state_dict()
    assert empty.weight_bytes() == sp.weight_bytes() < sp.float_weight_bytes()
    assert "sparsity=" in repr(sp) and "format=" in repr(sp)


def test_sparse_bytes_shrink():
    gen = _gen(3)
    lin = nn.Linear(768, 256)
    mask = torch.rand(256, 768, generator=gen) > 0.9
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    fp = SparseLinear.from_float(lin)
    q = SparseLinear.from_float(lin, int8=True)
    assert fp.weight_bytes() < 0.2 * fp.float_weight_bytes()  # ~6.3 bytes per kept weight + padding
    assert q.weight_bytes() < 0.6 * fp.weight_bytes()


def test_sparsify_swaps_only_masked_linears():
    gen = _gen(5)
    model = nn.Sequential(_pruned_linear(32, 48, "unstructured", gen), nn.ReLU(),
                          nn.Sequential(_pruned_linear(48, 64, "2:4", gen), nn.Linear(64, 16)),
                          _pruned_linear(16, 8, "unstructured", gen))
    x = torch.randn(3, 32, generator=gen)
    expect = model(x)
    out = fastq.sparsify_(model, filter_fn=lambda mod, fqn: fqn != "3")
    assert out is model
    assert isinstance(model[0], SparseLinear) and isinstance(model[2][0], SparseLinear)
    assert model[2][0].format == "24"
    assert type(model[2][1]) is nn.Linear  # no mask: untouched
    assert type(model[3]) is nn.Linear  # filtered out
    torch.testing.assert_close(model(x), expect, rtol=1e-5, atol=1e-5)
    fastq.sparsify_(model, int8=True)
    assert isinstance(model[3], SparseLinear) and model[3].format == "int8"


def test_errors_name_the_layer():
    model = nn.Sequential(nn.Linear(8, 8))
    model[0].register_buffer("weight_mask", torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="'0'.*keeps no weight"):
        fastq.sparsify_(model)
    with pytest.raises(ValueError, match="weight_mask"):
        SparseLinear.from_float(nn.Linear(4, 4))
    with pytest.raises(TypeError):
        fastq.sparsify_(nn.Linear(4, 4))


def test_non_float_input_is_rejected():
    sp = SparseLinear.from_float(_pruned_linear(8, 4, "unstructured", _gen(0)))
    with pytest.raises(TypeError, match="floating point tensor, got torch.int64"):
        sp(torch.ones(2, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating point tensor, got list"):
        sp([1.0] * 8)


def test_sparsify_rejects_a_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        fastq.sparsify_("not a model")


# ---- sliced ELL ("ell" / "ell_int8") ------------------------------------------------------------

@pytest.mark.parametrize("int8", (False, True))
@pytest.mark.parametrize("m", (1, 5, 9))
def test_ell_matches_masked_dense_and_the_op(int8, m):
    from fastq.ops import _library as L
    from fastq.ops import reference as R

    gen = _gen(11 + m + int8)
    lin = _pruned_linear(100, 37, "unstructured", gen)  # tails: 37 rows = 3 groups, 100 inputs = 4 tiles
    sp = SparseLinear.from_float(lin, int8=int8, format="ell")
    assert sp.format == ("ell_int8" if int8 else "ell")
    packed = L.sparse_ell_pack(lin.weight.detach(), lin.weight_mask, int8)
    values = sp.q if int8 else sp.values
    assert torch.equal(values, packed[0]) and torch.equal(sp.steps, packed[2])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, m, 100, generator=gen).to(dtype)
        before = fastq.native_calls("sparse_ell_linear", "cpu")
        y = sp(x)
        assert y.dtype == dtype and y.shape == (2, m, 37)
        if fastq.native_available():  # without it, sp(x) is the reference itself: nothing to compare
            assert fastq.native_calls("sparse_ell_linear", "cpu") > before
            xr = x if dtype != torch.float16 else x.float()  # float16 runs in float32
            ref = R.sparse_ell_linear(xr, *packed, lin.bias.detach(), 37).to(dtype)
            assert torch.equal(y, ref)  # bit-exact with the reference op
    dense = sp.dense_weight()
    if not int8:
        assert torch.equal(dense, lin.weight.detach() * lin.weight_mask)
    else:
        assert bool(((dense - lin.weight.detach()).abs() <= sp.scale[:, None] / 2 + 1e-7).all())
    x = torch.randn(m, 100, generator=gen)
    tol = 1e-5 * (x.abs() @ dense.abs().t() + lin.bias.abs()) + 1e-6
    assert bool(((sp(x) - nn.functional.linear(x, dense, lin.bias.detach())).abs() <= tol).all())
    assert "format=ell" in repr(sp)


def test_format_argument():
    gen = _gen(13)
    for pattern in ("unstructured", "2:4", "block4x4"):
        lin = _pruned_linear(64, 32, pattern, gen)
        assert SparseLinear.from_float(lin, format="ell").format == "ell"
        assert SparseLinear.from_float(lin, format="csr").format == "csr"
        assert SparseLinear.from_float(lin, int8=True, format="ell").format == "ell_int8"
        assert SparseLinear.from_float(lin, int8=True, format="csr").format == "int8"
    lin = _pruned_linear(64, 32, "unstructured", gen)
    assert SparseLinear.from_float(lin).format == fastq.nn.sparse.UNSTRUCTURED_DEFAULT
    with pytest.raises(ValueError, match="format must be one of"):
        SparseLinear.from_float(lin, format="bsr")


def test_sparsify_with_format():
    gen = _gen(17)
    model = nn.Sequential(_pruned_linear(32, 48, "unstructured", gen), nn.ReLU(), _pruned_linear(48, 16, "2:4", gen))
    x = torch.randn(3, 32, generator=gen)
    expect = model(x)
    fastq.sparsify_(model, format="ell")
    assert model[0].format == "ell" and model[2].format == "ell"
    torch.testing.assert_close(model(x), expect, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="format must be one of"):
        fastq.sparsify_(nn.Sequential(_pruned_linear(8, 8, "unstructured", gen)), format="ELL")


def test_ell_compiles_and_exports():
    """The ELL op's fake lets the module trace: torch.compile(fullgraph) and torch.export give the eager result."""
    gen = _gen(19)
    sp = SparseLinear.from_float(_pruned_linear(100, 37, "unstructured", gen), int8=True, format="ell")
    x = torch.randn(3, 100, generator=gen)
    want = sp(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(sp, fullgraph=True)(x), want)
    assert torch.equal(torch.export.export(nn.Sequential(sp), (x,)).module()(x), want)
