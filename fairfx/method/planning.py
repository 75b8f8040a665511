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
from typing import Any

import numpy as np

from ..engine.cost import Cost
from ..engine.group_graph import GroupGraph
from ..errors import PlanError
from .allocation import BOUNDED, counts, round_kept
from .plan_options import PlanOptions
from .plan_record import Plan, ranking
from .scoring import Scores, filter_l1
from .selection import ignored_groups, layer_ratio_groups
from .tod import removal_order

# Allocations that weigh units by R, which a plan from the weights alone does not have.
_NEEDS_R = ("tod", "global_r", "taylor", "hybrid", "hybrid_cost")


_UNIT_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unit_costs(graph: GroupGraph, groups: set[int], key: str = "params") -> dict[int, float]:
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


def data_free_scores(graph: GroupGraph) -> dict[int, Scores]:
    """Scores from the weights alone (filter L1 as U; no R): enough for data-free importances
    with ``uniform``/``global`` allocations, per-layer ratios and budgets."""
    out = {}
    for g in graph.groups:
        if g.prunable:
            l1 = filter_l1(graph, g.id)
            out[g.id] = Scores(l1, np.zeros_like(l1), l1)
    return out


def plan(graph: GroupGraph, scores: Mapping[int, Any] | None, options: PlanOptions) -> Plan:
    """The one planning entry point: per-group kept units for ``options``.

    ``scores`` are an Analysis's U/R/L1 per group; None plans from the weights alone, which
    needs a data-free importance (``l1``, ``random`` or a callable) and an allocation that does
    not weigh units by R (``uniform`` or ``global``, a ratio, a budget or ``layer_ratios``)."""
    if scores is None:
        if not options.data_free:
            raise PlanError(
                "importance='fair' needs U and R from calibration data: plan from "
                "fairfx.analyze(model, x, data), or choose importance='l1', 'random' or a "
                "callable to plan from the weights alone"
            )
        if options.resolved_allocation in _NEEDS_R:
            raise PlanError(
                f"allocation={options.resolved_allocation!r} weighs units by R, which needs "
                "calibration data; without data give ratio= or a budget with "
                "allocation='uniform' or 'global'"
            )
        scores = data_free_scores(graph)
    ignored = ignored_groups(graph, options.ignored_layers)
    if options.latency is not None:
        # Imported here: the latency planner builds on this module's Plan and rankings.
        from .latency_plan import plan_for_latency

        return plan_for_latency(graph, scores, options, ignored)
    if options.budget is not None:
        return _plan_for_budget(graph, scores, options, ignored)
    return _make_plan(graph, scores, options, ignored, alpha=options.alpha, ratio=options.ratio)


def _make_plan(
    graph: GroupGraph,
    scores: Mapping[int, Any],
    options: PlanOptions,
    ignored: set[int],
    *,
    alpha: float | None,
    ratio: float | None,
    scale: float = 1.0,
    base: Cost | None = None,
    cost_of: Callable[[dict[int, np.ndarray]], Cost] | None = None,
) -> Plan:
    """One plan at one setting of the allocation's knob (``alpha`` or ``ratio``).

    ``scale`` multiplies every ToD count (rounded down): budgets that keep more than
    ``alpha = 0`` bisect it. ``cost_of`` (budget bisection) reuses costs of equal counts."""
    allocation = options.resolved_allocation
    if allocation in BOUNDED and alpha is None:
        alpha = 0.5
    key = "macs" if options.flops is not None else "params"
    rankings = {g: ranking(graph, scores[g], g, options) for g in scores}
    eligible = {g for g in scores if g not in ignored}
    removal = counts(
        scores,
        rankings,
        eligible,
        allocation=allocation,
        alpha=alpha,
        ratio=ratio,
        group_rule=options.group_rule,
        unit_cost=unit_costs(graph, eligible, key) if allocation == "hybrid_cost" else None,
    )
    forced = layer_ratio_groups(graph, options.layer_ratios)
    units: dict[int, np.ndarray] = {}
    priority: dict[int, np.ndarray] = {}
    for gid in sorted(scores):
        n = len(scores[gid].u)
        m = math.floor(scale * removal[gid]) if allocation == "tod" else removal[gid]
        if gid in forced:
            m = math.floor(forced[gid] * n + 1e-9)
        if options.max_ratio is not None:
            m = min(m, math.floor(options.max_ratio * n + 1e-9))
        m = min(m, n - 1)
        kept = n if gid in ignored else round_kept(n - m, n, options.round_to)
        order = removal_order(rankings[gid])
        units[gid] = np.sort(order[n - kept :])
        priority[gid] = np.asarray(scores[gid].u, dtype=np.float64)
    units = graph.restore_empty(units, priority)
    removed = {g: graph.groups[g].size - len(u) for g, u in units.items()}
    base = base or graph.cost()
    cost = cost_of(units) if cost_of is not None else graph.cost(units)
    importance = options.importance if isinstance(options.importance, str) else "custom"
    uniform = ratio if allocation == "uniform" else None
    result = Plan(units, alpha, importance, uniform, removed, cost, base)
    result.extra.update(
        allocation=allocation,
        ratio=ratio,
        round_to=options.round_to,
        ignored_groups=sorted(ignored),
        layer_ratios={int(g): r for g, r in forced.items()},
        max_ratio=options.max_ratio,
    )
    return result


