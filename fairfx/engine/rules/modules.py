"""Rules for torch.nn modules: how each moves channels, and how to build its smaller copy.

One entry per module type in :data:`MODULE_RULES`; lookups walk the type's MRO, so subclasses
(``Conv2dNormActivation`` children, custom BatchNorm subclasses) inherit the rule of their base.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch.fx as fx
from torch import nn

from ..capture import copy_structure
from ..channel_pass import ChannelPass
from ..edits import ModuleEdit, replace_tensor, select_axes
from ..masking import masked_layer_norm
from ..slots import Layout
from .common import passthrough, spatial, unknown


def _copy(m: nn.Module) -> nn.Module:
    """A copy of ``m``'s structure that shares its tensors: ``_set`` replaces the ones it slices,
    and the rewrite gives every tensor still shared with the original a copy of its own."""
    return copy_structure(m)


def _set(m: nn.Module, name: str, dim: int, keep: np.ndarray | None) -> None:
    _set2(m, name, {dim: keep})


def _set2(m: nn.Module, name: str, cuts: dict[int, np.ndarray | None]) -> None:
    """Slice ``name`` along the axes of ``cuts`` (:func:`~fairfx.engine.edits.select_axes`)."""
    t = getattr(m, name, None)
    kept = None if t is None else select_axes(t, cuts)
    if kept is not None:
        replace_tensor(m, name, kept)


def _count(keep: np.ndarray | None, default: int) -> int:
    return default if keep is None else int(keep.sum())


# ----------------------------------------------------------------------------- conv


def _shrink_conv(mode: str, m: nn.Module, in_keep, out_keep) -> nn.Module:
    """Conv weight is [out, in/groups, *k]; transposed conv weight is [in, out, *k] (groups 1)."""
    new = _copy(m)
    in_dim, out_dim = (0, 1) if isinstance(m, nn.modules.conv._ConvTransposeNd) else (1, 0)
    if mode == "depthwise":  # the weight's input axis holds one channel per group
        new.groups = _count(in_keep, m.groups)
        _set(new, "weight", out_dim, out_keep)
    else:  # dense or grouped: the kept input offsets are the same in every group
        per_group = in_keep if in_keep is None else in_keep.reshape(m.groups, -1)[0]
        _set2(new, "weight", {in_dim: per_group, out_dim: out_keep})
    _set(new, "bias", 0, out_keep)
    new.in_channels = _count(in_keep, m.in_channels)
    new.out_channels = _count(out_keep, m.out_channels)
    return new


def conv(a: ChannelPass, node: fx.Node) -> Layout | None:
    m = a.module(node.target)
    name = node.target
    lay = a.layout(node.args[0])
    if lay is not None and lay.dim != 1:
        a.block(lay.slots, f"Conv '{name}' reads channels on axis 1, not axis {lay.dim}")
        lay = None
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    if g > 1 and isinstance(m, nn.modules.conv._ConvTransposeNd):
        return unknown(a, node)
    in_slots = None if lay is None else lay.slots
    if in_slots is not None:
        a.consume(in_slots, name)
        a.share(name, "in", in_slots)
    else:
        a.read_untracked(name, "in", cin, node)
    if g > 1 and g == cin and in_slots is not None:
        # Depthwise: output channel k*mult + j reads input k only, so it follows its input.
        out = np.repeat(in_slots, cout // cin)
        a.edit(ModuleEdit(name, partial(_shrink_conv, "depthwise"), in_slots, out))
        return Layout(1, out)
    if g > 1 and in_slots is not None:
        # Grouped: every group must keep the same offsets, so column j of each group is one unit.
        cols = in_slots.reshape(g, -1)
        for k in range(1, g):
            a.union(cols[0], cols[k])
    out = a.produce(name, cout)
    if g > 1:
        rows = out.reshape(g, -1)
        for k in range(1, g):
            a.union(rows[0], rows[k])
    a.edit(ModuleEdit(name, partial(_shrink_conv, "dense"), in_slots, out))
    return Layout(1, out)


# ----------------------------------------------------------------------------- linear


def _shrink_linear(m: nn.Module, in_keep, out_keep) -> nn.Module:
    new = _copy(m)
    _set2(new, "weight", {1: in_keep, 0: out_keep})
    _set(new, "bias", 0, out_keep)
    new.in_features = _count(in_keep, m.in_features)
    new.out_features = _count(out_keep, m.out_features)
    return new


def linear(a: ChannelPass, node: fx.Node) -> Layout | None:
    m = a.module(node.target)
    name = node.target
    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if shp is None:
        return unknown(a, node)
    last = len(shp) - 1
    if lay is not None and lay.dim != last:
        # Linear acts on the last axis; channels on another axis pass through (MLP-Mixer's
        # token mixing). Its own output features share the tensor with those channels, and a
        # tensor carries one tracked channel axis, so they are a producer that must stay.
        out = a.produce(name, m.out_features)
        a.block(
            out,
            f"Linear '{name}' mixes axis {last} of a tensor whose tracked channels lie on axis "
            f"{lay.dim} (token mixing); fairfx tracks one channel axis per tensor, so its "
            "output features stay",
        )
        return lay
    in_slots = None if lay is None else lay.slots
    if in_slots is not None:
        a.consume(in_slots, name)
        a.share(name, "in", in_slots)
    else:
        a.read_untracked(name, "in", m.in_features, node)
    out = a.produce(name, m.out_features)
    a.edit(ModuleEdit(name, _shrink_linear, in_slots, out))
    return Layout(last, out)


# ----------------------------------------------------------------------------- norms


def _shrink_per_channel(fields: tuple[str, ...], size_attr: str, m, in_keep, out_keep):
    new = _copy(m)
    for f in fields:
        _set(new, f, 0, in_keep)
    setattr(new, size_attr, _count(in_keep, getattr(m, size_attr)))
    return new


_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def per_channel(fields: tuple[str, ...], size_attr: str):
    """BatchNorm, InstanceNorm, PReLU: per-channel parameters on axis 1, exact under pruning."""

    def rule(a: ChannelPass, node: fx.Node) -> Layout | None:
        lay = a.layout(node.args[0])
        if lay is None:
            return None
        if lay.dim != 1:
            return unknown(a, node)
        m = a.module(node.target)
        if getattr(m, size_attr) in (None, 1) and lay.size != 1:
            return passthrough(a, node)  # a single shared parameter (PReLU default)
        a.share(node.target, "c", lay.slots)
        shrink = partial(_shrink_per_channel, fields, size_attr)
        a.edit(ModuleEdit(node.target, shrink, lay.slots, None))
        return passthrough(a, node)

    return rule


def _shrink_group_norm(m: nn.GroupNorm, in_keep, out_keep) -> nn.Module:
    new = _copy(m)
    per = m.num_channels // m.num_groups
    _set(new, "weight", 0, in_keep)
    _set(new, "bias", 0, in_keep)
    new.num_channels = _count(in_keep, m.num_channels)
    new.num_groups = new.num_channels // per
    return new


def group_norm(a: ChannelPass, node: fx.Node) -> Layout | None:
    """GroupNorm statistics are per norm group: only whole norm groups may go (then it is exact)."""
    lay = a.layout(node.args[0])
    if lay is None:
        return None
    if lay.dim != 1:
        return unknown(a, node)
    m = a.module(node.target)
    rows = lay.slots.reshape(m.num_groups, -1)
    for k in range(1, rows.shape[1]):
        a.union(rows[:, 0], rows[:, k])
    a.share(node.target, "c", lay.slots)
    a.edit(ModuleEdit(node.target, _shrink_group_norm, lay.slots, None))
    return passthrough(a, node)


def _shrink_layer_norm(m: nn.LayerNorm, in_keep, out_keep) -> nn.Module:
    new = _copy(m)
    _set(new, "weight", 0, in_keep)
    _set(new, "bias", 0, in_keep)
    new.normalized_shape = (_count(in_keep, m.normalized_shape[0]),)
    return new


def layer_norm(a: ChannelPass, node: fx.Node) -> Layout | None:
    """LayerNorm over the channel axis: prunable, but statistics change (not oracle-exact)."""

    x = node.args[0]
    lay, shp = a.layout(x), a.shape(x)
    if lay is None or shp is None:
        return None
    m = a.module(node.target)
    k = len(m.normalized_shape)
    if lay.dim < len(shp) - k:
        return passthrough(a, node)
    if k != 1 or lay.dim != len(shp) - 1:
        return unknown(a, node)
    a.share(node.target, "c", lay.slots)
    a.inexact(lay.slots, f"LayerNorm '{node.target}' normalizes over these channels")
    a.masked[node.name] = masked_layer_norm
    a.edit(ModuleEdit(node.target, _shrink_layer_norm, lay.slots, None))
    return passthrough(a, node)


def softmax_module(a: ChannelPass, node: fx.Node) -> Layout | None:
    lay, shp = a.layout(node.args[0]), a.shape(node.args[0])
    if lay is None:
        return None
    dim = a.module(node.target).dim
    if dim is None or shp is None or dim % len(shp) == lay.dim:
        return unknown(a, node)
    return passthrough(a, node)


def flatten_module(a: ChannelPass, node: fx.Node) -> Layout | None:
    from .shape import index_shape

    return index_shape(a, node)


_PASSTHROUGH = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_SPATIAL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
    nn.ReplicationPad2d, nn.LPPool2d,
)  # fmt: skip

MODULE_RULES: dict[type, object] = {
    nn.Conv1d: conv,
    nn.Conv2d: conv,
    nn.Conv3d: conv,
    nn.ConvTranspose1d: conv,
    nn.ConvTranspose2d: conv,
    nn.ConvTranspose3d: conv,
    nn.Linear: linear,
    nn.modules.batchnorm._BatchNorm: per_channel(_BN_FIELDS, "num_features"),
    nn.modules.instancenorm._InstanceNorm: per_channel(_BN_FIELDS, "num_features"),
    nn.PReLU: per_channel(("weight",), "num_parameters"),
    nn.GroupNorm: group_norm,
    nn.LayerNorm: layer_norm,
    nn.Softmax: softmax_module,
    nn.LogSoftmax: softmax_module,
    nn.Flatten: flatten_module,
    nn.PixelShuffle: flatten_module,
    nn.PixelUnshuffle: flatten_module,
    nn.ChannelShuffle: flatten_module,
    **{t: passthrough for t in _PASSTHROUGH},
    **{t: spatial for t in _SPATIAL},
}

from .attention import RULES as _ATTENTION  # noqa: E402 - attention imports this module's helpers

MODULE_RULES.update(_ATTENTION)
