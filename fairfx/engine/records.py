"""The records the channel graph hands out: groups for users, unit maps for scoring, keep lists.

Kept apart from :mod:`fairfx.engine.group_graph` (which computes them) so that readers of a group,
a unit map or a plan need not know how the channel pass is organised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import PlanError
from .slots import unique


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together, as reported to users.

    Attributes:
        id: position of the group in graph order.
        size: number of prunable units (a grouped conv's columns count once).
        producers: qualified names of the modules (or weight parameters) that create the channels.
        consumers: modules and ops that read them.
        prunable: whether a plan may remove units of this group.
        reason: why not, when ``prunable`` is False.
        exact: False when pruning also changes a normalization's statistics (LayerNorm over the
            channels); ``fairfx.verify`` then checks the rewrite against renormalized masking.
        note: what makes the group inexact, if it is.
        unit: what one unit is: ``"channel"``, or ``"head"`` when the units are attention heads
            (a head's q, k and v dims and the output projection's columns go together).
        members: other modules and parameters sliced when the group's units go (norms, layer
            scales, the readers' input columns), in graph order.
        unit_of_channel: per producer, the unit of each of its output channels (-1 for a
            channel of another group); :meth:`channels` groups them by unit. Stored flat because
            a group's record is built for every group at every capture (a residual stream of
            ResNet-50 has thousands of channels) while ``channels`` is asked for rarely.
    """

    id: int
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    prunable: bool
    reason: str | None
    exact: bool = True
    note: str | None = None
    unit: str = "channel"
    members: tuple[str, ...] = ()
    unit_of_channel: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def channels(self, producer: str | None = None) -> list[list[int]]:
        """Output channels of ``producer`` (default: the group's first) that each unit holds:
        ``channels()[i]`` go or stay together as unit ``i``. A plain conv's unit i is channel i;
        a grouped conv's unit j is column j of every conv group; a GroupNorm group's unit is one
        offset in every norm group. Plan by units with ``fairfx.prune(model, x, {id: units})``.
        """
        table = dict(self.unit_of_channel)
        name = self.producers[0] if producer is None else producer
        if name not in table:
            raise PlanError(
                f"{name!r} is not a producer of group {self.id}; its producers are "
                f"{', '.join(self.producers)}"
            )
        out: list[list[int]] = [[] for _ in range(self.size)]
        for channel, unit in enumerate(table[name]):
            if unit >= 0:
                out[unit].append(channel)
        return out


@dataclass(frozen=True)
class UnitMap:
    """One producer call's output and the tensor the next layer reads it from, as unit maps.

    Scoring needs, for every prunable producer call, which unit of which group each position of
    a tensor's channel axis holds. The engine computes these maps once (:meth:`GroupGraph.
    unit_maps`) so that scoring never reaches into slots or roots.

    Attributes:
        producer: qualified name of the producer (module or weight parameter).
        gid: the group its channels belong to.
        node, dim, units: the call's output node, its channel axis, and the unit (within
            ``gid``) at each position along it; -1 where a position belongs to another group.
        read, read_dim, read_units: the same for the tensor the next layer reads, reached by
            following per-channel ops (BatchNorm, activation, pooling, scaling) from ``node``.
    """

    producer: str
    gid: int
    node: str
    dim: int
    units: np.ndarray
    read: str
    read_dim: int
    read_units: np.ndarray


def check_keep_list(values: Sequence[int] | Any, size: int, what: str) -> np.ndarray:
    """A keep list as sorted unique indices in [0, size), or a one-line PlanError saying why not."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (int, np.integer)):
        raise PlanError(
            f"keep list for {what} must be a list of indices, got the number {values}; "
            f"list(range({values})) keeps the first {values}"
        )
    if not isinstance(values, Iterable):
        raise PlanError(
            f"keep list for {what} must be a list of indices, got {type(values).__name__}"
        )
    arr = np.asarray(list(values))
    if arr.size == 0:
        raise PlanError(f"keep list for {what} is empty; at least one channel must stay")
    if not np.issubdtype(arr.dtype, np.integer):
        raise PlanError(f"keep list for {what} must hold integer indices, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= size:
        raise PlanError(f"keep list for {what} has indices outside [0, {size}): {arr.tolist()}")
    uniq = unique(arr)
    if len(uniq) != len(arr):
        raise PlanError(f"keep list for {what} repeats indices")
    return uniq