def _plan_for_budget(
    graph: GroupGraph,
    scores: Mapping[int, Any],
    options: PlanOptions,
    ignored: set[int],
    steps: int = 24,
) -> Plan:
    """Bisect the allocation's knob so the kept fraction meets a budget.

    The knob is alpha for ``tod``, the ratio for ``uniform`` and the global allocations
    (``hybrid`` keeps ``alpha`` as its per-group bound, 0.5 by default; when even the bounds at
    0.5 keep more than the budget, alpha is bisected upwards to widen them). The kept fraction
    falls as the knob grows, though not strictly (counts move in steps), so every evaluated plan
    is kept and the one closest to the target wins; its note says how close it came and whether
    the target was reachable (one ToD round prunes at most about half of each group, see
    docs/decisions.md). When even ``alpha = 0`` keeps less than the target (U and R disagree
    enough that ToD already removes many units), every ToD count is scaled down by one bisected
    factor instead, which keeps ToD's per-layer allocation.
    """
    name, target = options.budget
    allocation = options.resolved_allocation
    base = graph.cost()
    key = "params_kept" if name == "params" else "macs_kept"
    costs: dict[tuple[tuple[int, int], ...], Cost] = {}

    def cost_of(units: dict[int, np.ndarray]) -> Cost:
        """Sizes, not identities, of kept units decide the cost: bisection steps that land on the
        same counts reuse it."""
        count = tuple(sorted((g, len(u)) for g, u in units.items()))
        if count not in costs:
            costs[count] = graph.cost(units)
        return costs[count]

    def make(alpha: float | None, ratio: float | None, scale: float = 1.0) -> Plan:
        return _make_plan(
            graph,
            scores,
            options,
            ignored,
            alpha=alpha,
            ratio=ratio,
            scale=scale,
            base=base,
            cost_of=cost_of,
        )

    def build(x: float, scale: float = 1.0) -> Plan:
        if allocation == "tod":
            return make(x, None, scale)
        return make(options.alpha, x)

    def bisect(fn: Callable[[float], Plan], lo: float, hi: float) -> list[Plan]:
        """Both knobs remove more as they grow, so the kept fraction falls from lo to hi."""
        tried = [fn(lo), fn(hi)]
        for _ in range(steps):
            mid = (lo + hi) / 2
            p = fn(mid)
            tried.append(p)
            if getattr(p, key) > target:
                lo = mid
            else:
                hi = mid
        return tried

    least = build(0.0)
    widest = build(0.999) if allocation in BOUNDED and options.alpha is None else None
    if widest is not None and getattr(widest, key) > target:
        # Every group at its ToD(0.5) bound still keeps more than asked: widen the bounds by
        # bisecting alpha (the threshold then takes all the bounds allow).
        tried = bisect(lambda a: make(a, 0.999), 0.5, 0.999)
    elif allocation != "tod" or getattr(least, key) > target:
        tried = bisect(build, 0.0, 0.999)
    else:
        # alpha = 0 already prunes more than asked: shrink every ToD count by one factor.
        tried = bisect(lambda f: build(0.0, f), 0.0, 1.0)
    best = min(tried, key=lambda p: (abs(getattr(p, key) - target), getattr(p, key)))
    reached = getattr(best, key)
    what = "parameters" if name == "params" else "MACs"
    best.note = f"target {target:.3f} of {what} kept, reached {reached:.3f}"
    if abs(reached - target) > 0.1 * target:
        best.note += (
            " (not reachable: this is the closest plan; every group keeps at least one unit and "
            "counts move in steps; for more, prune in rounds: compress(..., rounds=k))"
        )
    best.extra["target"] = {what: target}
    return best
