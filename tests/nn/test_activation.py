"""fuse_activations_: an activation fused into the fastq linear before it changes no bit of the output,
and is fused only where the parent's dataflow allows it (fastq/nn/activation.py)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastq
from fastq.nn import FusedActivation, QuantLinear, fuse_activations_
from fastq.nn.activation import KINDS, activation_kind, apply_activation
from fastq.nn._prepared import NO_PLAN


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _mlp(act: nn.Module, k: int = 33, hidden: int = 65, n: int = 7) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, hidden), act, nn.Linear(hidden, n))


class Residual(nn.Module):
    """The linear's output is used twice: fusing would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.dense, self.act = nn.Linear(16, 16), nn.GELU()

    def forward(self, x):
        h = self.dense(x)
        return self.act(h) + h


class ActBeforeLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.act, self.dense = nn.ReLU(), nn.Linear(16, 8)

    def forward(self, x):
        return self.dense(self.act(x))


class GatedMLP(nn.Module):
    """Llama's MLP: the activation takes the gate projection only."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(24, 40), nn.Linear(24, 40), nn.Linear(40, 24)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_in_place_and_out_of_place_give_the_same_bits(kind, dtype):
    y = (_x(4099) * 5).to(dtype)
    out_of_place, in_place = KINDS[kind]
    ref = out_of_place(y)
    assert torch.equal(in_place(y.clone()), ref)
    with torch.inference_mode():
        assert torch.equal(apply_activation(kind, y.clone()), ref)


def test_out_of_place_when_autograd_records():
    y = _x(64, seed=1).requires_grad_()
    out = apply_activation("gelu", y * 1)  # a non-leaf that requires grad
    out.sum().backward()
    assert torch.allclose(y.grad, torch.autograd.grad(F.gelu(y).sum(), y)[0])


@pytest.mark.parametrize("module, kind", [
    (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.ReLU(), "relu"), (nn.SiLU(), "silu"),
    (nn.Tanh(), None), (nn.Identity(), None), (nn.Sigmoid(), None), (nn.LeakyReLU(), None),
    (nn.Linear(4, 4), None), (nn.Sequential(nn.GELU()), None),
])
def test_activation_kind_is_exact(module, kind):
    assert activation_kind(module) == kind


def test_transformers_activations_are_recognised_only_when_exact():
    activations = pytest.importorskip("transformers.activations")
    assert activation_kind(activations.ACT2FN["gelu"]) == "gelu"
    assert activation_kind(activations.ACT2FN["gelu_pytorch_tanh"]) == "gelu_tanh"
    assert activation_kind(activations.ACT2FN["silu"]) == "silu"
    # Python formulas of similar functions differ in the last bits: never fused
    assert activation_kind(activations.ACT2FN["gelu_new"]) is None
    assert activation_kind(activations.ACT2FN["quick_gelu"]) is None


@pytest.mark.parametrize("act, kind", [(nn.GELU(), "gelu"), (nn.ReLU(), "relu"), (nn.SiLU(), "silu"),
                                       (nn.GELU(approximate="tanh"), "gelu_tanh")])
@pytest.mark.parametrize("config", [fastq.Int8DynamicConfig(), fastq.Int8WeightOnlyConfig(),
                                    fastq.Int4WeightOnlyConfig(group_size=32)], ids=["w8a8", "wo", "int4"])
def test_quantize_fuses_and_changes_no_bit(act, kind, config, isa):
    model = _mlp(act, k=64, hidden=128)  # group 32 divides every K
    plain = fastq.quantize_(copy.deepcopy(model), config, fuse_activations=False)
    fused = fastq.quantize_(model, config)
    assert isinstance(fused[1], FusedActivation) and fused[1].kind == kind
    assert fused[0].activation == kind and fused[2].activation is None
    op = fused[0]._fastq_plan.op
    for m in (1, 7, 31, 129):
        x = _x(m, 64, seed=m)
        with torch.inference_mode():
            before = fastq.native_calls(op, "cpu")
            y = fused(x)
            assert fastq.native_calls(op, "cpu") > before, "the native kernel ran"
            assert torch.equal(y, plain(x))


def test_fuse_returns_names_and_is_idempotent():
    model = nn.Sequential(_mlp(nn.GELU()), nn.ReLU())
    fastq.quantize_(model, fastq.Int8DynamicConfig(), fuse_activations=False)
    assert fuse_activations_(model) == ["0.1"]  # the outer ReLU follows a Sequential, not a fastq linear
    assert fuse_activations_(model) == []
    assert isinstance(model[1], nn.ReLU)


@pytest.mark.parametrize("cls", [Residual, ActBeforeLinear])
def test_dataflow_that_forbids_fusion_is_left_alone(cls):
    torch.manual_seed(0)
    model = nn.Sequential(cls())
    plain = fastq.quantize_(copy.deepcopy(model), fastq.Int8DynamicConfig(), fuse_activations=False)
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    assert fuse_activations_(model) == []
    assert not any(isinstance(m, FusedActivation) for m in model.modules())
    assert model[0].dense.activation is None
    x = _x(5, 16)
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x))


def test_gated_mlp_fuses_into_the_gate_only():
    torch.manual_seed(0)
    model = nn.Sequential(GatedMLP())
    plain = fastq.quantize_(copy.deepcopy(model), fastq.Int8DynamicConfig(), fuse_activations=False)
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    mlp = model[0]
    assert (mlp.gate.activation, mlp.up.activation, mlp.down.activation) == ("silu", None, None)
    x = _x(3, 9, 24)
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x))


def test_float_layers_and_training_modes_are_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.5), nn.Linear(16, 4))
    model.train()
    model[2].eval()  # a child in another mode than its parent keeps it
    fastq.quantize_(model, fastq.Int8DynamicConfig(), skip=["0"])
    assert isinstance(model[1], nn.GELU), "the layer before stayed float: nothing to fuse into"
    assert model.training and model[0].training and not model[2].training
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    assert isinstance(model[1], FusedActivation)
    assert model.training and model[0].training and not model[2].training


def test_sparsify_fuses():
    model = _mlp(nn.ReLU(), k=64, hidden=128)
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.5))
    plain = fastq.sparsify_(copy.deepcopy(model), fuse_activations=False)
    fastq.sparsify_(model)
    assert model[0].activation == "relu" and isinstance(model[1], FusedActivation)
    x = _x(9, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x))


def test_op_path_and_compile_apply_the_activation():
    model = fastq.quantize_(_mlp(nn.GELU(), k=64), fastq.Int8DynamicConfig())
    x = _x(7, 64)
    with torch.inference_mode():
        eager = model(x)
        for layer in (model[0], model[2]):
            layer.__dict__["_fastq_plan"] = NO_PLAN  # the op path, as compile and export run it
        assert torch.equal(model(x), eager)
        model[0].prepare()
        model[2].prepare()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), eager)


def test_save_and_load_keep_the_fusion(tmp_path):
    model = fastq.quantize_(_mlp(nn.GELU(), k=64), fastq.Int8DynamicConfig())
    fastq.save(model, tmp_path)
    recipe = json.loads((tmp_path / fastq.io.RECIPE_FILE).read_text())
    entries = {e["name"]: e for e in recipe["modules"]}
    assert entries["0"]["init_kwargs"]["activation"] == "gelu" and entries["1"]["class"] == "FusedActivation"
    assert "activation" not in entries["2"]["init_kwargs"]
    twin = QuantLinear(**model[0].init_kwargs())
    twin.load_state_dict(model[0].state_dict())
    with torch.inference_mode():
        assert torch.equal(twin(_x(3, 64)), model[0](_x(3, 64)))
    loaded = fastq.load(tmp_path, base_model=_mlp(nn.GELU(), k=64))
    assert loaded[0].activation == "gelu" and isinstance(loaded[1], FusedActivation)
    x = _x(5, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("entry, value", [("0", "swish"), ("0", 3), ("1", "gelu")])
def test_recipe_with_a_bad_activation_fails_to_load(tmp_path, entry, value):
    model = fastq.quantize_(_mlp(nn.GELU(), k=64), fastq.Int8DynamicConfig())
    fastq.save(model, tmp_path)
    path = tmp_path / fastq.io.RECIPE_FILE
    recipe = json.loads(path.read_text())
    for e in recipe["modules"]:
        if e["name"] == entry:
            e["init_kwargs"]["activation"] = value
    path.write_text(json.dumps(recipe))
    with pytest.raises(fastq.LoadError, match="activation"):
        fastq.load(tmp_path, base_model=_mlp(nn.GELU(), k=64))


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        fuse_activations_("model")
    with pytest.raises(TypeError, match="fuse_activations must be a bool"):
        fastq.quantize_(_mlp(nn.GELU()), fastq.Int8DynamicConfig(), fuse_activations="yes")
    with pytest.raises(TypeError, match="fuse_activations must be a bool"):
        fastq.sparsify_(_mlp(nn.GELU()), fuse_activations=1)
    with pytest.raises(ValueError, match="activation must be one of"):
        QuantLinear(4, 4, activation="swish")
    with pytest.raises(ValueError, match="activation must be one of"):
        FusedActivation("swish")
    assert isinstance(QuantLinear(4, 4).activation, type(None))


def test_summary_names_the_fused_activation():
    model = fastq.quantize_(_mlp(nn.GELU(), k=64), fastq.Int8DynamicConfig())
    rows = {r.name: r for r in fastq.summary(model).layers}
    assert set(rows) == {"0", "2"}, "the fused activation stores nothing: no row"
    assert rows["0"].detail.endswith("+gelu") and "+" not in rows["2"].detail


def test_search_recipes_fuse_and_layer_counts_skip_the_placeholder():
    from fastq.recipe_search import LayerRecipe
    from fastq.recipes import count_fastq_modules

    spec = {"transform": "w8a8", "spec": {"kind": "quantize", "config": "Int8DynamicConfig", "args": {}}}
    model = LayerRecipe(layers={"0": spec, "2": spec}).apply_(_mlp(nn.GELU(), k=64))
    assert model[0].activation == "gelu" and isinstance(model[1], FusedActivation)
    assert count_fastq_modules(model) == 2
    plain = fastq.quantize_(_mlp(nn.GELU(), k=64), fastq.Int8DynamicConfig(), fuse_activations=False)
    x = _x(6, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x))
