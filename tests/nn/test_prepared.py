"""Prepared layers (fastq/nn/_prepared.py, fastq/ops/plans.py): every module kind and format runs its
native plan in eager mode, bit-identical to the op path (torch.library op, the path compile/export
take) at tail sizes of M, on every ISA and thread count; plans are built on creation, load and move
and rebuilt after buffer replacement; a bad buffer raises ValueError naming the layer and the
buffer (at load, before any forward); buffers rewritten in place after validation (.data, numpy)
raise instead of reading out of bounds; modules built or loaded under inference_mode work; inputs
whose last dimension is not in_features are rejected (issue 15's findings, as regression tests).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import threading

import pytest
import torch
from torch import nn

import fastq
from fastq import _native
from fastq.nn import (IntxLinear, QuantConv2d, QuantLinear, SharedWeightConv2d, SharedWeightLinear, SparseConv2d,
                      SparseLinear, StaticQuantConv2d, StaticQuantLinear)
from fastq.nn._prepared import NO_PLAN
from fastq.ops import plans

pytestmark = pytest.mark.skipif(not _native.available(), reason="fastq._C is not built")

M_SIZES = (1, 7, 8, 9, 16, 17, 33)
K, N = 72, 40  # K not a multiple of 16/32 (tails); divisible by 4 (2:4), 8 (groups) and 4 (blocks)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(k: int, n: int, seed: int, bias: bool = True) -> nn.Linear:
    g = _gen(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / math.sqrt(k))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def _pruned(lin: nn.Module, pattern: str, seed: int) -> nn.Module:
    g = _gen(seed)
    w = lin.weight.detach().reshape(lin.weight.shape[0], -1)
    n, k = w.shape
    if pattern == "2:4":
        mask = (torch.rand(n, k // 4, 4, generator=g).argsort(dim=2) < 2).reshape(n, k)
    elif pattern == "block4x4":
        keep = torch.rand(-(-n // 4), -(-k // 4), generator=g) > 0.6
        keep[0, 0] = True
        mask = keep.repeat_interleave(4, 0).repeat_interleave(4, 1)[:n, :k].contiguous()
    else:
        mask = torch.rand(n, k, generator=g) > 0.7
        mask[0, 0] = True
    mask = mask.reshape(lin.weight.shape)
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin.register_buffer("weight_mask", mask)
    lin.fastq_prune_pattern = pattern
    return lin


# (id, builder(seed) -> module, input dtypes)
FLOATS = (torch.float32, torch.bfloat16, torch.float16)
QUANT = {
    "w8a8": fastq.Int8DynamicConfig(),
    "w8a8_asym": fastq.Int8DynamicConfig(act_symmetric=False),
    "wo": fastq.Int8WeightOnlyConfig(),
    "wo_g8": fastq.Int8WeightOnlyConfig(group_size=8),
}
SPARSE = {  # name -> (pattern, from_float kwargs, expected format)
    "csr": ("unstructured", {}, "csr"),
    "int8": ("unstructured", {"int8": True}, "int8"),
    "24": ("2:4", {}, "24"),
    "bsr": ("block4x4", {}, "bsr"),
    "ell": ("unstructured", {"format": "ell"}, "ell"),
    "ell_int8": ("unstructured", {"format": "ell", "int8": True}, "ell_int8"),
}


INTX = {  # K = 72: int4 groups of 24 (a multiple of the 8-input chunk), 8-bit per channel
    "wo4": fastq.Int4WeightOnlyConfig(group_size=24),
    "wo4_asym": fastq.IntxWeightOnlyConfig(bits=4, group_size=24, symmetric=False),
    "wo8": fastq.IntxWeightOnlyConfig(bits=8, group_size=None),
    "w4a8": fastq.Int4DynamicConfig(group_size=24),
}
CODEBOOK = {  # a layer-wide 2-bit table (lookup-table layout) and 4-bit tables per row (row layout)
    "layer2": fastq.WeightSharingConfig(clusters=4, scope="layer", method="lloyd"),
    "row4": fastq.WeightSharingConfig(clusters=16, scope="row", method="lloyd"),
}


def _static(kind: str, module: nn.Module) -> nn.Module:
    scale = torch.tensor([0.03])
    if kind.startswith("static_conv-"):
        return StaticQuantConv2d.from_float(module, scale)
    if kind == "static-sym":
        return StaticQuantLinear.from_float(module, scale)
    smooth = torch.rand(K, generator=_gen(9)) + 0.5  # "static-asym_smooth"
    return StaticQuantLinear.from_float(module, scale, torch.tensor([100], dtype=torch.int32), smooth)


def build(kind: str, seed: int = 0) -> nn.Module:
    if kind.startswith("intx-"):
        return IntxLinear.from_float(_linear(K, N, seed), INTX[kind[5:]])
    if kind.startswith("static"):
        return _static(kind, nn.Conv2d(8, N, 3, padding=1) if "conv" in kind else _linear(K, N, seed))
    if kind.startswith("codebook-"):
        return SharedWeightLinear.from_float(_linear(K, N, seed), CODEBOOK[kind[9:]])
    if kind.startswith("codebook_conv-"):
        return SharedWeightConv2d.from_float(nn.Conv2d(8, N, 3, padding=1), CODEBOOK[kind[14:]])
    if kind.startswith("linear-"):
        return QuantLinear.from_float(_linear(K, N, seed), QUANT[kind[7:]])
    if kind.startswith("conv-"):
        conv = nn.Conv2d(8, N, 3, padding=1)
        return QuantConv2d.from_float(conv, QUANT[kind[5:]])
    if kind.startswith("sparse-"):
        pattern, kwargs, fmt = SPARSE[kind[7:]]
        sp = SparseLinear.from_float(_pruned(_linear(K, N, seed), pattern, seed), **kwargs)
        assert sp.format == fmt
        return sp
    pattern, kwargs, fmt = SPARSE[kind[12:]]  # "sparse_conv-<fmt>"
    conv = nn.Conv2d(8, N, 3, padding=1)
    return SparseConv2d.from_float(_pruned(conv, pattern, seed), **kwargs)


KINDS = ([f"linear-{q}" for q in QUANT] + [f"conv-{q}" for q in ("w8a8", "wo")]
         + [f"sparse-{s}" for s in SPARSE] + [f"sparse_conv-{s}" for s in ("csr", "ell_int8", "24")]
         + [f"intx-{q}" for q in INTX] + ["static-sym", "static-asym_smooth", "static_conv-sym"]
         + [f"codebook-{c}" for c in CODEBOOK] + ["codebook_conv-row4"])
CUDA_PLAN_KINDS = ("linear-w8a8", "linear-w8a8_asym", "linear-wo", "linear-wo_g8", "sparse-csr", "sparse-24")


def _input(kind: str, m: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = _gen(seed)
    if "conv" in kind:
        return torch.randn(m, 8, 3, 5, generator=g).to(dtype)  # m images of 3 x 5 pixels
    return torch.randn(m, K, generator=g).to(dtype)


def _op_path(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output through its torch.library op (what compile/export run)."""
    saved = module.__dict__["_fastq_plan"]
    module.__dict__["_fastq_plan"] = NO_PLAN
    try:
        return module(x)
    finally:
        module.__dict__["_fastq_plan"] = saved


