"""Rules for functional layers whose weights are graph parameters (``F.conv2d(x, self.w)``)."""

from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn.functional as F

from ..analysis import ChannelAnalysis
from ..edits import ArgEdit, ParamEdit
from ..masking import masked_layer_norm
from ..slots import Layout
from .common import describe, passthrough, unknown


def _arg(node: fx.Node, pos: int, name: str, default=None):
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def _producer_name(target: str) -> str:
    return target[: -len(".weight")] if target.endswith(".weight") else target


def _weighted(a: ChannelAnalysis, node: fx.Node, in_axis: int | None) -> Layout | None:
    """Shared body of F.linear / F.conv*d: input axis sliced on weight dim 1, new output slots."""
    x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
    wt = a.param(w)
    bt = a.param(b) if b is not None else None
    lay, shp, wshape = a.layout(x), a.shape(x), a.shape(w)
    if wt is None or wshape is None or (b is not None and bt is None) or shp is None:
        return unknown(a, node)
    axis = len(shp) - 1 if in_axis is None else in_axis
    if lay is not None and lay.dim != axis:
        a.block(lay.slots, f"{describe(a, node)} reads channels on axis {axis}")
        lay = None
    if lay is not None:
        a.consume(lay.slots, _producer_name(wt))
        a.share(wt, "dim1", lay.slots)
        a.edit(ParamEdit(wt, 1, lay.slots))
    out = a.produce(_producer_name(wt), wshape[0])
    a.edit(ParamEdit(wt, 0, out))
    if bt is not None:
        a.edit(ParamEdit(bt, 0, out))
    return Layout(axis, out)


def linear(a: ChannelAnalysis, node: fx.Node) -> Layout | None:
    return _weighted(a, node, None)


def conv(a: ChannelAnalysis, node: fx.Node) -> Layout | None:
    if a.value(_arg(node, 6, "groups", 1)) != 1:
        return unknown(a, node)
    return _weighted(a, node, 1)


def batch_norm(a: ChannelAnalysis, node: fx.Node) -> Layout | None:
    lay = a.layout(node.args[0])
    if lay is None:
        return None
    if lay.dim != 1:
        return unknown(a, node)
    for pos, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        t = _arg(node, pos, name)
        if t is None:
            continue
        target = a.param(t)
        if target is None:
            return unknown(a, node)
        a.edit(ParamEdit(target, 0, lay.slots))
    return passthrough(a, node)


def layer_norm(a: ChannelAnalysis, node: fx.Node) -> Layout | None:

    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if lay is None or shp is None:
        return None
    ns = a.value(_arg(node, 1, "normalized_shape"))
    k = len(ns) if isinstance(ns, (list, tuple)) else 1
    if lay.dim < len(shp) - k:
        return passthrough(a, node)
    if k != 1 or lay.dim != len(shp) - 1:
        return unknown(a, node)
    for pos, name in ((2, "weight"), (3, "bias")):
        t = _arg(node, pos, name)
        if t is not None and a.param(t) is None:
            return unknown(a, node)
        if t is not None:
            a.edit(ParamEdit(a.param(t), 0, lay.slots))
    a.inexact(lay.slots, f"layer_norm at node '{node.name}' normalizes over these channels")
    a.masked[node.name] = masked_layer_norm
    a.edit(ArgEdit(node.name, _normalized_shape_rewriter(lay.slots)))
    return passthrough(a, node)


def _normalized_shape_rewriter(slots: np.ndarray):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        size = (int(kept_slot[slots].sum()),)
        if "normalized_shape" in n.kwargs:
            n.kwargs = {**n.kwargs, "normalized_shape": size}
        else:
            n.args = (n.args[0], size, *n.args[2:])

    return rewrite


RULES = {
    F.linear: linear,
    F.conv1d: conv,
    F.conv2d: conv,
    F.conv3d: conv,
    F.batch_norm: batch_norm,
    F.layer_norm: layer_norm,
}
