"""QAT for the codebook configs (binary, ternary, power of two, k-means weight sharing) on nn.Linear and
nn.Conv2d: the QAT forward is the SharedWeight kernel's output, so convert_ is bit-exact; the STE graph's
weight is the encoder's own; gradients reach the float weights (binary / ternary / power of two) or the
centroids (weight sharing); bad input is refused."""

import copy

import pytest
import torch
from torch import nn

import fastq
from fastq.nn import UnsupportedLayerError
from fastq.nn.codebook import SharedWeightConv2d, SharedWeightLinear
from fastq.quantization.qat import QATConv2d, QATLinear
from _qat_util import regression_losses, train_losses

CONFIGS = {
    "binary": fastq.BinaryConfig(),
    "ternary": fastq.TernaryConfig(),
    "ternary_t05": fastq.TernaryConfig(threshold=0.5),
    "pow2": fastq.PowerOfTwoConfig(),
    "pow2_nozero_e3": fastq.PowerOfTwoConfig(zero=False, exponents=3),
    "kmeans_row16": fastq.WeightSharingConfig(clusters=16, scope="row"),
    "kmeans_row5_lloyd": fastq.WeightSharingConfig(clusters=5, scope="row", method="lloyd", init="kmeans++"),
    "kmeans_layer4": fastq.WeightSharingConfig(clusters=4, scope="layer"),
    "kmeans_layer2": fastq.WeightSharingConfig(clusters=2, scope="layer"),
}
KIND = {"binary": "binary", "ternary": "ternary", "pow2": "pow2", "kmeans": "kmeans"}


def _kind(name):
    return KIND[name.split("_")[0]]


def _cnn():
    """Tail sizes everywhere: conv K = 27 (3x3x3) -> 7 outputs; conv K = 63 with stride, padding and
    dilation -> 33; linear K = 825 -> 33; linear K = 33 -> 7 (N = 1 is in the gradient test)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(7, 33, 3, stride=2, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(33 * 5 * 5, 33), nn.GELU(), nn.Linear(33, 7))


def _data(n=3, seed=0, m=6):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(m, 3, 10, 10, generator=g), torch.randn(m, 7, generator=g)) for _ in range(n)]


def _train(model, data, steps=4, lr=1e-2):
    return train_losses(model, data, nn.functional.mse_loss, steps, torch.optim.Adam(model.parameters(), lr=lr))


def _trained_tensor(m):
    return m.weight_codebook if hasattr(m, "weight_codebook") else m.weight


@pytest.mark.parametrize("name", list(CONFIGS))
def test_convert_is_bit_exact_with_the_qat_forward(name):
    cfg, model, data = CONFIGS[name], _cnn(), _data()
    fastq.prepare_qat_(model, cfg)
    for i, cls in ((0, QATConv2d), (2, QATConv2d), (5, QATLinear), (7, QATLinear)):
        assert isinstance(model[i], cls), (i, dict(fastq.summary(model).notes))
    before = {i: _trained_tensor(model[i]).detach().clone() for i in (0, 2, 5, 7)}
    _train(model, data)
    for i in (0, 2, 5, 7):
        assert not torch.equal(_trained_tensor(model[i]).detach(), before[i]), i  # gradients arrived
    model.eval()
    for m in (1, 7, 33):
        x = _data(1, seed=m, m=m)[0][0]
        with torch.no_grad():
            y_qat = model(x)
            fakes = {i: model[i].qat_scheme.fake_weight(model[i], model[i].weight.reshape(model[i].weight.shape[0], -1))
                     for i in (0, 2, 5, 7)}
        converted = fastq.convert_(copy.deepcopy(model))
        assert isinstance(converted[0], SharedWeightConv2d) and isinstance(converted[2], SharedWeightConv2d)
        assert isinstance(converted[5], SharedWeightLinear) and isinstance(converted[7], SharedWeightLinear)
        assert all(converted[i].kind == _kind(name) for i in (0, 2, 5, 7))
        assert torch.equal(converted(x), y_qat)
        for i in (0, 2, 5, 7):  # the STE graph's weight is the packed one, bit for bit
            assert torch.equal(converted[i].dequantized_weight(), fakes[i])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_before_training_the_qat_model_is_quantize_s_model(name):
    """Same encoder, same codes: before any step the QAT forward equals quantize_'s model."""
    cfg, model = CONFIGS[name], _cnn()
    ref = fastq.quantize_(copy.deepcopy(model), cfg)
    fastq.prepare_qat_(model, cfg)
    x = _data(1, seed=3)[0][0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))
        for i in (0, 2, 5, 7):
            fake = model[i].qat_scheme.fake_weight(model[i], model[i].weight.reshape(model[i].weight.shape[0], -1))
            assert torch.equal(fake, ref[i].dequantized_weight())


