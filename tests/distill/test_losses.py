"""Distillation losses: zero on identical inputs, positive otherwise, known values, gradients, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastq.distill import LOSSES, cosine_embedding_loss, kl_div_loss, mse_loss

SHAPES = [(1, 7), (9, 33), (4, 5, 17), (2, 3, 4, 129)]


def _pair(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_for_identical_and_positive_otherwise(name, shape):
    s, t = _pair(shape)
    fn = LOSSES[name]
    same = fn(t.clone(), t)
    assert same.dim() == 0
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(fn(s, t)) > 1e-3


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cosine_matches_definition(shape):
    s, t = _pair(shape, seed=1)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    torch.testing.assert_close(cosine_embedding_loss(s, t), (1 - cos).mean())


def test_cosine_known_values_and_scale_invariance():
    e = torch.eye(4)
    assert float(cosine_embedding_loss(e[:2], e[2:])) == pytest.approx(1.0)  # orthogonal
    assert float(cosine_embedding_loss(e, -e)) == pytest.approx(2.0)  # opposite
    s, t = _pair((8, 16), seed=2)
    assert float(cosine_embedding_loss(3.5 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_embedding_loss(s, t)) == pytest.approx(float(cosine_embedding_loss(0.1 * s, 7 * t)), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kl_matches_hinton_formula(shape, temperature):
    s, t = _pair(shape, seed=3)
    p_t = torch.softmax(t.double() / temperature, -1)
    log_p_s = torch.log_softmax(s.double() / temperature, -1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(-1).mean() * temperature**2
    torch.testing.assert_close(kl_div_loss(s, t, temperature).double(), expected, rtol=1e-5, atol=1e-6)


def test_kl_ignores_a_constant_shift_of_the_logits():
    s, t = _pair((5, 10), seed=4)
    assert float(kl_div_loss(t + 3.0, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(kl_div_loss(s, t)) > 0


def test_mse_matches_definition_and_sequences():
    s, t = _pair((3, 7, 16), seed=5)
    torch.testing.assert_close(mse_loss(s, t), ((s - t) ** 2).mean())
    a, b = _pair((2, 9), seed=6)
    expected = (((s - t) ** 2).mean() + ((a - b) ** 2).mean()) / 2
    torch.testing.assert_close(mse_loss([s, a], (t, b)), expected)
    assert float(mse_loss([t, b], [t.clone(), b.clone()])) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow_to_the_student(name):
    s, t = _pair((6, 24), seed=7)
    s.requires_grad_(True)
    value = LOSSES[name](s, t)
    value.backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all()) and float(s.grad.abs().sum()) > 0
    # A step against the gradient lowers the loss.
    with torch.no_grad():
        lower = LOSSES[name](s - 1e-2 * s.grad / s.grad.norm(), t)
    assert float(lower) < float(value.detach())


def test_gradients_match_autograd_of_the_formula():
    s, t = _pair((4, 12), seed=8)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    kl_div_loss(s1, t, 2.0).backward()
    (F.kl_div(F.log_softmax(s2 / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_other_float_dtypes(name, dtype):
    s, t = _pair((4, 32), seed=9, dtype=dtype)
    v = LOSSES[name](s, t)
    assert v.dtype == dtype and math.isfinite(float(v)) and float(v) > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_input_raises_clearly(name):
    fn = LOSSES[name]
    s, t = _pair((4, 8))
    with pytest.raises(ValueError, match=r"student shape \(4, 8\) != teacher shape \(4, 9\)"):
        fn(s, torch.randn(4, 9))
    with pytest.raises(ValueError, match="student shape"):
        fn(s, t[:1])  # would broadcast; must not
    with pytest.raises(TypeError, match="floating"):
        fn(s.long(), t)
    with pytest.raises(TypeError, match="torch.Tensor|not one of each"):
        fn(s, t.tolist())
    with pytest.raises(ValueError, match="empty"):
        fn(torch.empty(0, 8), torch.empty(0, 8))


def test_bad_temperature_and_sequences():
    s, t = _pair((2, 5))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="temperature"):
            kl_div_loss(s, t, bad)
    with pytest.raises(ValueError, match="2 student hidden states but 1"):
        mse_loss([s, s], [t])
    with pytest.raises(ValueError, match="hidden state 1"):
        mse_loss([s, s], [t, t[:, :3]])
    with pytest.raises(ValueError, match="empty sequences"):
        mse_loss([], [])
    with pytest.raises(TypeError, match="not one of each"):
        mse_loss(s, [t])
