"""Codebook configs and encoders: validation with actionable messages, 1-D k-means (exact optimum vs
Lloyd, determinism for a seed, ties, masks), the binary / ternary / power-of-two definitions in the
module docstring of fastq.quantization.codebook, pruned zeros kept exactly, and the per-layer skips
(NaN weights, tables smaller than the cluster count, group sizes not dividing K) with their
reasons in summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastq
from fastq.nn._base import UnsupportedLayerError
from fastq.quantization.clustering import kmeans_1d, nearest, sse
from fastq.quantization.codebook import encode, pow2_values


def _w(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# ---- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,match", [
    ({"clusters": 1}, ValueError, "clusters must be >= 2"),
    ({"clusters": 17, "bits": 4}, ValueError, "17 clusters do not fit 4-bit codes"),
    ({"clusters": 300}, ValueError, "at most 256"),
    ({"clusters": 2.5}, TypeError, "clusters must be an int"),
    ({"scope": "tensor"}, ValueError, "scope must be one of"),
    ({"scope": "group", "group_size": 48}, ValueError, "multiple of 32"),
    ({"init": "kmeans"}, ValueError, "init must be one of"),
    ({"method": "fast"}, ValueError, "method must be one of"),
    ({"bits": 3}, ValueError, "bits must be one of"),
    ({"storage": "csr"}, ValueError, "storage must be one of"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"keep_zeros": 1}, TypeError, "keep_zeros must be a bool"),
])
def test_weight_sharing_config_validates(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastq.WeightSharingConfig(**kwargs)


def test_index_bits_default_to_the_narrowest():
    assert [fastq.WeightSharingConfig(clusters=c).index_bits for c in (2, 3, 4, 5, 16, 17, 256)] == [1, 2, 2, 4, 4, 8, 8]


def test_other_configs_validate():
    with pytest.raises(ValueError, match="threshold must be a number in"):
        fastq.TernaryConfig(threshold=1.5)
    with pytest.raises(ValueError, match="at most 7 fit"):
        fastq.PowerOfTwoConfig(exponents=8)
    assert fastq.PowerOfTwoConfig(zero=False).n_exponents == 8
    with pytest.raises(TypeError, match="zero must be a bool"):
        fastq.PowerOfTwoConfig(zero="yes")


# ---- 1-D k-means -----------------------------------------------------------------------------------

def test_exact_is_never_worse_than_lloyd():
    w = _w(16, 300) ** 3  # heavy tails: Lloyd's local optima are clearly worse
    ce, codes_e = kmeans_1d(w, 16, method="exact")
    for init in ("linear", "density", "random", "kmeans++"):
        cl, codes_l = kmeans_1d(w, 16, method="lloyd", init=init)
        assert sse(w, ce, codes_e) <= sse(w, cl, codes_l) * (1 + 1e-6), init


def test_kmeans_outputs_are_sorted_nearest_and_deterministic():
    w = _w(5, 200, 1)
    for method, init in (("exact", "linear"), ("lloyd", "random"), ("lloyd", "kmeans++")):
        c, codes = kmeans_1d(w, 8, method=method, init=init, seed=3)
        assert torch.equal(c, torch.sort(c, dim=1).values)
        assert torch.equal(codes, nearest(w, c))
        c2, codes2 = kmeans_1d(w, 8, method=method, init=init, seed=3)
        assert torch.equal(c, c2) and torch.equal(codes, codes2)
    c3, _ = kmeans_1d(w, 8, method="lloyd", init="random", seed=4)
    assert not torch.equal(c3, kmeans_1d(w, 8, method="lloyd", init="random", seed=3)[0])


def test_kmeans_is_lloyd_fixed_point():
    """Every centroid with members is their mean (float32 rounding of the float64 mean)."""
    w = _w(3, 500, 2)
    c, codes = kmeans_1d(w, 6, method="lloyd", init="density", iters=1000)
    for r in range(3):
        for j in range(6):
            members = w[r][codes[r] == j]
            if members.numel():
                assert abs(float(members.double().mean()) - float(c[r, j])) < 1e-6


def test_ties_go_to_the_lower_centroid():
    c = torch.tensor([[0.0, 1.0]])
    assert nearest(torch.tensor([[0.5, 0.49, 0.51]]), c).tolist() == [[0, 0, 1]]


def test_kmeans_valid_mask_and_few_values():
    w = torch.tensor([[1.0, 1.0, 2.0, 9.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True, False, False, False]])
    for method in ("exact", "lloyd"):
        c, codes = kmeans_1d(w, 4, method=method, valid=valid)
        assert codes[0, 3:].tolist() == [0, 0, 0]
        assert {float(v) for v in c[0]} >= {1.0, 2.0}  # the ignored 9s are nowhere
        assert 9.0 not in c[0].tolist()


# ---- encoders --------------------------------------------------------------------------------------

def _dense(enc) -> torch.Tensor:
    from fastq.ops.reference import codebook_weight

    w = codebook_weight(enc.codes, enc.codebook)
    return w * enc.scale[:, None] if enc.scale is not None else w


def test_binary_is_sign_times_mean_abs():
    w = _w(7, 33)
    w[0, 0] = 0.0
    enc = encode(fastq.BinaryConfig(), w)
    alpha = w.abs().mean(1)
    want = torch.where(w >= 0, 1.0, -1.0) * alpha[:, None]
    assert enc.bits == 1 and enc.kind == "binary" and enc.codebook.shape == (1, 1, 2)
    assert torch.equal(_dense(enc), want)


def test_ternary_threshold_rule():
    w = _w(9, 64, 3)
    enc = encode(fastq.TernaryConfig(threshold=0.7), w)
    delta = 0.7 * w.abs().mean(1, keepdim=True)
    kept = w.abs() > delta
    alpha = (w.abs() * kept).sum(1) / kept.sum(1)
    want = torch.where(kept, torch.sign(w), 0.0) * alpha[:, None]
    assert enc.bits == 2 and enc.clusters == 3
    assert torch.allclose(_dense(enc), want, rtol=1e-6, atol=0)


def test_power_of_two_values_and_range():
    cfg = fastq.PowerOfTwoConfig()
    w = _w(12, 80, 4) * torch.logspace(-3, 1, 12)[:, None]
    enc = encode(cfg, w)
    d = _dense(enc)
    nz = d != 0
    exps = torch.log2(d.abs()[nz])
    assert torch.equal(exps, exps.round()), "every stored weight is +-2^k"
    e_top = torch.log2(enc.scale)
    assert torch.equal(e_top, e_top.round()), "the per-row scale is a power of two"
    rows = nz.nonzero()[:, 0]
    assert bool(((exps <= e_top[rows]) & (exps >= e_top[rows] - (cfg.n_exponents - 1))).all())
    # calibration: the chosen top exponent is the better of the two candidates
    base = pow2_values(cfg)
    for r in range(12):
        e_hi = torch.ceil(torch.log2(w[r].abs().max()))
        errs = []
        for e in (e_hi - 1, e_hi):
            s = torch.exp2(e)
            alt = base[nearest(w[r:r + 1] / s, base[None])] * s
            errs.append(float(((w[r] - alt) ** 2).sum()))
        assert float(((w[r] - d[r]) ** 2).sum()) == min(errs)


def test_power_of_two_without_zero():
    enc = encode(fastq.PowerOfTwoConfig(zero=False), _w(4, 32, 5))
    assert enc.clusters == 16 and bool((_dense(enc) != 0).all())


@pytest.mark.parametrize("scope", ("layer", "row", "group"))
def test_kmeans_encoding_scopes(scope):
    w = _w(6, 256, 6)
    enc = encode(fastq.WeightSharingConfig(clusters=4, scope=scope, group_size=64), w)
    shape = {"layer": (1, 1, 4), "row": (6, 1, 4), "group": (6, 4, 4)}[scope]
    assert enc.codebook.shape == shape and enc.bits == 2
    # each weight sits on the nearest entry of its own table
    tables = enc.codebook.reshape(-1, 4) if scope != "layer" else enc.codebook.reshape(1, 4)
    vals = w.reshape(tables.shape[0], -1)
    assert torch.equal(enc.codes.reshape(vals.shape).long(), nearest(vals, tables))


def test_pruned_zeros_stay_exact():
    w = _w(8, 128, 7)
    mask = torch.rand(8, 128, generator=torch.Generator().manual_seed(1)) > 0.7
    w = w * mask
    enc = encode(fastq.WeightSharingConfig(clusters=16), w, mask)
    assert enc.zero_entry and bool((enc.codebook[..., 0] == 0).all())
    d = _dense(enc)
    assert bool((d[~mask] == 0).all()) and bool((enc.codes[mask] > 0).all())


# ---- per-layer skips with reasons ----------------------------------------------------------------

def test_quantize_skips_with_reasons():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(8, 16), nn.Linear(96, 8), nn.Linear(64, 40))
    with torch.no_grad():
        model[3].weight[1, 2] = float("nan")
    fastq.quantize_(model, fastq.WeightSharingConfig(clusters=16, scope="group", group_size=64))
    notes = dict(fastq.summary(model).notes)
    assert isinstance(model[0], fastq.SharedWeightLinear)
    assert "8 weights, fewer than clusters=16" in notes["1"] or "group_size 64 does not divide K=8" in notes["1"]
    assert "group_size 64 does not divide K=96" in notes["2"]
    assert "NaN or Inf" in notes["3"]


def test_tables_smaller_than_clusters_are_skipped():
    model = nn.Sequential(nn.Linear(8, 64))
    fastq.quantize_(model, fastq.WeightSharingConfig(clusters=16, scope="row"))
    assert dict(fastq.summary(model).notes)["0"] == "a row table holds 8 weights, fewer than clusters=16"


def test_encode_rejects_non_finite_directly():
    w = _w(4, 32)
    w[0, 0] = float("inf")
    with pytest.raises(UnsupportedLayerError, match="NaN or Inf"):
        encode(fastq.BinaryConfig(), w)
