"""Attention written with tensors: ``q @ k.transpose(-2, -1)``, ``attn @ v`` and
``F.scaled_dot_product_attention``.

When q, k and v carry their channels on the heads axis (the shape rule splits ``[B, N, C]`` into
``[B, N, heads, head_dim]`` with the head as the unit), attention is per head: the heads axis is a
batch axis of both products, so a head of q, its head in k and in v are one unit and the output
keeps the head's channels. Removing a head is exact under masking: a zeroed head contributes
nothing to the output projection. Grouped-query attention (fewer k/v heads, ``enable_gqa`` or k/v
repeated with ``expand``/``reshape``) ties each kv head to the query heads that read it, so a kv
group goes as a whole. Channels on the contracted axis (one dim of every head) meet the softmax
scale, which ``scaled_dot_product_attention`` computes from the head width: that case blocks.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from ..channel_pass import ChannelPass
from ..slots import Layout
from .common import describe, unknown
from .functional import params_behind


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    return node.kwargs.get(name, node.args[pos] if len(node.args) > pos else default)


def matmul(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``x @ y`` with channels on a batch axis of both (heads), or on the rows of ``x`` / the
    columns of ``y``; channels on the contracted axis of both are consumed."""
    x, y = node.args[0], node.args[1]
    lx, ly = a.layout(x), a.layout(y)
    if lx is None and ly is None:
        return None
    sx, sy, out = a.shape(x), a.shape(y), a.shape(node)
    if sx is None or sy is None or out is None or len(sx) < 2 or len(sy) < 2:
        return unknown(a, node)
    ro = len(out)
    out_lays: dict[int, list[np.ndarray]] = {}
    contracted = []
    # (layout, rank, the operand's own output axis: rows of x -> rows, columns of y -> columns)
    for lay, rank, own, to in (
        (lx, len(sx), len(sx) - 2, ro - 2),
        (ly, len(sy), len(sy) - 1, ro - 1),
    ):
        if lay is None:
            continue
        if lay.dim == own:
            out_lays.setdefault(to, []).append(lay.slots)
        elif lay.dim < rank - 2:  # a batch axis (heads): right-aligned with the output's
            out_lays.setdefault(lay.dim + ro - rank, []).append(lay.slots)
        else:
            contracted.append(lay)
    if contracted:
        if len(contracted) != 2 or contracted[0].size != contracted[1].size:
            return unknown(a, node)
        a.union(contracted[0].slots, contracted[1].slots)
        a.consume(contracted[0].slots, node.name)
    if len(out_lays) > 1:
        return unknown(a, node)
    if not out_lays:
        return None
    ((dim, parts),) = out_lays.items()
    for other in parts[1:]:
        if len(other) != len(parts[0]):
            return unknown(a, node)
        a.union(parts[0], other)
    if len(parts) == 1 and _plain_operand_varies(a, node, dim, ro, lx, ly):
        a.block(parts[0], f"{describe(a, node)} pairs these channels with a tensor that has none")
        return None
    return Layout(dim, parts[0])


def _plain_operand_varies(a, node, dim, ro, lx, ly) -> bool:
    """On a batch axis, the operand without channels must broadcast (size 1) along it."""
    for t, lay in ((node.args[0], lx), (node.args[1], ly)):
        shp = a.shape(t)
        if lay is None and shp is not None:
            pd = dim - (ro - len(shp))
            if 0 <= pd < len(shp) - 2 and shp[pd] != 1:
                return True
    return False


def sdpa(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``scaled_dot_product_attention(q, k, v, attn_mask, ...)`` with channels on the heads axis."""
    q, k, v = (_arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    lays = [a.layout(t) for t in (q, k, v)]
    if all(lay is None for lay in lays):
        return None
    shapes = [a.shape(t) for t in (q, k, v)]
    if any(lay is None for lay in lays) or any(s is None for s in shapes):
        return unknown(a, node)
    rank = len(shapes[0])
    dims = {lay.dim + rank - len(s) for lay, s in zip(lays, shapes, strict=True)}
    if len(dims) != 1 or dims.pop() != rank - 3:
        for lay in lays:
            why = "scaled_dot_product_attention reads these channels on the head_dim axis"
            a.block(lay.slots, f"{why} (its scale depends on it); prune whole heads")
        return None
    lq, lk, lv = lays
    a.union(lk.slots, lv.slots)
    if lq.size != lk.size:  # grouped-query attention: query head h reads kv head h // rep
        if lq.size % lk.size or not a.value(_arg(node, 7, "enable_gqa", False)):
            return unknown(a, node)
        a.union(lq.slots, np.repeat(lk.slots, lq.size // lk.size))
    else:
        a.union(lq.slots, lk.slots)
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, fx.Node) and a.shape(mask) is None and a.value(mask) is None:
        mask = None  # an optional argument left at None (timm's ``attn_mask=None``)
    mshape, mlay = a.shape(mask), a.layout(mask)
    if mask is not None and mshape is None:
        return unknown(a, node)
    if mlay is not None:
        # A per-head bias made from tracked channels (T5's relative_attention_bias, a relative
        # position table gathered per head): its heads go with the query's.
        if len(mshape) < 3 or mlay.dim != len(mshape) - 3 or mlay.size != lq.size:
            return unknown(a, node)
        a.union(lq.slots, mlay.slots)
    elif mshape is not None and len(mshape) >= 3 and mshape[len(mshape) - 3] != 1:
        made_from = params_behind(a, mask)
        source = f" made from {', '.join(made_from)}" if made_from else ""
        a.block(
            lq.slots,
            f"{describe(a, node)} applies a per-head attention mask{source} whose heads are not "
            "tracked channels (only a bias gathered straight from a parameter table or made by "
            "a tracked producer follows the heads)",
        )
        return None
    a.consume(lq.slots, node.name)
    return Layout(lq.dim, lq.slots)


RULES: dict[Any, Any] = {
    operator.matmul: matmul,
    torch.matmul: matmul,
    torch.bmm: matmul,
    F.scaled_dot_product_attention: sdpa,
}
METHOD_RULES: dict[str, Any] = {"matmul": matmul, "bmm": matmul}
