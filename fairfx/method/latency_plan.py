"""Latency-targeted plans: keep a fraction of the model's *measured* latency on this machine.

The allocation is the greedy rule for a knapsack whose weights are measured milliseconds: every
unit is priced by its Reconstruction score R (the first-order loss change of removing it)
divided by the time one unit of its group saves, read from the latency table
(:mod:`fairfx.engine.latency`); one global threshold on that price, bounded per group by ToD as
in ``hybrid_cost``, is bisected until the table predicts the target. Kept counts are rounded to
the width step the table found (an automatic ``round_to``), so no group stops between two
kernel steps where removing channels buys nothing.

The table cannot see everything (fusion, memory traffic, the ops between layers), so the plan
is then rewritten and **measured** against the original (alternating runs, medians, fixed
threads), and re-planned with the target corrected by the measured/predicted ratio until the
achieved latency is within ``tolerance`` of the target, or the iterations run out; ``plan.note``
says which, and ``plan.extra["latency"]`` holds every iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..engine.cost import Cost
from ..engine.groups import ChannelGraph
from ..engine.latency import LatencyTable, layer_widths
from ..engine.latency import measure as measure_table
from ..engine.timing import batch_inputs, paired_ms
from .allocation import counts, round_kept
from .planning import Plan, _ranking, ignored_groups
from .tod import removal_order


def unit_times(graph: ChannelGraph, table: LatencyTable, groups: set[int]) -> dict[int, float]:
    """Milliseconds one unit of each group saves: the table's predicted saving of halving the
    group (every layer it touches, both sides), per unit removed."""
    full = table.predict_ms()
    out = {}
    for gid in sorted(groups):
        n = graph.groups[gid].size
        half = max(1, n // 2)
        kept = graph.kept_slots({gid: np.arange(half)})
        saved = full - table.predict_ms(layer_widths(graph.analysis, kept, table))
        out[gid] = max(saved / max(n - half, 1), 1e-9)
    return out


def _units(graph, scores, removal, rankings, ignored, step) -> dict[int, np.ndarray]:
    units, priority = {}, np.zeros(len(graph.roots))
    for gid in sorted(scores):
        n = len(scores[gid].u)
        kept = n if gid in ignored else round_kept(n - removal[gid], n, step)
        units[gid] = np.sort(removal_order(rankings[gid])[n - kept :])
        priority[graph.group_classes[gid]] = scores[gid].u
    return graph.restore_empty(units, priority[graph.roots])


def table_plan(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    table: LatencyTable,
    target: float,
    *,
    importance: str = "fair",
    group_rule: str = "joint",
    round_to: int | None = None,
    ignored: set[int] | None = None,
    seed: int = 0,
    steps: int = 20,
) -> tuple[dict[int, np.ndarray], float]:
    """Kept units whose table-predicted latency fraction is closest to ``target`` (the
    closest at or below it when one exists), and that prediction."""
    ignored = ignored or set()
    step = round_to or table.step
    rankings = {g: _ranking(scores[g], g, importance, seed) for g in scores}
    eligible = {g for g in scores if g not in ignored}
    price = unit_times(graph, table, eligible)
    tried: dict[tuple, tuple[dict[int, np.ndarray], float]] = {}

    def build(ratio: float, alpha: float) -> float:
        removal = counts(
            scores, rankings, eligible, allocation="hybrid_cost", alpha=alpha, ratio=ratio,
            group_rule=group_rule, unit_cost=price,
        )  # fmt: skip
        units = _units(graph, scores, removal, rankings, ignored, step)
        sig = tuple(sorted((g, len(u)) for g, u in units.items()))
        if sig not in tried:
            widths = layer_widths(graph.analysis, graph.kept_slots(units), table)
            tried[sig] = (units, table.fraction(widths))
        return tried[sig][1]

    def bisect(make: Callable[[float], float], lo: float, hi: float) -> None:
        for _ in range(steps):
            mid = (lo + hi) / 2
            if make(mid) > target:
                lo = mid
            else:
                hi = mid

    if build(0.999, 0.5) > target:  # ToD(0.5) bounds keep too much: widen them
        bisect(lambda a: build(0.999, a), 0.5, 0.999)
    else:
        bisect(lambda r: build(r, 0.5), 0.0, 0.999)
    best = min(tried.values(), key=lambda uf: (uf[1] > target + 1e-9, abs(uf[1] - target)))
    return best


def plan_for_latency(
    graph: ChannelGraph,
    scores: Mapping[int, Any],
    latency: float,
    *,
    batch_size: int | None = None,
    mode: str = "eager",
    threads: int | None = None,
    table: LatencyTable | None = None,
    measure: bool = True,
    tolerance: float = 0.05,
    iterations: int = 4,
    repeats: int = 15,
    importance: str = "fair",
    group_rule: str = "joint",
    round_to: int | None = None,
    ignored: set[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Plan:
    """The plan whose measured latency is ``latency`` of the original's (within ``tolerance``).

    ``table``: a latency table to plan from (default: measured now, or loaded from the cache).
    ``measure=False`` plans from the table alone (a table measured on another machine: timing
    here would say nothing about that device).
    """
    inputs = batch_inputs(graph.analysis.captured.inputs, batch_size)
    if table is None:
        table = measure_table(
            graph.analysis.gm,
            graph.analysis.captured.inputs,
            batch=batch_size,
            threads=threads,
            mode=mode,
            progress=progress,
        )
    common = dict(
        importance=importance, group_rule=group_rule, round_to=round_to, ignored=ignored,
        seed=seed,
    )  # fmt: skip
    original = graph.analysis.gm.eval()
    run_original = torch.compile(original) if mode == "compile" else original
    history: list[dict[str, Any]] = []
    goal = latency
    best: tuple[dict[int, np.ndarray], float, float | None] | None = None
    why = ""
    for it in range(max(1, iterations) if measure else 1):
        units, predicted = table_plan(graph, scores, table, goal, **common)
        if predicted > goal * (1 + tolerance) and it == 0:
            why = f"the table's widest cut predicts {predicted:.3f}, above the target"
        achieved = None
        if measure:
            pruned = graph.rewrite(units).eval()
            run_pruned = torch.compile(pruned) if mode == "compile" else pruned
            t0, t1, achieved = paired_ms(
                run_original, run_pruned, inputs, repeats=repeats, threads=threads
            )
            history.append(
                {"goal": goal, "predicted": predicted, "achieved": achieved, "ms": [t0, t1]}
            )
        else:
            history.append({"goal": goal, "predicted": predicted})
        score = abs((achieved if achieved is not None else predicted) - latency)
        if best is None or score < abs((best[2] if best[2] is not None else best[1]) - latency):
            best = (units, predicted, achieved)
        if achieved is None or abs(achieved - latency) <= tolerance * latency:
            break
        new_goal = _next_goal(history, latency)
        if abs(new_goal - goal) < 1e-4:
            why = why or "the correction no longer moves the plan"
            break
        goal = new_goal
    assert best is not None
    units, predicted, achieved = best
    plan = _plan(graph, units, importance)
    met = achieved is not None and abs(achieved - latency) <= tolerance * latency
    if achieved is None:
        plan.note = (
            f"target {latency:.3f} of latency, table predicts {predicted:.3f} (not measured)"
        )
    else:
        plan.note = (
            f"target {latency:.3f} of measured latency, achieved {achieved:.3f} "
            f"(predicted {predicted:.3f}) after {len(history)} measurement(s)"
        )
        if not met:
            plan.note += f"; not within {tolerance:.0%}: " + (
                why or "iterations ran out (timing noise or steps between widths)"
            )
    plan.extra.update(
        allocation="latency",
        round_to=round_to or table.step,
        target={"latency": latency},
        latency={
            "target": latency,
            "achieved": achieved,
            "predicted": predicted,
            "met": met,
            "iterations": history,
            "batch": len(inputs[0]) if isinstance(inputs[0], torch.Tensor) else None,
            "threads": table.key.get("threads"),
            "mode": mode,
            "table": table.path,
            "step": table.step,
        },
    )
    return plan


def _next_goal(history: list[dict[str, Any]], latency: float) -> float:
    """The next table goal. The table misses what it does not time, so the first correction
    scales the goal by predicted/measured; from then on a secant through the last two
    (goal, achieved) points, which converges where the scaling alone creeps."""
    last = history[-1]
    goal = latency * last["predicted"] / max(last["achieved"], 1e-9)
    if len(history) >= 2:
        prev = history[-2]
        slope = (last["achieved"] - prev["achieved"]) / (last["goal"] - prev["goal"] or 1e-12)
        if slope > 1e-6:  # achieved latency rises with the goal, as it should
            goal = last["goal"] + (latency - last["achieved"]) / slope
    # A trust region: one noisy measurement must not throw the goal across the range.
    return float(np.clip(goal, max(0.01, last["goal"] / 2), min(1.0, last["goal"] * 2)))


def plan_from_options(graph: ChannelGraph, scores: Mapping[int, Any], options: Any) -> Plan:
    """The latency plan for a ``PlanOptions`` whose ``latency`` is set (what ``planning.plan``
    dispatches to): its batch size, latency mode and the shared planning options."""
    return plan_for_latency(
        graph,
        scores,
        options.latency,
        batch_size=getattr(options, "batch_size", None),
        mode=getattr(options, "latency_mode", "eager"),
        importance=options.importance,
        group_rule=options.group_rule,
        round_to=options.round_to,
        ignored=ignored_groups(graph, options.ignored_layers),
        seed=options.seed,
        progress=getattr(options, "progress", True),
    )


def _plan(graph: ChannelGraph, units: dict[int, np.ndarray], importance: str) -> Plan:
    base: Cost = graph.cost()
    removed = {g: graph.groups[g].size - len(u) for g, u in units.items()}
    return Plan(units, None, importance, None, removed, graph.cost(units), base)


__all__ = ["plan_for_latency", "plan_from_options", "table_plan", "unit_times"]
