"""The plan record and the unit rankings every planner shares (by counts or by latency).

A :class:`Plan` is kept units per group plus how they were chosen and what they cost;
:func:`ranking` is the score each group's units are removed by, lowest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.cost import Cost
from ..engine.group_graph import GroupGraph
from ..errors import PlanError
from .plan_options import PlanOptions


@dataclass
class Plan:
    """Kept units per group, how they were chosen, and what the plan costs."""

    units: dict[int, np.ndarray]
    alpha: float | None
    importance: str
    uniform: float | None
    removed: dict[int, int]
    cost: Cost
    base: Cost
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_kept(self) -> float:
        return self.cost.params / max(self.base.params, 1)

    @property
    def macs_kept(self) -> float:
        return self.cost.macs / max(self.base.macs, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "importance": self.importance,
            "uniform": self.uniform,
            "allocation": self.extra.get("allocation", "tod"),
            "round_to": self.extra.get("round_to"),
            "ignored_groups": self.extra.get("ignored_groups", []),
            "params_before": self.base.params,
            "params_after": self.cost.params,
            "macs_before": self.base.macs,
            "macs_after": self.cost.macs,
            "params_kept": round(self.params_kept, 6),
            "macs_kept": round(self.macs_kept, 6),
            "groups_pruned": sum(1 for m in self.removed.values() if m > 0),
            "units_removed": int(sum(self.removed.values())),
            "note": self.note,
        }


def ranking(graph: GroupGraph, scores: Any, gid: int, options: PlanOptions) -> np.ndarray:
    """The score units of one group are removed by, lowest first."""
    importance = options.importance
    if callable(importance):
        values = np.asarray(importance(graph, graph.groups[gid]), dtype=np.float64).reshape(-1)
        if len(values) != graph.groups[gid].size or not np.isfinite(values).all():
            raise PlanError(
                f"importance callable returned {len(values)} values for group {gid} of "
                f"{graph.groups[gid].size} units (finite, one per unit, lower removed first)"
            )
        return values
    if importance == "fair":
        return np.asarray(scores.u, dtype=np.float64)
    if importance == "l1":
        return np.asarray(scores.l1, dtype=np.float64)
    return np.random.default_rng([options.seed, gid]).random(len(scores.u))
