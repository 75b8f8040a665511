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

import copy
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..engine.deploy import deployment_form
from ..engine.group_graph import GroupGraph
from ..engine.latency import LatencyTable, graph_inputs, graph_table, predicted_fraction
from ..engine.timing import busy, paired_ratio
from .allocation import counts, round_kept
from .plan_options import PlanOptions
from .plan_record import Plan, ranking
from .tod import removal_order

# How close the measured latency must come to the target, and how many measurements it may take.
TOLERANCE = 0.05
ITERATIONS = 6


def unit_times(graph: GroupGraph, table: LatencyTable, groups: set[int]) -> dict[int, float]:
    """Milliseconds one unit of each group saves: the table's predicted saving of halving the
    group (every layer it touches, both sides), per unit removed."""
    full = table.predict_ms()
    out = {}
    for gid in sorted(groups):
        n = graph.groups[gid].size
        half = max(1, n // 2)
        saved = full * (1 - predicted_fraction(graph, {gid: np.arange(half)}, table))
        out[gid] = max(saved / max(n - half, 1), 1e-9)
    return out


def table_plan(
    graph: GroupGraph,
    scores: Mapping[int, Any],
    table: LatencyTable,
    target: float,
    options: PlanOptions,
    ignored: set[int] | None = None,
    steps: int = 20,
) -> tuple[dict[int, np.ndarray], float]:
    """Kept units whose table-predicted latency fraction is closest to ``target`` (the
    closest at or below it when one exists), and that prediction."""
    ignored = ignored or set()
    step = options.round_to  # else the table's step, as far as each group's size allows
    rankings = {g: ranking(graph, scores[g], g, options) for g in scores}
    eligible = {g for g in scores if g not in ignored}
    price = unit_times(graph, table, eligible)
    priority = {g: np.asarray(scores[g].u, dtype=np.float64) for g in scores}
    tried: dict[tuple, tuple[dict[int, np.ndarray], float]] = {}

    def build(ratio: float, alpha: float) -> float:
        removal = counts(
            scores, rankings, eligible, allocation="hybrid_cost", alpha=alpha, ratio=ratio,
            group_rule=options.group_rule, unit_cost=price,
        )  # fmt: skip
        units = {}
        for gid in sorted(scores):
            n = len(scores[gid].u)
            m = removal[gid]
            if options.max_ratio is not None:
                m = min(m, int(options.max_ratio * n + 1e-9))
            kept = n if gid in ignored else round_kept(n - m, n, step or _group_step(table, n))
            units[gid] = np.sort(removal_order(rankings[gid])[n - kept :])
        units = graph.restore_empty(units, priority)
        sig = tuple(sorted((g, len(u)) for g, u in units.items()))
        if sig not in tried:
            tried[sig] = (units, predicted_fraction(graph, units, table))
        return tried[sig][1]

    def bisect(make: Callable[[float], float], lo: float, hi: float) -> None:
        for _ in range(steps):
            mid = (lo + hi) / 2
            if make(mid) > target:
                lo = mid
            else:
                hi = mid

    bound = options.alpha if options.alpha is not None else 0.5
    if build(0.999, bound) > target and options.alpha is None:  # widen the ToD bounds
        bisect(lambda a: build(0.999, a), 0.5, 0.999)
    else:
        bisect(lambda r: build(r, bound), 0.0, 0.999)
    return min(tried.values(), key=lambda uf: (uf[1] > target + 1e-9, abs(uf[1] - target)))


def _group_step(table: LatencyTable, size: int) -> int:
    """The table's width step for a group of ``size`` units: halved until the group holds at
    least four steps (a 16-channel group rounded to 16 could not be pruned at all)."""
    step = table.step
    while step > 1 and size < 4 * step:
        step //= 2
    return step


def plan_for_latency(
    graph: GroupGraph,
    scores: Mapping[int, Any],
    options: PlanOptions,
    ignored: set[int] | None = None,
    *,
    table: LatencyTable | None = None,
    measure: bool = True,
    tolerance: float = TOLERANCE,
    iterations: int = ITERATIONS,
    repeats: int = 15,
    threads: int | None = None,
    progress: bool = True,
) -> Plan:
    """The plan whose measured latency is ``options.latency`` of the original's (within
    ``tolerance``), at ``options.batch_size`` and in ``options.latency_mode``.

    ``table``: a latency table to plan from (default: measured now, or loaded from the cache).
    ``measure=False`` plans from the table alone (a table measured on another machine: timing
    here would say nothing about that device).
    """
    latency, mode = float(options.latency), options.latency_mode
    inputs = graph_inputs(graph, options.batch_size)
    deploy = options.latency_deploy
    if table is None:
        table = graph_table(
            graph, batch=options.batch_size, threads=threads, mode=mode, deploy=deploy,
            progress=progress,
        )  # fmt: skip
    if measure:
        # A copy (the deployment form is one already): the captured graph shares the user's
        # tensors, and a model left in train mode would update its BatchNorm statistics.
        captured = graph.captured if deploy else copy.deepcopy(graph.captured)
        run_original = _runnable(captured, deploy, mode)

    def within(achieved: float | None) -> bool:
        return achieved is not None and abs(achieved - latency) <= tolerance * latency

    def timed(pruned: Any) -> dict[str, float]:
        # Enough pairs to resolve a fifth of the tolerance, within 4x the base count.
        return paired_ratio(
            run_original, pruned, inputs, repeats=repeats, max_repeats=4 * repeats,
            precision=tolerance * latency / 5, threads=threads,
        )  # fmt: skip

    history: list[dict[str, Any]] = []
    goal, why = latency, ""
    best: tuple[dict[int, np.ndarray], float, float | None] | None = None
    tried: list[tuple[dict[int, np.ndarray], float, float | None]] = []
    for it in range(max(1, iterations) if measure else 1):
        units, predicted = table_plan(graph, scores, table, goal, options, ignored)
        if predicted > goal * (1 + tolerance) and it == 0:
            why = f"the table's widest cut predicts {predicted:.3f}, above the target"
        achieved = None
        if measure:
            run_pruned = _runnable(graph.prune(units), deploy, mode)
            m, again = timed(run_pruned), False
            if _off(m, history):  # the unchanged original ran slow: measure this plan again
                m, again = min((m, timed(run_pruned)), key=lambda r: r["first_ms"]), True
            achieved = m["ratio"]
            history.append(
                {
                    "goal": goal, "predicted": predicted, "achieved": achieved,
                    "ms": [m["first_ms"], m["second_ms"]], "stderr": m["stderr"],
                    "pairs": m["pairs"], "load": m["load"], "remeasured": again,
                }
            )  # fmt: skip
        else:
            history.append({"goal": goal, "predicted": predicted})
        tried.append((units, predicted, achieved))
        score = abs((achieved if achieved is not None else predicted) - latency)
        if best is None or score < abs((best[2] if best[2] is not None else best[1]) - latency):
            best = (units, predicted, achieved)
        if achieved is None or within(achieved):
            break
        new_goal = _next_goal(history, latency)
        if abs(new_goal - goal) < 1e-4:
            why = why or "the correction no longer moves the plan"
            break
        goal = new_goal
    assert best is not None
    loaded = _loaded(history, threads)
    floor = "" if loaded else _floor(history, latency, tolerance)
    if loaded and not within(best[2]):
        # Busy-machine medians mislead more than the table (fastest runs of isolated layers):
        # keep the table's own plan for the target rather than chase the waiting.
        best = tried[0]
    elif floor and not why:
        # Cutting deeper bought no measured time: keep the least-cut plan that is as fast as the
        # fastest one measured, instead of the deepest cut.
        fastest = min(a for _, _, a in tried if a is not None)
        best = max(
            (t for t in tried if t[2] is not None and t[2] <= fastest * (1 + tolerance)),
            key=lambda t: t[1],
        )
        why = floor
    units, predicted, achieved = best
    met = within(achieved)
    plan = _plan(graph, units, options)
    why = loaded or why or _noise(history, latency, tolerance)
    plan.note = _note(latency, predicted, achieved, len(history), met, tolerance, why)
    if achieved is not None:
        plan.note += ", both " + ("in the deployment form" if deploy else "as GraphModules")
    # What the latency cost in capacity, always said: on a model whose time is mostly outside
    # its convs (mobilenet_v2 at batch 1 on a CPU), meeting the target can take nearly everything.
    plan.note += f"; keeps {plan.params_kept:.1%} of parameters and {plan.macs_kept:.1%} of MACs"
    if plan.params_kept < 0.1:
        plan.note += " (the target costs most of the model: check accuracy)"
    if loaded and met:
        plan.note += f"; {loaded}"
    plan.extra.update(
        allocation="latency",
        round_to=options.round_to or table.step,
        ignored_groups=sorted(ignored or ()),
        target={"latency": latency},
        latency={
            "target": latency,
            "achieved": achieved,
            "predicted": predicted,
            "met": met,
            "iterations": history,
            "batch": table.key.get("batch"),
            "threads": table.key.get("threads"),
            "mode": mode,
            "deploy": deploy,
            "table": table.path,
            "step": table.step,
        },
    )
    return plan


def _runnable(module: torch.nn.Module, deploy: bool, mode: str) -> Any:
    """The module as it is timed, in eval mode: in the deployment form ``save_pruned`` ships (a
    copy; the original too, so the gain measured is pruning's, not folding's), compiled in
    ``compile`` mode."""
    module = deployment_form(module, channels_last=True) if deploy else module.eval()
    return torch.compile(module) if mode == "compile" else module


def _note(latency, predicted, achieved, n, met, tolerance, why) -> str:
    if achieved is None:
        return f"target {latency:.3f} of latency, table predicts {predicted:.3f} (not measured)"
    note = (
        f"target {latency:.3f} of measured latency, achieved {achieved:.3f} "
        f"(predicted {predicted:.3f}) after {n} measurement(s)"
    )
    if not met:
        reason = why or "iterations ran out (timing noise or steps between widths)"
        note += f"; not within {tolerance:.0%}: {reason}"
    return note


def _floor(history: list[dict[str, Any]], latency: float, tolerance: float) -> str:
    """Why the loop could not converge when the pruned model's measured latency stops falling
    while the table keeps predicting less: the rest of the time is outside the table's layers
    (ops between them, memory traffic), which no channel plan removes."""
    measured = [h for h in history if h.get("achieved") is not None]
    if len(measured) < 3:
        return ""
    fastest = min(h["achieved"] for h in measured)
    if fastest <= latency * (1 + tolerance):
        return ""
    table_drop = measured[0]["predicted"] - min(h["predicted"] for h in measured)
    real_drop = measured[0]["achieved"] - fastest
    if table_drop <= 2 * max(real_drop, 0.0):
        return ""
    return (
        f"the measured latency stops near {fastest:.3f} of the original however far the table's "
        f"layers are cut (it predicted down to {min(h['predicted'] for h in measured):.3f}): the "
        "rest is time outside the pruned layers (ops between them, memory traffic), so no "
        f"channel plan reaches {latency:.3f} here; the least-cut plan that fast is kept"
    )


# The original's median may drift this much between measurements before one is repeated.
DRIFT = 1.3


def _off(m: dict[str, float], history: list[dict[str, Any]]) -> bool:
    """Whether the original, the same module every time, ran ``DRIFT`` times slower than in
    the fastest earlier measurement: the pair's conditions changed (compiled densenet121 at
    batch 1, quiet machine: 85 ms once against 47-56 ms in five other rounds, and the ratio of
    that round, 0.46, sent the loop's bracket the wrong way)."""
    before = [h["ms"][0] for h in history if "ms" in h]
    return bool(before) and m["first_ms"] > DRIFT * min(before)


def _loaded(history: list[dict[str, Any]], threads: int | None) -> str:
    """Why the measurements cannot be trusted when the machine was busy while they ran."""
    loads = [h["load"] for h in history if h.get("load") is not None]
    return busy(max(loads), threads or torch.get_num_threads()) if loads else ""


def _noise(history: list[dict[str, Any]], latency: float, tolerance: float) -> str:
    """Why the loop could not converge when the machine's timing noise is the reason."""
    errs = [h["stderr"] for h in history if "stderr" in h]
    if errs and statistics.median(errs) > tolerance * latency / 2:
        return (
            f"timing noise on this machine (standard error of the measured ratio "
            f"{statistics.median(errs):.3f}) is too large for a {tolerance:.0%} tolerance; "
            "measure on a quiet machine"
        )
    return ""


def _next_goal(history: list[dict[str, Any]], latency: float) -> float:
    """The next table goal. Once one measured plan came out above the target and one below,
    the goal is interpolated inside that bracket (regula falsi, kept off its ends): a pruned
    model's latency is not smooth in its widths, and a secant outside a bracket can swing past
    it. Before that: the first correction scales the goal by predicted/measured (the table
    misses what it does not time), later ones follow the secant of the last two points, within
    a trust region (one noisy measurement must not throw the goal across the range)."""
    above = [h for h in history if h["achieved"] > latency]
    below = [h for h in history if h["achieved"] <= latency]
    if above and below:
        hi = min(above, key=lambda h: h["goal"])  # the smallest goal still too slow
        lo = max(below, key=lambda h: h["goal"])  # the largest goal already fast enough
        if lo["goal"] < hi["goal"]:
            t = (latency - lo["achieved"]) / max(hi["achieved"] - lo["achieved"], 1e-9)
            t = float(np.clip(t, 0.1, 0.9))
            return lo["goal"] + t * (hi["goal"] - lo["goal"])
    last = history[-1]
    goal = latency * last["predicted"] / max(last["achieved"], 1e-9)
    if len(history) >= 2:
        prev = history[-2]
        slope = (last["achieved"] - prev["achieved"]) / (last["goal"] - prev["goal"] or 1e-12)
        if slope > 1e-6:  # achieved latency rises with the goal, as it should
            goal = last["goal"] + (latency - last["achieved"]) / slope
    return float(np.clip(goal, max(0.01, last["goal"] / 2), min(1.0, last["goal"] * 2)))


def _plan(graph: GroupGraph, units: dict[int, np.ndarray], options: PlanOptions) -> Plan:
    removed = {g: graph.groups[g].size - len(u) for g, u in units.items()}
    importance = options.importance if isinstance(options.importance, str) else "custom"
    return Plan(units, None, importance, None, removed, graph.cost(units), graph.cost())


__all__ = ["ITERATIONS", "TOLERANCE", "plan_for_latency", "table_plan", "unit_times"]
