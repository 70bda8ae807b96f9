"""calibrate: observers on the inputs of the layers a config quantizes, all-or-nothing, clear errors."""

import pytest
import torch
from torch import nn

import fastq
from fastq.quantization import CalibrationError, get_calibration
from fastq.quantization.calibrate import collect_stats
from fastq.quantization.observers import MinMaxObserver


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 32)
        self.unused = nn.Linear(64, 64)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.nn.functional.gelu(self.fc1(h)))


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_attaches_statistics_to_every_quantizable_layer():
    model, batches = Net(), _batches()
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0].detach().clone()))
             for n, m in model.named_modules() if n in ("conv", "fc1", "fc2")]
    cfg = fastq.Int8StaticConfig(observer="minmax")
    assert fastq.calibrate(model, batches, cfg, progress=False) is model
    for h in hooks:
        h.remove()
    for name in ("conv", "fc1", "fc2"):
        st = get_calibration(getattr(model, name))
        xs = torch.cat([x.reshape(-1) for x in seen[name]])
        assert st.observer.count == 3 and st.seen
        lo, hi = st.observer.clip_range()
        assert lo == min(xs.min(), 0) and hi == max(xs.max(), 0)
    assert get_calibration(model.fc2).channel_absmax is None  # only SmoothQuant's pass records it
    stats = collect_stats(model, [("fc2", model.fc2), ("conv", model.conv)], batches, MinMaxObserver, (), None,
                          False, channel_absmax=True)
    inputs = torch.cat([x.reshape(-1, 64) for x in seen["fc2"]])
    assert torch.equal(stats[model.fc2].channel_absmax, inputs.abs().amax(0))
    assert stats[model.conv].channel_absmax is None
    assert not get_calibration(model.unused).seen  # attached, but it never ran


def test_modes_restored_and_hooks_removed_and_no_grad():
    model = Net().train()
    fastq.calibrate(model, _batches(1), fastq.Int8StaticConfig(), progress=True)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_dict_batches_and_forward_fn():
    model = Net()
    batches = [{"x": b} for b in _batches(2)]
    fastq.calibrate(model, batches, fastq.Int8StaticConfig(), progress=False)
    assert get_calibration(model.fc1).observer.count == 2
    model2 = Net()
    fastq.calibrate(model2, _batches(2), fastq.Int8StaticConfig(), forward_fn=lambda m, b: m(b * 2), progress=False)
    assert get_calibration(model2.conv).observer.max > get_calibration(model.conv).observer.max * 1.5


def test_no_batches_is_an_error_and_changes_nothing():
    model = Net()
    with pytest.raises(CalibrationError, match="batches is empty"):
        fastq.calibrate(model, [], fastq.Int8StaticConfig(), progress=False)
    with pytest.raises(CalibrationError, match="batches is empty"):
        fastq.calibrate(model, iter([]), fastq.Int8StaticConfig(smooth_alpha=0.5), progress=False)
    assert all(get_calibration(m) is None for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_batch_names_layer_and_batch_and_keeps_old_statistics(bad):
    model = Net()
    cfg = fastq.Int8StaticConfig(observer="minmax")
    fastq.calibrate(model, _batches(2), cfg, progress=False)
    old = get_calibration(model.fc1)
    batches = _batches(3, seed=1)
    batches[2][0, 0, 0, 0] = bad
    with pytest.raises(CalibrationError, match=r"layer 'conv' received NaN or Inf in batch 2"):
        fastq.calibrate(model, batches, cfg, progress=False)
    assert get_calibration(model.fc1) is old  # the failed run attached nothing
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_configs_without_calibration_are_refused():
    with pytest.raises(TypeError, match="Int8DynamicConfig"):
        fastq.calibrate(Net(), _batches(1), fastq.Int8DynamicConfig())
    with pytest.raises(TypeError, match="nn.Module"):
        fastq.calibrate("model", _batches(1), fastq.Int8StaticConfig())
    with pytest.raises(CalibrationError, match="no layer"):
        fastq.calibrate(nn.ReLU(), _batches(1), fastq.Int8StaticConfig(), progress=False)
    with pytest.raises(TypeError, match="forward_fn"):
        fastq.calibrate(Net(), _batches(1), fastq.Int8StaticConfig(), forward_fn=3)


def test_a_model_error_propagates_and_attaches_nothing():
    model = Net()

    def forward(m, b):
        if b.shape[0] == 1:
            raise RuntimeError("boom")
        return m(b)

    with pytest.raises(RuntimeError, match="boom"):
        fastq.calibrate(model, _batches(2) + [torch.randn(1, 3, 8, 8)], fastq.Int8StaticConfig(),
                        forward_fn=forward, progress=False)
    assert all(get_calibration(m) is None for m in model.modules())
