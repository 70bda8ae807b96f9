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
    ``LoadError`` with the file and the reason, never another exception type, a crash or a hang.
  * Nothing is allocated from a size the files claim before that size is checked against the
    safetensors header: the model is first assembled on the meta device (module count bounded by
    the file's tensor count), compared with the header, and only then built for real.
  * ``fastq.save`` records a SHA-256 digest of every tensor's bytes in the recipe; ``fastq.load``
    verifies them by default, so a flipped bit is a ``LoadError``, not changed outputs.
  * Both files must be regular files inside the directory (a link pointing out of it is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
import stat
import threading
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

__all__ = ["FORMAT_VERSION", "LoadError", "RECIPE_FILE", "TENSORS_FILE", "load", "save"]

FORMAT = "fastq"
FORMAT_VERSION = 1
RECIPE_FILE = "fastq_recipe.json"
TENSORS_FILE = "model.safetensors"
DIGEST = "sha256"

# Bounds that keep a hostile recipe from making load allocate or loop without end (each one far
# above what a real model needs; the error names the bound).
MAX_RECIPE_BYTES = 64 << 20
MAX_RECIPE_INT = 1 << 40  # any integer in a module's init_kwargs
SKELETON_FACTOR, SKELETON_SLACK = 32, 2 << 30  # float skeleton bytes <= 32 x tensor-file bytes + 2 GiB
MAX_EXTRA_BUFFER_BYTES = 256 << 20  # non-persistent buffers (position ids, rotary caches) of the skeleton


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
    embeddings, are written once and recorded as aliases) and ``fastq_recipe.json``, which records
    a SHA-256 digest of every tensor (``fastq.load`` verifies them). The directory is created if
    needed; existing files of the same names are replaced (a symbolic link of that name is replaced
    itself, never the file it points to).

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
    digests = {name: _digest(t) for name, t in tensors.items()}
    recipe = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastq_version": _fastq_version(),
        "architecture": _architecture(model),
        "float_dtype": _float_dtype(model),
        "modules": _swapped_modules(model),
        "pruned": _pruned_modules(model),
        "aliases": aliases,
        "digests": {"algorithm": DIGEST, "tensors": digests},
    }
    for name in (TENSORS_FILE, RECIPE_FILE):  # replace a link itself, never the file it points to
        if (out / name).is_symlink():
            (out / name).unlink()
    save_file(tensors, str(out / TENSORS_FILE), metadata={"format": "pt", "fastq_format_version": str(FORMAT_VERSION)})
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1, sort_keys=False) + "\n")
    return out


