"""``nn.MultiheadAttention`` left as a leaf: the one capture could not open.

Capture opens every ``nn.MultiheadAttention`` it can into q/k/v projections, a head split,
attention and ``out_proj`` (:mod:`fairfx.engine.mha`), where the general rules prune whole heads
and the embedding channels. A module with ``add_bias_kv`` or ``add_zero_attn`` (extra key/value
rows), or one inside a GraphModule the user traced, stays a leaf: its channels in and out are
kept, with that reason, rather than sliced by guesswork.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..channel_pass import ChannelPass
from ..mha import can_split


def multihead_attention(a: ChannelPass, node: fx.Node) -> None:
    m = a.module(node.target)
    if can_split(m):  # only a GraphModule the user traced keeps an openable one as a leaf
        why = "a leaf of the GraphModule passed in (pass the model itself to open it)"
    else:
        why = "add_bias_kv" if m.bias_k is not None else "add_zero_attn"
    a.block_inputs(
        node,
        f"flows into nn.MultiheadAttention '{node.target}' with {why}, which fairfx does not open "
        "into heads (engine/mha.py); its channels stay",
    )
    return None


RULES = {nn.MultiheadAttention: multihead_attention}