def _dtypes(kind: str):
    return FLOATS


@pytest.mark.parametrize("kind", KINDS)
def test_plan_is_bit_identical_to_the_op_path(kind, isa):
    mod = build(kind)
    assert mod._fastq_plan not in (None, NO_PLAN), "from_float builds the plan"
    op = mod._fastq_plan.op
    for m in M_SIZES:
        for dtype in _dtypes(kind):
            x = _input(kind, m, dtype, seed=m)
            before = fastq.native_calls(op, "cpu")
            y = mod(x)
            assert fastq.native_calls(op, "cpu") > before, "the plan's native kernel ran"
            ref = _op_path(mod, x)
            assert y.dtype == dtype and y.shape == ref.shape
            assert torch.equal(y, ref), f"{kind} m={m} {dtype}: plan and op path differ"


@pytest.mark.parametrize("kind", ["linear-w8a8", "linear-wo_g8", "sparse-csr", "sparse-bsr", "sparse-ell_int8"])
def test_plan_matches_the_op_under_compile(kind):
    mod = build(kind)
    x = _input(kind, 9, torch.float32, seed=3)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), mod(x))


@pytest.mark.parametrize("kind", ["linear-w8a8", "linear-wo", "sparse-csr", "sparse-24", "sparse-ell"])
def test_results_do_not_depend_on_the_thread_count(kind):
    mod = build(kind)
    x = _input(kind, 33, torch.float32, seed=5)
    saved = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(mod(x))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_concurrent_python_threads_get_single_thread_results():
    mods = [build(k) for k in ("linear-w8a8", "linear-wo", "sparse-csr", "sparse-ell")]
    xs = [torch.randn(m, K, generator=_gen(m)) for m in (1, 9, 33)]
    expected = [[mod(x) for x in xs] for mod in mods]
    errors = []

    def worker():
        try:
            for _ in range(20):
                for mod, exp in zip(mods, expected):
                    for x, e in zip(xs, exp):
                        if not torch.equal(mod(x), e):
                            errors.append("mismatch")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---- when plans are built ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear-w8a8", "sparse-csr", "sparse-ell_int8", "sparse_conv-24", "intx-w4a8",
                                  "static-asym_smooth", "static_conv-sym", "codebook-layer2", "codebook_conv-row4"])
