"""Allocation: how many units each channel group loses, given cached scores.

FAIR-Pruner's own rule is Tolerance of Difference per group (:mod:`fairfx.method.tod`). The
alternatives below spread one budget across groups by a single global threshold; which one is the
default for budgets is decided by ``benchmarks/bench_quality.py`` (docs/decisions.md).

========  ======================================================================================
tod       ToD count at ``alpha`` in every group (the paper)
uniform   the same fraction ``ratio`` of every group
global_r  one threshold on the raw Reconstruction score R across groups: a group loses its units
          with R below it (R is a first-order loss change, so it compares across layers)
taylor    the same on R divided by the group's mean R (Torch-Pruning's Taylor importance with
          its default mean normalisation)
hybrid    ToD at ``alpha`` bounds what each group may lose; the global R threshold fills the
          budget within those bounds
hybrid_   the same with the threshold on R per parameter (or MAC) one unit of the group frees:
cost      a budget is counted in parameters, so a unit whose removal frees 900 of them and one
          that frees 300 are compared by the loss each parameter saved costs (the greedy rule
          for a knapsack); plain ``hybrid`` spends the budget on the cheap units of wide layers
global    one threshold on the ranking score itself, divided by the group mean (Torch-Pruning's
          ``global_pruning``): U for ``importance="fair"``, filter L1 for ``"l1"``
========  ======================================================================================

The global allocations take ``ratio``: the fraction of all eligible units below the threshold.
Counts only: which units go is always the group's own importance order (lowest U first for FAIR).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PlanError
from .tod import prune_count

ALLOCATIONS = ("tod", "uniform", "global_r", "taylor", "hybrid", "hybrid_cost", "global")
# The allocations bounded by ToD per group (they take alpha as well as the ratio).
BOUNDED = ("hybrid", "hybrid_cost")

# One group never loses more than this share of its units to a global threshold (as ToD's cap).
_CAP = 0.99


def _cap(n: int) -> int:
    return max(0, min(math.floor(_CAP * n + 1e-9), n - 1))


def tod_count(s: Any, alpha: float, group_rule: str) -> int:
    """ToD's m_hat for one group's scores (``member``: per producer, the smallest count)."""
    if group_rule == "member" and len(s.member_u) > 1:
        # The reference package plans each member on its own scores and keeps the largest count.
        return min(prune_count(s.member_u[p], s.member_r.get(p, s.r), alpha) for p in s.member_u)
    return prune_count(s.u, s.r, alpha)


def _global_score(s: Any, allocation: str, ranking: np.ndarray, unit_cost: float) -> np.ndarray:
    if allocation in ("global_r", "hybrid"):
        return np.asarray(s.r, dtype=np.float64)
    if allocation == "hybrid_cost":
        return np.asarray(s.r, dtype=np.float64) / unit_cost
    values = np.asarray(s.r if allocation == "taylor" else ranking, dtype=np.float64)
    mean = values.mean() if len(values) else 0.0
    return values / mean if mean > 0 else values


def counts(
    scores: Mapping[int, Any],
    rankings: Mapping[int, np.ndarray],
    eligible: set[int],
    *,
    allocation: str,
    alpha: float | None,
    ratio: float | None,
    group_rule: str = "joint",
    unit_cost: Mapping[int, float] | None = None,
) -> dict[int, int]:
    """Units to remove per eligible group (0 for the others).

    ``rankings[gid]`` is the importance score the units are removed by (lower goes first);
    ``global`` thresholds it directly. ``unit_cost[gid]`` (``hybrid_cost`` only) is what one
    unit of the group costs: parameters or MACs freed by removing it from the unpruned model.
    """
    out = {gid: 0 for gid in scores}
    if allocation == "tod":
        for gid in eligible:
            out[gid] = tod_count(scores[gid], alpha, group_rule)
        return out
    if allocation == "uniform":
        for gid in eligible:
            n = len(scores[gid].u)
            out[gid] = min(math.floor(ratio * n + 1e-9), n - 1)
        return out
    ids = sorted(eligible)
    if not ids:
        return out
    if allocation == "hybrid_cost" and unit_cost is None:
        raise PlanError("allocation='hybrid_cost' needs the cost of one unit of every group")
    values = [
        _global_score(scores[g], allocation, rankings[g], (unit_cost or {}).get(g, 1.0))
        for g in ids
    ]
    pooled = np.concatenate(values)
    k = math.floor(ratio * len(pooled) + 1e-9)
    if k == 0:
        return out
    # The k-th smallest pooled value is the threshold; ties at it go by group order (stable).
    order = np.argsort(pooled, kind="stable")
    below = np.zeros(len(pooled), dtype=bool)
    below[order[:k]] = True
    start = 0
    for gid, v in zip(ids, values, strict=True):
        m = int(below[start : start + len(v)].sum())
        start += len(v)
        m = min(m, _cap(len(v)))
        if allocation in BOUNDED:
            m = min(m, tod_count(scores[gid], alpha, group_rule))
        out[gid] = m
    return out


def round_kept(kept: int, size: int, multiple: int | None) -> int:
    """``kept`` rounded to the nearest multiple of ``multiple``, never above ``size``, never 0.

    A group that keeps everything, or is smaller than ``multiple``, stays whole: rounding never
    prunes a group the allocation left alone.
    """
    if not multiple or multiple <= 1 or kept >= size:
        return kept
    if size < multiple:
        return size
    rounded = max(multiple, math.floor(kept / multiple + 0.5) * multiple)
    return rounded if rounded <= size else (size // multiple) * multiple
