"""Planning: turn cached scores into per-group keep lists for any alpha or budget.

Counts come from Tolerance of Difference (:mod:`fairfx.method.tod`) per group; which units go is
chosen by an importance ranking (``fair``: lowest U; ``l1``: lowest filter L1 norm; ``random``). The
``uniform=r`` baseline removes the same fraction of every group. No data is needed to plan, so a
user can sweep alphas or bisect a parameter/MAC budget in seconds.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.cost import Cost
from ..engine.groups import ChannelGraph
from ..errors import PlanError
from .tod import prune_count, removal_order

IMPORTANCE = ("fair", "l1", "random")
GROUP_RULES = ("joint", "member")


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


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float; Python and numpy numbers are accepted (``np.float32(0.01)``)."""
    if not _is_number(alpha) or not 0 <= alpha < 1:
        raise PlanError(f"alpha must be a number in [0, 1), got {alpha!r}; 0.005 is the default")
    return float(alpha)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; otherwise a one-line error naming the valid ones
    and the closest match (``group_rule="members"`` -> did you mean 'member'?)."""
    if isinstance(value, str) and value in choices:
        return value
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1)
    hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
    raise PlanError(f"{option} must be one of {', '.join(map(repr, choices))}; got {value!r}{hint}")


def check_uniform_ratio(uniform: Any) -> float:
    """``plan(uniform=r)``: the fraction of every group's units removed, a number in [0, 1).
    ``True`` is refused rather than read as 1 (that is ``plan_for``'s switch)."""
    if not _is_number(uniform) or not 0 <= uniform < 1:
        raise PlanError(
            f"uniform is the fraction of units removed from every group, a number in [0, 1); got "
            f"{uniform!r} (to bisect one uniform ratio to a budget: plan_for(params=..., "
            "uniform=True))"
        )
    return float(uniform)


def check_plan_options(
    *,
    alpha: Any = None,
    importance: Any = "fair",
    uniform: Any = None,
    group_rule: Any = "joint",
) -> None:
    """Every planning option checked up front, so ``compress`` refuses a typo before scoring."""
    check_choice("importance", importance, IMPORTANCE)
    check_choice("group_rule", group_rule, GROUP_RULES)
    if uniform is not None:
        check_uniform_ratio(uniform)
    elif alpha is None:
        raise PlanError("give alpha (Tolerance of Difference) or uniform=ratio")
    else:
        check_alpha(alpha)


def check_budget(params: Any = None, flops: Any = None, uniform: Any = False) -> tuple[str, float]:
    """``("params" | "flops", kept fraction)`` of a ``plan_for`` budget, or a one-line error.

    ``uniform`` there is a switch (bisect one ratio for every group instead of alpha); a number
    such as ``0.5`` is refused instead of being read as True."""
    if (params is None) == (flops is None):
        raise PlanError(
            "give exactly one budget: params=fraction of parameters to keep or "
            "flops=fraction of FLOPs (MACs) to keep"
        )
    name, target = ("params", params) if params is not None else ("flops", flops)
    if not _is_number(target) or not 0 < target <= 1:
        raise PlanError(f"{name}= is the fraction to keep, a number in (0, 1]; got {target!r}")
    if not isinstance(uniform, bool):
        raise PlanError(
            f"plan_for(uniform=...) is True or False (bisect one ratio for every group to meet "
            f"the budget); got {uniform!r}. For a fixed ratio use plan(uniform={uniform!r})"
        )
    return name, float(target)


def _removal(scores, gid: int, importance: str, seed: int) -> np.ndarray:
    if importance == "fair":
        return removal_order(scores.u)
    if importance == "l1":
        return removal_order(scores.l1)
    return np.random.default_rng([seed, gid]).permutation(len(scores.u))


def _count(scores, alpha: float | None, uniform: float | None, group_rule: str) -> int:
    n = len(scores.u)
    if uniform is not None:
        return min(math.floor(uniform * n), n - 1)
    if group_rule == "member" and len(scores.member_u) > 1:
        # The reference package plans each member on its own scores and keeps the largest count.
        counts = [
            prune_count(scores.member_u[p], scores.member_r.get(p, scores.r), alpha)
            for p in scores.member_u
        ]
        return min(counts)
    return prune_count(scores.u, scores.r, alpha)


def make_plan(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    *,
    alpha: float | None = None,
    importance: str = "fair",
    uniform: float | None = None,
    group_rule: str = "joint",
    seed: int = 0,
    base: Cost | None = None,
    scale: float = 1.0,
    cost_of: Callable[[dict[int, np.ndarray]], Cost] | None = None,
) -> Plan:
    """One plan: ToD counts (or a uniform ratio) and an importance ranking per group.

    ``scale`` multiplies every ToD count (rounded down); ``plan_for`` uses it for budgets that
    keep more than ``alpha = 0`` does, keeping ToD's allocation across layers.
    """
    check_plan_options(alpha=alpha, importance=importance, uniform=uniform, group_rule=group_rule)
    if uniform is None:
        alpha = check_alpha(alpha)
    units: dict[int, np.ndarray] = {}
    removed: dict[int, int] = {}
    priority = np.zeros(len(graph.roots))
    for gid in sorted(scores):
        s = scores[gid]
        m = _count(s, alpha, uniform, group_rule)
        m = m if uniform is not None else math.floor(scale * m)
        order = _removal(s, gid, importance, seed)
        units[gid] = np.sort(order[m:])
        removed[gid] = m
        priority[graph.group_classes[gid]] = s.u
    units = graph.restore_empty(units, priority[graph.roots])
    removed = {g: graph.groups[g].size - len(u) for g, u in units.items()}
    base = base or graph.cost()
    cost = cost_of(units) if cost_of is not None else graph.cost(units)
    return Plan(units, alpha, importance, uniform, removed, cost, base)


def plan_for_budget(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    *,
    params: float | None = None,
    macs: float | None = None,
    importance: str = "fair",
    uniform: bool = False,
    group_rule: str = "joint",
    seed: int = 0,
    steps: int = 24,
) -> Plan:
    """Bisect alpha (or the uniform ratio) so the kept fraction meets a budget.

    The kept fraction falls as alpha grows, though not strictly (ToD counts move in steps), so
    every evaluated plan is kept and the one closest to the target wins; its note says how close
    it came and whether the target was reachable (one ToD round prunes at most about half of
    each group, ``m_hat <= n / (2 - alpha)``: see :mod:`fairfx.method.tod`). When even
    ``alpha = 0`` keeps less than the target (U and R disagree enough that ToD already removes
    many units), every ToD count is scaled down by one bisected factor instead, which keeps ToD's
    per-layer allocation.
    """
    _, target = check_budget(params, macs, uniform)
    check_plan_options(alpha=0.0, importance=importance, group_rule=group_rule)
    base = graph.cost()
    key = "params_kept" if params is not None else "macs_kept"
    costs: dict[tuple[tuple[int, int], ...], Cost] = {}

    def cost_of(units: dict[int, np.ndarray]) -> Cost:
        """Sizes, not identities, of kept units decide the cost: bisection steps that land on the
        same counts reuse it."""
        counts = tuple(sorted((g, len(u)) for g, u in units.items()))
        if counts not in costs:
            costs[counts] = graph.cost(units)
        return costs[counts]

    def build(x: float, scale: float = 1.0) -> Plan:
        if uniform:
            return make_plan(
                graph,
                scores,
                uniform=x,
                importance=importance,
                seed=seed,
                base=base,
                cost_of=cost_of,
            )
        return make_plan(
            graph,
            scores,
            alpha=x,
            importance=importance,
            group_rule=group_rule,
            seed=seed,
            base=base,
            scale=scale,
            cost_of=cost_of,
        )

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
    if uniform or getattr(least, key) > target:
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
            "ToD counts move in steps; for more, prune, fine-tune and prune again)"
        )
    best.extra["target"] = {what: target}
    return best
