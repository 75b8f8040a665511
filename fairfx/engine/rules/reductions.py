"""Sums and means over the channel axis: RMSNorm's mean of squares, channel pooling.

Under masked execution a removed channel is zero, so a *sum* over the channel axis adds nothing
for it: the pruned graph's sum over the kept channels is the masked original's sum, with no
edit. A *mean* divides that sum by the channel count, the original count in the masked original
and the kept count in the pruned graph. The rewrite therefore multiplies the pruned mean by
``kept / original``, so the pruned graph computes ``sum(kept) / original`` exactly as the masked
original does, and the oracle stays exact. For RMSNorm (``x * rsqrt(mean(x**2, -1) + eps) * w``)
this means the pruned model normalizes by the original width; a standard checkpoint folds the
factor into the norm's weight and epsilon instead (``docs/causal_lm.md``).

``amax``/``amin`` over channels stay blocked: a removed channel's zero can be the extreme.
Reductions over other axes move the channel axis as :func:`~.common.reduce_dims` says.
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..analysis import ChannelAnalysis
from ..edits import ArgEdit
from ..slots import Layout
from .common import first_tensor, reduce_dims, unknown


def _reduced_dims(a: ChannelAnalysis, node: fx.Node, rank: int) -> set[int] | None:
    dim = a.value(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
    if dim is None:
        return None
    return {(d + rank) % rank for d in (dim if isinstance(dim, (list, tuple)) else [dim])}


def channel_reduce(a: ChannelAnalysis, node: fx.Node, *, mean: bool) -> Layout | None:
    """``sum``/``mean`` over axes: exact over the channel axis (see the module docstring)."""
    x = first_tensor(node)
    lay, shp = a.layout(x), a.shape(x)
    if lay is None:
        return None
    dims = None if shp is None else _reduced_dims(a, node, len(shp))
    if dims is None:
        return unknown(a, node)
    if lay.dim not in dims:
        return reduce_dims(a, node)
    if mean:
        a.edit(ArgEdit(node.name, partial(_rescale_mean, lay.slots)))
    return None  # one value over the channels: the result carries none


def _rescale_mean(slots: np.ndarray, n: fx.Node, kept_slot: np.ndarray) -> None:
    """Multiply the mean at ``n`` by ``kept / original`` channels, for every user of ``n``."""
    kept = int(kept_slot[slots].sum())
    if kept == len(slots):
        return
    aten = isinstance(n.target, torch._ops.OpOverload)
    mul = torch.ops.aten.mul.Tensor if aten else operator.mul
    with n.graph.inserting_after(n):
        scaled = n.graph.call_function(mul, (n, kept / len(slots)))
    n.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


channel_mean = partial(channel_reduce, mean=True)
channel_sum = partial(channel_reduce, mean=False)

RULES: dict[Any, Any] = {torch.mean: channel_mean, torch.sum: channel_sum}
METHOD_RULES: dict[str, Any] = {"mean": channel_mean, "sum": channel_sum}
