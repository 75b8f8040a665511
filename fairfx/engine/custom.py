"""Channel rules for a user's own layers: :func:`register_rule`.

A layer fairfx has no rule for is traced through, and the first op inside it without a rule
blocks the channels that reach it (the message names the layer). A user who knows how the
layer's weights follow channels says so once, and the layer becomes a leaf of the captured graph
with a rule built from that description:

- ``kind="mix"`` (a conv or linear of your own): the layer reads its input channels and makes
  new output channels. ``inputs`` names each tensor attribute (parameter or buffer) indexed by
  input channel and the axis that holds them, ``outputs`` likewise for output channels. A tensor
  may appear in both (a weight ``[out, in]`` is ``outputs={"weight": 0}, inputs={"weight": 1}``).
- ``kind="per_channel"`` (a norm, scale or gate of your own): output channel ``i`` is input
  channel ``i``, and each tensor of ``inputs`` holds one entry per channel on its axis. The
  layer must be channel-separable (no statistics over the channel axis) for the oracle to hold.

``channel_dim`` is the axis of the layer's input and output tensors that holds channels (1 for
NCHW data, -1 for features last). ``sizes`` names integer attributes to set to the kept counts
after pruning (``{"in_features": "in", "out_features": "out"}``), so ``repr`` and code reading
them stay right. :func:`fairfx.verify` proves the result as for built-in layers.

The registration is global (like ``torch.fx.wrap``) and applies to graphs fairfx traces with
``torch.fx`` (where modules stay calls); a model only ``torch.export`` can capture (most Hugging
Face models) is seen op by op, so a registered class there is analysed through its ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch.fx as fx
from torch import nn

from ..errors import FairfxError
from .capture import CUSTOM_LEAVES, copy_structure
from .channel_pass import ChannelPass
from .edits import ModuleEdit, replace_tensor, select
from .rules import MODULE_RULES
from .rules.common import describe, unknown
from .slots import Layout

_KINDS = ("mix", "per_channel")


@dataclass(frozen=True)
class LayerRule:
    """How a custom layer's tensors follow its channels (see the module docstring)."""

    kind: str
    inputs: Mapping[str, int] = field(default_factory=dict)
    outputs: Mapping[str, int] = field(default_factory=dict)
    channel_dim: int = 1
    sizes: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, a: ChannelPass, node: fx.Node) -> Layout | None:
        """The rule-table entry: ``rule(analysis, node) -> layout``."""
        x = node.args[0] if node.args else None
        m = a.module(node.target)
        shp, out_shape = a.shape(x), a.shape(node)
        lay = a.layout(x)
        if shp is None or out_shape is None:
            return unknown(a, node)
        dim_in, dim_out = self.channel_dim % len(shp), self.channel_dim % len(out_shape)
        if lay is not None and lay.dim != dim_in:
            a.block(lay.slots, f"{describe(a, node)} reads channels on axis {dim_in}")
            lay = None
        wrong = self._mismatch(m, shp[dim_in], out_shape[dim_out])
        if wrong:
            return _refuse(a, node, lay, wrong, dim_out)
        name = node.target
        shrink = partial(_shrink, self)
        if self.kind == "per_channel":
            if lay is None:
                a.read_untracked(name, "c", shp[dim_in], node)
                return None
            a.share(name, "c", lay.slots)
            a.edit(ModuleEdit(name, shrink, lay.slots, None))
            return Layout(dim_out, lay.slots)
        if lay is None:
            a.read_untracked(name, "in", shp[dim_in], node)
        else:
            a.consume(lay.slots, name)
            a.share(name, "in", lay.slots)
        out = a.produce(name, out_shape[dim_out])
        a.edit(ModuleEdit(name, shrink, None if lay is None else lay.slots, out))
        return Layout(dim_out, out)

    def _mismatch(self, m: nn.Module, n_in: int, n_out: int) -> str:
        """Why the registered axes do not fit this call ("" when they do)."""
        if self.kind == "per_channel" and n_in != n_out:
            return f"its output has {n_out} channels, its input {n_in}"
        for role, axes, n in (("input", self.inputs, n_in), ("output", self.outputs, n_out)):
            for attr, axis in axes.items():
                t = getattr(m, attr, None)
                if t is None or not hasattr(t, "shape"):
                    return f"it has no tensor {attr!r}"
                if not -t.dim() <= axis < t.dim() or t.shape[axis] != n:
                    return f"{attr} {tuple(t.shape)} has no axis {axis} of {n} {role} channels"
        return ""


def _refuse(a: ChannelPass, node: fx.Node, lay: Layout | None, why: str, dim: int) -> Layout:
    """A call the registered rule does not fit: its channels stay, with the reason."""
    reason = f"{describe(a, node)} does not match its registered rule: {why}"
    if lay is not None:
        a.block(lay.slots, reason)
    out = a.produce(node.target, a.shape(node)[dim])
    a.block(out, reason)
    return Layout(dim, out)


def _shrink(rule: LayerRule, m: nn.Module, in_keep, out_keep) -> nn.Module:
    new = copy_structure(m)
    for keep, axes in ((in_keep, rule.inputs), (out_keep, rule.outputs)):
        for attr, axis in axes.items():
            t = select(getattr(new, attr), axis % getattr(new, attr).dim(), keep)
            if t is not None:
                replace_tensor(new, attr, t)
    counts = {"in": in_keep, "out": out_keep if rule.kind == "mix" else in_keep}
    for attr, role in rule.sizes.items():
        keep = counts[role]
        if keep is not None:
            setattr(new, attr, int(np.count_nonzero(keep)))
    return new


def register_rule(
    cls: type[nn.Module],
    *,
    kind: str,
    inputs: Mapping[str, int] | None = None,
    outputs: Mapping[str, int] | None = None,
    channel_dim: int = 1,
    sizes: Mapping[str, str] | None = None,
) -> LayerRule:
    """Tell fairfx how ``cls``'s tensors follow its channels, so its channels can be pruned.

    Example, a linear layer of your own with ``weight [out, in]`` and ``bias [out]``::

        fairfx.register_rule(
            MyLinear, kind="mix", inputs={"weight": 1}, outputs={"weight": 0, "bias": 0},
            channel_dim=-1, sizes={"in_features": "in", "out_features": "out"},
        )

    Returns the rule. Registering a class again replaces its rule; a built-in module type cannot
    be registered (its rule is fairfx's own).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise FairfxError(f"register_rule takes a torch.nn.Module subclass, got {cls!r}")
    if cls in MODULE_RULES and not isinstance(MODULE_RULES[cls], LayerRule):
        raise FairfxError(
            f"{cls.__name__} already has fairfx's own channel rule; do not register it"
        )
    if kind not in _KINDS:
        raise FairfxError(f"kind must be one of {_KINDS}, got {kind!r}")
    if kind == "per_channel" and outputs:
        raise FairfxError("a per_channel layer lists its tensors in inputs only (one channel axis)")
    roles = set((sizes or {}).values()) - {"in", "out"}
    if roles:
        raise FairfxError(f"sizes maps attribute names to 'in' or 'out', got {sorted(roles)}")
    rule = LayerRule(kind, dict(inputs or {}), dict(outputs or {}), channel_dim, dict(sizes or {}))
    MODULE_RULES[cls] = rule
    CUSTOM_LEAVES.add(cls)
    return rule


__all__ = ["LayerRule", "register_rule"]
