"""Rules shared by modules, functions and methods: pass-through, coupling, reductions, blocking."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from ..channel_pass import ChannelPass
from ..edits import ParamEdit
from ..slots import Layout


def describe(a: ChannelPass, node: fx.Node) -> str:
    """How an op is named in messages: the module type and path, or the function name."""
    if node.op == "call_module":
        return f"{type(a.module(node.target)).__name__} module '{node.target}'"
    if node.op == "call_method":
        return f"tensor method .{node.target}() at node '{node.name}'"
    name = getattr(node.target, "__name__", str(node.target))
    return f"function {name}() at node '{node.name}'"


def unknown(a: ChannelPass, node: fx.Node) -> None:
    """No rule: keep every channel that reaches the op; never guess. The message names the
    user's layer the op sits in, and how to describe that layer to fairfx."""
    where = _enclosing_layer(node)
    hint = ""
    if where and a.gm.meta.get("fairfx_capture") != "torch.export":
        hint = f" (fairfx.register_rule({where[0]}, ...) can describe that layer)"
    inside = f" inside {where[0]} '{where[1]}'" if where else ""
    a.block_inputs(node, f"flows into {describe(a, node)}{inside}, which has no channel rule{hint}")
    return None


def _enclosing_layer(node: fx.Node) -> tuple[str, str] | None:
    """(class name, path) of the innermost module whose forward made ``node``, if recorded."""
    if node.op == "call_module":
        return None
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
    return (name, path) if path else None


def no_channels(a: ChannelPass, node: fx.Node) -> None:
    """Shape queries and scalar arithmetic: the result carries no channels."""
    return None


def first_tensor(node: fx.Node) -> Any:
    return node.args[0] if node.args else next(iter(node.kwargs.values()), None)


def passthrough(a: ChannelPass, node: fx.Node) -> Layout | None:
    """Channel-separable ops that keep the shape (activations, dropout, identity, casts)."""
    x = first_tensor(node)
    lay = a.layout(x)
    target = a.param(x)
    if target is not None and a.shape(node) is not None and a.shape(node) == a.shape(x):
        a.param_src[node.name] = target  # slicing a parameter commutes with an elementwise op
    if lay is None:
        return None
    if a.shape(node) is None or len(a.shape(node)) != len(a.shape(x) or ()):
        return unknown(a, node)
    if a.shape(node)[lay.dim] != lay.size:
        return unknown(a, node)
    return lay


def spatial(a: ChannelPass, node: fx.Node) -> Layout | None:
    """Pooling, upsampling and padding of an NC... tensor: channel axis 1 passes through."""
    x = first_tensor(node)
    lay = a.layout(x)
    if lay is None:
        return None
    out = a.shape(node)
    if lay.dim != 1 or out is None or len(out) < 2 or out[1] != lay.size:
        return unknown(a, node)
    return lay


def couple(
    a: ChannelPass, node: fx.Node, tensors: list[Any], out_shape: tuple[int, ...]
) -> Layout | None:
    """Tensors combined position by position (add, mul, where, cat on another axis).

    Laid-out operands must put their channels on the same output axis; their slots are unioned.
    An operand without channels that varies along that axis is sliced when it is a parameter
    (layer scale, position embedding) and blocks the group otherwise.
    """
    rank = len(out_shape)
    laid: list[tuple[Layout, int]] = []
    plain: list[tuple[Any, tuple[int, ...]]] = []
    for t in tensors:
        lay, shp = a.layout(t), a.shape(t)
        if lay is not None and shp is not None:
            laid.append((lay, lay.dim + rank - len(shp)))
        elif shp is not None:
            plain.append((t, shp))
    if not laid:
        return None
    dims = {d for _, d in laid}
    if len(dims) > 1:
        for lay, _ in laid:
            a.block(lay.slots, f"{describe(a, node)} combines channels from different axes")
        return None
    d = dims.pop()
    ref: np.ndarray | None = None
    for lay, _ in laid:
        if lay.size != out_shape[d]:
            a.block(lay.slots, f"{describe(a, node)} broadcasts a {lay.size}-channel tensor")
        elif ref is None:
            ref = lay.slots
        else:
            a.union(ref, lay.slots)
    if ref is None:
        return None
    for t, shp in plain:
        pd = d - (rank - len(shp))
        if pd < 0 or shp[pd] == 1:
            continue
        target = a.param(t)
        if target is None:
            a.block(ref, f"{describe(a, node)} mixes in a per-channel tensor of unknown origin")
            return None
        # Aliases (expand, to) broadcast right-aligned: the parameter's own axis is counted
        # from the right; one it lacks or holds once is broadcast and needs no slicing.
        own = a.param_shape(target)
        pd -= len(shp) - len(own)
        if pd < 0 or own[pd] == 1:
            continue
        a.edit(ParamEdit(target, pd, ref))
        a.share(target, f"dim{pd}", ref)
    return Layout(d, ref)


def elementwise(a: ChannelPass, node: fx.Node) -> Layout | None:
    """Broadcasting arithmetic: add, sub, mul, div, where, maximum, in-place variants."""
    out = a.shape(node)
    tensors = [t for t in list(node.args) + list(node.kwargs.values()) if isinstance(t, fx.Node)]
    if out is None:
        return unknown(a, node) if any(a.layout(t) is not None for t in tensors) else None
    if len(tensors) == 1 and a.param(tensors[0]) is not None and a.shape(tensors[0]) == out:
        # a parameter and scalars (Gemma's ``1 + weight``): slicing commutes with the op
        a.param_src[node.name] = a.param(tensors[0])
    return couple(a, node, tensors, out)


def reduce_dims(a: ChannelPass, node: fx.Node) -> Layout | None:
    """mean/sum/amax over axes: fine over spatial axes, blocks when the channel axis is reduced."""
    x = first_tensor(node)
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dim = a.value(dim)
    if dim is None or shp is None:
        return unknown(a, node)
    dims = {(d + len(shp)) % len(shp) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if lay.dim in dims:
        return unknown(a, node)
    keepdim = bool(
        a.value(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
    )
    shift = 0 if keepdim else sum(1 for d in dims if d < lay.dim)
    return Layout(lay.dim - shift, lay.slots)


def along_dim(a: ChannelPass, node: fx.Node) -> Layout | None:
    """softmax/log_softmax/cumsum along one axis: pass-through unless it is the channel axis."""
    x = first_tensor(node)
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dim = a.value(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
    if not isinstance(dim, int) or shp is None or (dim + len(shp)) % len(shp) == lay.dim:
        return unknown(a, node)
    return passthrough(a, node)


def param_alias(a: ChannelPass, node: fx.Node) -> Layout | None:
    """expand/to/contiguous of a parameter stay that parameter (right-aligned) for slicing."""
    x = first_tensor(node)
    target = a.param(x)
    shp_in, shp_out = a.shape(x), a.shape(node)
    if target is not None and shp_in is not None and shp_out is not None:
        a.param_src[node.name] = target
    return None if a.layout(x) is None else passthrough(a, node)
