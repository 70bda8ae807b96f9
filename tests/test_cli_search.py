"""`fastq search` on a tiny BERT (cosine) and a tiny Llama (perplexity), `fastq compress --recipe FILE`
reproducing the searched model exactly, and bad input (one line, exit status 2).

The searches run in-process through ``cli.main`` (a subprocess would pay the imports again); the size
objective keeps every choice independent of timing on a loaded machine.
"""

import json

import pytest
import torch

import fastq
from fastq import cli
from fastq.recipe_search import LayerRecipe

transformers = pytest.importorskip("transformers")
pytest.importorskip("optuna")

from test_cli import WORDS, save_bert, table_rows  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_bert(tmp_path_factory.mktemp("models") / "tiny-bert", hidden=64, heads=4, intermediate=128)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, bert_dir):
    """A 2-layer Llama with the tiny BERT's word-piece tokenizer (a causal LM needs only some tokenizer)."""
    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(WORDS) + 5, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(str(d))
    transformers.AutoTokenizer.from_pretrained(str(bert_dir)).save_pretrained(str(d))
    return d


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The searches below run in-process: one thread, restored after each test."""
    yield


def main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_then_compress_reproduces_exactly(bert_dir, tmp_path, capsys):
    recipe, plot = tmp_path / "r.json", tmp_path / "p.png"
    code, out, err = main(capsys, "search", bert_dir, "--budget", "0.05", "--trials", "4", "--objective", "size",
                          "--transformations", "float,w8a8,int8-wo", "--out", recipe, "--plot", plot,
                          "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert code == 0, err
    assert "chosen: trial" in out and table_rows(out)["fp32"]["within budget"] == "yes"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(recipe.read_text())
    assert data["meta"]["auto_class"] == "AutoModel" and data["layers"]

    code, out, err = main(capsys, "compress", bert_dir, "--recipe", recipe, "--out", tmp_path / "c", "--sentences", "3",
                          "--repeats", "1")
    assert code == 0, err
    assert set(table_rows(out)) == {"fp32", "r.json"}
    want = LayerRecipe.load(recipe).apply_(transformers.AutoModel.from_pretrained(str(bert_dir)).eval())
    ids = torch.randint(0, len(WORDS) + 5, (2, 9))
    with torch.inference_mode():
        assert torch.equal(fastq.load(tmp_path / "c")(input_ids=ids).last_hidden_state,
                           want(input_ids=ids).last_hidden_state)


def test_search_on_a_causal_lm_by_perplexity(llama_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (400,), generator=g)))
    recipe = tmp_path / "r.json"
    code, out, err = main(capsys, "search", llama_dir, "--budget", "50%", "--trials", "3", "--objective", "size",
                          "--transformations", "float,int8-wo", "--text", text, "--window", "32", "--windows", "2",
                          "--out", recipe)
    assert code == 0, err
    assert "perplexity" in out and "lower is better" in out
    meta = json.loads(recipe.read_text())["meta"]
    assert meta["auto_class"] == "AutoModelForCausalLM" and meta["higher_is_better"] is False
    assert "lm_head" in json.loads(recipe.read_text())["layers"] or "lm_head" in json.loads(recipe.read_text())["notes"]
    code, out, err = main(capsys, "compress", llama_dir, "--recipe", recipe, "--out", tmp_path / "c", "--sentences", "2",
                          "--repeats", "1")
    assert code == 0, err
    want = LayerRecipe.load(recipe).apply_(transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval())
    ids = torch.randint(0, len(WORDS) + 5, (1, 7))
    with torch.inference_mode():
        assert torch.equal(fastq.load(tmp_path / "c")(input_ids=ids).logits, want(input_ids=ids).logits)


def test_search_bad_input(bert_dir, tmp_path, capsys):
    cases = [
        (("--budget", "lots"), "budget 'lots' is neither a number"),
        (("--budget", "0.01", "--storage", f"sqlite:///{tmp_path}/no/dir/s.db"), "cannot open the Optuna storage"),
        (("--budget", "0.01", "--trials", "0"), "--trials must be >= 1"),
        (("--budget", "0.01", "--transformations", "w4-magic"), "unknown transformation 'w4-magic'"),
    ]
    for args, text in cases:
        code, _, err = main(capsys, "search", bert_dir, *args, "--out", tmp_path / "never.json")
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and text in err, (args, err)
    code, _, err = main(capsys, "search", tmp_path / "missing", "--budget", "0.01")
    assert code == 2 and "does not exist" in err
    # A budget no recipe meets: the trials are printed, then one line says so; the storage keeps them.
    url = f"sqlite:///{tmp_path / 'b.db'}"
    # (90% pruning: W8A8 on this tiny model can round to a cosine of exactly 1, which meets a budget of 0)
    code, out, err = main(capsys, "search", bert_dir, "--budget", "0", "--trials", "3", "--objective", "size",
                          "--transformations", "float,sparse-90", "--storage", url, "--out", tmp_path / "never.json")
    assert code == 2 and "no compressed recipe keeps the quality within the budget 0" in err
    assert len(err.strip().splitlines()) == 1 and "| fp32" in out
    import optuna

    assert len(optuna.load_study(study_name="fastq-search", storage=url).trials) == 3
    micro = save_bert(tmp_path / "micro-bert", hidden=4, heads=1, intermediate=4)  # every Linear too small for int8
    code, _, err = main(capsys, "search", micro, "--budget", "0.01", "--transformations", "float,w8a8,int8-wo",
                        "--out", tmp_path / "never.json")
    assert code == 2 and "has no layer any transformation can take (nothing to compress)" in err
    assert "too small to gain from int8" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = main(capsys, "compress", bert_dir, "--recipe", bad, "--out", tmp_path / "o")
    assert code == 2 and "not a recipe file" in err
