"""Save and load compressed models: safetensors tensors + a small JSON recipe, never pickle.

Invariants:
  * A saved directory holds ``model.safetensors`` (every state_dict tensor, contiguous, shared
    storage written once) and ``fastq_recipe.json`` (format, format version, the architecture source,
    and for each swapped fastq.nn module: qualified name, class name, ``init_kwargs``).
  * Loading executes no code from the files: JSON and safetensors only (no pickle, no eval, no
    ``trust_remote_code``); module classes come only from ``fastq.nn.MODULE_TYPES`` and transformers
    model classes only from the ``transformers`` package itself.
  * Loading is strict: the file's tensor names, shapes and dtypes must equal the rebuilt model's,
    so a loaded model computes exactly what the saved one did. Every problem with the files raises
    ``LoadError`` with the file and the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

__all__ = ["FORMAT_VERSION", "LoadError", "RECIPE_FILE", "TENSORS_FILE", "load", "save"]

FORMAT = "fastq"
FORMAT_VERSION = 1
RECIPE_FILE = "fastq_recipe.json"
TENSORS_FILE = "model.safetensors"


class LoadError(ValueError):
    """A saved fastq model cannot be loaded: missing, corrupt, truncated or mismatched files."""


# ---- save ---------------------------------------------------------------------------------------

def _module_types() -> dict:
    from fastq.nn import MODULE_TYPES

    return MODULE_TYPES


def _swapped_modules(model: nn.Module) -> list[dict]:
    """One entry per fastq.nn module in ``model`` (parents before children, named_modules order)."""
    types = _module_types()
    entries = []
    for name, mod in model.named_modules():
        cls_name = type(mod).__name__
        if types.get(cls_name) is type(mod):
            if not name:
                raise ValueError("fastq.save needs a model that contains fastq modules, not a bare fastq module; "
                                 "wrap it, e.g. in nn.Sequential")
            kwargs = mod.init_kwargs()
            json.dumps(kwargs)  # fails early (TypeError) when a module breaks the JSON contract
            entries.append({"name": name, "class": cls_name, "init_kwargs": kwargs})
    return entries


def _pruned_modules(model: nn.Module) -> list[dict]:
    """Layers carrying a fastq pruning mask (``weight_mask`` buffer): name and pattern."""
    try:
        from fastq.pruning.masks import PATTERN_ATTR, is_pruned
    except ImportError:  # a fastq without pruning
        return []
    return [{"name": name, "pattern": str(getattr(m, PATTERN_ATTR, "unstructured"))}
            for name, m in model.named_modules() if is_pruned(m)]


def _architecture(model: nn.Module) -> dict:
    """Where the float skeleton comes from: a transformers config, or the caller (``base_model``)."""
    config = getattr(model, "config", None)
    try:
        from transformers import PreTrainedModel
    except ImportError:  # transformers is optional
        PreTrainedModel = None
    if PreTrainedModel is not None and isinstance(model, PreTrainedModel) and config is not None:
        import transformers

        # Through JSON text: to_json_string turns dtypes and nested configs into plain values.
        return {"source": "transformers", "model_class": type(model).__name__,
                "transformers_version": transformers.__version__,
                "config": json.loads(config.to_json_string(use_diff=False))}
    return {"source": "python", "model_class": f"{type(model).__module__}.{type(model).__qualname__}"}


def _float_dtype(model: nn.Module) -> Optional[str]:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return None


def save(model: nn.Module, directory: Union[str, os.PathLike]) -> Path:
    """Write ``model`` (compressed in place by fastq, or plain) to ``directory``.

    Writes ``model.safetensors`` (all state_dict tensors; tensors sharing storage, such as tied
    embeddings, are written once and recorded as aliases) and ``fastq_recipe.json``. The directory
    is created if needed; existing files of the same names are replaced.

    Args:
        model: any ``nn.Module``; for a transformers ``PreTrainedModel`` the recipe records its
            config, so ``fastq.load(directory)`` can rebuild it without ``base_model``.
        directory: output directory.

    Returns:
        The directory as a ``Path``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastq.save: model must be an nn.Module, got {type(model).__name__}")
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        # Same storage, offset, shape and stride = the same tensor under two names (tied weights).
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    recipe = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastq_version": _fastq_version(),
        "architecture": _architecture(model),
        "float_dtype": _float_dtype(model),
        "modules": _swapped_modules(model),
        "pruned": _pruned_modules(model),
        "aliases": aliases,
    }
    save_file(tensors, str(out / TENSORS_FILE), metadata={"format": "pt", "fastq_format_version": str(FORMAT_VERSION)})
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1, sort_keys=False) + "\n")
    return out


def _fastq_version() -> str:
    import fastq

    return fastq.__version__


# ---- load ---------------------------------------------------------------------------------------

def _read_recipe(path: Path) -> dict:
    if not path.is_file():
        raise LoadError(f"{path}: missing; is this a directory written by fastq.save?")
    try:
        recipe = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        raise LoadError(f"{path}: not a fastq recipe (no \"format\": \"{FORMAT}\")")
    version = recipe.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise LoadError(f"{path}: format_version {version!r} is not supported (this fastq reads 1..{FORMAT_VERSION}); "
                        "upgrade fastq")
    arch = recipe.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("source"), str):
        raise LoadError(f"{path}: \"architecture\" must be an object with a \"source\"")
    modules = recipe.get("modules")
    if not isinstance(modules, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("class"), str)
            and isinstance(m.get("init_kwargs"), dict) for m in modules):
        raise LoadError(f"{path}: \"modules\" must be a list of {{name, class, init_kwargs}} objects")
    pruned = recipe.get("pruned", [])
    if not isinstance(pruned, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("pattern"), str)
            for m in pruned):
        raise LoadError(f"{path}: \"pruned\" must be a list of {{name, pattern}} objects")
    aliases = recipe.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise LoadError(f"{path}: \"aliases\" must map tensor names to tensor names")
    return recipe