def _digest(t: torch.Tensor) -> str:
    """SHA-256 of a CPU tensor's bytes as stored in the safetensors file (little-endian, row-major)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().data if t.numel() else b"").hexdigest()


def _fastq_version() -> str:
    import fastq

    return fastq.__version__


# ---- load ---------------------------------------------------------------------------------------

def _regular_file(where: Path, name: str) -> Path:
    """``where / name``, which must be a regular file inside ``where`` (links out of it are refused)."""
    path = where / name
    if not path.exists() and not path.is_symlink():
        raise LoadError(f"{path}: missing; is this a directory written by fastq.save?")
    try:
        resolved = path.resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError) as exc:  # a dangling or looping link
        raise LoadError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if where.resolve() not in resolved.parents:
        raise LoadError(f"{path}: is a link to {resolved}, outside {where}; fastq.load reads only files inside "
                        "the directory")
    if not stat.S_ISREG(mode):
        raise LoadError(f"{path}: not a regular file")
    return resolved


def _read_recipe(path: Path) -> dict:
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise LoadError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_RECIPE_BYTES} a recipe may have")
    try:
        recipe = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON syntax, huge integers
        raise LoadError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT:
        raise LoadError(f"{path}: not a fastq recipe (no \"format\": \"{FORMAT}\")")
    version = recipe.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise LoadError(f"{path}: format_version {version!r} is not supported (this fastq reads 1..{FORMAT_VERSION}); "
                        "upgrade fastq")
    arch = recipe.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("source"), str):
        raise LoadError(f"{path}: \"architecture\" must be an object with a \"source\"")
    float_dtype = recipe.get("float_dtype")
    if float_dtype is not None and not (isinstance(float_dtype, str) and float_dtype in _FLOAT_DTYPES):
        raise LoadError(f"{path}: float_dtype {float_dtype!r} is not one of {sorted(_FLOAT_DTYPES)} (or null)")
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
    digests = recipe.get("digests")
    if digests is not None and not (
            isinstance(digests, dict) and digests.get("algorithm") == DIGEST and isinstance(digests.get("tensors"), dict)
            and all(isinstance(k, str) and isinstance(v, str) and _HEX64.fullmatch(v)
                    for k, v in digests["tensors"].items())):
        raise LoadError(f"{path}: \"digests\" must be {{\"algorithm\": \"{DIGEST}\", \"tensors\": {{name: 64 hex digits}}}}")
    return recipe


_HEX64 = re.compile(r"[0-9a-f]{64}")
_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64}
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def _read_header(path: Path) -> dict[str, tuple[torch.dtype, tuple]]:
    """name -> (dtype, shape) of every tensor in the safetensors file, read without loading data
    (the safetensors library checks that the header's offsets fit the file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = {}
            for name in f.keys():
                sl = f.get_slice(name)
                header[name] = (sl.get_dtype(), tuple(sl.get_shape()))
    except Exception as exc:  # safetensors raises its own error types for bad headers/offsets
        raise LoadError(f"{path}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
    out = {}
    for name, (dtype, shape) in header.items():
        if dtype not in _ST_DTYPES:
            raise LoadError(f"{path}: tensor {name!r} has dtype {dtype}, which no fastq model holds")
        out[name] = (_ST_DTYPES[dtype], shape)
    return out


def _nbytes(dtype: torch.dtype, shape: tuple) -> int:
    n = torch.empty(0, dtype=dtype).element_size()
    for s in shape:
        n *= s
    return n


class _Expected:
    """What the rebuilt model must find in the file: the header plus the recipe's aliases."""

    def __init__(self, header: dict, aliases: dict, where: Path) -> None:
        self.header, self.where = header, where
        self.entries = dict(header)
        for name, target in aliases.items():
            if name in header or target not in header:
                raise LoadError(f"{where / RECIPE_FILE}: alias {name!r} -> {target!r} does not match the tensor file")
            self.entries[name] = header[target]
        self.data_bytes = sum(_nbytes(d, s) for d, s in header.values())

    def compare(self, state: dict, prefix: str = "", what: str = "the rebuilt model", exclude: tuple = ()) -> None:
        """Raise LoadError unless ``state`` (a state_dict, possibly on meta, of the module at ``prefix``)
        names exactly the file's tensors under ``prefix`` with the same dtypes and shapes; names
        under the prefixes in ``exclude`` (submodules the recipe replaces on their own) are left out."""
        path = self.where / TENSORS_FILE
        names = {k for k in self.entries if k.startswith(prefix) and not k.startswith(exclude)}
        state = {k: t for k, t in state.items() if not (prefix + k).startswith(exclude)}
        want = {prefix + k for k in state}
        missing, unexpected = sorted(want - names), sorted(names - want)
        if missing or unexpected:
            raise LoadError(f"{path}: tensors do not match {what}: "
                            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        for k, t in state.items():
            dtype, shape = self.entries[prefix + k]
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise LoadError(f"{path}: {prefix + k!r} is {dtype} {shape} in the file but {t.dtype} "
                                f"{tuple(t.shape)} in {what}")


class _TooManyModules(Exception):
    pass


@contextlib.contextmanager
def _module_budget(limit: int):
    """Abort (``_TooManyModules``) a model construction on this thread once it registers more than
    ``limit`` submodules: a recipe claiming 10**9 layers fails in milliseconds, not minutes."""
    from torch.nn.modules.module import register_module_module_registration_hook

    count, me = [0], threading.get_ident()

    def hook(module, name, submodule):
        if threading.get_ident() == me:
            count[0] += 1
            if count[0] > limit:
                raise _TooManyModules(f"more than {limit} modules")

    handle = register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _transformers_skeleton(arch: dict, float_dtype: Optional[str], where: Path, expected: _Expected) -> nn.Module:
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
    n_tensors = len(expected.header)
    for key, value in config_dict.items():  # every layer holds at least one tensor of the file
        if "layers" in key.lower() and isinstance(value, int) and not isinstance(value, bool) and value > n_tensors:
            raise LoadError(f"{where}: config {key}={value} but the tensor file holds only {n_tensors} tensors")
    try:
        with _module_budget(1000 + 16 * n_tensors):
            config = transformers.AutoConfig.for_model(**config_dict)
            model = cls(config)
    except _TooManyModules as exc:
        raise LoadError(f"{where}: the saved config builds {exc}, far more than the {n_tensors} tensors "
                        "of the file need") from None
    except Exception as exc:  # a config this transformers cannot build
        raise LoadError(f"{where}: cannot rebuild {class_name} from the saved config ({type(exc).__name__}: "
                        f"{str(exc)[:300]})") from None
    if float_dtype is not None:
        model = model.to(_FLOAT_DTYPES[float_dtype])
    return model


def _check_kwargs(cls: type, kwargs: dict, name: str, where: Path) -> None:
    """Recipe values are used as they are, never coerced: an ``int`` parameter takes a JSON integer
    (not 64.9, not true), a ``bool`` one true/false (not "no"), and every integer is bounded."""
    params = _init_params(cls)
    for key, value in kwargs.items():
        if key not in params:
            raise LoadError(f"{where}: module {name!r}: {cls.__name__} takes no argument {key!r}")
        want = params[key].annotation
        ok = _matches(want, value) if isinstance(want, str) else None
        if ok is None:  # unannotated geometry (ints, pairs of ints, padding strings)
            ok = _is_int(value) or isinstance(value, str) or (
                isinstance(value, list) and len(value) <= 4 and all(_is_int(v) for v in value))
        if not ok:
            raise LoadError(f"{where}: module {name!r}: {key}={value!r} is not a valid {want if isinstance(want, str) else 'value'} "
                            f"for {cls.__name__} (recipe values are not converted)")


def _matches(want: str, value) -> Optional[bool]:
    """Whether a JSON value is of the (string) annotation ``want``: int, bool, str, float or
    Optional[...] of one; None for any other annotation."""
    if want.startswith("Optional[") and want.endswith("]"):
        inner = _matches(want[len("Optional["):-1], value)
        return None if inner is None else value is None or inner
    check = {"int": _is_int, "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
             "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}.get(want)
    return None if check is None else check(value)


def _init_params(cls: type) -> dict:
    """Named constructor parameters of ``cls``, following ``**kwargs`` into base classes'
    constructors (SparseConv2d passes its format arguments on to SparseLinear)."""
    params: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        sig = inspect.signature(init).parameters
        for name, p in sig.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self":
                params.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.values()):
            break
    return params


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -MAX_RECIPE_INT <= v <= MAX_RECIPE_INT


def _build_module(entry: dict, types: dict, where: Path) -> nn.Module:
    name, cls_name, kwargs = entry["name"], entry["class"], entry["init_kwargs"]
    cls = types.get(cls_name)
    if cls is None:
        raise LoadError(f"{where}: module {name!r} has unknown class {cls_name!r}; "
                        f"this fastq knows {sorted(types)}")
    _check_kwargs(cls, kwargs, name, where)
    try:
        return cls(**kwargs)
    except Exception as exc:  # the module's own validation, or sizes torch cannot even describe
        raise LoadError(f"{where}: cannot build {cls_name} for {name!r} from {kwargs} "
                        f"({type(exc).__name__}: {str(exc)[:300]})") from None


def _swap(model: nn.Module, entry: dict, types: dict, where: Path, expected: _Expected, meta: bool,
          nested: tuple = ()) -> None:
    """Replace layer ``entry["name"]`` by its fastq module, after checking (on the meta device: no
    allocation yet) that the module's buffers are exactly the file's tensors under that name, but
    for those under ``nested`` (prefixes of recipe entries inside this one, swapped after it)."""
    name = entry["name"]
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
        old = parent.get_submodule(child)
    except AttributeError:
        raise LoadError(f"{where}: module {name!r} does not exist in the rebuilt {type(model).__name__}") from None
    with torch.device("meta"):
        probe = _build_module(entry, types, where)
    expected.compare(probe.state_dict(), name + ".", f"{entry['class']} {name!r} built from the recipe", nested)
    weight = getattr(old, "weight", None)
    if isinstance(weight, torch.Tensor) and tuple(weight.shape) != tuple(probe.weight_shape()):
        raise LoadError(f"{where}: module {name!r}: the recipe's {entry['class']} replaces a weight of shape "
                        f"{tuple(probe.weight_shape())} but the model's layer there has {tuple(weight.shape)}")
    setattr(parent, child, probe if meta else _build_module(entry, types, where))


def _attach_mask(model: nn.Module, entry: dict, where: Path) -> None:
    """Give a pruned layer its (all-keep) mask buffer and hooks; load_state_dict fills the mask."""
    from fastq.pruning.config import parse_pattern
    from fastq.pruning.masks import attach_mask_

    try:
        module = model.get_submodule(entry["name"])
        pattern = parse_pattern(entry["pattern"]).name
    except (AttributeError, ValueError, TypeError) as exc:
        raise LoadError(f"{where}: pruned layer {entry['name']!r}: {exc}") from None
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise LoadError(f"{where}: pruned layer {entry['name']!r} has no weight")
    attach_mask_(module, torch.ones_like(module.weight, dtype=torch.bool), pattern)


def _assemble(skeleton: nn.Module, recipe: dict, where: Path, expected: _Expected, meta: bool = False) -> nn.Module:
    """Swap the recipe's fastq modules into ``skeleton`` (left on the meta device when ``meta``),
    attach masks, compare with the file."""
    types = _module_types()
    recipe_path = where / RECIPE_FILE
    names = [entry["name"] for entry in recipe["modules"]]
    for entry in recipe["modules"]:
        nested = tuple(other + "." for other in names if other.startswith(entry["name"] + "."))
        _swap(skeleton, entry, types, recipe_path, expected, meta, nested)
    for entry in recipe.get("pruned", []):
        _attach_mask(skeleton, entry, recipe_path)
    expected.compare(skeleton.state_dict())
    return skeleton


def _dry_run(recipe: dict, where: Path, expected: _Expected) -> None:
    """Assemble the transformers model on the meta device (no memory) and bound what the real build
    will allocate: the float skeleton and the buffers that are not in the file."""
    with torch.device("meta"):
        skeleton = _transformers_skeleton(recipe["architecture"], recipe.get("float_dtype"), where / RECIPE_FILE,
                                          expected)
    skeleton_bytes = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    limit = SKELETON_FACTOR * expected.data_bytes + SKELETON_SLACK
    if skeleton_bytes > limit:
        raise LoadError(f"{where / RECIPE_FILE}: the saved config builds a {skeleton_bytes / 2**30:.1f} GiB float "
                        f"model for a {expected.data_bytes / 2**20:.1f} MiB tensor file (limit {limit / 2**30:.1f} "
                        "GiB); pass base_model= to build such a model yourself")
    model = _assemble(skeleton, recipe, where, expected, meta=True)
    persistent = {id(t) for t in model.state_dict(keep_vars=True).values()}
    extra = sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in persistent)
    if extra > MAX_EXTRA_BUFFER_BYTES:
        raise LoadError(f"{where / RECIPE_FILE}: the saved config builds {extra / 2**20:.0f} MiB of buffers that "
                        f"are not in the file (limit {MAX_EXTRA_BUFFER_BYTES >> 20} MiB)")


def _read_tensors(path: Path, digests: Optional[dict]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers/offsets
        raise LoadError(f"{path}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
    if digests is not None:
        if set(digests) != set(tensors):
            raise LoadError(f"{path}: the recipe's digests name other tensors than the file holds")
        for name, t in tensors.items():
            if _digest(t) != digests[name]:
                raise LoadError(f"{path}: tensor {name!r} does not match its {DIGEST} digest in {RECIPE_FILE}: "
                                "the file was changed or corrupted after fastq.save (verify=False skips this check)")
    return tensors


def _load_tensors(model: nn.Module, tensors: dict, recipe: dict, path: Path) -> None:
    """load_state_dict, one fastq module at a time first, so that a buffer a module refuses (its
    own validation raises ValueError) becomes a LoadError naming the layer."""
    done = set()
    for entry in recipe["modules"]:
        name = entry["name"]
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.get_submodule(name).load_state_dict(sub, strict=True)
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise LoadError(f"{path}: layer {name!r} ({entry['class']}) refuses its tensors: {exc}") from None
        done.update(prefix + k for k in sub)
    rest = {k: v for k, v in tensors.items() if k not in done}
    try:
        model.load_state_dict(rest, strict=not done)
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise LoadError(f"{path}: the model refuses its tensors: {exc}") from None


def load(directory: Union[str, os.PathLike],
         base_model: Optional[Union[nn.Module, Callable[[], nn.Module]]] = None, *, verify: bool = True) -> nn.Module:
    """Rebuild a model written by ``fastq.save``; its outputs equal the saved model's.

    The float skeleton comes from ``base_model`` when given (a module, or a zero-argument callable
    returning one, with the original architecture), otherwise from the transformers config in the
    recipe. The recipe's fastq modules are swapped in, then every tensor is loaded with strict
    name, shape and dtype checks. Before anything is built for real, the model is assembled on the
    meta device and compared with the tensor file's header, so sizes claimed by the recipe are
    bounded by the file (a transformers skeleton may take at most 32x the file's bytes + 2 GiB).

    Args:
        directory: a directory written by ``fastq.save``.
        base_model: the float model (or a builder of it); required when the model was not a
            transformers ``PreTrainedModel``. Its weights are overwritten.
        verify: check every tensor against the SHA-256 digest ``fastq.save`` recorded (default).
            False skips the hashing (SHA-256: a second or two per GB). Saves written before digests existed
            (no ``"digests"`` entry in the recipe) load without this check.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        LoadError: missing, corrupt, truncated, tampered or mismatched files (a digest mismatch, a
            recipe value of the wrong type, sizes the tensor file does not hold, an unknown module
            class, a link out of the directory, a buffer a module refuses).
    """
    where = Path(directory)
    if not where.is_dir():
        raise LoadError(f"{where}: not a directory")
    recipe_path = _regular_file(where, RECIPE_FILE)
    recipe = _read_recipe(recipe_path)
    tensors_path = _regular_file(where, TENSORS_FILE)
    expected = _Expected(_read_header(tensors_path), recipe["aliases"], where)
    arch = recipe["architecture"]
    if base_model is not None:
        model = base_model() if not isinstance(base_model, nn.Module) and callable(base_model) else base_model
        if not isinstance(model, nn.Module):
            raise TypeError(f"base_model must be an nn.Module or a callable returning one, got {type(model).__name__}")
    elif arch["source"] == "transformers":
        _dry_run(recipe, where, expected)
        model = _transformers_skeleton(arch, recipe.get("float_dtype"), where / RECIPE_FILE, expected)
    else:
        raise LoadError(f"{where / RECIPE_FILE}: the model ({arch.get('model_class')}) was not a transformers model; "
                        "pass base_model= (the float model or a function building it)")
    _assemble(model, recipe, where, expected)
    digests = recipe.get("digests", {}).get("tensors") if verify and recipe.get("digests") else None
    tensors = _read_tensors(tensors_path, digests)
    for name, target in recipe["aliases"].items():
        tensors[name] = tensors[target]
    _load_tensors(model, tensors, recipe, where / TENSORS_FILE)
    _retie(model, recipe["aliases"])
    return model.eval()


# ---- tied tensors stay tied ------------------------------------------------------------------------

def _retie(model: nn.Module, aliases: dict) -> None:
    """Tensors saved once under several names (``aliases``) become one tensor again: load_state_dict
    copied the file's tensor into each name's own tensor, so each alias's module gets its target's
    tensor object (a buffer, or a parameter when both are parameters). Already-shared ones, such as
    the embedding and head a transformers skeleton ties itself, are left as they are."""
    for name, target in aliases.items():
        owner_name, _, attr = name.rpartition(".")
        src_name, _, src_attr = target.rpartition(".")
        owner, src = model.get_submodule(owner_name), model.get_submodule(src_name)
        if attr in owner._buffers and src_attr in src._buffers:
            owner._buffers[attr] = src._buffers[src_attr]
        elif attr in owner._parameters and src_attr in src._parameters:
            owner._parameters[attr] = src._parameters[src_attr]
