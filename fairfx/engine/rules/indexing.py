"""Rules for the token-moving leaves of opened Swin attention (:mod:`fairfx.engine.windows`),
and ``index_select`` along a non-channel axis (the v2 relative position bias gather); v2's
cosine attention (``F.normalize``) is in :mod:`fairfx.engine.rules.norms`."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..channel_pass import ChannelPass
from ..slots import Layout
from ..windows import shift_mask, window_merge, window_partition
from .common import no_channels, unknown


def _last_axis(a: ChannelPass, node: fx.Node) -> Layout | None:
    """Windows are cut from, or put back into, the token axes: channels stay on the last."""
    lay, shp, out = a.layout(node.args[0]), a.shape(node.args[0]), a.shape(node)
    if lay is None:
        return None
    if shp is None or out is None or lay.dim != len(shp) - 1 or out[-1] != lay.size:
        return unknown(a, node)
    return Layout(len(out) - 1, lay.slots)


def index_select(a: ChannelPass, node: fx.Node) -> Layout | None:
    """``index_select(x, dim, index)`` picks positions along ``dim``: channels elsewhere stay."""
    lay, shp = a.layout(node.args[0]), a.shape(node.args[0])
    if lay is None:
        return None
    dim = a.value(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
    if shp is None or not isinstance(dim, int) or dim % len(shp) == lay.dim:
        return unknown(a, node)
    return lay


RULES: dict[Any, Any] = {
    window_partition: _last_axis,
    window_merge: _last_axis,  # its second argument gives sizes only
    shift_mask: no_channels,  # reads the input's sizes only
    torch.index_select: index_select,
}
