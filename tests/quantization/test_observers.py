"""Observers: exact statistics where they are exact (min/max, EMA), histogram results within one bin
of the exact answer, qparams bit-identical to dynamic quantize_int8, and bad input rejected."""

import pytest
import torch

from fastq.ops import reference
from fastq.quantization.observers import (OBSERVERS, EntropyObserver, MSEObserver, make_observer,
                                          qparams_from_range)


def _data(seed, shape=(3000, 8), outlier=30.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[7, 0] = outlier
    return x


@pytest.mark.parametrize("ch_axis", [None, -1, 0])
def test_minmax_is_exact_per_tensor_and_per_channel(ch_axis):
    x = _data(1)  # [3000, 8]: channels along dim 1 (ch_axis -1) or, transposed, along dim 0
    o = make_observer("minmax", ch_axis=ch_axis)
    for part in x.split(700):
        o.update(part.T.contiguous() if ch_axis == 0 else part)
    lo, hi = o.clip_range()
    if ch_axis is None:
        assert lo == min(x.min(), 0) and hi == max(x.max(), 0) and lo.dim() == 0
    else:
        assert torch.equal(hi, x.amax(0).clamp_min(0)) and torch.equal(lo, x.amin(0).clamp_max(0))
        assert torch.equal(o.absmax(), x.abs().amax(0))
    assert o.count == 5


def test_channel_count_change_is_an_error():
    o = make_observer("minmax", ch_axis=0)
    o.update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="channel count"):
        o.update(torch.randn(5, 3))


def test_moving_average_follows_its_formula():
    x = _data(2)
    o = make_observer("moving_average", averaging_constant=0.1)
    lo = hi = None
    for part in x.split(500):
        mn, mx = part.min(), part.max()
        lo = mn if lo is None else lo + 0.1 * (mn - lo)
        hi = mx if hi is None else hi + 0.1 * (mx - hi)
        o.update(part)
    got_lo, got_hi = o.clip_range()
    torch.testing.assert_close(got_lo, lo.clamp_max(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(got_hi, hi.clamp_min(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_qparams_equal_dynamic_quantize_scales(symmetric):
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        row = torch.randn(1, 50, generator=g) * float(torch.rand((), generator=g) * 10) + float(torch.randn((), generator=g))
        o = make_observer("minmax")
        o.update(row)
        scale, zp = o.qparams(symmetric)
        _, ref_scale, ref_zp = reference.quantize_int8(row, -1, symmetric)
        assert torch.equal(scale.reshape(1), ref_scale.reshape(1))
        if not symmetric:
            assert torch.equal(zp.reshape(1), ref_zp.reshape(1))
        else:
            assert zp is None


def test_qparams_of_an_all_zero_range_is_flt_min():
    scale, zp = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), False)
    assert scale == torch.finfo(torch.float32).tiny and zp == 0


@pytest.mark.parametrize("ch_axis", [None, -1])
def test_percentile_within_a_bin_of_the_exact_quantile(ch_axis):
    x = _data(4)
    o = make_observer("percentile", ch_axis=ch_axis, percentile=99.0)
    for part in x.split(600):
        o.update(part)
    lo, hi = o.clip_range(True)
    a = x.abs() if ch_axis is None else x.abs()
    exact = torch.quantile(a.flatten() if ch_axis is None else a, 0.99, dim=None if ch_axis is None else 0)
    width = 2 * o.radius.float() / o.bins
    assert torch.all((hi - exact).abs() <= 2 * width)
    assert torch.equal(lo, -hi)
    lo_a, hi_a = o.clip_range(False)  # asymmetric: both tails
    exact_hi = torch.quantile(x.flatten() if ch_axis is None else x, 0.99, dim=None if ch_axis is None else 0)
    assert torch.all((hi_a - exact_hi).abs() <= 2 * width)


def test_histogram_growth_merges_bins_exactly():
    # Feeding growing ranges (the radius doubles several times) counts every value exactly once.
    o = make_observer("percentile", bins=256)
    parts = [torch.randn(1000) * s for s in (0.1, 1.0, 10.0, 1e6)]
    for p in parts:
        o.update(p)
    assert float(o.hist.sum()) == 4000
    # values of the first part are all within a bin or two of zero after the 1e6 growth
    assert o.radius.item() >= float(parts[-1].abs().max())


def test_histogram_is_nearly_batch_independent():
    x = _data(5).flatten()
    one, many = make_observer("entropy"), make_observer("entropy")
    one.update(x)
    for part in x.split(100):
        many.update(part)
    w = float(2 * max(one.radius, many.radius) / one.bins)
    assert abs(float(one.clip_range()[1]) - float(many.clip_range()[1])) <= 4 * w


def test_mse_picks_near_the_brute_force_optimum():
    x = _data(6).flatten()
    o = MSEObserver(candidates=100)
    o.update(x)
    t = float(o.clip_range(True)[1])

    def mse(clip):
        s = clip / 127
        return float(((torch.clamp(torch.round(x / s), -127, 127) * s - x) ** 2).mean())

    best = min(mse(float(x.abs().max()) * r / 100) for r in range(1, 101))
    assert mse(t) <= 1.1 * best
    assert t < 30.0  # the single outlier is clipped


def test_entropy_clips_outliers_but_keeps_the_body():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(7))
    x[:5] = 50.0
    o = EntropyObserver()
    o.update(x)
    t = float(o.clip_range(True)[1])
    assert 2.5 < t < 50.0


@pytest.mark.parametrize("name", OBSERVERS)
def test_every_observer_one_sided_input(name):
    x = torch.nn.functional.gelu(_data(8) * 2)
    o = make_observer(name, ch_axis=-1 if name != "entropy" else None)
    o.update(x)
    lo, hi = o.clip_range(False)
    assert torch.all(lo <= 0) and torch.all(hi >= 0) and torch.all(lo >= x.min() - 1e-6)
    assert torch.all(hi <= x.max() + 1e-6)
    scale, zp = o.qparams(False)
    assert torch.all(scale > 0) and torch.all((zp >= 0) & (zp <= 255))


@pytest.mark.parametrize("name", OBSERVERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_is_rejected_and_state_kept(name, bad):
    o = make_observer(name)
    o.update(torch.randn(100))
    before = o.clip_range()
    x = torch.randn(100)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        o.update(x)
    assert o.count == 1
    assert all(torch.equal(a, b) for a, b in zip(before, o.clip_range()))


def test_no_data_and_bad_arguments():
    with pytest.raises(ValueError, match="saw no data"):
        make_observer("mse").clip_range()
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("kl")
    with pytest.raises(ValueError, match="bins"):
        make_observer("entropy", bins=101)
    with pytest.raises(ValueError, match="percentile"):
        make_observer("percentile", percentile=40)
    with pytest.raises(ValueError, match="averaging_constant"):
        make_observer("moving_average", averaging_constant=0)
    with pytest.raises(TypeError, match="float"):
        make_observer("minmax").update(torch.arange(4))
    with pytest.raises(TypeError, match="ch_axis"):
        make_observer("minmax", ch_axis="0")
