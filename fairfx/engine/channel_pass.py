"""The channel pass: walk the captured graph once and describe how channels flow.

For every node the pass records a :class:`~fairfx.engine.slots.Layout` (which slot sits at each
position of the tensor's channel axis), unions slots that must be kept or removed together, blocks
slots that reach an op without a rule, and collects *edits*: what the rewrite must change (module
weights, parameters, shape constants) for any plan. The rules that do this live in
:mod:`fairfx.engine.rules`, one per op; this module is the bookkeeping they share.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx

from . import symbolic
from .capture import Captured
from .slots import Layout, SlotTable, unique, unique_first


@dataclass
class Producer:
    """An op whose output channels are new units (conv, linear, ...)."""

    name: str
    index: int
    slots: np.ndarray
    nodes: list[str] = field(default_factory=list)


class ChannelPass:
    """Result of the channel pass over one captured graph."""

    def __init__(self, captured: Captured, rule_for: Callable[..., Any]) -> None:
        """Run the pass; ``rule_for(analysis, node)`` returns the rule for a node.

        The rule table is passed in, not imported, because the rules build on this module's
        bookkeeping: :func:`fairfx.engine.group_graph.build` supplies
        :func:`fairfx.engine.rules.rule_for`.
        """
        self.captured = captured
        self.gm = captured.gm
        self.table = SlotTable()
        self.layouts: dict[str, Any] = {}
        self.producers: list[Producer] = []
        self.producer_index: dict[str, int] = {}
        import networkx as nx  # at the first graph, not at `import fairfx` (0.2 s)

        self.coupling = nx.Graph()
        self.edits: list[Any] = []
        self.masked: dict[str, Callable[..., Any]] = {}
        self._blocked: list[tuple[np.ndarray, str]] = []  # in the order the pass found them
        self._inexact: list[tuple[np.ndarray, str]] = []
        self._consumers: list[tuple[np.ndarray, str]] = []
        self.param_src: dict[str, str] = {}
        self._module_slots: dict[tuple[str, str], np.ndarray] = {}
        self.heads: list[np.ndarray] = []  # slots of units found to be attention heads
        self.sym: dict[str, Any] = {}  # run-time sizes that depend on channels (symbolic.py)
        self.node: fx.Node | None = None
        for node in self.gm.graph.nodes:
            self.node = node
            if symbolic.track(self, node):
                self.layouts[node.name] = None
                continue
            self.layouts[node.name] = rule_for(self, node)(self, node)
            symbolic.settle(self, node)
        self.node = None
        self._point_producers_at_tensors()

    def _point_producers_at_tensors(self) -> None:
        """A producer whose op returns a tuple (``nn.MultiheadAttention`` returns output and
        weights) is recorded at the ``getitem`` that takes its channels out, so every producer
        node names a tensor with a :class:`Layout` (scoring hooks and reads these tensors)."""
        nodes = {n.name: n for n in self.gm.graph.nodes}
        for prod in self.producers:
            resolved = []
            for name in prod.nodes:
                if isinstance(self.layouts.get(name), Layout):
                    resolved.append(name)
                    continue
                resolved.extend(
                    u.name
                    for u in nodes[name].users
                    if isinstance(self.layouts.get(u.name), Layout)
                    and self.layouts[u.name].slots is prod.slots
                )
            prod.nodes = resolved

    @property
    def head_slots(self) -> np.ndarray:
        return np.concatenate(self.heads) if self.heads else np.zeros(0, dtype=np.int64)

    # ----------------------------------------------------------------- queries used by rules
    def layout(self, arg: Any) -> Any:
        return self.layouts.get(arg.name) if isinstance(arg, fx.Node) else None

    @staticmethod
    def shape(arg: Any) -> tuple[int, ...] | None:
        if isinstance(arg, fx.Node):
            s = arg.meta.get("fairfx_shape")
            return s if s is None or all(isinstance(d, int) for d in s) else None
        return None

    @staticmethod
    def value(arg: Any) -> Any:
        """The concrete value of an argument (recursing into lists), for shape arithmetic."""
        if isinstance(arg, fx.Node):
            return arg.meta.get("fairfx_value")
        if isinstance(arg, (list, tuple)):
            return type(arg)(ChannelPass.value(a) for a in arg)
        return arg

    def module(self, target: str) -> Any:
        return self.gm.get_submodule(target)

    def param(self, arg: Any) -> str | None:
        """The parameter or buffer target an argument is read from, if it is one."""
        return self.param_src.get(arg.name) if isinstance(arg, fx.Node) else None

    def param_shape(self, target: str) -> tuple[int, ...]:
        """The shape of the parameter or buffer ``target`` itself (an alias of it, such as the
        ``expand`` of CLIP's 1-D ``class_embedding`` to (N, 1, C), has more leading axes)."""
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return tuple(obj.shape)

    def tensor_layouts(self, node: fx.Node) -> Iterator[Layout]:
        for arg in _flat_args(node):
            lay = self.layout(arg)
            yield from _flat_layouts(lay)

    # ----------------------------------------------------------------- effects used by rules
    def produce(self, name: str, n: int) -> np.ndarray:
        """New slots for ``n`` output channels of producer ``name`` (shared if called twice)."""
        idx = self.producer_index.get(name)
        if idx is not None:
            self.producers[idx].nodes.append(self.node.name)
            return self.producers[idx].slots
        idx = len(self.producers)
        slots = self.table.new(n, idx)
        self.producers.append(Producer(name, idx, slots, [self.node.name]))
        self.producer_index[name] = idx
        self.coupling.add_node(name)
        return slots

    def untracked(self, n: int, reason: str) -> np.ndarray:
        """Slots for channels no producer owns (model inputs, constants): never prunable."""
        slots = self.table.new(n, -1)
        self.block(slots, reason)
        return slots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.table.union(a, b)
        owners = self.table.owner
        pa = {owners[s] for s in a.tolist()} - {-1}
        pb = {owners[s] for s in b.tolist()} - {-1}
        names = [self.producers[i].name for i in sorted(pa | pb)]
        for u, v in itertools.pairwise(names):
            self.coupling.add_edge(u, v, via=self.node.name)

    def share(self, key: str, role: str, slots: np.ndarray) -> None:
        """A parameter tied to channels (weight rows, BN stats) seen again unions the channels."""
        seen = self._module_slots.get((key, role))
        if seen is None:
            self._module_slots[(key, role)] = slots
        elif seen.shape == slots.shape:
            self.union(seen, slots)
        else:
            self.block(slots, f"{key} is applied to tensors of different channel counts")

    def read_untracked(self, key: str, role: str, n: int, node: fx.Node) -> None:
        """``key``'s ``role`` axis (a weight's input columns, a norm's per-channel parameters)
        also serves a tensor without tracked channels (DeBERTa's ``query_proj`` applied to the
        relative-position embeddings): that call needs every column, so the channels another
        call ties to the same axis must stay, with this as the reason."""
        reason = (
            f"{key} is also applied at node '{node.name}' to a tensor without tracked channels, "
            "which needs all of its input channels"
        )
        self.share(key, role, self.untracked(n, reason))

    def block(self, slots: Iterable[int] | np.ndarray, reason: str) -> None:
        self._blocked.append((np.asarray(slots, dtype=np.int64).reshape(-1), reason))

    def block_inputs(self, node: fx.Node, reason: str) -> None:
        for lay in self.tensor_layouts(node):
            self.block(lay.slots, reason)

    def inexact(self, slots: np.ndarray, reason: str) -> None:
        self._inexact.append((np.asarray(slots, dtype=np.int64).reshape(-1), reason))

    def consume(self, slots: np.ndarray, name: str) -> None:
        self._consumers.append((slots, name))

    def edit(self, edit: Any) -> None:
        self.edits.append(edit)

    # ----------------------------------------------------------------- summaries
    def blocked_reasons(self, roots: np.ndarray) -> dict[int, str]:
        """Why each blocked class (root slot) is blocked: see :func:`_reasons`."""
        return _reasons(self._blocked, roots)

    def inexact_reasons(self, roots: np.ndarray) -> dict[int, str]:
        return _reasons(self._inexact, roots)

    def consumers_by_group(self, group_of_slot: np.ndarray) -> dict[int, list[str]]:
        """Names of the ops reading each group, in graph order."""
        out: dict[int, list[str]] = {}
        for slots, name in self._consumers:
            for gid in unique(group_of_slot[slots]).tolist():
                names = out.setdefault(gid, [])
                if gid >= 0 and name not in names:
                    names.append(name)
        return out


def _reasons(found: list[tuple[np.ndarray, str]], roots: np.ndarray) -> dict[int, str]:
    """Per class, the reason of its smallest slot, each slot keeping the first reason it got.

    Computed once from whole arrays: the pass may flag a residual stream's thousands of slots
    dozens of times, and a dict entry per slot and flag cost ResNet-50 tens of milliseconds.
    """
    if not found:
        return {}
    slots = np.concatenate([s for s, _ in found])
    which = np.repeat(np.arange(len(found)), [len(s) for s, _ in found])
    uniq, first = unique_first(slots)  # sorted slots, each one's first flag
    classes, smallest = unique_first(roots[uniq])
    return {
        int(c): found[int(which[first[i]])][1]
        for c, i in zip(classes.tolist(), smallest.tolist(), strict=True)
    }


def _flat_args(node: fx.Node) -> Iterator[Any]:
    stack = list(node.args) + list(node.kwargs.values())
    while stack:
        a = stack.pop(0)
        if isinstance(a, (list, tuple)):
            stack[:0] = list(a)
        elif isinstance(a, dict):
            stack[:0] = list(a.values())
        else:
            yield a


def _flat_layouts(lay: Any) -> Iterator[Layout]:
    if isinstance(lay, Layout):
        yield lay
    elif isinstance(lay, (list, tuple)):
        for item in lay:
            yield from _flat_layouts(item)
