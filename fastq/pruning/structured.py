"""Structured pruning that physically shrinks layers: channel pairs and residual blocks.

Invariants:
- a *pair* is (producer, [batchnorm], consumer): producer nn.Linear -> only elementwise ops ->
  consumer nn.Linear, or producer nn.Conv2d -> at most one nn.BatchNorm2d and elementwise ops ->
  consumer nn.Conv2d (groups == 1 on both convs). Removing output channel i of the producer (its
  weight row, bias, BN entry) and input channel i of the consumer is then exactly the same as
  zeroing the consumer's input column i in the dense model, whatever the activation and bias;
- pairs are found by torch.fx tracing, or given by name; a traceable graph is always checked
  (each module called once, the producer's output used only along the chain), an untraceable one
  (e.g. HF BERT) only by types and shapes: the user vouches for the data flow of named pairs;
- a residual block is removed (replaced by nn.Identity) only if its traced graph ends in
  elementwise(x + f(x)) with x the block input itself, and a forward on example inputs shows
  equal input and output shapes;
- every check runs before anything is modified: on refusal (ValueError naming the layer) the
  model is untouched.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastq.pruning import scores as S
from fastq.pruning.config import PruneConfig, parse_pattern
from fastq.pruning.masks import MASK, PATTERN_ATTR
from fastq.pruning.prune import group_scores, select_groups

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Dropout, nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.gelu, F.silu, torch.tanh, torch.sigmoid,
    F.tanh, F.sigmoid, F.leaky_relu, F.elu, F.hardswish, F.hardsigmoid, F.hardtanh, F.mish,
    F.softplus, F.dropout,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True)
class Pair:
    producer: str
    consumer: str
    batchnorm: Optional[str] = None


@dataclass
class StructuredReport:
    """channels: {producer: (channels before, after)}; blocks: names removed; skipped: {layer: why}."""

    channels: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    kept: Dict[str, torch.Tensor] = field(default_factory=dict)  # producer -> kept channel indices
    blocks: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)


class _Unfollowable(Exception):
    pass


def _only_node_arg(node: fx.Node, prev: fx.Node) -> bool:
    """True when ``prev`` is node's first arg and no other arg or kwarg is a graph value."""
    if not node.args or node.args[0] is not prev:
        return False
    others = list(node.args[1:]) + list(node.kwargs.values())
    found = []
    fx.node.map_arg(others, lambda n: found.append(n))
    return not found


def _is_elementwise(node: fx.Node, prev: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ELEMENTWISE_MODULES) and _only_node_arg(node, prev)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS and _only_node_arg(node, prev)
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS and _only_node_arg(node, prev)
    return False


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "output":
        return "the model output"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


def _follow(node: fx.Node, producer: nn.Module, modules: Dict[str, nn.Module]) -> Pair:
    """Walk from the producer's node to its consumer through elementwise ops (and one BN)."""
    is_conv = isinstance(producer, nn.Conv2d)
    cur, bn = node, None
    while True:
        users = list(cur.users)
        if len(users) != 1:
            raise _Unfollowable(
                f"its output feeds {len(users)} nodes ({', '.join(_describe(u) for u in users)}), not one chain"
            )
        u = users[0]
        if u.op == "output":
            raise _Unfollowable("its output is (part of) the model output, so its width cannot change")
        if u.op == "call_module":
            mod = modules[u.target]
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                if not _only_node_arg(u, cur):
                    raise _Unfollowable(f"{_describe(u)} takes other inputs too")
                return Pair(node.target, u.target, bn)
            if is_conv and bn is None and isinstance(mod, nn.BatchNorm2d) and _only_node_arg(u, cur):
                bn, cur = u.target, u
                continue
        if _is_elementwise(u, cur, modules):
            cur = u
            continue
        raise _Unfollowable(f"its output reaches {_describe(u)}, which is not an elementwise op fastq can follow")


