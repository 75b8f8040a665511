"""Channel groups: the public view of the channel pass, and plans expressed against it.

A *group* is a connected set of producers whose channels are tied by coupling ops (a residual
stream, a conv and its depthwise followers). Its *units* are the equivalence classes of slots it
holds, ordered by their first slot, so unit ``i`` of a plain conv is its output channel ``i``.

A :class:`GroupGraph` is the analysed model: one capture and one channel pass, then any number
of plan costs and rewrites from it (``graph.prune(keep)``, ``graph.cost(units)``), and a narrow
query API for the method layer (``captured``, ``node``, ``node_shapes``, ``read_points``,
``producer_weight``, ``unit_maps``), so scoring and planning never touch slots, roots or edits.
``fairfx.ChannelGraph`` (:mod:`fairfx.method.graph`) adds planning on top.
``channel_groups`` and ``prune`` are one-call wrappers around it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.fx as fx

from ..errors import PlanError
from .capture import capture
from .channel_pass import ChannelPass
from .cost import Cost, slot_cost
from .coverage import account_for_parameters
from .graph_queries import GraphQueries
from .records import ChannelGroup, UnitMap, check_keep_list
from .rewrite import count_params, rewrite
from .rules import rule_for
from .slots import Layout, common, unique

G = TypeVar("G", bound="GroupGraph")


class GroupGraph(GraphQueries):
    """Groups of one captured model, with the conversions between channels, units and slots."""

    def __init__(self, channels: ChannelPass) -> None:
        self.channel_pass = channels
        self._source: Callable[[], Any] = lambda: None  # the user's model, set by build
        self._costs: dict[bytes, Cost] = {}
        self._unit_maps: list[UnitMap] | None = None
        self._params_before: int | None = None  # counted at the first rewrite
        self._nodes: dict[str, fx.Node] | None = None
        roots = channels.table.roots()
        self.roots = roots
        blocked = channels.blocked_reasons(roots)
        inexact = channels.inexact_reasons(roots)
        index = channels.producer_index
        head_roots = set(roots[channels.head_slots].tolist())
        import networkx as nx  # at the first graph, not at `import fairfx` (0.2 s)

        comps = sorted(
            nx.connected_components(channels.coupling), key=lambda c: min(index[n] for n in c)
        )
        self.groups: list[ChannelGroup] = []
        # Per group, the root slot of each unit (a unit is one equivalence class of slots).
        self.unit_roots: list[np.ndarray] = []
        self.group_of_producer: dict[str, int] = {}
        for gid, comp in enumerate(comps):
            names = sorted(comp, key=index.__getitem__)
            slots = np.concatenate([channels.producers[index[n]].slots for n in names])
            classes = unique(roots[slots])
            reasons = [blocked[c] for c in classes.tolist() if c in blocked]
            notes = [inexact[c] for c in classes.tolist() if c in inexact]
            reason = reasons[0] if reasons else None
            if reason is None and len(classes) < 2:
                reason = "has a single unit, which must stay"
            self.groups.append(
                ChannelGroup(
                    id=gid,
                    size=len(classes),
                    producers=tuple(names),
                    consumers=(),
                    prunable=reason is None,
                    reason=reason,
                    exact=not notes,
                    note=notes[0] if notes else None,
                    unit="head" if head_roots.intersection(classes.tolist()) else "channel",
                )
            )
            self.unit_roots.append(classes)
            for n in names:
                self.group_of_producer[n] = gid
        self._attach_consumers()

    def _attach_consumers(self) -> None:
        self.group_of_root = np.full(len(self.roots), -1, dtype=np.int64)
        for gid, classes in enumerate(self.unit_roots):
            self.group_of_root[classes] = gid
        group_of_slot = self.group_of_root[self.roots]
        readers = self.channel_pass.consumers_by_group(group_of_slot)
        members = self._members(group_of_slot)
        self.groups = [
            dataclasses.replace(
                g,
                consumers=tuple(readers.get(g.id, ())),
                members=tuple(members.get(g.id, ())),
                unit_of_channel=tuple(
                    (p, tuple(self.producer_units(p).tolist())) for p in g.producers
                ),
            )
            for g in self.groups
        ]

    def _members(self, group_of_slot: np.ndarray) -> dict[int, list[str]]:
        """Targets of the edits that slice each group's channels (producers excluded)."""
        out: dict[int, list[str]] = {}
        for edit in self.channel_pass.edits:
            parts = edit.slots()
            if not parts:
                continue
            for gid in unique(group_of_slot[np.concatenate(parts)]).tolist():
                names = out.setdefault(gid, [])
                if (
                    gid >= 0
                    and edit.target not in names
                    and edit.target not in (self.groups[gid].producers)
                ):
                    names.append(edit.target)
        return out

    def built_from(self, model: torch.nn.Module) -> bool:
        """Whether this graph is the capture of ``model`` (held weakly: the graph shares the
        model's tensors but does not keep the model alive)."""
        return self._source() is model

    # ------------------------------------------------------------------ plans
    def kept_slots(self, units: Mapping[int, Sequence[int]]) -> np.ndarray:
        """Slot keep-mask for a plan given as ``{group id: unit indices to keep}``."""
        kept_root = np.ones(len(self.roots), dtype=bool)
        for gid, keep in units.items():
            group = self.groups[gid]
            idx = check_keep_list(keep, group.size, f"group {gid}")
            if not group.prunable and len(idx) != group.size:
                raise PlanError(
                    f"group {gid} ({group.producers[0]}) is not prunable: {group.reason}"
                )
            classes = self.unit_roots[gid]
            kept_root[classes] = False
            kept_root[classes[idx]] = True
        return kept_root[self.roots]

    def units_from_keep(self, keep: Mapping[str, Sequence[int]]) -> dict[int, np.ndarray]:
        """Translate ``{producer name: output channels to keep}`` into kept units per group."""
        a = self.channel_pass
        chosen: dict[int, dict[int, bool]] = {}
        origin: dict[int, str] = {}
        for name, channels in keep.items():
            if name not in a.producer_index:
                raise PlanError(
                    f"{name!r} is not a producer of prunable channels; valid names include "
                    f"{', '.join(sorted(a.producer_index)[:8])} (see fairfx.channel_groups)"
                )
            prod = a.producers[a.producer_index[name]]
            gid = self.group_of_producer[name]
            group = self.groups[gid]
            idx = check_keep_list(channels, len(prod.slots), repr(name))
            if not group.prunable and len(idx) != len(prod.slots):
                raise PlanError(f"channels of {name!r} cannot be pruned: the group {group.reason}")
            mask = np.zeros(len(prod.slots), dtype=bool)
            mask[idx] = True
            roots = self.roots[prod.slots]
            split = common(roots[mask], roots[~mask])
            if len(split):
                pair = np.flatnonzero(roots == split[0])[:2].tolist()
                raise PlanError(
                    f"keep for {name!r} separates channels {pair[0]} and {pair[1]}, which are "
                    "one unit (tied by a grouped conv, a channel split or a shared parameter); "
                    "keep or remove them together"
                )
            # per unit of the group: -1 not named yet, 0 removed, 1 kept
            state = chosen.setdefault(gid, np.full(group.size, -1, dtype=np.int8))
            pos = np.searchsorted(self.unit_roots[gid], roots)
            seen = state[pos]
            if ((seen >= 0) & (seen != mask)).any():
                raise PlanError(
                    f"{name!r} and {origin[gid]!r} produce the same channel group but their "
                    "keep lists disagree; name one producer per group or give matching lists"
                )
            state[pos] = mask
            origin.setdefault(gid, name)
        return {gid: np.flatnonzero(state != 0) for gid, state in chosen.items()}

    def empty_tensors(self, kept_slot: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Tensors a plan would leave without any channel (a split piece, a concat branch)."""
        out = []
        for name, lay in self.channel_pass.layouts.items():
            for item in _iter_layouts(lay):
                if item.size and not kept_slot[item.slots].any():
                    out.append((name, item.slots))
        return out

    def restore_empty(
        self,
        units: Mapping[int, Sequence[int]],
        priority: Mapping[int, np.ndarray] | None = None,
    ) -> dict[int, np.ndarray]:
        """Add back, for every tensor a plan would empty, its best unit (highest
        ``priority[group][unit]``, else its first). Planners call this so a plan never needs a
        by-hand fix."""
        score = None
        if priority:
            score = np.zeros(len(self.roots))
            for gid, values in priority.items():
                score[self.unit_roots[gid]] = values
            score = score[self.roots]
        plan = {g: np.asarray(u) for g, u in units.items()}
        while True:
            empty = self.empty_tensors(self.kept_slots(plan))
            if not empty:
                return plan
            _, slots = empty[0]
            best = slots[int(np.argmax(score[slots]))] if score is not None else slots[0]
            root = self.roots[best]
            gid = int(self.group_of_root[root])
            if gid < 0:  # only group channels can be removed, so this cannot happen
                raise PlanError(f"node {empty[0][0]!r} lost channels that belong to no group")
            unit = int(np.searchsorted(self.unit_roots[gid], root))
            plan[gid] = np.union1d(plan.get(gid, np.arange(self.groups[gid].size)), [unit])

    def keep_from_units(self, units: Mapping[int, Sequence[int]]) -> dict[str, list[int]]:
        """The ``{producer: channels}`` form of a unit plan (every producer of each group)."""
        kept_slot = self.kept_slots(units)
        out: dict[str, list[int]] = {}
        for gid in sorted(units):
            for name in self.groups[gid].producers:
                prod = self.channel_pass.producers[self.channel_pass.producer_index[name]]
                out[name] = np.flatnonzero(kept_slot[prod.slots]).tolist()
        return out

    # ------------------------------------------------------------------ rewrites and costs
    def _rewrite(self, units: Mapping[int, Sequence[int]]) -> fx.GraphModule:
        """The smaller GraphModule for ``{group id: kept unit indices}``; plan in ``.meta``."""
        kept_slot = self.kept_slots(units)
        self.check_nonempty(kept_slot)
        gm = rewrite(self.channel_pass, kept_slot)
        if self._params_before is None:
            self._params_before = count_params(self.channel_pass.gm)
        gm.meta["fairfx"] = {
            "keep": self.keep_from_units(units),
            "units": {int(g): np.asarray(u).tolist() for g, u in units.items()},
            "params_before": self._params_before,
            "params_after": count_params(gm),
        }
        return gm

    def prune(
        self, keep: Mapping[str, Sequence[int]] | Mapping[int, Sequence[int]]
    ) -> fx.GraphModule:
        """The smaller GraphModule for ``{producer name: output channels to keep}`` or for
        ``{group id: units to keep}`` (units as in :meth:`ChannelGroup.channels`)."""
        if not keep:
            raise PlanError("keep is empty: name at least one producer (see fairfx.channel_groups)")
        ids = [isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keep]
        if all(ids):
            return self._rewrite(self.units_from_ids(keep))  # type: ignore[arg-type]
        if any(ids):
            raise PlanError(
                "keep mixes group ids and producer names; give {group id: units} or "
                "{producer: channels}, not both"
            )
        return self._rewrite(self.units_from_keep(keep))  # type: ignore[arg-type]

    def units_from_ids(self, keep: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """Validate a plan ``{group id: units to keep}``: known ids, valid unit indices."""
        units = {}
        for gid, values in keep.items():
            if not 0 <= gid < len(self.groups):
                raise PlanError(
                    f"there is no channel group {gid}; ids run from 0 to {len(self.groups) - 1} "
                    "(see fairfx.channel_groups)"
                )
            units[int(gid)] = check_keep_list(values, self.groups[gid].size, f"group {gid} (units)")
        return units

    def cost(self, units: Mapping[int, Sequence[int]] | None = None) -> Cost:
        """Parameters and MACs of the plan (of the unpruned model without one); cached per plan."""
        kept_slot = self.kept_slots(units or {})
        key = np.packbits(kept_slot).tobytes()
        if key not in self._costs:
            self._costs[key] = slot_cost(self.channel_pass, kept_slot)
        return self._costs[key]

    def check_nonempty(self, kept_slot: np.ndarray) -> None:
        """Refuse a plan that would leave some tensor with no channels at all."""
        empty = self.empty_tensors(kept_slot)
        if empty:
            raise PlanError(
                f"the plan removes every channel of node {empty[0][0]!r}; keep at least one "
                "channel of each tensor (e.g. of each branch that is concatenated or split)"
            )

    def producer_units(self, name: str) -> np.ndarray:
        """Unit (within its group) of each output channel of producer ``name``."""
        a = self.channel_pass
        return self.unit_index(
            self.group_of_producer[name], a.producers[a.producer_index[name]].slots
        )

    def unit_index(self, gid: int, slots: np.ndarray) -> np.ndarray:
        """Unit index (within group ``gid``) of each slot; -1 for slots of other groups."""
        classes = self.unit_roots[gid]
        r = self.roots[slots]
        pos = np.searchsorted(classes, r)
        pos = np.clip(pos, 0, len(classes) - 1)
        return np.where(classes[pos] == r, pos, -1)


def _iter_layouts(lay: Any):
    if isinstance(lay, Layout):
        yield lay
    elif isinstance(lay, tuple):
        for item in lay:
            yield from _iter_layouts(item)


def build(model: torch.nn.Module, example_input: Any, kind: type[G] = GroupGraph) -> G:  # type: ignore[assignment]
    """Capture ``model`` and run the channel pass once: the analysed graph every entry point
    costs and rewrites from (``kind`` a subclass, e.g. the planning facade
    ``fairfx.ChannelGraph``)."""
    channels = ChannelPass(capture(model, example_input), rule_for)
    account_for_parameters(channels)  # no op with weights may be missing from the groups
    graph = kind(channels)
    graph._source = weakref.ref(model)
    return graph


def channel_groups(model: torch.nn.Module, example_input: Any) -> list[ChannelGroup]:
    """Every channel group of ``model``: size, producers, consumers, prunable or why not."""
    return list(build(model, example_input).groups)


def prune(
    model: torch.nn.Module,
    example_input: Any,
    keep: Mapping[str, Sequence[int]] | Mapping[int, Sequence[int]],
) -> fx.GraphModule:
    """Physically remove channels and return a new, smaller ``torch.fx.GraphModule``.

    One call for one plan; for several plans (or ``channel_groups`` first) build the graph once
    with ``fairfx.channel_graph(model, example_input)`` and call its ``prune`` each time.

    Args:
        model: the model (or a GraphModule); it is never modified, and the result shares no
            storage with it.
        example_input: a tensor or tuple of positional inputs used to trace and record shapes.
        keep: ``{producer qualified name: output-channel indices to keep}``. Naming any producer
            of a channel group prunes the whole group; names of one group must agree. Or
            ``{group id: unit indices to keep}``: each unit's channels per producer are
            ``ChannelGroup.channels(producer)`` (grouped convs and GroupNorm tie channels into
            units, so this is the form that is always valid).

    Raises:
        PlanError: unknown names, empty or out-of-range indices, disagreeing lists, a split unit.
    """
    return build(model, example_input).prune(keep)
