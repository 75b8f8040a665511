"""Planning: turn cached scores into per-group keep lists for any alpha or budget.

How many units each group loses comes from an allocation (:mod:`fairfx.method.allocation`): the
paper's Tolerance of Difference per group (:mod:`fairfx.method.tod`), a uniform ratio, or one
global threshold across groups; which units go is chosen by an importance ranking (``fair``:
lowest U; ``l1``: lowest filter L1 norm; ``random``). Kept counts can be rounded to a hardware
multiple (``round_to``) and named layers kept exactly (``ignored_layers``); costs are those of
the final plan. No data is needed to plan, so a user can sweep alphas or bisect a
parameter/MAC budget in seconds.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine.cost import Cost
from ..engine.groups import ChannelGraph
from ..errors import PlanError
from .allocation import BOUNDED, check_ratio, counts, round_kept
from .options import check_alpha, check_budget, check_plan_options, check_uniform_ratio
from .tod import removal_order

# plan_for's allocation when none is given; chosen by benchmarks/bench_quality.py (README).
DEFAULT_BUDGET_ALLOCATION = "hybrid_cost"


_UNIT_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unit_costs(graph: ChannelGraph, groups: set[int], key: str = "params") -> dict[int, float]:
    """What one unit of each group costs: parameters (``key="params"``) or MACs (``"macs"``)
    freed by removing one of its units from the unpruned model (its producers' slices and its
    consumers' input slices). One cost evaluation per group, cached per graph."""
    cache = _UNIT_COSTS.setdefault(graph, {})
    base = getattr(graph.cost(), key)
    out = {}
    for gid in sorted(groups):
        size = graph.groups[gid].size
        if (gid, key) not in cache:
            if size < 2:  # nothing can be removed from it anyway
                cache[gid, key] = 1.0
            else:
                fewer = getattr(graph.cost({gid: np.arange(size - 1)}), key)
                cache[gid, key] = float(max(base - fewer, 1))
        out[gid] = cache[gid, key]
    return out


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


def _ranking(scores, gid: int, importance: str, seed: int) -> np.ndarray:
    """The score units of one group are removed by, lowest first."""
    if importance == "fair":
        return np.asarray(scores.u, dtype=np.float64)
    if importance == "l1":
        return np.asarray(scores.l1, dtype=np.float64)
    return np.random.default_rng([seed, gid]).random(len(scores.u))


def ignored_groups(graph: ChannelGraph, ignored: Any) -> set[int]:
    """Groups that touch an ignored layer (as producer or consumer): they stay whole, so the
    layer's weights stay exactly as they were.

    ``ignored`` holds qualified module names (a name also covers the modules under it) or
    modules; a module is matched by its parameters, which the captured graph shares with the
    user's model.
    """
    if not ignored:
        return set()
    if isinstance(ignored, (str, torch.nn.Module)):
        ignored = [ignored]
    gm = graph.analysis.gm
    names: set[str] = set()
    for item in ignored:
        if isinstance(item, str):
            if not any(n == item or n.startswith(item + ".") for n, _ in gm.named_modules()):
                valid = ", ".join(sorted({g.producers[0] for g in graph.groups})[:6])
                raise PlanError(
                    f"ignored_layers: {item!r} is not a module of the model; give qualified "
                    f"names such as {valid}"
                )
            names.add(item)
        elif isinstance(item, torch.nn.Module):
            ptrs = {p.data_ptr() for p in item.parameters()}
            owners = {
                n.rpartition(".")[0] for n, p in gm.named_parameters() if p.data_ptr() in ptrs
            }
            if not ptrs or not owners:
                raise PlanError(
                    f"ignored_layers: the {type(item).__name__} given has no parameters in this "
                    "model; pass submodules of the model or their qualified names"
                )
            names |= owners
        else:
            raise PlanError(
                f"ignored_layers takes module names or modules, got {type(item).__name__}"
            )

    def hit(layer: str) -> bool:
        return any(layer == n or layer.startswith(n + ".") for n in names)

    return {g.id for g in graph.groups if any(hit(x) for x in (*g.producers, *g.consumers))}


def make_plan(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    *,
    alpha: float | None = None,
    importance: str = "fair",
    uniform: float | None = None,
    allocation: str | None = None,
    ratio: float | None = None,
    group_rule: str = "joint",
    round_to: int | None = None,
    ignored: set[int] | None = None,
    seed: int = 0,
    base: Cost | None = None,
    scale: float = 1.0,
    cost_of: Callable[[dict[int, np.ndarray]], Cost] | None = None,
    cost_key: str = "params",
) -> Plan:
    """One plan: per-group counts by ``allocation``, units by the ``importance`` ranking.

    ``tod`` (default) takes ``alpha``; ``uniform=r`` (or ``allocation="uniform", ratio=r``)
    removes the fraction r of every group; the global allocations take ``ratio``, the fraction of
    all units below their threshold (``hybrid`` also ``alpha``, the ToD bound). ``round_to``
    rounds every kept count to a multiple (:func:`~fairfx.method.allocation.round_kept`);
    ``ignored`` groups stay whole. ``scale`` multiplies every count (rounded down); ``plan_for``
    uses it for budgets that keep more than ``alpha = 0`` does. ``cost_key`` (``params`` or
    ``macs``) is what ``hybrid_cost`` weighs a unit by.
    """
    if uniform is not None:
        allocation, ratio = "uniform", check_uniform_ratio(uniform)
    allocation = allocation or "tod"
    check_plan_options(
        importance=importance,
        group_rule=group_rule,
        allocation=allocation,
        round_to=round_to,
        budget=True,
    )
    if allocation in ("tod", *BOUNDED):
        alpha = check_alpha(0.5 if alpha is None and allocation in BOUNDED else alpha)
    if allocation != "tod":
        ratio = check_ratio(ratio)
    ignored = ignored or set()
    rankings = {g: _ranking(scores[g], g, importance, seed) for g in scores}
    eligible = {g for g in scores if g not in ignored}
    removal = counts(
        scores,
        rankings,
        eligible,
        allocation=allocation,
        alpha=alpha,
        ratio=ratio,
        group_rule=group_rule,
        unit_cost=unit_costs(graph, eligible, cost_key) if allocation == "hybrid_cost" else None,
    )
    units: dict[int, np.ndarray] = {}
    priority = np.zeros(len(graph.roots))
    for gid in sorted(scores):
        s = scores[gid]
        n = len(s.u)
        m = math.floor(scale * removal[gid]) if allocation == "tod" else removal[gid]
        kept = n if gid in ignored else round_kept(n - m, n, round_to)
        order = removal_order(rankings[gid])
        units[gid] = np.sort(order[n - kept :])
        priority[graph.group_classes[gid]] = s.u
    units = graph.restore_empty(units, priority[graph.roots])
    removed = {g: graph.groups[g].size - len(u) for g, u in units.items()}
    base = base or graph.cost()
    cost = cost_of(units) if cost_of is not None else graph.cost(units)
    plan = Plan(
        units, alpha, importance, ratio if allocation == "uniform" else None, removed, cost, base
    )
    plan.extra.update(
        allocation=allocation, ratio=ratio, round_to=round_to, ignored_groups=sorted(ignored)
    )
    return plan


def plan_for_budget(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    *,
    params: float | None = None,
    macs: float | None = None,
    importance: str = "fair",
    uniform: bool = False,
    allocation: str | None = None,
    alpha: float | None = None,
    group_rule: str = "joint",
    round_to: int | None = None,
    ignored: set[int] | None = None,
    seed: int = 0,
    steps: int = 24,
) -> Plan:
    """Bisect the allocation's knob so the kept fraction meets a budget.

    The knob is alpha for ``tod``, the ratio for ``uniform`` and the global allocations
    (``hybrid`` keeps ``alpha`` as its per-group bound, 0.5 by default; when even the bounds at
    0.5 keep more than the budget, alpha is bisected upwards to widen them). The kept fraction falls
    as the knob grows, though not strictly (counts move in steps), so every evaluated plan is
    kept and the one closest to the target wins; its note says how close it came and whether the
    target was reachable (one ToD round prunes at most about half of each group, see README).
    When even ``alpha = 0`` keeps less than the target (U and R disagree enough that ToD already
    removes many units), every ToD count is scaled down by one bisected factor instead, which
    keeps ToD's per-layer allocation.
    """
    _, target = check_budget(params, macs, uniform)
    allocation = "uniform" if uniform else (allocation or DEFAULT_BUDGET_ALLOCATION)
    check_plan_options(
        alpha=alpha,
        importance=importance,
        group_rule=group_rule,
        allocation=allocation,
        round_to=round_to,
        budget=True,
    )
    base = graph.cost()
    key = "params_kept" if params is not None else "macs_kept"
    costs: dict[tuple[tuple[int, int], ...], Cost] = {}

    def cost_of(units: dict[int, np.ndarray]) -> Cost:
        """Sizes, not identities, of kept units decide the cost: bisection steps that land on the
        same counts reuse it."""
        count = tuple(sorted((g, len(u)) for g, u in units.items()))
        if count not in costs:
            costs[count] = graph.cost(units)
        return costs[count]

    common = dict(
        importance=importance,
        group_rule=group_rule,
        round_to=round_to,
        ignored=ignored,
        seed=seed,
        base=base,
        cost_of=cost_of,
        allocation=allocation,
        cost_key="params" if params is not None else "macs",
    )

    def build(x: float, scale: float = 1.0) -> Plan:
        if allocation == "tod":
            return make_plan(graph, scores, alpha=x, scale=scale, **common)
        return make_plan(graph, scores, ratio=x, alpha=alpha, **common)

    def bisect(make, lo: float, hi: float) -> list[Plan]:
        """Both knobs remove more as they grow, so the kept fraction falls from lo to hi."""
        tried = [make(lo), make(hi)]
        for _ in range(steps):
            mid = (lo + hi) / 2
            plan = make(mid)
            tried.append(plan)
            if getattr(plan, key) > target:
                lo = mid
            else:
                hi = mid
        return tried

    least = build(0.0)
    widest = build(0.999) if allocation in BOUNDED and alpha is None else None
    if widest is not None and getattr(widest, key) > target:
        # Every group at its ToD(0.5) bound still keeps more than asked: widen the bounds by
        # bisecting alpha (the threshold then takes all the bounds allow).
        def wider(a: float) -> Plan:
            return make_plan(graph, scores, ratio=0.999, alpha=a, **common)

        tried = bisect(wider, 0.5, 0.999)
    elif allocation != "tod" or getattr(least, key) > target:
        tried = bisect(build, 0.0, 0.999)
    else:
        # alpha = 0 already prunes more than asked: shrink every ToD count by one factor.
        tried = bisect(lambda f: build(0.0, f), 0.0, 1.0)
    best = min(tried, key=lambda p: (abs(getattr(p, key) - target), getattr(p, key)))
    reached = getattr(best, key)
    what = "parameters" if params is not None else "MACs"
    best.note = f"target {target:.3f} of {what} kept, reached {reached:.3f}"
    if abs(reached - target) > 0.1 * target:
        best.note += (
            " (not reachable: this is the closest plan; every group keeps at least one unit and "
            "counts move in steps; for more, prune in rounds: compress(..., rounds=k))"
        )
    best.extra["target"] = {what: target}
    return best