def _check_pair_modules(pair: Pair, modules: Dict[str, nn.Module]) -> None:
    """Type and shape checks shared by traced and named pairs; ValueError names the producer."""
    for n in (pair.producer, pair.consumer) + ((pair.batchnorm,) if pair.batchnorm else ()):
        if n not in modules:
            raise ValueError(f"layer {pair.producer!r}: no module named {n!r} in the model")
    p, c = modules[pair.producer], modules[pair.consumer]
    where = f"layer {pair.producer!r}"
    if isinstance(p, nn.Linear):
        if not isinstance(c, nn.Linear) or pair.batchnorm is not None:
            raise ValueError(
                f"{where}: a Linear producer pairs with a Linear consumer and no BatchNorm, got {type(c).__name__}"
            )
        if c.in_features != p.out_features:
            raise ValueError(f"{where}: out_features {p.out_features} != {pair.consumer!r}.in_features {c.in_features}")
    elif isinstance(p, nn.Conv2d):
        if not isinstance(c, nn.Conv2d):
            raise ValueError(f"{where}: a Conv2d producer pairs with a Conv2d consumer, got {type(c).__name__}")
        if p.groups != 1 or c.groups != 1:
            raise ValueError(
                f"{where}: grouped/depthwise convolutions ({pair.producer!r} or {pair.consumer!r}) are not supported"
            )
        if c.in_channels != p.out_channels:
            raise ValueError(f"{where}: out_channels {p.out_channels} != {pair.consumer!r}.in_channels {c.in_channels}")
        if pair.batchnorm is not None:
            bn = modules[pair.batchnorm]
            if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != p.out_channels:
                raise ValueError(f"{where}: {pair.batchnorm!r} must be a BatchNorm2d with {p.out_channels} features")
    else:
        raise ValueError(f"{where}: only nn.Linear and nn.Conv2d producers can be shrunk, got {type(p).__name__}")


def _trace(model: nn.Module) -> Optional[fx.GraphModule]:
    try:
        return fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure just means "cannot follow"
        return None


def _call_counts(gm: fx.GraphModule) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def find_pairs(
    model: nn.Module,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    pairs: Optional[Sequence[Sequence[str]]] = None,
) -> Tuple[List[Pair], Dict[str, str]]:
    """The (producer, [bn], consumer) pairs to shrink, and {layer: reason} for skipped layers.

    With ``pairs`` or ``filter_fn`` every requested layer must be followable (else ValueError
    naming it); with neither, every followable Linear/Conv2d is used and the rest are skipped.
    """
    modules = dict(model.named_modules())
    gm = _trace(model)
    found: List[Pair] = []
    skipped: Dict[str, str] = {}
    if pairs is not None:
        for spec in pairs:
            if isinstance(spec, str) or len(spec) not in (2, 3):
                raise ValueError(
                    f"pairs entries are (producer, consumer) or (producer, batchnorm, consumer), got {spec!r}"
                )
            pair = Pair(spec[0], spec[-1], spec[1] if len(spec) == 3 else None)
            _check_pair_modules(pair, modules)
            if gm is not None:
                traced = _traced_pair(gm, pair.producer, modules)
                if traced != pair:
                    raise ValueError(
                        f"layer {pair.producer!r}: the traced graph pairs it as {traced}, not as requested {pair}"
                    )
            found.append(pair)
    else:
        if gm is None:
            raise ValueError(
                f"cannot trace {type(model).__name__} with torch.fx to find channel pairs; "
                f"pass pairs=[('producer', 'consumer'), ...] naming them explicitly"
            )
        for name, m in model.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                continue
            if filter_fn is not None and not filter_fn(m, name):
                continue
            try:
                found.append(_traced_pair(gm, name, modules))
            except ValueError as e:
                if filter_fn is not None:
                    raise
                skipped[name] = str(e)
        if not found:
            raise ValueError(f"no followable channel pair in {type(model).__name__}: {skipped}")
    producers = [p.producer for p in found]
    if len(set(producers)) != len(producers):
        raise ValueError(f"a producer appears twice in pairs: {producers}")
    return found, skipped