def test_plan_built_on_load_and_copies(kind):
    mod = build(kind)
    x = _input(kind, 4, torch.float32, seed=1)
    y = mod(x)
    twin = type(mod)(**mod.init_kwargs())
    assert twin._fastq_plan is None
    twin.load_state_dict(mod.state_dict())
    assert twin._fastq_plan not in (None, NO_PLAN), "load_state_dict builds the plan"
    assert torch.equal(twin(x), y)
    dup = copy.deepcopy(mod)
    assert torch.equal(dup(x), y)
    assert dup._fastq_plan is not mod._fastq_plan
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(mod))(x), y)


def test_plan_rebuilt_after_move_and_cast():
    mod = build("sparse-csr")
    x = _input("sparse-csr", 3, torch.float32, seed=2)
    y = mod(x)
    old = mod._fastq_plan
    mod.to("cpu").half().float()
    assert mod._fastq_plan is not old and mod._fastq_plan not in (None, NO_PLAN)
    assert mod.values.dtype == torch.float32, "dtype casts keep the float32 values"
    assert torch.equal(mod(x), y)
    meta = copy.deepcopy(mod).to("meta")  # shapes only: no plan, the op's fake kernel answers
    assert meta._fastq_plan is NO_PLAN and meta(x.to("meta")).shape == y.shape


@pytest.mark.parametrize("kind,kept", [("intx-wo4", ("bias",)), ("static-asym_smooth", ("act_scale", "act_smooth")),
                                       ("codebook-row4", ("codebook", "bias"))])
def test_half_keeps_float32_buffers_and_the_plan(kind, kept):
    mod = build(kind)
    x = _input(kind, 5, torch.float32, seed=2)
    y = mod(x)
    mod.half()
    assert all(getattr(mod, name).dtype == torch.float32 for name in kept)
    assert mod._fastq_plan not in (None, NO_PLAN), "the cast rebuilt the plan"
    assert torch.equal(mod(x.half()), _op_path(mod, x.half()))
    assert torch.equal(mod.float()(x), y)


def test_centroid_training_runs_without_the_plan():
    """While a codebook trains, the forward is F.linear on the gathered table (differentiable); the
    plan comes back, over the trained table, when training stops."""
    mod = build("codebook-row4")
    x = _input("codebook-row4", 6, torch.float32, seed=3)
    fastq.train_centroids_(mod)
    assert mod._fastq_plan is NO_PLAN
    with torch.no_grad():
        mod.codebook.mul_(2.0)
    y = mod(x)
    y.sum().backward()
    assert mod.codebook.grad is not None
    fastq.train_centroids_(mod, False)
    out = mod(x)
    assert mod._fastq_plan not in (None, NO_PLAN)
    torch.testing.assert_close(out, y.detach(), rtol=1e-5, atol=1e-5)  # float GEMM vs kernel order
    assert torch.equal(out, _op_path(mod, x))


def test_replacing_a_buffer_rebuilds_and_validates():
    lin = _pruned(_linear(K, N, 1), "unstructured", 1)
    sp = SparseLinear.from_float(lin)
    x = _input("sparse-csr", 5, torch.float32, seed=4)
    y = sp(x)
    sp.bias = torch.zeros(N)  # a public replacement: the next forward uses it
    assert sp._fastq_plan is None
    assert torch.equal(sp(x), torch.ops.fastq.sparse_csr_linear(x, sp.values, sp.cols, sp.row_ptr, None, N))
    assert not torch.equal(sp(x), y)
    sp.row_ptr = sp.row_ptr + 1
    with pytest.raises(ValueError, match=r"SparseLinear.*row_ptr"):
        sp(x)


