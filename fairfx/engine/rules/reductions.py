"""Sums and means over the channel axis: RMSNorm's mean of squares, channel pooling, RMSNorm.

Under masked execution a removed channel is zero, so a *sum* over the channel axis adds nothing
for it: the pruned graph's sum over the kept channels is the masked original's sum, with no
edit. A *mean* divides that sum by the channel count, the original count in the masked original
and the kept count in the pruned graph. The rewrite therefore multiplies the pruned mean by
``kept / original``, so the pruned graph computes ``sum(kept) / original`` exactly as the masked
original does, and the oracle stays exact. For RMSNorm (``x * rsqrt(mean(x**2, -1) + eps) * w``)
this means the pruned model normalizes by the original width; a standard checkpoint folds the
factor into the norm's weight and epsilon instead (``docs/causal_lm.md``).

``torch.nn.RMSNorm`` and ``F.rms_norm`` (one op, no mean to rescale) are made exact the same
way: with ``r = original / kept`` channels, ``rms_norm(x, eps) * w`` over the original width is
``rms_norm(x_kept, eps * r) * w_kept * sqrt(r)``; the function gets the factor as a ``mul`` after
it, the module folds it into its weight (a module without a weight stays blocked).

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
from torch import nn

from ..capture import copy_structure
from ..channel_pass import ChannelPass
from ..edits import ArgEdit, ModuleEdit, ParamEdit, replace_tensor, select
from ..slots import Layout
from .common import first_tensor, passthrough, reduce_dims, unknown


def _reduced_dims(a: ChannelPass, node: fx.Node, rank: int) -> set[int] | None:
    dim = a.value(node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
    if dim is None:
        return None
    return {(d + rank) % rank for d in (dim if isinstance(dim, (list, tuple)) else [dim])}


def channel_reduce(a: ChannelPass, node: fx.Node, *, mean: bool) -> Layout | None:
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
    _scale_after(n, kept / len(slots))


def _scale_after(n: fx.Node, factor: float) -> None:
    """Multiply the output of ``n`` by ``factor`` for every user of ``n``."""
    aten = isinstance(n.target, torch._ops.OpOverload)
    mul = torch.ops.aten.mul.Tensor if aten else operator.mul
    with n.graph.inserting_after(n):
        scaled = n.graph.call_function(mul, (n, factor))
    n.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


def _normalizes_channels(a: ChannelPass, node: fx.Node, shape_arg: Any) -> bool | None:
    """True when the norm's last axis is the channel axis, False when channels pass beside the
    normalized axes, None when it normalizes channels with other axes (not handled)."""
    lay, shp = a.layout(node.args[0]), a.shape(node.args[0])
    ns = a.value(shape_arg)
    k = len(ns) if isinstance(ns, (list, tuple)) else 1
    if lay.dim < len(shp) - k:
        return False
    return True if k == 1 and lay.dim == len(shp) - 1 else None


def rms_norm(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``F.rms_norm(x, (C,), weight, eps)`` / ``aten.rms_norm`` over the channel axis: exact."""
    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if lay is None or shp is None:
        return None
    arg = lambda pos, name: node.kwargs.get(name, node.args[pos] if len(node.args) > pos else None)  # noqa: E731
    over = _normalizes_channels(a, node, arg(1, "normalized_shape"))
    if over is None:
        return unknown(a, node)
    if not over:
        return passthrough(a, node)
    w = arg(2, "weight")
    if w is not None and a.param(w) is None:
        return unknown(a, node)
    if w is not None:
        a.edit(ParamEdit(a.param(w), 0, lay.slots))
    eps = arg(3, "eps")
    eps = torch.finfo(node.meta.get("fairfx_dtype") or torch.float32).eps if eps is None else eps
    a.edit(ArgEdit(node.name, partial(_rewrite_rms_norm, lay.slots, float(eps))))
    return passthrough(a, node)


def _rewrite_rms_norm(slots: np.ndarray, eps: float, n: fx.Node, kept_slot: np.ndarray) -> None:
    kept = int(kept_slot[slots].sum())
    if kept == len(slots):
        return
    ratio = len(slots) / kept
    _set_arg(n, 1, "normalized_shape", [kept])
    _set_arg(n, 3, "eps", eps * ratio)
    _scale_after(n, ratio**0.5)


def _set_arg(n: fx.Node, pos: int, name: str, value: Any) -> None:
    """Set argument ``name`` (at ``pos`` when positional) of a call, wherever the call has it."""
    if name in n.kwargs or len(n.args) < pos:
        n.kwargs = {**n.kwargs, name: value}
    elif len(n.args) == pos:
        n.args = (*n.args, value)
    else:
        n.args = (*n.args[:pos], value, *n.args[pos + 1 :])


def _shrink_rms_norm(m: nn.Module, keep: np.ndarray | None, _out: Any) -> nn.Module:
    """The module over the kept channels, the original width's denominator folded in."""
    new = copy_structure(m)
    kept = int(keep.sum())
    ratio = len(keep) / kept
    eps = torch.finfo(m.weight.dtype).eps if m.eps is None else m.eps
    new.eps = eps * ratio
    new.normalized_shape = (kept,)
    replace_tensor(new, "weight", select(m.weight, 0, keep) * ratio**0.5)
    return new


def rms_norm_module(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``nn.RMSNorm`` over the channel axis: exact, the factor folded into its weight."""
    m = a.module(node.target)
    lay = a.layout(node.args[0])
    if lay is None:
        return None
    over = _normalizes_channels(a, node, m.normalized_shape)
    if over is None or (over and m.weight is None):
        return unknown(a, node)
    if over:
        a.edit(ModuleEdit(node.target, _shrink_rms_norm, lay.slots, None))
    return passthrough(a, node)


channel_mean = partial(channel_reduce, mean=True)
channel_sum = partial(channel_reduce, mean=False)

RULES: dict[Any, Any] = {torch.mean: channel_mean, torch.sum: channel_sum}
if hasattr(torch.nn.functional, "rms_norm"):  # torch >= 2.4
    RULES[torch.nn.functional.rms_norm] = rms_norm
if hasattr(torch.ops.aten, "rms_norm"):
    RULES[torch.ops.aten.rms_norm.default] = rms_norm
MODULE_RULES: dict[Any, Any] = {nn.RMSNorm: rms_norm_module} if hasattr(nn, "RMSNorm") else {}
METHOD_RULES: dict[str, Any] = {"mean": channel_mean, "sum": channel_sum}
