"""fastq.save / fastq.load: bit-exact round trips, strict refusal of bad files, compile/export.

A loaded model must compute exactly what the saved one did (torch.equal), and every corrupt,
truncated or mismatched file must raise fastq.io.LoadError rather than load something else.
"""

import json

import pytest
import torch
from torch import nn

import fastq
from fastq.io import RECIPE_FILE, TENSORS_FILE, LoadError

transformers = pytest.importorskip("transformers")

CONFIGS = {"w8a8": fastq.Int8DynamicConfig(), "int8-weight-only": fastq.Int8WeightOnlyConfig(),
           "int8-weight-only-g32": fastq.Int8WeightOnlyConfig(group_size=32)}


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 48, bias=False))


def quantized_mlp(config_name: str = "w8a8") -> nn.Module:
    torch.manual_seed(1)
    model = mlp().eval()
    fastq.quantize_(model, CONFIGS[config_name])
    return model


def n_fastq_modules(model: nn.Module) -> int:
    return sum(isinstance(m, tuple(fastq.nn.MODULE_TYPES.values())) for m in model.modules())


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_transformers_round_trip_is_bit_exact(tmp_path, config_name):
    model = tiny_bert()
    fastq.quantize_(model, CONFIGS[config_name])
    assert n_fastq_modules(model) > 0
    fastq.save(model, tmp_path)
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert recipe["architecture"]["source"] == "transformers"
    assert recipe["architecture"]["model_class"] == "BertModel"
    assert len(recipe["modules"]) == n_fastq_modules(model)

    loaded = fastq.load(tmp_path)  # skeleton rebuilt from the saved config: no base_model
    assert type(loaded) is type(model)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    ids = torch.randint(0, 97, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, want)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_python_model_round_trip_with_base_model(tmp_path, config_name):
    model = quantized_mlp(config_name)
    fastq.save(model, tmp_path)
    x = torch.randn(5, 64)
    for base in (mlp, mlp()):  # a builder or a module
        loaded = fastq.load(tmp_path, base_model=base)
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(LoadError, match="base_model"):
        fastq.load(tmp_path)  # not a transformers model: the skeleton must come from the caller


def test_plain_model_and_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 64)
            self.body = nn.Linear(64, 64)
            self.head = nn.Linear(64, 50, bias=False)
            self.head.weight = self.emb.weight  # shared storage: written once, recorded as an alias

        def forward(self, ids):
            return self.head(torch.relu(self.body(self.emb(ids))))

    torch.manual_seed(2)
    model = Tied().eval()
    fastq.quantize_(model, fastq.Int8DynamicConfig(), filter_fn=lambda m, name: name == "body")
    fastq.save(model, tmp_path)
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert recipe["aliases"] == {"head.weight": "emb.weight"}
    loaded = fastq.load(tmp_path, base_model=Tied)
    ids = torch.randint(0, 50, (2, 9))
    assert torch.equal(loaded(ids), model(ids))
    assert loaded.head.weight is loaded.emb.weight


def test_pruned_model_round_trip_keeps_masks(tmp_path):
    torch.manual_seed(3)
    model = mlp().eval()
    fastq.prune_(model, fastq.PruneConfig(pattern="2:4"))
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=mlp)
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), model(x))
    for name in ("0", "2"):
        assert torch.equal(loaded.get_submodule(name).weight_mask, model.get_submodule(name).weight_mask)
        assert loaded.get_submodule(name).fastq_prune_pattern == "2:4"
    # The mask keeps working after loading: a revived pruned weight is zeroed again on forward.
    with torch.no_grad():
        loaded[0].weight.add_(1.0)
    loaded(x)
    assert torch.equal(loaded[0].weight == 0, ~loaded[0].weight_mask)


@pytest.mark.parametrize("fmt,int8", [("csr", False), ("ell", False), ("ell", True)], ids=str)
def test_sparse_model_round_trip(tmp_path, fmt, int8):
    torch.manual_seed(4)
    model = mlp().eval()
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.8))
    fastq.sparsify_(model, int8=int8, format=fmt)
    assert n_fastq_modules(model) == 3  # two SparseLinear and the GELU fused into the first
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=mlp)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert loaded[0].format == model[0].format
    x = torch.randn(5, 64)
    assert torch.equal(loaded(x), model(x))


# ---- bad files: each raises LoadError --------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    fastq.save(quantized_mlp(), tmp_path)
    return tmp_path