def test_modules_built_and_loaded_under_inference_mode():
    for kind in ("linear-w8a8", "sparse-csr", "sparse-int8", "sparse-ell", "sparse-bsr", "sparse-24", "intx-wo4",
                 "static-sym", "codebook-row4"):
        with torch.inference_mode():
            mod = build(kind)
            x = _input(kind, 5, torch.float32, seed=6)
            y = mod(x)
            twin = type(mod)(**mod.init_kwargs())
            twin.load_state_dict(mod.state_dict())
            assert torch.equal(twin(x), y)
        assert torch.equal(mod(x), y)  # and outside it
        assert torch.equal(twin(x.clone()), y)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_not_ending_in_in_features_are_rejected(kind):
    mod = build(kind)
    if "conv" in kind:
        with pytest.raises(ValueError, match="8"):
            mod(torch.randn(2, 7, 3, 5))
        return
    for bad in (torch.randn(3, K - 1), torch.randn(3, K + 4), torch.randn(K)[:0]):
        with pytest.raises(ValueError, match="in_features"):
            mod(bad)


# ---- bad buffers --------------------------------------------------------------------------------

def _state_with(mod: nn.Module, name: str, edit) -> dict:
    state = {k: v.clone() for k, v in mod.state_dict().items()}
    edit(state[name])
    return state


BAD_BUFFERS = [  # (kind, buffer, edit, message)
    ("sparse-csr", "row_ptr", lambda t: t[1:-1].add_(1), "row_ptr"),
    ("sparse-csr", "row_ptr", lambda t: t[2].fill_(int(t[1]) - 16), "row_ptr"),
    ("sparse-csr", "cols", lambda t: t[3].fill_(K), "cols"),
    ("sparse-csr", "cols", lambda t: t.fill_(-1), "cols"),
    ("sparse-csr", "values", lambda t: t[0].fill_(float("nan")), "values"),
    ("sparse-int8", "row_ptr", lambda t: t[1:-1].add_(1), "row_ptr"),
    ("sparse-int8", "scale", lambda t: t[0].fill_(float("inf")), "scale"),
    ("sparse-bsr", "row_ptr", lambda t: t[1].fill_(-1), "row_ptr"),
    ("sparse-bsr", "block_col", lambda t: t[0].fill_(K), "block_col"),
    ("sparse-24", "values", lambda t: t[1, 1].fill_(float("-inf")), "values"),
    ("sparse-ell", "offsets", lambda t: t[0, 3].fill_(32), "offset"),
    ("sparse-ell", "group_ptr", lambda t: t[1:-1].add_(1), "group_ptr"),
    ("sparse-ell_int8", "steps", lambda t: t[0, 0].add_(1), "group_ptr"),
    ("linear-w8a8", "weight_packed", lambda t: t[5].add_(1), "weight_packed"),
    ("linear-w8a8", "weight_scale", lambda t: t[2].fill_(float("nan")), "weight_scale"),
    ("linear-wo_g8", "weight_scale", lambda t: t[0, 1].fill_(float("inf")), "weight_scale"),
    ("static-sym", "act_scale", lambda t: t.fill_(float("nan")), "act_scale"),
    ("static-asym_smooth", "act_zero_point", lambda t: t.fill_(300), "act_zero_point"),
    ("static-asym_smooth", "act_smooth", lambda t: t[3].fill_(0.0), "act_smooth"),
    ("static_conv-sym", "weight_scale", lambda t: t[1].fill_(float("inf")), "weight_scale"),
]


