"""p-norms, ``F.normalize``, powers and ATen's whole-tensor sum: channel-exact reductions.

A pruned channel is zero in the masked model, and zero adds nothing to a p-norm with ``p > 0``
(nor to the count of ``p = 0``, nor to the largest magnitude of ``p = inf``). So a
``linalg_vector_norm`` over the channel axis reads the channels exactly as the pruned model will,
and its result carries no channels; over other axes the channels pass through (GRN's spatial
norm in ConvNeXt-V2). ``F.normalize`` divides by such a norm, so it is exact over the channel
axis too. Negative orders are not (a negative power of zero is infinite). Sums and means over
the channel axis are :mod:`fairfx.engine.rules.reductions`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..channel_pass import ChannelPass
from ..slots import Layout
from .common import describe, elementwise, passthrough, unknown


def _arg(node: fx.Node, pos: int, name: str, default: Any) -> Any:
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def _reduce(a: ChannelPass, node: fx.Node, dims: Any, keepdim: Any, order: Any) -> Any:
    """Channels through a reduction over ``dims``: consumed when their axis is reduced."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dims, keepdim, order = a.value(dims), a.value(keepdim), a.value(order)
    if shp is None or not (isinstance(order, (int, float)) and order >= 0):
        return unknown(a, node)
    if dims is None or dims == []:
        dims = list(range(len(shp)))
    axes = {d % len(shp) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    if lay.dim in axes:
        a.consume(lay.slots, describe(a, node))
        return None
    shift = 0 if keepdim else sum(1 for d in axes if d < lay.dim)
    return Layout(lay.dim - shift, lay.slots)


def sum_all(a: ChannelPass, node: fx.Node) -> Any:
    """ATen's ``sum(x, dtype)`` over every axis."""
    return _reduce(a, node, None, False, 1)


def vector_norm(a: ChannelPass, node: fx.Node) -> Any:
    """``linalg.vector_norm(x, ord, dim, keepdim)``."""
    order = node.kwargs.get("ord", node.args[1] if len(node.args) > 1 else 2)
    return _reduce(a, node, _arg(node, 2, "dim", None), _arg(node, 3, "keepdim", False), order)


def power(a: ChannelPass, node: fx.Node) -> Any:
    """``x.pow(e)`` / ``torch.pow(x, e)``: per element, so channels pass (a tensor exponent
    is combined position by position, as in arithmetic)."""
    exponent = _arg(node, 1, "exponent", None)
    if isinstance(exponent, fx.Node) and a.shape(exponent) is not None:
        return elementwise(a, node)
    return passthrough(a, node)


def normalize(a: ChannelPass, node: fx.Node) -> Any:
    """``F.normalize(x, p, dim)``: each vector along ``dim`` divided by its p-norm."""
    x = node.args[0] if node.args else node.kwargs.get("input")
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    p, dim = a.value(_arg(node, 1, "p", 2.0)), a.value(_arg(node, 2, "dim", 1))
    if shp is None or not isinstance(dim, int) or not (isinstance(p, (int, float)) and p > 0):
        return unknown(a, node)
    if dim % len(shp) == lay.dim:
        a.consume(lay.slots, describe(a, node))
    return passthrough(a, node)


aten = torch.ops.aten

RULES: dict[Any, Any] = {
    aten.sum.default: sum_all,
    torch.linalg.vector_norm: vector_norm,
    aten.linalg_vector_norm.default: vector_norm,
    F.normalize: normalize,
    torch.pow: power,
    aten.pow.Tensor_Tensor: elementwise,
}

METHOD_RULES: dict[str, Any] = {"pow": power}