def _edit_recipe(directory, edit):
    path = directory / RECIPE_FILE
    recipe = json.loads(path.read_text())
    edit(recipe)
    path.write_text(json.dumps(recipe))


def test_truncated_tensor_file(saved):
    path = saved / TENSORS_FILE
    data = path.read_bytes()
    for cut in (len(data) // 2, 7, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(LoadError, match="corrupt or truncated"):
            fastq.load(saved, base_model=mlp)


def test_garbage_tensor_header(saved):
    path = saved / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(LoadError):
        fastq.load(saved, base_model=mlp)


@pytest.mark.parametrize("text", ["{not json", "", "[]", '{"format": "pickle"}', "\xff\xfe"])
def test_corrupt_recipe(saved, text):
    (saved / RECIPE_FILE).write_text(text, encoding="latin-1")
    with pytest.raises(LoadError, match=RECIPE_FILE):
        fastq.load(saved, base_model=mlp)


def test_future_format_version(saved):
    _edit_recipe(saved, lambda r: r.update(format_version=99))
    with pytest.raises(LoadError, match="format_version"):
        fastq.load(saved, base_model=mlp)


def test_unknown_module_class_is_refused(saved):
    _edit_recipe(saved, lambda r: r["modules"][0].update({"class": "os.system"}))
    with pytest.raises(LoadError, match="unknown class 'os.system'"):
        fastq.load(saved, base_model=mlp)


def test_module_path_not_in_model(saved):
    _edit_recipe(saved, lambda r: r["modules"][0].update(name="7"))
    with pytest.raises(LoadError, match="does not exist"):
        fastq.load(saved, base_model=mlp)


def test_bad_init_kwargs(saved):
    _edit_recipe(saved, lambda r: r["modules"][0]["init_kwargs"].update(evil="__import__('os')"))
    with pytest.raises(LoadError, match="takes no argument 'evil'"):
        fastq.load(saved, base_model=mlp)


def test_mismatched_shapes(saved):
    # The recipe says a different layer size than the tensors in the file.
    _edit_recipe(saved, lambda r: r["modules"][0]["init_kwargs"].update(out_features=80))
    with pytest.raises(LoadError, match="in the file but"):
        fastq.load(saved, base_model=mlp)


def test_mismatched_skeleton(saved):
    with pytest.raises(LoadError, match="do not match"):
        fastq.load(saved, base_model=lambda: nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 48),
                                                           nn.Linear(48, 2)))
    with pytest.raises(LoadError, match="does not exist"):
        fastq.load(saved, base_model=lambda: nn.Sequential(nn.Linear(64, 96)))


def test_mismatched_dtype(saved, tmp_path):
    fp32 = mlp()
    fastq.save(fp32, tmp_path / "fp32")
    with pytest.raises(LoadError, match="float64"):
        fastq.load(tmp_path / "fp32", base_model=lambda: mlp().double())


def test_missing_files(saved, tmp_path):
    with pytest.raises(LoadError, match="not a directory"):
        fastq.load(tmp_path / "nope", base_model=mlp)
    (saved / TENSORS_FILE).unlink()
    with pytest.raises(LoadError, match="missing"):
        fastq.load(saved, base_model=mlp)
    (saved / RECIPE_FILE).unlink()
    with pytest.raises(LoadError, match="missing"):
        fastq.load(saved, base_model=mlp)


def test_transformers_class_outside_transformers_is_refused(tmp_path):
    model = tiny_bert()
    fastq.save(model, tmp_path)
    for bad in ("os.system", "AutoTokenizer", "__builtins__"):
        _edit_recipe(tmp_path, lambda r: r["architecture"].update(model_class=bad))
        with pytest.raises(LoadError, match="not a transformers model class"):
            fastq.load(tmp_path)


# ---- deployment: the loaded model under torch.compile and torch.export -----------------------------

@pytest.mark.parametrize("config_name", ["w8a8", "int8-weight-only"])
def test_loaded_model_compiles_and_exports(tmp_path, config_name):
    model = quantized_mlp(config_name)
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=mlp)
    x = torch.randn(6, 64)
    want = model(x)

    exported = torch.export.export(loaded, (x,))
    assert torch.equal(exported.module()(x), want)

    torch._dynamo.reset()
    compiled = torch.compile(loaded, fullgraph=True)
    # The fastq ops are opaque to the compiler, so the int8 path is unchanged; only the float
    # glue (GELU) may be code-generated, within float32 rounding.
    torch.testing.assert_close(compiled(x), want)


def test_save_rejects_a_non_module(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        fastq.save("not a model", tmp_path / "out")