def _traced_pair(gm: fx.GraphModule, name: str, modules: Dict[str, nn.Module]) -> Pair:
    counts = _call_counts(gm)
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if not nodes:
        raise ValueError(f"layer {name!r} is not called in the traced forward; cannot follow it")
    if counts[name] > 1:
        raise ValueError(f"layer {name!r} is called {counts[name]} times in forward; cannot shrink a shared layer")
    try:
        pair = _follow(nodes[0], modules[name], modules)
    except _Unfollowable as e:
        raise ValueError(f"layer {name!r}: cannot shrink its outputs: {e}") from None
    for other in (pair.consumer, pair.batchnorm):
        if other is not None and counts.get(other, 0) > 1:
            raise ValueError(f"layer {name!r}: {other!r} is called {counts[other]} times; cannot shrink a shared layer")
    _check_pair_modules(pair, modules)
    return pair


def _slice_param(module: nn.Module, pname: str, idx: torch.Tensor, dim: int) -> None:
    p = getattr(module, pname)
    if p is None:
        return
    new = p.detach().index_select(dim, idx.to(p.device)).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, pname, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        module._buffers[pname] = new


def _shrink(modules: Dict[str, nn.Module], pair: Pair, idx: torch.Tensor) -> None:
    p, c = modules[pair.producer], modules[pair.consumer]
    n = int(idx.numel())
    _slice_param(p, "weight", idx, 0)
    _slice_param(p, "bias", idx, 0)
    if MASK in p._buffers:
        _slice_param(p, MASK, idx, 0)
    if isinstance(p, nn.Linear):
        p.out_features = n
    else:
        p.out_channels = n
    if pair.batchnorm is not None:
        bn = modules[pair.batchnorm]
        for pname in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(bn, pname, idx, 0)
        bn.num_features = n
    _slice_param(c, "weight", idx, 1)
    if MASK in c._buffers:
        _slice_param(c, MASK, idx, 1)
    if isinstance(c, nn.Linear):
        c.in_features = n
    else:
        c.in_channels = n


def _check_masks_survive(pair: Pair, modules: Dict[str, nn.Module]) -> None:
    """Refuse to cut through an N:M group or a block of an earlier prune_ mask."""
    for name, dim in ((pair.producer, 0), (pair.consumer, 1)):
        m = modules[name]
        if MASK not in m._buffers:
            continue
        pat = parse_pattern(getattr(m, PATTERN_ATTR, "unstructured"))
        broken = (pat.kind == "block" and (pat.rows if dim == 0 else pat.cols) > 1) or (pat.kind == "nm" and dim == 1)
        if broken:
            raise ValueError(
                f"layer {name!r} carries a {pat.name} mask that removing {'rows' if dim == 0 else 'columns'} "
                f"would break; run prune_channels_ before prune_ with that pattern"
            )


def _check_block(model: nn.Module, name: str, block: nn.Module) -> None:
    try:
        gm = fx.symbolic_trace(block)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"block {name!r}: cannot trace it with torch.fx ({type(e).__name__}); cannot check its skip path"
        ) from None
    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"block {name!r}: takes {len(placeholders)} inputs; only single-input blocks can be removed")
    x = placeholders[0]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0]
    while (
        isinstance(node, fx.Node)
        and node.args
        and isinstance(node.args[0], fx.Node)
        and _is_elementwise(node, node.args[0], modules)
    ):
        node = node.args[0]
    is_add = isinstance(node, fx.Node) and (
        (node.op == "call_function" and node.target in _ADD_FUNCTIONS)
        or (node.op == "call_method" and node.target in ("add", "add_"))
    )
    if not is_add or len(node.args) != 2 or not node.kwargs == {} or x not in node.args:
        raise ValueError(
            f"block {name!r}: its output is not elementwise(x + f(x)) with an identity skip from its "
            f"input (a downsample or projection shortcut cannot be removed)"
        )


