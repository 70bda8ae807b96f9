"""Tampered saved models: every case runs in its own child process (``_isolation.run_isolated``), so
a crash or a hang fails that case instead of the run. ``fastq.load`` must answer each with
``fastq.LoadError`` (or, where the file is still a valid model, load it and run a forward without
crashing).

Families: truncated files, flipped data bits (caught by the digests; with ``verify=False`` the
model must still not crash), edited safetensors headers, out-of-range packed indices in an
otherwise valid file (digests recomputed, so only the buffer validation can catch them), hostile
recipe values, unknown classes, and path tricks. The README's Reliability section counts them.
"""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from torch import nn

import fastq
from fastq.io import RECIPE_FILE, TENSORS_FILE, _digest

from _isolation import expect_error, expect_no_crash, needs_fork, run_isolated

pytestmark = needs_fork


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 48, bias=False))


def _build(kind: str) -> nn.Module:
    torch.manual_seed(7)
    model = mlp().eval()
    if kind == "w8a8":
        fastq.quantize_(model, fastq.Int8DynamicConfig(act_symmetric=False))
    elif kind == "wo_g32":
        fastq.quantize_(model, fastq.Int8WeightOnlyConfig(group_size=32))
    else:
        pattern = {"24": "2:4", "bsr": (4, 4)}.get(kind, "unstructured")
        fastq.prune_(model, fastq.PruneConfig(sparsity=None if kind == "24" else 0.75, pattern=pattern))
        fmt = {"csr": "csr", "int8": "csr", "ell": "ell", "ell_int8": "ell"}.get(kind)
        fastq.sparsify_(model, int8=kind in ("int8", "ell_int8"), format=fmt)
    return model


KINDS = ["w8a8", "wo_g32", "csr", "int8", "24", "bsr", "ell", "ell_int8"]
# the tensors of each kind's first layer that hold indices or layout data (what a kernel trusts)
LAYOUT_TENSORS = {"w8a8": ["0.weight_packed"], "wo_g32": ["0.weight_packed"], "csr": ["0.cols", "0.row_ptr"],
                  "int8": ["0.cols", "0.row_ptr"], "24": ["0.meta"], "bsr": ["0.block_col", "0.row_ptr"],
                  "ell": ["0.offsets", "0.steps", "0.group_ptr"], "ell_int8": ["0.offsets", "0.steps", "0.group_ptr"]}


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    dirs = {}
    for kind in KINDS:
        model = _build(kind)
        assert type(model[0]).__name__ in ("QuantLinear", "SparseLinear"), kind
        fastq.save(model, root / kind)
        dirs[kind] = root / kind
    return dirs


@pytest.fixture
def fresh(saved_dirs, tmp_path):
    """A private copy of a saved model directory, to tamper with."""
    def copy(kind: str):
        d = tmp_path / kind
        d.mkdir()
        for name in (TENSORS_FILE, RECIPE_FILE):
            (d / name).write_bytes((saved_dirs[kind] / name).read_bytes())
        return d
    return copy


def _load_and_run(directory, verify: bool = True):
    """The child's work: load, then one forward on fresh random input (a crash here is a failure)."""
    model = fastq.load(directory, base_model=mlp, verify=verify)
    y = model(torch.randn(16, 64))
    model(torch.randn(3, 64))
    return list(y.shape)


def _header(path) -> tuple[dict, int]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), n


