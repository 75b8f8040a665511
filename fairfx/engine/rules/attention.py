"""Attention: ``nn.MultiheadAttention`` reads channels on its last axis and writes new ones.

The heads stay as they are; the input projection's columns follow the input channels and the
output projection's rows are new channels (usually tied to a residual stream by the add that
follows). The pruned graph holds a :class:`~fairfx.engine.modules.PrunedMultiheadAttention`.
Query, key and value share the input projection's columns, so their channels are tied; separate
k/v widths (``kdim``/``vdim``), ``bias_kv`` and zero-attention are not handled and block.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..analysis import ChannelAnalysis
from ..edits import ModuleEdit
from ..modules import PrunedMultiheadAttention
from ..slots import Layout
from .common import unknown


def _shrink(m: nn.MultiheadAttention, in_keep, out_keep) -> nn.Module:
    return PrunedMultiheadAttention.from_module(m, in_keep, out_keep)


def multihead_attention(a: ChannelAnalysis, node: fx.Node):
    m = a.module(node.target)
    q, k, v = [*node.args, *(node.kwargs.get(n) for n in ("query", "key", "value"))][:3]
    simple = m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
    inputs = [t for t in (q, k, v) if t is not None]
    if not simple or not all(isinstance(t, fx.Node) for t in inputs):
        return unknown(a, node)
    lays = [a.layout(t) for t in inputs]
    shp = a.shape(q)
    last = None if shp is None else len(shp) - 1
    laid = [lay for lay in lays if lay is not None]
    if shp is None or any(lay.dim != last for lay in laid) or 0 < len(laid) < len(lays):
        return unknown(a, node)
    # One in_proj reads query, key and value: their channels are sliced by the same columns.
    for lay in laid[1:]:
        a.union(laid[0].slots, lay.slots)
    in_slots = laid[0].slots if laid else None
    if in_slots is not None:
        a.consume(in_slots, node.target)
        a.share(node.target, "in", in_slots)
    out = a.produce(f"{node.target}.out_proj", m.embed_dim)
    a.edit(ModuleEdit(node.target, _shrink, in_slots, out))
    return (Layout(len(shp) - 1, out), None)


RULES = {nn.MultiheadAttention: multihead_attention}