def _transformers_skeleton(arch: dict, float_dtype: Optional[str], where: Path) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise LoadError(f"{where}: the model was saved from transformers, which is not installed; "
                        "`pip install transformers` or pass base_model=") from None
    config_dict = arch.get("config")
    class_name = arch.get("model_class")
    if not isinstance(config_dict, dict) or not isinstance(config_dict.get("model_type"), str) \
            or not isinstance(class_name, str):
        raise LoadError(f"{where}: a transformers architecture needs \"config\" (with model_type) and \"model_class\"")
    # Only classes of the installed transformers package itself: never code named by the file.
    cls = getattr(transformers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise LoadError(f"{where}: {class_name!r} is not a transformers model class; pass base_model=")
    config_dict = {k: v for k, v in config_dict.items() if k not in ("auto_map", "trust_remote_code")}
    try:
        config = transformers.AutoConfig.for_model(**config_dict)
        model = cls(config)
    except Exception as exc:  # a config this transformers cannot build
        raise LoadError(f"{where}: cannot rebuild {class_name} from the saved config ({type(exc).__name__}: {exc})") \
            from None
    if float_dtype is not None:
        dtype = getattr(torch, float_dtype, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise LoadError(f"{where}: float_dtype {float_dtype!r} is not a torch floating dtype")
        model = model.to(dtype)
    return model


def _swap(model: nn.Module, entry: dict, types: dict, where: Path) -> None:
    name, cls_name, kwargs = entry["name"], entry["class"], entry["init_kwargs"]
    cls = types.get(cls_name)
    if cls is None:
        raise LoadError(f"{where}: module {name!r} has unknown class {cls_name!r}; "
                        f"this fastq knows {sorted(types)}")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        parent.get_submodule(child)
    except AttributeError:
        raise LoadError(f"{where}: module {name!r} does not exist in the rebuilt {type(model).__name__}") from None
    try:
        mod = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise LoadError(f"{where}: cannot build {cls_name} for {name!r} from {kwargs} ({exc})") from None
    setattr(parent, child, mod)


def _attach_mask(model: nn.Module, entry: dict, where: Path) -> None:
    """Give a pruned layer its (all-keep) mask buffer and hooks; load_state_dict fills the mask."""
    from fastq.pruning.config import parse_pattern
    from fastq.pruning.masks import attach_mask_

    try:
        module = model.get_submodule(entry["name"])
        pattern = parse_pattern(entry["pattern"]).name
    except (AttributeError, ValueError) as exc:
        raise LoadError(f"{where}: pruned layer {entry['name']!r}: {exc}") from None
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise LoadError(f"{where}: pruned layer {entry['name']!r} has no weight")
    attach_mask_(module, torch.ones_like(module.weight, dtype=torch.bool), pattern)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.is_file():
        raise LoadError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers/offsets
        raise LoadError(f"{path}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None


def load(directory: Union[str, os.PathLike],
         base_model: Optional[Union[nn.Module, Callable[[], nn.Module]]] = None) -> nn.Module:
    """Rebuild a model written by ``fastq.save``; its outputs equal the saved model's.

    The float skeleton comes from ``base_model`` when given (a module, or a zero-argument callable
    returning one, with the original architecture), otherwise from the transformers config in the
    recipe. The recipe's fastq modules are swapped in, then every tensor is loaded with strict
    name, shape and dtype checks.

    Args:
        directory: a directory written by ``fastq.save``.
        base_model: the float model (or a builder of it); required when the model was not a
            transformers ``PreTrainedModel``. Its weights are overwritten.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        LoadError: missing, corrupt, truncated or mismatched files, an unknown module class.
    """
    where = Path(directory)
    if not where.is_dir():
        raise LoadError(f"{where}: not a directory")
    recipe = _read_recipe(where / RECIPE_FILE)
    arch = recipe["architecture"]
    if base_model is not None:
        model = base_model() if not isinstance(base_model, nn.Module) and callable(base_model) else base_model
        if not isinstance(model, nn.Module):
            raise TypeError(f"base_model must be an nn.Module or a callable returning one, got {type(model).__name__}")
    elif arch["source"] == "transformers":
        model = _transformers_skeleton(arch, recipe.get("float_dtype"), where / RECIPE_FILE)
    else:
        raise LoadError(f"{where / RECIPE_FILE}: the model ({arch.get('model_class')}) was not a transformers model; "
                        "pass base_model= (the float model or a function building it)")
    types = _module_types()
    for entry in recipe["modules"]:
        _swap(model, entry, types, where / RECIPE_FILE)

    for entry in recipe.get("pruned", []):
        _attach_mask(model, entry, where / RECIPE_FILE)

    tensors = _read_tensors(where / TENSORS_FILE)
    expected = model.state_dict()
    for name, target in recipe["aliases"].items():
        if name in tensors or target not in tensors:
            raise LoadError(f"{where / RECIPE_FILE}: alias {name!r} -> {target!r} does not match the tensor file")
        tensors[name] = tensors[target]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LoadError(f"{where / TENSORS_FILE}: tensors do not match the rebuilt model: "
                        f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                        f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise LoadError(f"{where / TENSORS_FILE}: {name!r} is {got.dtype} {tuple(got.shape)} in the file but "
                            f"{want.dtype} {tuple(want.shape)} in the rebuilt model")
    try:  # fastq modules validate their buffers as they load (a bad buffer: ValueError naming it)
        model.load_state_dict(tensors, strict=True)
    except ValueError as exc:
        raise LoadError(f"{where / TENSORS_FILE}: {exc}") from None
    return model.eval()
