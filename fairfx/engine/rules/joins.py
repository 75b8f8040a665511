"""Concatenation and splitting: how channels cross ``cat``, ``split``, ``chunk`` and ``unbind``.

Concatenating along the channel axis places each part's channels at an offset of the output
(so the parts' groups become one group's slices); along another axis the parts' channels must
agree, so they are coupled. Splitting along the channel axis hands each output its slice of
channels, and the split sizes are rewritten to the kept counts of each slice.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..channel_pass import ChannelPass
from ..edits import ArgEdit
from ..slots import Layout
from .common import couple, describe, unknown


def _dim_arg(a: ChannelPass, node: fx.Node, pos: int, default: int) -> Any:
    return a.value(node.kwargs.get("dim", node.args[pos] if len(node.args) > pos else default))


def cat(a: ChannelPass, node: fx.Node) -> Layout | None:
    """Concatenation along the channel axis offsets each part; along another axis it couples."""
    tensors = list(node.args[0] if node.args else node.kwargs["tensors"])
    out = a.shape(node)
    if out is None:
        return unknown(a, node)
    dim = _dim_arg(a, node, 1, 0) % len(out)
    lays = [a.layout(t) for t in tensors]
    if all(lay is None for lay in lays):
        return None
    if not any(lay is not None and lay.dim == dim for lay in lays):
        return couple(a, node, tensors, out)
    parts = []
    for t, lay in zip(tensors, lays, strict=True):
        if lay is not None and lay.dim == dim:
            parts.append(lay.slots)
            continue
        if lay is not None:
            a.block(lay.slots, f"{describe(a, node)} concatenates it across its channel axis")
        size = a.shape(t)[dim]
        parts.append(a.untracked(size, f"concatenated by {describe(a, node)} with untracked data"))
    return Layout(dim, np.concatenate(parts))


def split(a: ChannelPass, node: fx.Node) -> Any:
    """split/chunk along the channel axis: each piece keeps its slots; sizes come from the plan."""
    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    pieces = node.meta.get("fairfx_shape")
    if lay is None:
        return None
    if shp is None or not isinstance(pieces, tuple) or any(p is None for p in pieces):
        return unknown(a, node)
    dim = _dim_arg(a, node, 2, 0) % len(shp)
    if dim != lay.dim:
        return tuple(lay for _ in pieces)
    bounds = np.cumsum([0] + [p[dim] for p in pieces])
    chunks = [lay.slots[s:e] for s, e in itertools.pairwise(bounds)]
    a.edit(ArgEdit(node.name, _split_rewriter(chunks, dim)))
    return tuple(Layout(dim, c) for c in chunks)


def unbind(a: ChannelPass, node: fx.Node) -> Any:
    """unbind along another axis: every piece keeps the channels (the axis before it shifts)."""
    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dim = _dim_arg(a, node, 1, 0)
    if shp is None or not isinstance(dim, int):
        return unknown(a, node)
    dim %= len(shp)
    if dim == lay.dim:
        a.block(lay.slots, f"{describe(a, node)} takes the channel axis apart")
        return None
    piece = Layout(lay.dim - (dim < lay.dim), lay.slots)
    return tuple(piece for _ in range(shp[dim]))


def _split_rewriter(chunks: list[np.ndarray], dim: int):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        sizes = [int(kept_slot[c].sum()) for c in chunks]
        if n.op == "call_method":
            n.target = "split"
        else:
            n.target = torch.split
        n.args = (n.args[0], sizes, dim)
        n.kwargs = {}

    return rewrite


RULES: dict[Any, Any] = {
    torch.cat: cat,
    torch.concat: cat,
    torch.split: split,
    torch.chunk: split,
    torch.unbind: unbind,
}

METHOD_RULES: dict[str, Any] = {"split": split, "chunk": split, "unbind": unbind}
