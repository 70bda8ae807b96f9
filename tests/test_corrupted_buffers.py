"""Corrupted module buffers, each case in its own child process (``_isolation.run_isolated``): a
fastq module whose packed buffers were replaced with bad values (through ``load_state_dict``, a
plain attribute assignment, or a write through ``.data`` / ``.numpy()`` that bypasses the tensor
version counter), fed an input of the wrong width, converted with ``.to()``, or built under
``torch.inference_mode``. Each must end in a clear ``ValueError`` / ``TypeError`` (or, where the
module is still valid, the right output): never a crash, a hang or a silent wrong result.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastq
from fastq._native import ISA_NAMES as ISAS
from fastq.nn import QuantLinear, SparseLinear
from fastq.ops import reference

from _isolation import expect_error, expect_no_crash, needs_fork, run_isolated

pytestmark = needs_fork

CLEAR = ("ValueError", "TypeError", "LoadError")


def _sparse(fmt: str, n: int = 48, k: int = 64) -> SparseLinear:
    torch.manual_seed(3)
    lin = nn.Linear(k, n)
    pattern = {"24": "2:4", "bsr": (4, 4)}.get(fmt, "unstructured")
    model = nn.Sequential(lin)
    fastq.prune_(model, fastq.PruneConfig(sparsity=None if fmt == "24" else 0.75, pattern=pattern))
    storage = {"csr": "csr", "int8": "csr", "ell": "ell", "ell_int8": "ell"}.get(fmt)
    return SparseLinear.from_float(model[0], int8=fmt in ("int8", "ell_int8"), format=storage).eval()


FORMATS = ["csr", "int8", "24", "bsr", "ell", "ell_int8"]

# (format, buffer, how to corrupt it): values no kernel may read unchecked
CORRUPTIONS = {
    "csr-cols-ffff": ("csr", "cols", lambda t: t.fill_(-1)),
    "csr-row_ptr-shift": ("csr", "row_ptr", lambda t: t[1:-1].add_(1)),
    "csr-row_ptr-decreasing": ("csr", "row_ptr", lambda t: t[1].fill_(int(t[-1]) + 16)),
    "int8-cols-k": ("int8", "cols", lambda t: t[0].fill_(64)),
    "int8-row_ptr-shift": ("int8", "row_ptr", lambda t: t[1:-1].add_(1)),
    "bsr-block_col": ("bsr", "block_col", lambda t: t[0].fill_(16)),
    "bsr-row_ptr-shift": ("bsr", "row_ptr", lambda t: t[1:-1].add_(1)),
    "ell-offsets": ("ell", "offsets", lambda t: t[0, 0].fill_(32)),
    "ell-steps": ("ell", "steps", lambda t: t[0, 0].fill_(200)),
    "ell-group_ptr": ("ell", "group_ptr", lambda t: t[-1].add_(1)),
    "ell_int8-offsets": ("ell_int8", "offsets", lambda t: t.fill_(255)),
}


def _forward(layer, m: int = 16, k: int = 64):
    return layer(torch.randn(m, k)).shape


def _corrupt_and_run(case, how):
    """Corrupt one buffer of a working layer ``how``, then run forwards (small and large M)."""
    fmt, name, corrupt = CORRUPTIONS[case]
    layer = _sparse(fmt)
    if how == "load_state_dict":
        sd = {k: v.clone() for k, v in layer.state_dict().items()}
        corrupt(sd[name])
        layer.load_state_dict(sd)
    else:
        _forward(layer)  # the first forward validates (and may cache the verdict)
        if how == "data":  # .data writes do not bump the version the caches key on
            corrupt(getattr(layer, name).data)
        elif how == "numpy":  # shares memory, bypasses the version counter too
            corrupt(torch.from_numpy(getattr(layer, name).numpy()))
        else:  # a plain assignment of a bad tensor
            bad = getattr(layer, name).clone()
            corrupt(bad)
            setattr(layer, name, bad)
    for m in (16, 3):
        _forward(layer, m)
    return "no error"


# Writes through .data / numpy bypass the version counter, so only the kernels' own read-time checks
# (indices clamped, row pointers checked as read) can see them. An edit that leaves the buffers
# structurally valid (a BSR row pointer shifted inside the array: still monotone and in range) is a
# weight edit, as on nn.Linear.weight.data: every kernel must compute exactly what the edited
# buffers say (checked against the reference below), never read past them.
WEIGHT_EDITS = {("data", "bsr-row_ptr-shift"), ("numpy", "bsr-row_ptr-shift")}


@pytest.mark.parametrize("how,case", [(how, case) for how in ("load_state_dict", "data", "numpy", "assignment")
                                      for case in CORRUPTIONS if (how, case) not in WEIGHT_EDITS])
def test_corrupted_sparse_buffer_is_refused(how, case):
    expect_error(run_isolated(_corrupt_and_run, case, how), CLEAR)


def _edit_and_compare(case, how):
    """Worst |native - reference| over every ISA, after an in-bounds edit the version counter missed."""
    fmt, name, corrupt = CORRUPTIONS[case]
    assert fmt == "bsr", "compared with the BSR reference"
    worst = 0.0
    for isa in ISAS[: ISAS.index(fastq.detected_cpu_isa()) + 1]:
        fastq.set_cpu_isa(isa)
        layer = _sparse(fmt)
        x = torch.randn(16, 64)
        before = layer(x)
        edited = getattr(layer, name).data if how == "data" else torch.from_numpy(getattr(layer, name).numpy())
        corrupt(edited)
        for m in (16, 3):
            got = layer(x[:m])
            want = reference.sparse_bsr_linear(x[:m], layer.values, layer.block_col, layer.row_ptr, layer.bias,
                                               layer.out_features)
            worst = max(worst, float((got - want).abs().max()))
        if torch.equal(layer(x), before):
            return "the edit did not reach the kernel"
    return worst


@pytest.mark.parametrize("how", ["data", "numpy"])
@pytest.mark.parametrize("case", sorted({c for _, c in WEIGHT_EDITS}))
def test_valid_edit_past_the_version_counter_is_honoured(case, how):
    out = run_isolated(_edit_and_compare, case, how)
    assert out.status == "ok" and isinstance(out.value, float), out.describe()
    assert out.value <= 1e-5, f"native differs from the reference on the edited buffers by {out.value}"


def _wrong_width(fmt, k):
    layer = _sparse(fmt)
    return list(layer(torch.randn(5, k)).shape)


@pytest.mark.parametrize("k", [60, 63, 65, 68, 128])
@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_linear_refuses_a_wrong_last_dimension(fmt, k):
    expect_error(run_isolated(_wrong_width, fmt, k), "ValueError")


def _inference_mode(fmt):
    lin_ref = _sparse(fmt)
    x = torch.randn(9, 64)
    want = lin_ref(x)
    with torch.inference_mode():
        layer = _sparse(fmt)  # built, packed and run with inference tensors
        got = [layer(x), layer(x[:2])]
    return bool(torch.equal(got[0], want)) and got[1].shape == (2, 48)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_linear_under_inference_mode(fmt):
    out = run_isolated(_inference_mode, fmt)
    assert out.status == "ok" and out.value is True, out.describe()


def _convert(fmt, how):
    layer = _sparse(fmt)
    converted = {"double": layer.double, "half": layer.half, "bfloat16": layer.bfloat16,
                 "meta": lambda: layer.to("meta")}[how]()
    return list(converted(torch.randn(4, 64)).shape)


@pytest.mark.parametrize("how", ["double", "half", "bfloat16", "meta"])
@pytest.mark.parametrize("fmt", ["csr", "ell_int8"])
def test_converted_sparse_module_does_not_crash(fmt, how):
    expect_no_crash(run_isolated(_convert, fmt, how), CLEAR + ("NotImplementedError", "RuntimeError"))


# ---- QuantLinear ----------------------------------------------------------------------------------

def _quant(mode="w8a8"):
    torch.manual_seed(5)
    cfg = fastq.Int8DynamicConfig() if mode == "w8a8" else fastq.Int8WeightOnlyConfig(group_size=31)
    return QuantLinear.from_float(nn.Linear(62, 40), cfg).eval()


QUANT_CORRUPTIONS = {
    # K=62 pads to 64: byte 15 * 64 + 2 is column 62 of output 0, a padding column (must stay 0)
    "packed-padding": ("weight_packed", lambda q: q.weight_packed[15 * 64 + 2].fill_(7)),
    "scale-shape": ("weight_scale", lambda q: setattr(q, "weight_scale", torch.ones(3))),
    "scale-dtype": ("weight_scale", lambda q: setattr(q, "weight_scale", q.weight_scale.double())),
    "bias-shape": ("bias", lambda q: setattr(q, "bias", torch.ones(41))),
    "packed-short": ("weight_packed", lambda q: setattr(q, "weight_packed", q.weight_packed[:-1])),
}


def _quant_corrupt(mode, case):
    q = _quant(mode)
    q(torch.randn(3, 62))
    QUANT_CORRUPTIONS[case][1](q)
    return list(q(torch.randn(3, 62)).shape)


@pytest.mark.parametrize("case", list(QUANT_CORRUPTIONS))
@pytest.mark.parametrize("mode", ["w8a8", "wo"])
def test_corrupted_quant_buffer_is_refused(mode, case):
    expect_error(run_isolated(_quant_corrupt, mode, case), CLEAR)


def _padding_edit(mode):
    """Per ISA: is the output unchanged after a nonzero byte is written into a padding column (column
    62 of output 0; byte 15 * 64 + 2) and a padding row (output 46 of 48; byte 3000) through .data?"""
    same = {}
    for isa in ISAS[: ISAS.index(fastq.detected_cpu_isa()) + 1]:
        fastq.set_cpu_isa(isa)
        q = _quant(mode)
        x = torch.randn(33, 62)
        before = [q(x[:m]) for m in (1, 3, 33)]
        q.weight_packed.data[15 * 64 + 2].fill_(7)
        q.weight_packed.data[3000].fill_(-7)
        same[isa] = all(torch.equal(q(x[:m]), b) for m, b in zip((1, 3, 33), before))
    return same


@pytest.mark.parametrize("mode", ["w8a8", "wo"])
def test_padding_written_past_the_version_counter_is_inert(mode):
    # Assignments through the API are validated (padding must be 0, "packed-padding" above); a .data
    # write skips that check, so every kernel must keep padding out of the result: x's padded
    # columns are zero and padded output rows are never stored.
    out = run_isolated(_padding_edit, mode)
    assert out.status == "ok" and out.value and all(out.value.values()), out.describe() + str(out.value)
