"""The query side of a channel graph: what the method layer may ask of it.

Scoring needs to know where each group's channels are read (observation points), which weight
makes each producer's channels (filter norms), the captured module and node shapes (memory
estimates); planning needs the captured module's names (ignored layers). These questions are
answered here in terms of node names, axes and unit indices, so nothing outside the engine reads
slots, roots, layouts or edits (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .edits import ParamEdit
from .records import UnitMap
from .slots import Layout


class GraphQueries:
    """Mixin of :class:`~fairfx.engine.group_graph.GroupGraph` (which provides ``unit_index`` and
    ``producer_units``): read-only questions about it."""

    channel_pass: Any
    groups: list[Any]
    _nodes: dict[str, fx.Node] | None
    _unit_maps: list[UnitMap] | None

    def unit_maps(self) -> list[UnitMap]:
        """Every call of every prunable group's producers, with its unit maps (computed once)."""
        if self._unit_maps is None:
            a = self.channel_pass
            nodes = {n.name: n for n in a.gm.graph.nodes}
            maps = []
            for group in self.groups:
                if not group.prunable:
                    continue
                for name in group.producers:
                    for node_name in a.producers[a.producer_index[name]].nodes:
                        lay = a.layouts[node_name]
                        read = self._post_activation_point(nodes[node_name])
                        rlay = a.layouts[read.name]
                        maps.append(
                            UnitMap(
                                name,
                                group.id,
                                node_name,
                                lay.dim,
                                self.unit_index(group.id, lay.slots),
                                read.name,
                                rlay.dim,
                                self.unit_index(group.id, rlay.slots),
                            )
                        )
            self._unit_maps = maps
        return self._unit_maps

    def _post_activation_point(self, node: Any) -> Any:
        """From a producer call, walk through per-channel ops (BN, activation, pooling, scale) to
        the tensor the next layer reads; stop at anything that joins tensors or moves channels.
        One point per producer call (``observe="post_act"``); :meth:`read_points` instead keeps
        walking through joins (``cat``, residual ``add``) and returns every tensor a consumer
        reads (``observe="consumer"``)."""
        layouts = self.channel_pass.layouts
        cur, lay = node, layouts[node.name]
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            ulay = layouts.get(user.name)
            if not isinstance(ulay, Layout) or ulay.slots is not lay.slots or ulay.dim != lay.dim:
                break
            laid = [a for a in user.all_input_nodes if isinstance(layouts.get(a.name), Layout)]
            if len(laid) != 1:
                break
            cur, lay = user, ulay
        return cur

    @property
    def captured(self) -> fx.GraphModule:
        """The captured model (shares the user's weights; never modify it)."""
        return self.channel_pass.gm

    def node(self, name: str) -> fx.Node:
        """The captured graph's node called ``name`` (one name map per graph)."""
        if self._nodes is None:
            self._nodes = {n.name: n for n in self.channel_pass.gm.graph.nodes}
        return self._nodes[name]

    def node_shapes(self) -> dict[str, Any]:
        """Recorded shape of every node (None where it is not one tensor)."""
        return {n.name: n.meta.get("fairfx_shape") for n in self.channel_pass.gm.graph.nodes}

    def channel_tensors(self) -> list[str]:
        """Names of the nodes whose tensors carry tracked channels."""
        return list(self.channel_pass.layouts)

    def output_shape(self) -> Any:
        """Recorded shape of the model's output when it is one tensor, else None."""
        out = self.channel_pass.gm.graph.find_nodes(op="output")[0].args[0]
        return out.meta.get("fairfx_shape") if isinstance(out, fx.Node) else None

    def read_points(self, node_name: str, gid: int) -> list[tuple[str, int, np.ndarray]]:
        """Every tensor a consumer reads group ``gid``'s channels from, starting at a producer
        call: walk through anything that carries them on the same axis (per-channel ops,
        ``cat``, residual ``add``) and keep the tensors some other op reads (a conv, a linear, a
        reshape). Each as ``(node name, channel axis, unit of each position)``."""
        layouts = self.channel_pass.layouts
        dim = layouts[node_name].dim
        start = self.node(node_name)
        seen, todo, points = {node_name}, [start], []

        def carries(n: fx.Node) -> bool:
            lay = layouts.get(n.name)
            return (
                isinstance(lay, Layout)
                and lay.dim == dim
                and bool((self.unit_index(gid, lay.slots) >= 0).any())
            )

        while todo:
            cur = todo.pop()
            read = False
            for user in cur.users:
                if carries(user):
                    if user.name not in seen:
                        seen.add(user.name)
                        todo.append(user)
                else:
                    read = True
            if read or not cur.users:
                points.append(cur)
        out = []
        for n in sorted(points, key=lambda n: n.name):
            lay = layouts[n.name]
            out.append((n.name, lay.dim, self.unit_index(gid, lay.slots)))
        return out

    def producer_weight(self, name: str) -> tuple[torch.Tensor | None, int]:
        """The weight that makes producer ``name``'s output channels and its output-channel
        axis (``(None, 0)`` for a producer without one, e.g. an embedding lookup's table)."""
        gm = self.channel_pass.gm
        prod = self.channel_pass.producers[self.channel_pass.producer_index[name]]
        for edit in self.channel_pass.edits:  # a weight read as a graph parameter: its sliced axis
            if isinstance(edit, ParamEdit) and edit.channel_slots is prod.slots:
                return gm.get_parameter(edit.target), edit.dim
        try:
            m = gm.get_submodule(name)
        except AttributeError:
            m = None
        if isinstance(m, torch.nn.Module) and isinstance(getattr(m, "weight", None), torch.Tensor):
            transposed = isinstance(m, torch.nn.modules.conv._ConvTransposeNd)
            return m.weight, 1 if transposed else 0
        for target in (f"{name}.weight", name):
            try:
                return gm.get_parameter(target), 0
            except AttributeError:
                continue
        return None, 0