# N = 1 fits binary codes only: 2- and 4-bit codes pad rows to 16, more bytes than 1 float row
@pytest.mark.parametrize("name,n,k", [(name, n, k) for name in ("binary", "ternary", "pow2")
                                      for n, k in ((7, 33), (33, 7), (3, 257))] + [("binary", 1, 257)])
def test_gradient_is_straight_through_to_the_float_weight(name, n, k):
    """dL/dW = dL/dW_q (identity STE through the encoder's rounding) and dL/dx uses W_q: with L = sum(y),
    every weight row's gradient is sum_m x[m] (a missing STE leaves weight.grad None)."""
    torch.manual_seed(0)
    lin = nn.Linear(k, n)
    model = nn.Sequential(copy.deepcopy(lin))
    fastq.prepare_qat_(model, CONFIGS[name])
    x = torch.randn(4, k, requires_grad=True)
    y = model(x)
    y.sum().backward()
    torch.testing.assert_close(model[0].weight.grad, x.detach().sum(0).expand(n, k))
    deq = SharedWeightLinear.from_float(lin, CONFIGS[name]).dequantized_weight()
    torch.testing.assert_close(x.grad, deq.sum(0).expand(4, k), rtol=1e-5, atol=1e-6)
    assert torch.equal(fastq.convert_(model)(x.detach()), y.detach())


def test_centroid_gradient_is_the_sum_of_its_members_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 9))
    fastq.prepare_qat_(model, fastq.WeightSharingConfig(clusters=8, scope="row"))
    x = torch.randn(5, 40)
    model(x).sum().backward()
    q = model[0]
    assert q.weight.grad is None  # the assignment is fixed: the float weight is not used
    member = x.sum(0).double().expand(9, 40)  # dL/dW[n, k] for L = sum(y)
    want = torch.zeros(9, 1, 16, dtype=torch.float64)  # 8 clusters in 4-bit codes: 16 entries
    want.scatter_add_(2, q.weight_codes.long().reshape(9, 1, 40), member.reshape(9, 1, 40))
    torch.testing.assert_close(q.weight_codebook.grad.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["binary", "ternary", "pow2", "kmeans_row16"])