def _write_header(path, header: dict, pad_to: int | None = None) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    text = json.dumps(header).encode()
    if pad_to is not None:
        text = text.ljust(pad_to)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def _rewrite_tensors(directory, edit) -> None:
    """Edit tensors and record matching digests: a valid file holding hostile values."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / TENSORS_FILE))
    edit(tensors)
    save_file(tensors, str(directory / TENSORS_FILE), metadata={"format": "pt"})
    recipe = json.loads((directory / RECIPE_FILE).read_text())
    recipe["digests"]["tensors"] = {k: _digest(v) for k, v in tensors.items()}
    (directory / RECIPE_FILE).write_text(json.dumps(recipe))


def _edit_recipe(directory, edit) -> None:
    recipe = json.loads((directory / RECIPE_FILE).read_text())
    edit(recipe)
    (directory / RECIPE_FILE).write_text(json.dumps(recipe))


# ---- truncated files ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["header", "data", "last-byte", "empty"])
def test_truncated_tensor_file(fresh, kind, where):
    d = fresh(kind)
    path = d / TENSORS_FILE
    data = path.read_bytes()
    _, n = _header(path)
    cut = {"header": 8 + n // 2, "data": 8 + n + (len(data) - 8 - n) // 2, "last-byte": len(data) - 1, "empty": 0}
    path.write_bytes(data[:cut[where]])
    expect_error(run_isolated(_load_and_run, d), "LoadError")


@pytest.mark.parametrize("kind", ["w8a8", "csr"])
def test_truncated_recipe(fresh, kind):
    d = fresh(kind)
    text = (d / RECIPE_FILE).read_bytes()
    (d / RECIPE_FILE).write_bytes(text[: len(text) // 2])
    expect_error(run_isolated(_load_and_run, d), "LoadError", "not valid JSON")


# ---- flipped bits: the digests catch them; without verification nothing may crash -------------------

def _flip_cases():
    cases = []
    for kind in KINDS:
        names = ["0.weight_packed", "0.weight_scale", "0.bias"] if kind in ("w8a8", "wo_g32") else \
            LAYOUT_TENSORS[kind] + ["0.q" if "int8" in kind else "0.values", "0.bias"]
        cases += [(kind, name) for name in names]
    return cases


def _flip_bit(directory, name: str, bit: int = 5) -> None:
    path = directory / TENSORS_FILE
    header, n = _header(path)
    lo, hi = header[name]["data_offsets"]
    data = bytearray(path.read_bytes())
    data[8 + n + lo + (hi - lo) // 2] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind,name", _flip_cases())
def test_flipped_bit_is_detected(fresh, kind, name):
    d = fresh(kind)
    _flip_bit(d, name)
    expect_error(run_isolated(_load_and_run, d), "LoadError", "digest")


@pytest.mark.parametrize("bit", [0, 7])
@pytest.mark.parametrize("kind,name", _flip_cases())
def test_flipped_bit_without_verification_does_not_crash(fresh, kind, name, bit):
    d = fresh(kind)
    _flip_bit(d, name, bit)
    expect_no_crash(run_isolated(_load_and_run, d, False))


def test_saves_without_digests_still_load(fresh):
    d = fresh("csr")
    _edit_recipe(d, lambda r: r.pop("digests"))
    out = run_isolated(_load_and_run, d)
    assert out.status == "ok" and out.value == [16, 48], out.describe()


@pytest.mark.parametrize("digests", [{"algorithm": "md5", "tensors": {}}, {"algorithm": "sha256", "tensors": {"x": "00"}},
                                     {"algorithm": "sha256", "tensors": {}}, "sha256", None],
                         ids=["algorithm", "short", "missing-tensors", "string", "null"])
def test_tampered_digests(fresh, digests):
    d = fresh("w8a8")
    _edit_recipe(d, lambda r: r.update(digests=digests))
    out = run_isolated(_load_and_run, d)
    if digests is None:  # "no digests": an old save, loads unverified
        assert out.status == "ok", out.describe()
    else:
        expect_error(out, "LoadError")


# ---- edited safetensors headers ----------------------------------------------------------------------

def _edit_dtype(h):
    first = next(k for k in h if k != "__metadata__")
    h[first]["dtype"] = "F64" if h[first]["dtype"] != "F64" else "F32"


def _edit_shape(h):
    first = next(k for k in h if k != "__metadata__")
    h[first]["shape"] = [s * 2 for s in h[first]["shape"]] or [2]


def _edit_offsets_past_end(h):
    first = next(k for k in h if k != "__metadata__")
    lo, hi = h[first]["data_offsets"]
    h[first]["data_offsets"] = [lo, hi + 10 ** 9]


def _edit_offsets_negative(h):
    first = next(k for k in h if k != "__metadata__")
    h[first]["data_offsets"] = [-8, 0]


def _edit_offsets_overlap(h):
    keys = [k for k in h if k != "__metadata__"]
    h[keys[1]]["data_offsets"] = h[keys[0]]["data_offsets"]


def _edit_rename(h):
    first = next(k for k in h if k != "__metadata__")
    h["../../" + first] = h.pop(first)


def _edit_unknown_dtype(h):
    first = next(k for k in h if k != "__metadata__")
    h[first]["dtype"] = "C64"


def _edit_huge_shape(h):
    first = next(k for k in h if k != "__metadata__")
    h[first]["shape"] = [2 ** 62, 2 ** 62]


def _edit_metadata(h):
    h["__metadata__"] = {"format": "pt", "x" * 1000: "y" * 10000}


HEADER_EDITS = {f.__name__.removeprefix("_edit_"): f for f in (
    _edit_dtype, _edit_shape, _edit_offsets_past_end, _edit_offsets_negative, _edit_offsets_overlap, _edit_rename,
    _edit_unknown_dtype, _edit_huge_shape, _edit_metadata)}


@pytest.mark.parametrize("kind", ["w8a8", "csr", "ell_int8"])
@pytest.mark.parametrize("edit", list(HEADER_EDITS))
def test_edited_header(fresh, kind, edit):
    d = fresh(kind)
    path = d / TENSORS_FILE
    header, n = _header(path)
    HEADER_EDITS[edit](header)
    _write_header(path, header)
    out = run_isolated(_load_and_run, d)
    if edit == "metadata":  # free-form metadata is not model data: loading may succeed
        expect_no_crash(out)
    else:
        expect_error(out, "LoadError")


@pytest.mark.parametrize("length", [0, 1, 2 ** 31, 2 ** 63 - 1, 2 ** 64 - 1])
def test_header_length_prefix(fresh, length):
    d = fresh("csr")
    path = d / TENSORS_FILE
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", length) + data[8:])
    expect_error(run_isolated(_load_and_run, d), "LoadError")


def test_header_not_json(fresh):
    d = fresh("csr")
    path = d / TENSORS_FILE
    header, n = _header(path)
    data = bytearray(path.read_bytes())
    data[8:8 + n] = b"[" * n
    path.write_bytes(bytes(data))
    expect_error(run_isolated(_load_and_run, d), "LoadError")


# ---- out-of-range packed indices in a valid file (digests recomputed) -------------------------------
# Only the modules' buffer validation can catch these (the "seam" work): LoadError naming the layer.

def _fill(name, value, index=None):
    def edit(t):
        v = t[name]
        if index is None:
            v.fill_(value)
        else:
            v.view(-1)[index] = value
    return edit


def _row_ptr_shift(name):
    def edit(t):
        t[name][1:-1] += 1  # the SIGSEGV: rows no longer multiples of the kernel's step
    return edit


def _decreasing(name):
    def edit(t):
        rp = t[name]
        rp[1], rp[2] = rp[2].clone() + 1, rp[1].clone()
    return edit


INDEX_CASES = {
    "csr-cols-ffff": ("csr", _fill("0.cols", -1)),
    "csr-cols-k": ("csr", _fill("0.cols", 64, 3)),
    "csr-row_ptr-shift": ("csr", _row_ptr_shift("0.row_ptr")),
    "csr-row_ptr-decreasing": ("csr", _decreasing("0.row_ptr")),
    "csr-row_ptr-end": ("csr", _fill("0.row_ptr", 10 ** 9, -1)),
    "csr-row_ptr-negative": ("csr", _fill("0.row_ptr", -16, 1)),
    "int8-cols-ffff": ("int8", _fill("0.cols", -1)),
    "int8-row_ptr-shift": ("int8", _row_ptr_shift("0.row_ptr")),
    "bsr-block_col": ("bsr", _fill("0.block_col", 16, 0)),
    "bsr-row_ptr-decreasing": ("bsr", _decreasing("0.row_ptr")),
    "bsr-row_ptr-end": ("bsr", _fill("0.row_ptr", 10 ** 6, -1)),
    "ell-offsets": ("ell", _fill("0.offsets", 200, 0)),
    "ell-steps": ("ell", _fill("0.steps", 255, 0)),
    "ell-group_ptr": ("ell", _fill("0.group_ptr", 10 ** 6, -1)),
    "ell_int8-offsets": ("ell_int8", _fill("0.offsets", 32, 5)),
    "ell_int8-group_ptr-decreasing": ("ell_int8", _decreasing("0.group_ptr")),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_out_of_range_indices_are_refused_at_load(fresh, case):
    kind, edit = INDEX_CASES[case]
    d = fresh(kind)
    _rewrite_tensors(d, edit)
    buffer = case.split("-")[1]
    expect_error(run_isolated(_load_and_run, d), "LoadError", buffer)


@pytest.mark.parametrize("case", ["w8a8-scale-nan", "csr-values-inf", "int8-scale-nan", "24-meta-ff"])
def test_odd_values_in_a_valid_file_do_not_crash(fresh, case):
    kind = case.split("-")[0]
    edit = {"w8a8-scale-nan": _fill("0.weight_scale", float("nan")), "csr-values-inf": _fill("0.values", float("inf")),
            "int8-scale-nan": _fill("0.scale", float("nan")), "24-meta-ff": _fill("0.meta", 255)}[case]
    d = fresh(kind)
    _rewrite_tensors(d, edit)
    expect_no_crash(run_isolated(_load_and_run, d))


# ---- hostile recipe values -----------------------------------------------------------------------------

def _kwargs(**update):
    return lambda r: r["modules"][0]["init_kwargs"].update(update)


RECIPE_CASES = {
    "in_features-float": ("w8a8", _kwargs(in_features=64.9), "in_features"),
    "in_features-bool": ("w8a8", _kwargs(in_features=True), "in_features"),
    "in_features-string": ("csr", _kwargs(in_features="64"), "in_features"),
    "bias-string": ("w8a8", _kwargs(bias="no"), "bias"),
    "bias-int": ("csr", _kwargs(bias=0), "bias"),
    "mode-unknown": ("w8a8", _kwargs(mode="int4"), "mode"),
    "group_size-float": ("wo_g32", _kwargs(group_size=32.0), "group_size"),
    "format-unknown": ("csr", _kwargs(format="coo"), "format"),
    "huge-features": ("w8a8", _kwargs(in_features=2 ** 20, out_features=2 ** 12), "in the file but"),
    "huge-entries": ("csr", _kwargs(entries=2 ** 40), "in the file but"),
    "negative-entries": ("csr", _kwargs(entries=-5), ""),
    "wrong-in_features": ("csr", _kwargs(in_features=65), "65"),
    "5000-digit-int": ("w8a8", None, "not valid JSON"),
    "deep-nesting": ("w8a8", None, "not valid JSON"),
    "float_dtype-int": ("w8a8", lambda r: r.update(float_dtype=5), "float_dtype"),
    "float_dtype-list": ("w8a8", lambda r: r.update(float_dtype=["float32"]), "float_dtype"),
    "float_dtype-int8": ("w8a8", lambda r: r.update(float_dtype="int8"), "float_dtype"),
    "modules-not-list": ("w8a8", lambda r: r.update(modules={"0": {}}), "modules"),
    "kwargs-not-dict": ("w8a8", lambda r: r["modules"][0].update(init_kwargs=[64, 96]), "modules"),
    "unknown-kwarg": ("w8a8", _kwargs(evil="__import__('os')"), "evil"),
    "format_version-bool": ("w8a8", lambda r: r.update(format_version=True), "format_version"),
    "aliases-self": ("w8a8", lambda r: r.update(aliases={"0.bias": "0.bias"}), "alias"),
    "aliases-missing": ("w8a8", lambda r: r.update(aliases={"x": "y"}), "alias"),
    "pruned-bad-pattern": ("w8a8", lambda r: r.update(pruned=[{"name": "0", "pattern": "5:4"}]), "pruned"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_hostile_recipe_values(fresh, case):
    kind, edit, match = RECIPE_CASES[case]
    d = fresh(kind)
    if case == "5000-digit-int":
        text = (d / RECIPE_FILE).read_text().replace('"in_features": 64', '"in_features": ' + "9" * 5000)
        (d / RECIPE_FILE).write_text(text)
    elif case == "deep-nesting":
        text = (d / RECIPE_FILE).read_text()
        (d / RECIPE_FILE).write_text(text[:-2] + ', "x": ' + "[" * 100000 + "]" * 100000 + "}\n")
    else:
        _edit_recipe(d, edit)
    out = run_isolated(_load_and_run, d)
    expect_error(out, "LoadError", match)
    assert out.rss_growth_mb < 512, f"load grew the process by {out.rss_growth_mb:.0f} MB before refusing"


@pytest.mark.parametrize("cls", ["os.system", "QuantLinear ", "Module", "__init__", "", "Linear", "SparseLinear.__init__"])
def test_unknown_module_class(fresh, cls):
    d = fresh("csr")
    _edit_recipe(d, lambda r: r["modules"][0].update({"class": cls}))
    expect_error(run_isolated(_load_and_run, d), "LoadError", "unknown class")


@pytest.mark.parametrize("name", ["..", "", ".", "0.weight", "__class__", "0..1", "_modules", "1", "x" * 10000,
                                  "0.bias"])
def test_module_name_tricks(fresh, name):
    d = fresh("w8a8")
    _edit_recipe(d, lambda r: r["modules"][0].update(name=name))
    expect_error(run_isolated(_load_and_run, d), "LoadError")


@pytest.mark.parametrize("name", ["..", "0.weight", "../etc/passwd"])
def test_pruned_name_tricks(fresh, name):
    d = fresh("w8a8")
    _edit_recipe(d, lambda r: r.update(pruned=[{"name": name, "pattern": "unstructured"}]))
    expect_error(run_isolated(_load_and_run, d), "LoadError")


# ---- path tricks ---------------------------------------------------------------------------------------

def test_tensor_file_symlink_outside_the_directory(fresh, tmp_path):
    d = fresh("csr")
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(d / TENSORS_FILE, outside)
    (d / TENSORS_FILE).symlink_to(outside)  # the very same bytes: only the location is wrong
    expect_error(run_isolated(_load_and_run, d), "LoadError", "outside")


def test_recipe_symlink_outside_the_directory(fresh, tmp_path):
    d = fresh("csr")
    outside = tmp_path / "elsewhere.json"
    os.replace(d / RECIPE_FILE, outside)
    (d / RECIPE_FILE).symlink_to(outside)
    expect_error(run_isolated(_load_and_run, d), "LoadError", "outside")


def test_symlink_inside_the_directory_is_fine(fresh):
    d = fresh("csr")
    os.replace(d / TENSORS_FILE, d / "real.safetensors")
    (d / TENSORS_FILE).symlink_to("real.safetensors")
    out = run_isolated(_load_and_run, d)
    assert out.status == "ok", out.describe()


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "loop", "dangling", "fifo", "directory"])
def test_special_files(fresh, target):
    d = fresh("csr")
    path = d / TENSORS_FILE
    path.unlink()
    if target == "loop":
        path.symlink_to(TENSORS_FILE)
    elif target == "dangling":
        path.symlink_to("nowhere.safetensors")
    elif target == "fifo":
        os.mkfifo(path)  # opening it would block forever
    elif target == "directory":
        path.mkdir()
    else:
        path.symlink_to(target)
    expect_error(run_isolated(_load_and_run, d, timeout=60), "LoadError")


def test_save_replaces_a_symlink_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / TENSORS_FILE).symlink_to(victim)
    fastq.save(_build("w8a8"), out)
    assert victim.read_text() == "keep me" and not (out / TENSORS_FILE).is_symlink()


# ---- a transformers skeleton built from a hostile config ------------------------------------------------

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    fastq.quantize_(model, fastq.Int8DynamicConfig())
    d = tmp_path_factory.mktemp("bert")
    fastq.save(model, d)
    return d


def _load_bert(directory):
    model = fastq.load(directory)
    ids = torch.randint(0, 97, (2, 9))
    return list(model(input_ids=ids).last_hidden_state.shape)


BERT_CASES = {
    "num_hidden_layers-1e9": {"num_hidden_layers": 10 ** 9},
    "num_hidden_layers-1e5": {"num_hidden_layers": 100000},
    "hidden_size-2^20": {"hidden_size": 2 ** 20, "num_attention_heads": 1},
    "intermediate_size-2^30": {"intermediate_size": 2 ** 30},
    "vocab_size-1e12": {"vocab_size": 10 ** 12},
    "max_position_embeddings-1e9": {"max_position_embeddings": 10 ** 9},
    "num_attention_heads-0": {"num_attention_heads": 0},
    "hidden_size-string": {"hidden_size": "64"},
    "float_dtype-int": None,
}


@pytest.mark.parametrize("case", list(BERT_CASES))
def test_hostile_transformers_config(bert_dir, tmp_path, case):
    d = tmp_path / "b"
    d.mkdir()
    for name in (TENSORS_FILE, RECIPE_FILE):
        (d / name).write_bytes((bert_dir / name).read_bytes())
    if BERT_CASES[case] is None:
        _edit_recipe(d, lambda r: r.update(float_dtype=7))
    else:
        _edit_recipe(d, lambda r: r["architecture"]["config"].update(BERT_CASES[case]))
    out = run_isolated(_load_bert, d)
    expect_error(out, "LoadError")
    assert out.rss_growth_mb < 512, f"load grew the process by {out.rss_growth_mb:.0f} MB before refusing"


def test_unmodified_files_load(saved_dirs, bert_dir):
    """The harness itself: untouched saves load and run in the child."""
    for kind, d in saved_dirs.items():
        out = run_isolated(_load_and_run, d)
        assert out.status == "ok" and out.value == [16, 48], (kind, out.describe())
    out = run_isolated(_load_bert, bert_dir)
    assert out.status == "ok" and out.value == [2, 9, 64], out.describe()