def _block_shapes(model: nn.Module, blocks: Dict[str, nn.Module], example_inputs: Any) -> Dict[str, Tuple]:
    seen: Dict[str, Tuple] = {}
    handles = []
    for name, b in blocks.items():
        def hook(mod, args, output, name=name):
            seen[name] = (tuple(args[0].shape) if args and torch.is_tensor(args[0]) else None,
                          tuple(output.shape) if torch.is_tensor(output) else None)
        handles.append(b.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            S.run_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.train(t)
    return seen


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def prune_channels_(
    model: nn.Module,
    config: PruneConfig,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    *,
    pairs: Optional[Sequence[Sequence[str]]] = None,
    blocks: Optional[Sequence[str]] = None,
    example_inputs: Any = None,
    batch: Any = None,
    loss_fn: Optional[Callable] = None,
) -> StructuredReport:
    """Physically remove output channels (with the matching consumer inputs) and residual blocks.

    Args:
        model: the model, changed in place (Parameters are replaced: build the optimizer after).
        config: PruneConfig with pattern "channels"; ``sparsity`` is the fraction of each
            producer's output channels removed (scope "global": of all producers' channels
            together, ranked by group norm). sparsity 0.0 removes no channels (blocks only).
        filter_fn: ``filter_fn(module, name)`` choosing producers among traced layers; every
            chosen layer must be followable.
        pairs: explicit ``[(producer, consumer)]`` or ``[(producer, batchnorm, consumer)]`` names,
            e.g. ``[("encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense")]`` for
            a BERT FFN (untraceable models are then checked by types and shapes only).
        blocks: names of residual blocks to replace with nn.Identity.
        example_inputs: model inputs (tensor, tuple or dict) used to check block shapes; defaults
            to ``batch[0]``.
        batch, loss_fn: for criterion "taylor", as in ``prune_``.

    Returns:
        A StructuredReport (channels before/after per producer, kept indices, removed blocks,
        skipped layers with the reason).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune_channels_: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, PruneConfig):
        raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
    if config.pattern != "channels":
        raise ValueError(f"prune_channels_ needs PruneConfig(pattern='channels'), got {config.pattern!r}")
    report = StructuredReport()

    # Blocks: check every one before removing any.
    block_mods: Dict[str, nn.Module] = {}
    for name in blocks or ():
        try:
            block_mods[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"block {name!r}: no such module in the model") from None
        if block_mods[name] is model:
            raise ValueError("cannot remove the whole model as a block")
    if block_mods:
        for name, b in block_mods.items():
            _check_block(model, name, b)
        if example_inputs is None and batch is not None:
            example_inputs = batch[0]
        if example_inputs is None:
            raise ValueError("removing blocks needs example_inputs= (or batch=) to check in/out shapes")
        shapes = _block_shapes(model, block_mods, example_inputs)
        for name in block_mods:
            if name not in shapes:
                raise ValueError(f"block {name!r} did not run in the forward pass on example_inputs")
            i, o = shapes[name]
            if i is None or i != o:
                raise ValueError(
                    f"block {name!r}: input shape {i} != output shape {o}; removing it would break the model"
                )

    # Channels: find, score and select everything before modifying anything.
    plan: List[Tuple[Pair, torch.Tensor]] = []
    if config.sparsity > 0:
        probe = model
        if block_mods:  # trace the model as it will be after the block removal
            import copy

            probe = copy.deepcopy(model)
            for name in block_mods:
                _set_module(probe, name, nn.Identity())
        found, report.skipped = find_pairs(probe, filter_fn, pairs)
        modules = dict(model.named_modules())
        for pair in found:
            _check_masks_survive(pair, modules)
        producers = [modules[p.producer] for p in found]
        grads = (
            S.compute_gradients(model, producers, batch, loss_fn) if config.criterion == "taylor" else {}
        )
        gen = torch.Generator().manual_seed(config.seed) if config.criterion == "random" else None
        scores = group_scores(producers, config, grads, gen)
        keeps = select_groups([p.producer for p in found], scores, config.sparsity, config.scope, "output channels")
        plan = [(p, torch.nonzero(k).flatten()) for p, k in zip(found, keeps)]

    for name in block_mods:
        _set_module(model, name, nn.Identity())
        report.blocks.append(name)
    modules = dict(model.named_modules())
    for pair, idx in plan:
        before = modules[pair.producer].weight.shape[0]
        _shrink(modules, pair, idx)
        report.channels[pair.producer] = (before, int(idx.numel()))
        report.kept[pair.producer] = idx
    return report