def test_training_lowers_the_loss(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    fastq.prepare_qat_(model, CONFIGS[name])
    losses = regression_losses(model)  # the values are the codebook kernel's outputs
    assert losses[-1] < 0.7 * losses[0]


def test_trains_with_distill_and_train_():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    batches = [torch.randn(8, 32) for _ in range(4)]
    student = fastq.prepare_qat_(copy.deepcopy(teacher), fastq.TernaryConfig())
    w0 = student[0].weight.detach().clone()
    hist = fastq.distill_(student, teacher, batches, loss="mse", steps=6, lr=1e-3)
    assert len(hist.losses) == 6 and all(l == l for l in hist.losses)
    assert not torch.equal(student[0].weight.detach(), w0)
    fastq.convert_(student)
    assert isinstance(student[0], SharedWeightLinear) and student[0].kind == "ternary"

    shared = fastq.prepare_qat_(copy.deepcopy(teacher), fastq.WeightSharingConfig(clusters=16))
    c0 = shared[2].weight_codebook.detach().clone()
    fastq.train_(shared, batches, lambda m, x: nn.functional.mse_loss(m(x), teacher(x).detach()), steps=5, lr=1e-3)
    assert not torch.equal(shared[2].weight_codebook.detach(), c0)
    fastq.convert_(shared)
    assert "codebook" in shared[2]._buffers  # the trained centroids, a plain buffer again
    assert isinstance(shared[2], SharedWeightLinear) and shared[2].kind == "kmeans"


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_pruned_layers_keep_their_zeros(storage):
    """keep_zeros: the pruned weights' fixed 0.0 entry stays exactly 0 through AdamW with weight decay,
    and the converted layer (dense or Deep Compression's sparse storage) keeps the pruning pattern."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    fastq.prune_(model, fastq.PruneConfig(sparsity=0.8))
    mask = model[0].weight_mask.clone()
    cfg = fastq.WeightSharingConfig(clusters=8, scope="layer", storage=storage)
    fastq.prepare_qat_(model, cfg, filter_fn=lambda m, n: n == "0")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = model(torch.randn(8, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = model.eval()(x)
    fastq.convert_(model)
    assert model[0].storage == storage and model[0].zero_entry
    assert torch.equal(model[0].dequantized_weight() != 0, mask)
    assert torch.equal(model(x), y)


@pytest.mark.parametrize("name", ["kmeans_row16", "pow2"])
def test_converted_model_saves_and_loads(tmp_path, name):
    model, data = _cnn(), _data()
    fastq.prepare_qat_(model, CONFIGS[name])
    _train(model, data, steps=2)
    fastq.convert_(model)
    x = _data(1, seed=5)[0][0]
    fastq.save(model, tmp_path)
    loaded = fastq.load(tmp_path, base_model=_cnn)
    assert type(loaded[5]) is SharedWeightLinear and torch.equal(loaded(x), model(x))


def test_group_scope_and_bad_input():
    with pytest.raises(ValueError, match="lsq=True is not supported for BinaryConfig"):
        fastq.prepare_qat_(_cnn(), fastq.BinaryConfig(), lsq=True)
    with pytest.raises(ValueError, match="lsq=True is not supported for WeightSharingConfig"):
        fastq.prepare_qat_(_cnn(), fastq.WeightSharingConfig(), lsq=True)
    # scope="group": K = 64 splits into groups of 32; K = 48 does not (left float, with the reason);
    # a grouped convolution is left float too
    model = nn.Sequential(nn.Linear(64, 9), nn.Linear(9, 48), nn.Linear(48, 4), nn.Conv2d(4, 8, 3, groups=2))
    fastq.prepare_qat_(model, fastq.WeightSharingConfig(clusters=16, scope="group", group_size=32))
    notes = dict(fastq.summary(model).notes)
    assert isinstance(model[0], QATLinear) and model[0].weight_codebook.shape == (9, 2, 16)
    assert type(model[2]) is nn.Linear and "does not divide K=48" in notes["2"]
    assert type(model[3]) is nn.Conv2d and "grouped convolution" in notes["3"]
    rows = nn.Sequential(nn.Linear(64, 32), nn.Linear(9, 48))
    fastq.prepare_qat_(rows, fastq.WeightSharingConfig(clusters=16))
    assert type(rows[1]) is nn.Linear and "fewer than clusters=16" in dict(fastq.summary(rows).notes)["1"]
    x = torch.randn(3, 64)
    y = model[0](x)
    q = fastq.convert_(model)[0]
    assert isinstance(q, SharedWeightLinear) and q.granularity() == "group32 4-bit codes"
    assert torch.equal(q(x), y.detach())
    # a diverged step: said, not packed
    model = fastq.prepare_qat_(nn.Sequential(nn.Linear(16, 8)), fastq.BinaryConfig())
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):
        model(torch.randn(2, 16))


@pytest.mark.parametrize("name", ["binary", "kmeans_layer4"])
def test_conv_gradients_equal_the_im2col_gemm(name):
    """Weight-only schemes run the STE graph as nn.Conv2d's own convolution of the fake weight; its
    gradients equal those of the im2col GEMM the kernels compute (ConvGeometry), padding_mode included."""
    from fastq.nn.conv import ConvGeometry

    torch.manual_seed(0)
    conv = nn.Conv2d(5, 33, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")
    model = fastq.prepare_qat_(nn.Sequential(conv), CONFIGS[name])
    q = model[0]
    x = torch.randn(2, 5, 11, 9, requires_grad=True)
    g = torch.randn(2, 33, 6, 5)
    (q(x) * g).sum().backward()
    trained = _trained_tensor(q)
    grads = (x.grad.clone(), trained.grad.clone())
    x.grad, trained.grad = None, None
    w = q.qat_scheme.fake_weight(q, q.weight.reshape(33, -1))
    y = ConvGeometry._conv(q, x, lambda cols: nn.functional.linear(cols, w, q.bias), "ref")
    (y * g).sum().backward()
    torch.testing.assert_close(grads[0], x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], trained.grad, rtol=1e-5, atol=1e-5)
