"""Rules for functional layers whose weights are graph parameters (``F.conv2d(x, self.w)``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F

from ..channel_pass import ChannelPass
from ..edits import ArgEdit, ParamEdit
from ..masking import masked_layer_norm
from ..slots import Layout
from .common import describe, passthrough, unknown


def _arg(node: fx.Node, pos: int, name: str, default=None):
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def _producer_name(target: str) -> str:
    return target[: -len(".weight")] if target.endswith(".weight") else target


def _reader_name(node: fx.Node, target: str) -> str:
    """The producer name of the op reading weight ``target``: the weight's owner, except for a
    tied weight. ``torch.export`` keeps one name for a tensor held by two modules (GPT-2's
    ``lm_head.weight`` is ``transformer.wte.weight``), so the embedding lookup and the output
    projection read the same ``get_attr``; a read made by the forward of a module that does not
    hold the weight under that name is then named after that module (``transformer.wte``,
    ``lm_head``), as in an untied model."""
    owner = _producer_name(target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return owner
    path = list(stack.values())[-1][0]
    return path if path and not target.startswith(f"{path}.") else owner


def _weighted(a: ChannelPass, node: fx.Node, in_axis: int | None) -> Layout | None:
    """Shared body of F.linear / F.conv*d: input axis sliced on weight dim 1, new output slots."""
    x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
    wt = a.param(w)
    bt = a.param(b) if b is not None else None
    lay, shp, wshape = a.layout(x), a.shape(x), a.shape(w)
    if shp is None or wshape is None or not isinstance(w, fx.Node):
        return unknown(a, node)
    axis = len(shp) - 1 if in_axis is None else in_axis
    if wt is None or (b is not None and bt is None):
        return _computed_weight(a, node, w, lay, axis, wshape[0])
    if lay is not None and lay.dim != axis:
        a.block(lay.slots, f"{describe(a, node)} reads channels on axis {axis}")
        lay = None
    name = _reader_name(node, wt)
    if lay is not None:
        a.consume(lay.slots, name)
        a.share(wt, "dim1", lay.slots)
        a.edit(ParamEdit(wt, 1, lay.slots))
    elif len(wshape) > 1:
        a.read_untracked(wt, "dim1", wshape[1], node)
    out = a.produce(name, wshape[0])
    a.share(wt, "dim0", out)  # one weight's rows are one channel space, whoever reads it
    a.edit(ParamEdit(wt, 0, out))
    if bt is not None:
        a.edit(ParamEdit(bt, 0, out))
    return Layout(axis, out)


def _computed_weight(
    a: ChannelPass, node: fx.Node, w: fx.Node, lay: Layout | None, axis: int, n: int
) -> Layout:
    """A weight computed in forward (weight standardization, as in timm's ScaledStdConv2d):
    it cannot be sliced, so the op is a producer whose channels stay, named after the module
    holding the parameters it is computed from, and reported with the reason."""
    sources = params_behind(a, w)
    owner = _common_owner(sources) or node.name
    reason = (
        f"{describe(a, node)} uses a weight computed in forward from "
        f"{', '.join(sources) or 'non-parameter tensors'}, which fairfx cannot slice; compute "
        "the weight once into a plain parameter (a plain conv/linear) to prune it"
    )
    if lay is not None:
        a.consume(lay.slots, owner)
        a.block(lay.slots, reason)
    out = a.produce(owner, n)
    a.block(out, reason)
    return Layout(axis, out)


def params_behind(a: ChannelPass, node: fx.Node, limit: int = 64) -> list[str]:
    """The parameters and buffers a computed tensor is made from (get_attr nodes upstream)."""
    seen: set[str] = set()
    found: list[str] = []
    stack = [node]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        target = a.param(n)
        if target is not None and n.op == "get_attr":
            found.append(target)
            continue
        stack.extend(n.all_input_nodes)
    return sorted(set(found))


def _common_owner(targets: list[str]) -> str | None:
    """The deepest module path holding every target (``conv`` for conv.weight, conv.gain)."""
    parts = [t.split(".")[:-1] for t in targets]
    if not parts:
        return None
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) or None


def linear(a: ChannelPass, node: fx.Node) -> Layout | None:
    return _weighted(a, node, None)


def conv(a: ChannelPass, node: fx.Node) -> Layout | None:
    groups = a.value(_arg(node, 6, "groups", 1))
    if groups == 1:
        return _weighted(a, node, 1)
    wshape = a.shape(_arg(node, 1, "weight"))
    if wshape is not None and wshape[0] == groups and wshape[1] == 1:
        return _depthwise(a, node, groups)
    return _grouped(a, node, groups)


def _grouped(a: ChannelPass, node: fx.Node, groups: Any) -> Layout | None:
    """A grouped conv (RegNet, ResNeXt), weight ``[out, in/groups, *k]``: every group must keep
    the same input offsets and the same number of outputs, so input column ``j`` of every group
    is one unit, and so is output row ``j`` of every group; ``groups`` stays as it is."""
    x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
    lay, wshape = a.layout(x), a.shape(w)
    wt, bt = a.param(w), (a.param(b) if b is not None else None)
    plain = wt is not None and wshape is not None and (b is None or bt is not None)
    if not plain or not isinstance(groups, int) or wshape[0] % groups:
        return unknown(a, node)
    if lay is not None and (lay.dim != 1 or lay.size != groups * wshape[1]):
        return unknown(a, node)
    if lay is None:
        a.read_untracked(wt, "dim1", wshape[1], node)
    else:
        cols = lay.slots.reshape(groups, -1)
        for k in range(1, groups):
            a.union(cols[0], cols[k])
        a.consume(lay.slots, _producer_name(wt))
        a.share(wt, "dim1", cols[0])
        a.edit(ParamEdit(wt, 1, cols[0]))
    out = a.produce(_producer_name(wt), wshape[0])
    rows = out.reshape(groups, -1)
    for k in range(1, groups):
        a.union(rows[0], rows[k])
    a.edit(ParamEdit(wt, 0, out))
    if bt is not None:
        a.edit(ParamEdit(bt, 0, out))
    return Layout(1, out)


def _depthwise(a: ChannelPass, node: fx.Node, groups: Any) -> Layout | None:
    """Depthwise ``conv(x, w, groups=C)`` with one filter per channel: output follows input."""
    x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
    lay, wshape = a.layout(x), a.shape(w)
    wt, bt = a.param(w), (a.param(b) if b is not None else None)
    plain = wt is not None and wshape is not None and (b is None or bt is not None)
    if lay is None or lay.dim != 1 or not plain or groups != lay.size or wshape[0] != groups:
        return unknown(a, node)
    a.consume(lay.slots, _producer_name(wt))
    a.share(wt, "dim0", lay.slots)
    a.edit(ParamEdit(wt, 0, lay.slots))
    if bt is not None:
        a.edit(ParamEdit(bt, 0, lay.slots))
    a.edit(ArgEdit(node.name, _groups_rewriter(lay.slots)))
    return Layout(1, lay.slots)


def _groups_rewriter(slots: np.ndarray):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        kept = int(kept_slot[slots].sum())
        if "groups" in n.kwargs:
            n.kwargs = {**n.kwargs, "groups": kept}
        else:
            n.args = (*n.args[:6], kept, *n.args[7:])

    return rewrite


def embedding(a: ChannelPass, node: fx.Node, weight_pos: int = 1) -> Layout | None:
    """A lookup table ``[vocab, dim]``: its ``dim`` columns are new channels on the last axis.

    A table tied to an output projection (``lm_head.weight is wte.weight``) is one tensor read
    two ways: its columns are these channels and the projection's input features (``share``
    makes them one set of units), its rows are the vocabulary the projection produces."""
    w = node.args[weight_pos] if len(node.args) > weight_pos else node.kwargs.get("weight")
    wt, wshape, out = a.param(w), a.shape(w), a.shape(node)
    if wt is None or wshape is None or out is None or len(wshape) != 2:
        return unknown(a, node)
    slots = a.produce(_reader_name(node, wt), wshape[1])
    a.share(wt, "dim1", slots)
    a.edit(ParamEdit(wt, 1, slots))
    return Layout(len(out) - 1, slots)


def addmm(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``addmm(bias, x, w)`` with ``w`` of shape ``[in, out]`` (GPT-2's Conv1D)."""
    b, x, w = node.args[:3]
    wt, bt, wshape = a.param(w), a.param(b), a.shape(w)
    lay = a.layout(x)
    if wt is None or bt is None or wshape is None or (lay is not None and lay.dim != 1):
        return unknown(a, node)
    if lay is not None:
        a.consume(lay.slots, _producer_name(wt))
        a.share(wt, "dim0", lay.slots)
        a.edit(ParamEdit(wt, 0, lay.slots))
    out = a.produce(_producer_name(wt), wshape[1])
    a.edit(ParamEdit(wt, 1, out))
    a.edit(ParamEdit(bt, 0, out))
    return Layout(1, out)


_F_BN_ARGS = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
_ATEN_BN_ARGS = ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))


def batch_norm(a: ChannelPass, node: fx.Node, fields=_F_BN_ARGS) -> Layout | None:
    """F.batch_norm (``aten_batch_norm`` for ATen's argument order): per-channel, sliced."""
    lay = a.layout(node.args[0])
    if lay is None:
        return None
    if lay.dim != 1:
        return unknown(a, node)
    for pos, name in fields:
        t = _arg(node, pos, name)
        if t is None:
            continue
        target = a.param(t)
        if target is None:
            return unknown(a, node)
        a.edit(ParamEdit(target, 0, lay.slots))
    return passthrough(a, node)


def aten_batch_norm(a: ChannelPass, node: fx.Node) -> Layout | None:
    return batch_norm(a, node, _ATEN_BN_ARGS)


def layer_norm(a: ChannelPass, node: fx.Node) -> Layout | None:

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
    F.embedding: embedding,
}
