"""Sizes read at run time: ``B, N, C = x.shape``, ``x.size(1)``, ``C // heads``.

A size read from a tensor's *channel* axis changes when channels are pruned, so user code that
computes with it (``reshape(B, N, 3, heads, C // heads)``) would build wrong shapes in the pruned
graph. The channel pass tracks such values: every size read and the scalar arithmetic on it
records which channel slots the value depends on (sizes of other axes, such as the batch, do not
change and are not tracked). Each use is then settled one way:

- as a size argument of ``view``/``reshape``/``expand`` on the channel axis, the shape rule
  rewrites it to the kept count (:mod:`fairfx.engine.rules.shape`);
- anywhere else where a constant is right, it is *frozen* to its value at capture time: the
  masked original computes with the original sizes, so the pruned graph then computes the same
  (a ``C // heads`` head width stays the head width when whole heads go);
- an op that would build a tensor from it (``torch.zeros(B, C)``) blocks the channels with the
  reason, so ``channel_groups`` never calls prunable what ``prune`` cannot shrink.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .edits import ArgEdit
from .slots import Layout

# Scalar arithmetic whose result depends on the sizes of its operands.
_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.pow, operator.neg, int, float, math.sqrt, math.floor, math.ceil,
}  # fmt: skip
# Tensor ops that may take a frozen (capture-time) scalar without building a shape from it.
_FREEZABLE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.pow, torch.clamp,
    torch.nn.functional.scaled_dot_product_attention,
}  # fmt: skip
_FREEZABLE_METHODS = {"add", "sub", "mul", "div", "pow", "clamp", "view", "reshape", "expand"}
_FREEZABLE_FUNCTIONS |= {torch.reshape}

Deps = list[np.ndarray]


def _deps_of(a: Any, arg: Any) -> Deps:
    """Channel slots a (possibly nested) argument's value depends on."""
    if isinstance(arg, fx.Node):
        dep = a.sym.get(arg.name)
        if dep is None:
            return []
        if isinstance(dep, tuple):
            return [d for d in dep if d is not None]
        return dep
    if isinstance(arg, (list, tuple)):
        return [d for v in arg for d in _deps_of(a, v)]
    if isinstance(arg, dict):
        return [d for v in arg.values() for d in _deps_of(a, v)]
    return []


def _size_deps(lay: Any, rank: int) -> tuple[np.ndarray | None, ...] | None:
    if not isinstance(lay, Layout):
        return None
    return tuple(lay.slots if i == lay.dim else None for i in range(rank))


def track(a: Any, node: fx.Node) -> bool:
    """Record the channel dependence of a size read or scalar arithmetic; True if ``node`` is
    one (it then carries no channels)."""
    target = node.target
    if node.op == "call_function" and target is getattr and node.args[1:] == ("shape",):
        x = node.args[0]
        dep = _size_deps(a.layout(x), len(a.shape(x) or ()))
    elif (node.op == "call_method" and target == "size") or _is_sym_size(node):
        x = node.args[0]
        dep = _size_deps(a.layout(x), len(a.shape(x) or ()))
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dep is not None and dim is not None:
            dep = dep[dim]
            dep = None if dep is None else [dep]
    elif node.op == "call_function" and target is operator.getitem and _sym_container(a, node):
        container = a.sym[node.args[0].name]
        picked = container[node.args[1]]
        dep = picked if isinstance(picked, tuple) else (None if picked is None else [picked])
    elif (
        node.op == "call_function"
        and target in _ARITHMETIC
        and node.meta.get("fairfx_shape") is None
        and _deps_of(a, node.args)
    ):
        dep = _deps_of(a, node.args)
    else:
        return False
    if dep is not None and (dep if isinstance(dep, list) else any(d is not None for d in dep)):
        a.sym[node.name] = dep
    return True


def _is_sym_size(node: fx.Node) -> bool:
    return node.op == "call_function" and str(node.target).startswith("aten.sym_size")


def _sym_container(a: Any, node: fx.Node) -> bool:
    src = node.args[0]
    return isinstance(src, fx.Node) and isinstance(a.sym.get(src.name), tuple)


def settle(a: Any, node: fx.Node) -> None:
    """After ``node``'s rule ran: freeze channel-dependent scalars it reads, or block them."""
    used = [arg for arg in node.all_input_nodes if arg.name in a.sym]
    if not used or node.name in a.sym:
        return
    freezable = (node.op == "call_function" and node.target in _FREEZABLE_FUNCTIONS) or (
        node.op == "call_method" and node.target in _FREEZABLE_METHODS
    )
    if not freezable:
        name = getattr(node.target, "__name__", str(node.target))
        reason = (
            f"{name}() at node '{node.name}' builds a tensor from a size read at run time on "
            "this channel axis, which pruning changes"
        )
        for arg in used:
            a.block(np.concatenate(_deps_of(a, arg)), reason)
        return
    values = {arg.name: a.value(arg) for arg in used}
    a.edit(ArgEdit(node.name, _freezer(values)))


def _freezer(values: dict[str, Any]):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        def sub(v: Any) -> Any:
            return values[v.name] if isinstance(v, fx.Node) and v.name in values else v

        n.args = fx.node.map_aggregate(n.args, sub)
        n.kwargs = fx.node.map_aggregate(n.kwargs, sub)

    return rewrite
