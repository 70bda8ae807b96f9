"""PreparedLayer: the mixin that gives a fastq module its native plan (``fastq.ops.plans``).

Invariants:
  * a module's plan is built from its validated buffers when it is created (``from_float``),
    loaded (``_load_from_state_dict``: a bad buffer raises ValueError naming the layer and the
    buffer, before any forward), moved or cast (``_apply``) and after a buffer is replaced
    (``module.buf = t``, ``register_buffer``: the plan is dropped and rebuilt, validated, at the next
    forward); modules on the meta device get no plan;
  * ``forward`` in plain eager mode is ``plan.forward(x)``: x checks, y allocation and one native
    call. Anything else (torch.compile, export, tracing, autograd, modes, other dtypes/devices, bad
    x) goes through the module's op path, which validates and raises the clear errors;
  * a buffer written in place (its version counter moved) is validated again at the next forward;
    writes that bypass the counter (``.data``, numpy) are not seen: the kernels clamp every index
    they read, so such a write can give wrong results but never an out-of-bounds read;
  * ``_fastq_plan`` is a plan, ``NO_PLAN`` (buffers valid, no native kernel for this device or
    build: the op path serves it) or None (not built yet, or stale);
  * buffers listed in ``_KEEP_FLOAT32`` keep their dtype under ``model.half()`` / ``.to(dtype)``
    (the kernels read float32 scales and values); only their device follows;
  * a deep copy or pickle carries no plan (the copy builds its own from its own tensors).
Subclasses implement ``_make_plan() -> plan | NO_PLAN`` (validating: raise ValueError) and
``_op_forward(x)`` (the op path of [*, K] -> [*, N]); ``forward`` is that product (followed by the
activation ``fuse_activations_`` may have fused into it), and modules with more around it
(convolutions) call ``_run`` for it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NO_PLAN = False  # validated, but served by the op path


class PreparedLayer(nn.Module):
    _KEEP_FLOAT32: tuple = ()
    activation = None  # or a kind of fastq.nn.activation.KINDS, set by fuse_activations_

    def _init_plan(self) -> None:
        self.__dict__["_fastq_plan"] = None
        self.__dict__["_fastq_name"] = None

    def _init_activation(self, activation) -> None:
        """Constructor argument of the linear layers: the activation fused into them, or None."""
        if activation is not None:
            self.activation = check_kind(activation)

    def _activation_kwargs(self) -> dict:
        """Their ``init_kwargs`` entry (only when fused, so unfused recipes stay as they were)."""
        return {} if self.activation is None else {"activation": self.activation}

    def _make_plan(self):
        raise NotImplementedError

    def _op_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _layer_name(self) -> str:
        return self.__dict__.get("_fastq_name") or f"{type(self).__name__}({self.extra_repr()})"

    def prepare(self) -> None:
        """(Re)build the native plan from the current buffers; ValueError names a bad buffer."""
        self.__dict__["_fastq_plan"] = None
        self.__dict__["_fastq_versions"] = None
        if any(t.is_meta for t in self._buffers.values() if t is not None):
            self.__dict__["_fastq_plan"] = NO_PLAN  # shapes only: the op path's fake kernels serve it
            return
        try:
            plan = self._make_plan()
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            name = self._layer_name()
            raise ValueError(msg if msg.startswith(name) else f"{name}: {msg}") from None
        self.__dict__["_fastq_plan"] = plan
        self.__dict__["_fastq_versions"] = self._buffer_versions()

    def _buffer_versions(self):
        """Version counters of the buffers (None for inference tensors, which have none): an in-place
        write (``module.weight_packed[i] = v``) bumps one, and the next forward validates again."""
        try:
            return tuple(t._version for t in self._buffers.values() if t is not None)
        except RuntimeError:
            return None

    def forward(self, x: Tensor) -> Tensor:
        """[*, K] -> [*, N]: the plan in plain eager mode, else the op path (compile, export, ...);
        then the fused activation, if any."""
        if torch.compiler.is_compiling():  # first: the plan's fast path must never be traced
            y = self._op_forward(x)
        else:
            y = self._run(x)
        return y if self.activation is None else apply_activation(self.activation, y)

    def _run(self, x: Tensor) -> Tensor:
        """The module's [*, K] -> [*, N] product: the plan's fast path, else the op path."""
        plan = self._fastq_plan
        if plan is not None:
            versions = self.__dict__.get("_fastq_versions")
            if versions is not None and versions != self._buffer_versions():
                plan = None  # a buffer was written in place since it was validated
        if plan is None:  # not built yet, or a buffer was replaced or written: validate and build now
            self.prepare()
            plan = self._fastq_plan
        if plan:  # NO_PLAN is falsy
            try:
                y = plan.forward(x)
            except ValueError as exc:  # a kernel found a buffer rewritten in place since validation
                self.__dict__["_fastq_plan"] = None
                raise ValueError(f"{self._layer_name()}: {exc}") from None
            if y is not None:
                return y
        return self._op_forward(x)

    # ---- when buffers change ---------------------------------------------------------------------

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            self.__dict__["_fastq_plan"] = None

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        super().register_buffer(name, tensor, persistent)
        self.__dict__["_fastq_plan"] = None

    def _apply(self, fn, recurse=True):
        keep = {name: t for name, t in self._buffers.items() if name in self._KEEP_FLOAT32 and t is not None}
        super()._apply(fn, recurse)
        for name, t in keep.items():
            self._buffers[name] = t.to(self._buffers[name].device)
        try:
            self.prepare()
        except ValueError:
            self.__dict__["_fastq_plan"] = None  # the next forward rebuilds and raises
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix:
            self.__dict__["_fastq_name"] = prefix[:-1]
        self.__dict__["_fastq_plan"] = None
        if all(prefix + name in state_dict for name, t in self._buffers.items() if t is not None):
            self.prepare()  # a complete state: validate now, so a bad file fails at load

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fastq_plan"] = None
        return state


# At the end: fastq.nn.activation imports PreparedLayer from here.
from fastq.nn.activation import apply_activation, check_kind  # noqa: E402
