"""Shape passes over an fx graph: an interpreter that runs on meta-device twins.

Capture records shapes by running the graph on meta tensors (no data), and the rewrite checks the
modules it rebuilt the same way. Ops whose output shape follows from their inputs' shapes are
answered by the per-op rules of :mod:`fairfx.engine.op_shapes` instead of their meta kernels;
every parameter, buffer and module is read through a meta twin made on first use, so the graph
module is never copied.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .op_shapes import shape_only


class ShapeInterpreter(fx.Interpreter):
    """An fx interpreter that, with ``meta=True``, runs on meta tensors without copying anything.

    Every parameter, buffer and module is read through a meta-device twin made on first use
    (the graph module itself is never copied), and ops whose output shape follows from their
    inputs' shapes are answered by :func:`shape_only`. With ``meta=False`` it is a plain
    interpreter (real or fake tensors).
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        *,
        meta: bool = False,
        shape_rules: bool = True,
        macs: bool = False,
    ) -> None:
        super().__init__(gm)
        self.meta = meta
        self.rules = meta and shape_rules  # False: every op runs its meta kernel (benchmarks)
        self.macs = macs  # True: conv, linear and attention run their kernels (cost model)
        self._twins: dict[int, Any] = {}

    def fetch_attr(self, target: str) -> Any:
        value = super().fetch_attr(target)
        return meta_twin(value, self._twins) if self.meta else value

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.rules:
            # Rules read parameter shapes only, so they take the module itself: its meta twin
            # (a copy of every tensor to the meta device) is made only for a kernel run.
            module = self.submodules.get(target)
            module = super().fetch_attr(target) if module is None else module
            out = shape_only("call_module", module, args, kwargs, macs=self.macs)
            if out is not NotImplemented:
                return out
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.rules:
            out = shape_only("call_function", target, args, kwargs, macs=self.macs)
            if out is not NotImplemented:
                return out
        return super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.rules:
            out = shape_only("call_method", target, args, kwargs)
            if out is not NotImplemented:
                return out
        return super().call_method(target, args, kwargs)


def meta_twin(value: Any, twins: dict[int, Any]) -> Any:
    """``value`` on the meta device: tensors moved, modules shallow-copied with meta tensors
    and put in eval mode (the original keeps its mode).

    ``twins`` maps ids of originals to their twins, so a tensor or module reached twice (tied
    weights, a module called twice) has one twin. The originals are not touched.
    """
    twin = twins.get(id(value))
    if twin is not None:
        return twin
    if isinstance(value, nn.Parameter):
        twin = nn.Parameter(value.detach().to("meta"), requires_grad=value.requires_grad)
    elif isinstance(value, torch.Tensor):
        twin = value.to("meta")
    elif isinstance(value, nn.Module):
        twin = object.__new__(type(value))  # a shallow copy without Module.__setstate__
        twin.__dict__.update(
            {
                k: meta_twin(v, twins) if isinstance(v, torch.Tensor) else v
                for k, v in vars(value).items()
            }
        )
        twin._parameters = {k: _twin_or_none(v, twins) for k, v in value._parameters.items()}
        twin._buffers = {k: _twin_or_none(v, twins) for k, v in value._buffers.items()}
        twin._modules = {k: _twin_or_none(v, twins) for k, v in value._modules.items()}
        twin.__dict__["training"] = False  # shapes are taken in eval mode
    else:
        return value
    twins[id(value)] = twin
    return twin


def _twin_or_none(value: Any, twins: dict[int, Any]) -> Any:
    return None if value is None else meta_twin(value, twins)
