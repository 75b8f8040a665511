"""``ChannelGraph``: the one object a user plans, costs and prunes with.

``fairfx.channel_graph(model, example_input)`` captures the model once and runs the channel
pass; from it, any number of plans (``graph.plan(PlanOptions(...), scores)``), their costs
(``graph.cost(plan)``) and pruned models (``graph.prune(plan)``). Scores come from
:func:`fairfx.analyze` (FAIR's U and R), or are not needed at all for data-free importances
(``importance="l1"``, ``"random"`` or a callable). The engine part (groups, rewrite, cost,
queries) is :class:`~fairfx.engine.group_graph.GroupGraph`; this class adds the method's planning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from ..engine.cost import Cost
from ..engine.group_graph import GroupGraph, build
from . import planning
from .plan_options import PlanOptions
from .planning import Plan


class ChannelGraph(GroupGraph):
    """The analysed model (one capture, one channel pass): ``groups``, ``plan``, ``cost``,
    ``prune``. Build it with :func:`fairfx.channel_graph`."""

    def plan(
        self,
        options: PlanOptions | None = None,
        scores: Any = None,
        **keywords: Any,
    ) -> Plan:
        """Per-group kept units for ``options`` (or the same fields as keywords).

        ``scores``: an :class:`~fairfx.Analysis` or its ``scores`` (FAIR's U/R per group);
        None plans from the weights alone (needs ``importance="l1"``, ``"random"`` or a
        callable, and a ratio, budget or ``layer_ratios``)."""
        if options is None:
            options = PlanOptions(**keywords)
        elif keywords:
            options = options.replace(**keywords)
        table = getattr(scores, "scores", scores)
        return planning.plan(self, table, options)

    def prune(
        self, keep: Plan | Mapping[str, Sequence[int]] | Mapping[int, Sequence[int]]
    ) -> fx.GraphModule:
        """The smaller GraphModule for a :class:`Plan`, ``{producer name: output channels to
        keep}`` or ``{group id: units to keep}``; what was kept and the plan's summary are in
        ``.meta["fairfx"]``. The model the graph was built from is never modified."""
        if isinstance(keep, Plan):
            pruned = self._rewrite(keep.units)
            pruned.meta["fairfx"]["plan"] = keep.summary()
            return pruned
        return super().prune(keep)

    def cost(self, plan: Plan | Mapping[int, Sequence[int]] | None = None) -> Cost:
        """Parameters and MACs of a plan (of the unpruned model without one); cached."""
        units = plan.units if isinstance(plan, Plan) else plan
        return super().cost(units)


def channel_graph(model: torch.nn.Module, example_input: Any) -> ChannelGraph:
    """Capture ``model`` and run the channel pass once: the analysed graph to plan, cost and
    prune from as often as needed. The model is never modified."""
    return build(model, example_input, ChannelGraph)


def count(model: torch.nn.Module, example_input: Any) -> Cost:
    """Parameters and MACs (multiply-accumulates) of ``model`` on ``example_input``'s shape,
    counted from its captured graph (the same counter budgets and reports use)."""
    return build(model, example_input).cost()


__all__ = ["ChannelGraph", "Cost", "channel_graph", "count"]