@pytest.mark.parametrize("kind,name,edit,msg", BAD_BUFFERS, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_buffers_fail_at_load_naming_layer_and_buffer(kind, name, edit, msg):
    mod = build(kind)
    model = nn.Sequential()
    model.add_module("layer", mod)
    state = _state_with(model, f"layer.{name}", edit)
    fresh = nn.Sequential()
    fresh.add_module("layer", type(mod)(**mod.init_kwargs()))
    with pytest.raises(ValueError, match=rf"^layer: .*{msg}"):
        fresh.load_state_dict(state)


def test_tampered_row_ptr_in_a_saved_model_fails_to_load(tmp_path):
    """Issue 15: +1 on every interior CSR row pointer of model.safetensors once loaded and then
    crashed (SIGSEGV) at the first forward; now fastq.load refuses it."""
    from safetensors.torch import load_file, save_file

    model = nn.Sequential(_pruned(_linear(64, 48, 3), "unstructured", 3))
    fastq.sparsify_(model)
    fastq.save(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["0.row_ptr"][1:-1] += 1
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(fastq.LoadError, match="layer .0. .*row_ptr"):
        fastq.load(tmp_path, base_model=lambda: nn.Sequential(nn.Linear(64, 48)), verify=False)  # past the digest


def test_recipe_with_wrong_in_features_fails_to_load(tmp_path):
    import json

    for kind, wrong in (("sparse-csr", K - 8), ("linear-w8a8", K - 1), ("sparse-ell", K - 40)):
        mod = build(kind)
        model = nn.Sequential(mod)
        fastq.save(model, tmp_path)
        recipe = json.loads((tmp_path / "fastq_recipe.json").read_text())
        recipe["modules"][0]["init_kwargs"]["in_features"] = wrong
        (tmp_path / "fastq_recipe.json").write_text(json.dumps(recipe))
        with pytest.raises(fastq.LoadError):
            fastq.load(tmp_path, base_model=lambda: nn.Sequential(nn.Linear(K, N)))


@pytest.mark.parametrize("kind,name", [("sparse-csr", "cols"), ("sparse-csr", "row_ptr"), ("sparse-int8", "cols"),
                                       ("sparse-bsr", "block_col"), ("sparse-bsr", "row_ptr"),
                                       ("sparse-ell", "offsets"), ("sparse-ell", "group_ptr"),
                                       ("sparse-ell_int8", "steps")])
@pytest.mark.parametrize("how", ["data", "numpy"])
def test_buffers_rewritten_after_validation_raise_instead_of_crashing(kind, name, how, isa):
    """Issue 15: ``layer.cols.data.fill_(-1)`` after a forward bypasses the version counter; the
    kernels clamp every index and report, so the forward raises instead of reading out of bounds."""
    mod = build(kind)
    for m in (1, 3, 9, 33):
        mod(_input(kind, m, torch.float32, seed=m))
    buf = getattr(mod, name)
    (buf.data if how == "data" else torch.from_numpy(buf.numpy())).fill_(-1 if buf.dtype != torch.uint8 else 255)
    for m in (1, 3, 9, 33):
        with pytest.raises(ValueError, match="SparseLinear"):
            mod(_input(kind, m, torch.float32, seed=m))


def test_every_m_reads_in_bounds_for_valid_odd_layouts():
    """Validation accepts what the kernels can read: offsets past K inside the last ELL tile (they
    read the tile's zero padding, as the reference does) give the reference's result."""
    mod = build("sparse-ell")
    offsets = mod.offsets.clone()
    offsets[mod.group_ptr[1] - 1] = 31  # the last step of group 0 is in the last tile (K=72: 8 valid)
    twin = SparseLinear(**mod.init_kwargs())
    state = mod.state_dict()
    state["offsets"] = offsets
    twin.load_state_dict(state)
    for m in (1, 5):
        x = _input("sparse-ell", m, torch.float32, seed=m)
        assert torch.equal(twin(x), _op_path(twin, x))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", CUDA_PLAN_KINDS)
def test_cuda_plan_is_bit_identical_to_the_op_path(kind):
    if not torch.cuda.is_available() or not _native.build_info().get("cuda"):
        pytest.skip("needs a CUDA device and a CUDA build")
    mod = build(kind).cuda()
    plan = mod._fastq_plan
    assert isinstance(plan, plans.CudaPlan), f"{kind}: expected a CUDA plan, got {plan!r}"
    dtypes = (torch.float32, torch.bfloat16) if kind.startswith("sparse") else FLOATS
    for m in M_SIZES:
        for dtype in dtypes:
            x = _input(kind, m, dtype, seed=m).cuda()
            before = fastq.native_calls(plan.op, "cuda")
            y = mod(x)
            assert fastq.native_calls(plan.op, "cuda") > before
            ref = _op_path(mod, x)
            assert torch.equal(y, ref), f"{kind} m={m} {dtype}"
            cpu = build(kind)(x.cpu())  # the CUDA kernels against the CPU plan, within float rounding
            torch.testing.assert_close(y.cpu().float(), cpu.float(), rtol=2e-2, atol=2e-2)
