"""Shape ops solved on index tensors: view, reshape, flatten, permute, getitem, pixel shuffle, ...

Instead of one rule per shape op, the op is run on a tensor whose values are channel *positions*
and the result says where each position landed. An output axis ``u`` can carry the channels when
the positions found along it form disjoint sets; positions in one set are tied together (a channel
axis split into (a, b) makes column j of every block one unit, pixel shuffle ties r*r channels).
Among valid axes the finest one wins. Size constants in the op's arguments are rewritten from the
plan: the channel axis's size becomes the number of kept positions along it.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..channel_pass import ChannelPass
from ..edits import ArgEdit
from ..slots import Layout
from .common import describe, unknown

# Ops whose extra arguments are sizes aligned with the output axes: index of first size arg.
_SIZE_ARGS = {"view": 1, "reshape": 1, "expand": 1, torch.reshape: 1}
_SIZE_ARGS.update({op: 1 for op in (torch.ops.aten.view.default, torch.ops.aten.reshape.default)})
_SIZE_ARGS.update(
    {op: 1 for op in (torch.ops.aten._unsafe_view.default, torch.ops.aten.expand.default)}
)


def _concrete(a: ChannelPass, arg: Any, x: fx.Node, probe: torch.Tensor) -> Any:
    if arg is x:
        return probe
    if isinstance(arg, fx.Node):
        return a.value(arg)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_concrete(a, v, x, probe) for v in arg)
    return arg


def _run_probe(a: ChannelPass, node: fx.Node, x: fx.Node, probe: torch.Tensor) -> Any:
    args = _concrete(a, node.args, x, probe)
    kwargs = {k: _concrete(a, v, x, probe) for k, v in node.kwargs.items()}
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return a.module(node.target)(*args, **kwargs)
    return node.target(*args, **kwargs)


def _position_probe(shape: tuple[int, ...], dim: int) -> torch.Tensor:
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.arange(shape[dim], dtype=torch.long).view(view).expand(shape).contiguous()


def _channel_axis(out: torch.Tensor, heads: bool = False) -> tuple[int, Any] | None:
    """The finest output axis along which channel positions form disjoint sets.

    Ties go to the innermost axis: in ``x.view(n, g, c // g, h, w)`` both axes split the
    channels, and the size that user code computes from the tensor (``c // g``) is the inner
    one, so choosing it leaves the literal ``g`` untouched and the computed size right.

    ``heads``: the channel axis was the last one and is split into trailing axes
    (``[B, N, C] -> [B, N, heads, head_dim]``, or ``[B, N, 3, heads, head_dim]``): attention then
    contracts over the last axis, so the unit is the axis before it, a whole head (its dims in
    q, k and v and the output projection's columns), not one dim of every head.

    In numpy: the probes are small and a torch call costs several times a numpy one here.
    """
    arr = out.numpy()
    valid = {}
    for u in range(arr.ndim):
        n = arr.shape[u]
        if n < 2:
            continue
        rows = np.moveaxis(arr, u, 0).reshape(n, -1)
        if (rows[1:] == rows[:-1]).all():  # the positions do not change along this axis
            continue
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if (lo == hi).all():
            sets = lo.reshape(-1, 1)  # one position per entry: rows of one
        elif np.array_equal(rows[0], rows[1]):  # a token or batch axis: every row holds them all
            continue
        else:
            sets = _row_sets(rows, int(hi.max()) + 1)
            if sets is None:  # a position in two rows: not a channel axis
                continue
        valid[u] = sets
    last = arr.ndim - 1
    if heads and last in valid and last - 1 in valid:
        return last - 1, valid[last - 1]
    best: tuple[int, Any] | None = None
    for u, sets in valid.items():
        if best is None or len(sets) >= len(best[1]):
            best = (u, sets)
    return best


def _row_sets(rows: np.ndarray, width: int) -> np.ndarray | list[np.ndarray] | None:
    """The distinct positions of each row of ``rows`` in order, or None when a position sits
    in two rows. One [rows, k] array when no row repeats a position (a head split: sorting
    does it, no table), else a list from a [rows, positions] membership table."""
    ordered = np.sort(rows, axis=1)
    if (ordered[:, 1:] != ordered[:, :-1]).all():
        flat = np.sort(ordered, axis=None)
        return None if (flat[1:] == flat[:-1]).any() else ordered
    member = np.zeros((rows.shape[0], width), dtype=bool)
    member[np.arange(rows.shape[0])[:, None], rows] = True
    if (member.sum(axis=0) > 1).any():
        return None
    row, pos = np.nonzero(member)  # row-major: each row's positions in order
    counts = np.bincount(row, minlength=rows.shape[0])
    if (counts == counts[0]).all():
        return pos.reshape(rows.shape[0], -1)
    return np.split(pos, np.cumsum(counts)[:-1])


def _tie(a: ChannelPass, lay: Layout, sets: Any) -> np.ndarray:
    """Union the channel positions of each set and return the slot of each set's first."""
    if isinstance(sets, np.ndarray):  # [sets, k]: k positions each
        firsts = lay.slots[sets[:, 0]]
        if sets.shape[1] > 1:  # every later position with its set's first, in one union
            a.union(np.repeat(firsts, sets.shape[1] - 1), lay.slots[sets[:, 1:]].reshape(-1))
        return firsts
    firsts = lay.slots[np.array([g[0] for g in sets], dtype=np.int64)]
    extra = np.array([len(g) - 1 for g in sets], dtype=np.int64)
    if extra.any():
        rest = np.concatenate([g[1:] for g in sets])
        a.union(np.repeat(firsts, extra), lay.slots[rest])
    return firsts


# Ops whose result, taken of a parameter, is still that parameter for slicing (a cls token).
_PARAM_ALIASES = {"expand", "expand_as", "contiguous", torch.ops.aten.expand.default}

# Ops that can split a token's channels into (heads, head_dim).
_HEAD_SPLITS = {"view", "reshape", "unflatten", torch.reshape, torch.unflatten}
_HEAD_SPLITS |= {torch.ops.aten.view.default, torch.ops.aten.reshape.default}
_HEAD_SPLITS |= {torch.ops.aten._unsafe_view.default, torch.ops.aten.unflatten.int}

# Axis permutations move the channel axis without looking at other sizes: probe a thin tensor.
_PERMUTATIONS = {"permute", "transpose", "movedim", "swapaxes", "t", torch.permute}
_PERMUTATIONS |= {torch.transpose, torch.movedim}
_PERMUTATIONS |= {torch.ops.aten.permute.default, torch.ops.aten.transpose.int}


def index_shape(a: ChannelPass, node: fx.Node) -> Layout | None:
    """view/reshape/flatten/permute/transpose/squeeze/unsqueeze/expand/pixel (un)shuffle."""
    x = node.args[0] if node.args else None
    lay = a.layout(x)
    target = a.param(x)
    if target is not None and node.target in _PARAM_ALIASES:
        a.param_src[node.name] = target
    if lay is None:
        return None
    shp = a.shape(x)
    if shp is None or a.shape(node) is None:
        return unknown(a, node)
    if node.target in _PERMUTATIONS:
        shp = tuple(n if i == lay.dim else 1 for i, n in enumerate(shp))
    out_shape = a.shape(node)
    lead = len(shp) - 1
    kept = _common_prefix(shp, out_shape, lay.dim) if node.target in _HEAD_SPLITS else 0
    if kept:
        # A row-major reshape that keeps the leading axes (a head split [B, N, C] -> [B, N, h,
        # d], or the merge back): every leading index is reshaped alike, so a probe one
        # element wide there, reshaped by the shapes alone, says the same far cheaper.
        thin = (1,) * kept + tuple(shp[kept:])
        out = _position_probe(thin, lay.dim).reshape((1,) * kept + tuple(out_shape[kept:]))
    else:
        out = _run_probe(a, node, x, _position_probe(shp, lay.dim))
    heads = node.target in _HEAD_SPLITS and lay.dim == lead and _splits_heads(shp, out.dim())
    found = _channel_axis(out, heads)
    if found is None:
        a.block(lay.slots, f"{describe(a, node)} reshapes the channel axis away")
        return None
    u, sets = found
    slots = _tie(a, lay, sets)
    if heads and u == out.dim() - 2:
        a.heads.append(slots)
    first = _SIZE_ARGS.get(node.target)
    if first is not None:
        a.edit(ArgEdit(node.name, _size_rewriter(first, u, slots)))
    return Layout(u, slots)


def _splits_heads(shp: tuple[int, ...], out_rank: int) -> bool:
    """Whether a reshape of the last (channel) axis may be a split into attention heads.

    ``[B, N, C] -> [B, N, h, d]`` and ``[B, N, 3C] -> [B, N, 3, h, d]`` are; a feature vector
    ``[B, F]`` unflattened into two or more axes (``view(-1, 256, 4, 4)`` before a transposed
    conv, the inverse of flatten -> Linear) is not: without a token axis there is nothing to
    attend over, and its first new axis holds channels that each own the trailing elements.
    """
    return out_rank == len(shp) + 1 or (out_rank > len(shp) and len(shp) >= 3)


def _common_prefix(shp: tuple[int, ...], out_shape: tuple[int, ...], dim: int) -> int:
    """How many leading axes, all before the channel axis ``dim``, a reshape leaves as they are."""
    k = 0
    while k < dim and k < len(out_shape) and shp[k] == out_shape[k]:
        k += 1
    return k


def _size_rewriter(first: int, u: int, slots: np.ndarray):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        args = list(n.args)
        sizes = args[first:]
        packed = len(sizes) == 1 and isinstance(sizes[0], (list, tuple))
        sizes = list(sizes[0]) if packed else sizes
        kept = int(kept_slot[slots].sum())
        if u < len(sizes) and isinstance(sizes[u], int) and sizes[u] != -1:
            sizes[u] = kept
        elif u < len(sizes) and isinstance(sizes[u], fx.Node):
            # A size computed at run time: let the view infer it when it is the only -1, so a
            # dynamic batch stays dynamic; else the kept count.
            sizes[u] = -1 if -1 not in sizes else kept
        args[first:] = [tuple(sizes)] if packed else sizes
        n.args = tuple(args)

    return rewrite


# ----------------------------------------------------------------------------- getitem


def getitem(a: ChannelPass, node: fx.Node) -> Any:
    container, index = node.args
    lay = a.layout(container)
    if isinstance(lay, (list, tuple)):
        return lay[index] if isinstance(index, int) else unknown(a, node)
    if lay is None:
        return None
    shp = a.shape(container)
    idx = index if isinstance(index, tuple) else (index,)
    entry = _entry_for_dim(idx, lay.dim, len(shp)) if shp is not None else ("bad", None)
    kind, pos = entry
    if kind == "bad":
        return unknown(a, node)
    value = idx[pos] if pos is not None else None
    if isinstance(value, int):
        chan = value % lay.size
        a.block(lay.slots[chan : chan + 1], f"{describe(a, node)} selects channel {chan}")
        a.edit(ArgEdit(node.name, _int_rewriter(pos, chan, lay.slots)))
        return None
    if isinstance(value, slice):
        start, stop, step = value.indices(lay.size)
        if step != 1:
            return unknown(a, node)
        a.edit(ArgEdit(node.name, _slice_rewriter(pos, start, stop, lay.slots)))
    elif value is not None:
        return unknown(a, node)
    return index_shape(a, node)


def _entry_for_dim(idx: tuple[Any, ...], dim: int, rank: int) -> tuple[str, int | None]:
    """Which entry of an index tuple addresses input axis ``dim``."""
    if any(isinstance(v, fx.Node) for v in idx):
        return "bad", None
    consumed = sum(1 for v in idx if v is not None and v is not Ellipsis)
    axis = 0
    for pos, v in enumerate(idx):
        if v is None:
            continue
        if v is Ellipsis:
            axis += rank - consumed
            if axis > dim:
                return "free", None
            continue
        if axis == dim:
            return "entry", pos
        axis += 1
    return "free", None


def _int_rewriter(pos: int, chan: int, slots: np.ndarray):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        new = list(idx)
        new[pos] = int(kept_slot[slots[:chan]].sum())
        n.args = (n.args[0], tuple(new) if isinstance(n.args[1], tuple) else new[0])

    return rewrite


def _slice_rewriter(pos: int, start: int, stop: int, slots: np.ndarray):
    def rewrite(n: fx.Node, kept_slot: np.ndarray) -> None:
        idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        keep = kept_slot[slots]
        new = list(idx)
        new[pos] = slice(int(keep[:start].sum()), int(keep[:stop].sum()), None)
        n.args = (n.args[0], tuple(new) if isinstance(n.args[1], tuple) else new[0])

    return rewrite


def reshape_as(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``y.reshape_as(other)`` / ``view_as``: the shape comes from a tensor pruned with it.

    Sound only when ``other`` carries the same channels on the axis where ``y``'s land (LeViT's
    ``bn(x.flatten(0, 1)).reshape_as(x)``): the two are tied, and the size follows the plan.
    """
    y, other = node.args[0], node.args[1]
    lay, shp, target = a.layout(y), a.shape(y), a.shape(other)
    if lay is None:
        return None
    olay = a.layout(other)
    if shp is None or target is None:
        return unknown(a, node)
    out = _position_probe(shp, lay.dim).reshape(target)
    found = _channel_axis(out)
    if found is None or olay is None or olay.dim != found[0] or olay.size != len(found[1]):
        a.block(
            lay.slots, f"{describe(a, node)} takes its shape from a tensor without these channels"
        )
        return None
    u, sets = found
    slots = _tie(a, lay, sets)
    a.union(slots, olay.slots)
    return Layout(u, slots)


RULES: dict[Any, Any] = {
    operator.getitem: getitem,
    torch.flatten: index_shape,
    torch.reshape: index_shape,
    torch.permute: index_shape,
    torch.transpose: index_shape,
    torch.squeeze: index_shape,
    torch.unsqueeze: index_shape,
    torch.movedim: index_shape,
    torch.nn.functional.pixel_shuffle: index_shape,
    torch.nn.functional.pixel_unshuffle: index_shape,
    torch.channel_shuffle: index_shape,
}

METHOD_RULES: dict[str, Any] = {
    name: index_shape
    for name in (
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "permute",
        "transpose",
        "squeeze",
        "unsqueeze",
        "expand",
        "movedim",
        "t",
        "swapaxes",
    )
} | {
    "reshape_as": reshape_as,
    "view_as": reshape_as,
}
