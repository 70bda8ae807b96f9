"""bench/bench_linear.py measures what it claims: every candidate computes the same layer, the
targets are issue 3's, and a tiny end-to-end run renders its tables and JSON.

No timing is asserted (speed lives in bench/); shapes are tiny so this stays fast. Peers that are
not installed (torchao, onnxruntime are not test dependencies) must be reported, not crash.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_linear.py"


@pytest.fixture(scope="module")
def bench():
    # The bench sets process-global state: torch's thread count and the quantized engine.
    threads, engine = torch.get_num_threads(), torch.backends.quantized.engine
    spec = importlib.util.spec_from_file_location("bench_linear_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]
    torch.set_num_threads(threads)
    torch.backends.quantized.engine = engine


@pytest.fixture
def small_mlp(bench, monkeypatch):
    monkeypatch.setattr(bench, "E2E_BLOCKS", 2)
    monkeypatch.setattr(bench, "E2E_TOKENS", (1, 9))
    monkeypatch.setattr(bench, "E2E_DIM", 64)
    monkeypatch.setattr(bench, "E2E_HIDDEN", 96)


REQUIRED = ("fp32", "fastq-w8a8", "fastq-wo")  # always available; the peers depend on what is installed


def _check_candidate(bench, model, name, fwd, x, ref, out_features):
    """One candidate computes the layer: shape, overall error, the bias, and the scale.

    The overall error bound (6e-2) admits 8-bit rounding noise (~1e-2; 7-bit ao ~3e-2) but is too
    loose to see a 1% scale error or a small dropped bias, so both are checked on their own:
    * the bias: on x = 0 the activations quantize to zero codes, so y is the layer's output at 0
      (the bias of a single layer), within 2% of the bias's size: peers that quantize the bias
      itself (torch.ao's fbgemm) land within ~1%, a dropped bias is off by 100%;
    * the scale: the least-squares slope of y against the exact result (bias removed) is 1 within
      the rounding noise, which is unbiased and averages out over the M x N outputs: |slope - 1| <
      6e-3 (7-bit torch.ao: ~4e-3 on these small layers; 8-bit schemes ~1e-3), while a 1% scale error
      moves it by 1e-2.
    """
    y = torch.as_tensor(fwd(x)).double()
    assert y.shape == (x.shape[0], out_features) and y.dtype == torch.float64, name
    err = bench.rel_err(y, ref)
    assert err < (1e-5 if name == "fp32" else 6e-2), (name, err)
    zero = torch.zeros_like(x)
    at_zero = bench.reference64(model, zero)
    y0 = torch.as_tensor(fwd(zero)).double()
    assert float((y0 - at_zero).abs().max()) <= 2e-2 * float(at_zero.abs().max()), (name, "bias")
    signal = ref - at_zero
    slope = float(((y - y0) * signal).sum() / (signal * signal).sum())
    assert abs(slope - 1) < 6e-3, (name, "scale", slope)


def _check_all(bench, model, x, out_features):
    fwds, failed = bench.build_all(model)
    for name in REQUIRED:
        assert name in fwds, f"{name} failed to build: {failed.get(name)}"
    assert set(fwds) | set(failed) == set(bench.CANDIDATES)
    assert all(why for why in failed.values())
    ref = bench.reference64(model, x)
    with torch.no_grad():
        for name, fwd in fwds.items():
            _check_candidate(bench, model, name, fwd, x, ref, out_features)


def test_the_check_catches_a_scale_error_and_a_dropped_bias(bench):
    """The self-check must fail a candidate 1% off in scale or without its bias (it once passed both)."""
    model, x = bench.make_layer(96, 33, seed=3), bench.make_input(7, 96, seed=4)
    ref = bench.reference64(model, x)
    bias = model[0].bias.detach()
    fwd = bench.build_all(model)[0]["fastq-w8a8"]
    with torch.no_grad():
        _check_candidate(bench, model, "fastq-w8a8", fwd, x, ref, 33)  # the real one passes
        for broken in (lambda x: (fwd(x) - bias) * 1.01 + bias, lambda x: fwd(x) - bias):
            with pytest.raises(AssertionError):
                _check_candidate(bench, model, "broken", broken, x, ref, 33)


@pytest.mark.parametrize("k,n,m", [(64, 48, 1), (96, 33, 7)])
def test_every_candidate_computes_the_layer(bench, k, n, m):
    _check_all(bench, bench.make_layer(k, n, seed=3), bench.make_input(m, k, seed=4), n)


def test_every_candidate_computes_the_mlp(bench, small_mlp):
    model = bench.make_mlp()
    assert len(bench._linears(model)) == 4
    _check_all(bench, model, bench.make_input(9, 64, seed=5), 64)


def test_targets_are_issue_3s(bench):
    assert bench.w8a8_target(4096, 11008, 1) == (1.2, 1.5)
    assert bench.w8a8_target(4096, 4096, 1) == (1.2, None)
    assert bench.w8a8_target(768, 768, 8)[0] == 1.2
    assert bench.w8a8_target(768, 768, 32)[0] == 1.1
    assert bench.w8a8_target(768, 768, 128)[0] == bench.w8a8_target(768, 3072, 512)[0] == 1.05
    assert bench.wo_target(4096, 11008, 1) == 3.5
    assert bench.wo_target(4096, 4096, 1) is None and bench.wo_target(768, 768, 32) is None
    assert bench.wo_target(768, 768, 128) == bench.wo_target(4096, 11008, 512) == 0.95


def test_tiny_run_reports_tables_and_json(bench, small_mlp, monkeypatch):
    monkeypatch.setattr(bench, "MIN_SAMPLE_S", 0.0)  # one call per sample: this checks plumbing, not speed
    result = bench.run([(64, 48)], [1, 5], budget_s=0.02, max_rounds=3, e2e=True, machine=False, log=lambda s: None)
    assert [(r.k, r.n, r.m) for r in result["rows"]] == [(64, 48, 1), (64, 48, 5)]
    for r in result["rows"]:
        for name in REQUIRED:
            assert len(r.timing.samples[name]) == r.timing.rounds >= 3 and all(t > 0 for t in r.timing.samples[name])
            assert r.timing.inner == 1
    text = bench.report(result)
    for needle in ("| 64x48", "w8a8 target", "w8a8 met", "wo target", "wo met", "end to end", "Notes:"):
        assert needle in text
    for name in result["unavailable"]:
        assert f"{name} unavailable" in text
    blob = json.loads(json.dumps(bench.to_json(result)))
    assert blob["rows"][0]["median_s"]["fastq-w8a8"] > 0
    assert set(blob["accuracy"]["64x48"]) >= set(REQUIRED)
    assert set(blob["e2e"]) == {"1", "9"} and blob["e2e"]["9"]["median_s"]["fastq-w8a8"] > 0
    assert "at 1 tokens" in text and "at 9 tokens" in text and "vs best int8 peer" in text


def test_broken_peers_are_reported_not_fatal(bench, monkeypatch):
    monkeypatch.setattr(bench, "MIN_SAMPLE_S", 0.0)

    def broken_build(model):
        raise RuntimeError("boom at build")

    def broken_call(model):
        def forward(x):
            raise ValueError("boom at call")
        return forward

    monkeypatch.setitem(bench.BUILDERS, "torchao-wo", broken_build)
    monkeypatch.setitem(bench.BUILDERS, "ort-dqmm", broken_call)
    result = bench.run([(64, 48)], [2], budget_s=0.02, max_rounds=3, e2e=False, machine=False, log=lambda s: None)
    assert result["unavailable"]["torchao-wo"] == "RuntimeError: boom at build"
    assert result["unavailable"]["ort-dqmm"] == "ValueError: boom at call"
    row = result["rows"][0].timing
    assert "torchao-wo" not in row.samples and "ort-dqmm" not in row.samples and "fastq-w8a8" in row.samples
    text = bench.report(result)
    assert "torchao-wo unavailable: RuntimeError: boom at build" in text
    assert "ort-dqmm unavailable: ValueError: boom at call" in text
