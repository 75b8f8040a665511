"""One measurement of latency for every method, and a knob search that matches it.

``measured_ratio`` is the only way bench_latency_quality.py times a model: the original and the
pruned model both in fairfx's deployment form (BatchNorm folded, 4-D weights channels_last, as
``fairfx.engine.deploy.deployment_form`` ships them), run alternately with 2 intra-op threads on
one batch (``fairfx.engine.timing.paired_ratio``: the median of per-pair ratios, so load that
comes and goes over seconds slows both sides alike). A plain ``nn.Module`` (the unpruned net, a
Torch-Pruning result) is captured with ``torch.fx.symbolic_trace`` first; fairfx's pruned models
already are GraphModules. On a shared machine a whole measurement can be swamped (both sides
at ~100 ms where the net runs in ~1 ms: the ratio says 1.0 and means nothing), so a measurement
whose original median is ``DISTURBED`` times the original's fastest run is repeated, up to
``RETRIES`` times, and flagged ``disturbed`` if it stays so. Each measurement also records the
load average and ``busy`` (``fairfx.engine.timing.busy``: more runnable threads than ours plus
one, when ratios follow waiting rather than work); a busy measurement still steers the search,
since on a shared machine nearly all are, but the report counts them.

``match_measured`` moves a method's knob until that measured ratio equals a target. A
measurement is noisy and costs up to a second, so the knob is first bisected on a cheap proxy
that grows with it (the latency table's prediction for a fairfx plan, the MACs kept for
Torch-Pruning) until the proxy equals the target; then at most ``refine`` measured steps: while
every measurement lies on one side of the target, a new proxy goal is chosen (first the proxy
scaled by target/measured, then the secant through the last two measurements, within half to
twice the last proxy) and the knob bisected to it again; once one measured knob is too slow and
a larger-cut one fast enough, the next knob is interpolated between them (regula falsi). The
candidate whose measured ratio is closest to the target is kept, and the record says whether it
is within ``TOLERANCE``.
A disturbed measurement steers nothing (the same knob is measured again) and is kept only when
no undisturbed one exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from fairfx.engine.deploy import deployment_form
from fairfx.engine.timing import busy, fixed_threads, median_ms, paired_ratio

THREADS = 2
TOLERANCE = 0.05  # relative distance to the target a matched latency should stay within
PRECISION = 0.005  # standard error of a measured ratio to stop at (a fifth of 5% of 0.5)
DISTURBED = 3.0  # original's median / its fastest run above which the machine was busy
RETRIES = 2


def deployed(model: nn.Module) -> fx.GraphModule:
    """``model`` as it would be shipped: traced if it is not a GraphModule yet, then
    ``deployment_form(..., channels_last=True)`` (a copy; ``model`` is not modified)."""
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    return deployment_form(gm, channels_last=True)


def measured_ratio(original: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Latency of ``pruned`` as a fraction of ``original``'s on input ``x``, both deployed,
    alternating pairs at ``THREADS`` threads until the ratio's standard error is ``PRECISION``
    (at most 200 pairs). Returns ratio, its standard error, the pairs, both medians (ms), the
    original's fastest run, whether the measurement stayed disturbed after the retries, the load
    average and whether it was busy."""
    first, second = deployed(original), deployed(pruned)
    with fixed_threads(THREADS):
        fastest = median_ms(first, (x,), repeats=10, fastest=True)
    attempts = 0
    while True:
        attempts += 1
        m = paired_ratio(
            first, second, (x,), repeats=20, max_repeats=200, precision=PRECISION,
            threads=THREADS,
        )  # fmt: skip
        if m["first_ms"] <= DISTURBED * fastest or attempts > RETRIES:
            break
    return {
        "ratio": m["ratio"],
        "stderr": m["stderr"],
        "pairs": m["pairs"],
        "ms": [m["first_ms"], m["second_ms"]],
        "fastest_ms": fastest,
        "attempts": attempts,
        "disturbed": m["first_ms"] > DISTURBED * fastest,
        "load": m["load"],
        "busy": bool(busy(m["load"], THREADS)),
    }


class _Proxy:
    """Candidates by knob, built once each, with their proxy value."""

    def __init__(self, make: Callable[[float], Any], proxy: Callable[[Any], float]):
        self.make, self.proxy = make, proxy
        self.seen: dict[float, tuple[Any, float]] = {}

    def at(self, knob: float) -> tuple[Any, float]:
        if knob not in self.seen:
            candidate = self.make(knob)
            self.seen[knob] = (candidate, float(self.proxy(candidate)))
        return self.seen[knob]

    def land(self, goal: float, lo: float, hi: float, steps: int) -> float:
        """The knob in [lo, hi] whose proxy is closest to ``goal`` (bisection; the proxy grows
        with the knob)."""
        best = hi
        for _ in range(steps):
            mid = (lo + hi) / 2
            value = self.at(mid)[1]
            if abs(value - goal) < abs(self.at(best)[1] - goal):
                best = mid
            lo, hi = (lo, mid) if value > goal else (mid, hi)
        return best


def _bracketed(history: list[dict[str, Any]], target: float) -> float | None:
    """The next knob inside a measured bracket (one knob too slow, a smaller one fast enough),
    interpolated on the measured ratios and kept off the bracket's ends; None without one."""
    usable = [h for h in history if not h["disturbed"]]
    slow = [h for h in usable if h["ratio"] > target]
    fast = [h for h in usable if h["ratio"] <= target]
    if not slow or not fast:
        return None
    hi = min(slow, key=lambda h: h["knob"])
    lo = max(fast, key=lambda h: h["knob"])
    if lo["knob"] >= hi["knob"]:  # noise crossed the measurements: no usable bracket
        return None
    t = (target - lo["ratio"]) / max(hi["ratio"] - lo["ratio"], 1e-9)
    t = min(max(t, 0.1), 0.9)
    return lo["knob"] + t * (hi["knob"] - lo["knob"])


def _next_goal(history: list[dict[str, Any]], target: float) -> float:
    """The proxy value the next candidate should have, from the undisturbed measurements."""
    usable = [h for h in history if not h["disturbed"]]
    last = usable[-1]
    goal = last["proxy"] * target / max(last["ratio"], 1e-9)
    if len(usable) >= 2:
        prev = usable[-2]
        slope = (last["ratio"] - prev["ratio"]) / (last["proxy"] - prev["proxy"] or 1e-12)
        if slope > 1e-6:  # the measured ratio grows with the proxy, as it should
            goal = last["proxy"] + (target - last["ratio"]) / slope
    return min(max(goal, last["proxy"] / 2, 0.01), last["proxy"] * 2, 1.0)


def match_measured(
    make: Callable[[float], Any],
    proxy: Callable[[Any], float],
    measure: Callable[[Any], dict[str, Any]],
    target: float,
    lo: float,
    hi: float,
    *,
    steps: int = 12,
    refine: int = 4,
) -> tuple[Any, dict[str, Any]]:
    """The candidate ``make(knob)``, knob in [lo, hi], whose ``measure(candidate)["ratio"]`` is
    closest to ``target``, and its record (knob, proxy, measured ratio, within tolerance, every
    measured step). ``proxy(candidate)`` must grow with the knob."""
    cache = _Proxy(make, proxy)
    goal = target
    knob = cache.land(goal, lo, hi, steps)
    history: list[dict[str, Any]] = []
    for _ in range(refine + 1):
        candidate, value = cache.at(knob)
        history.append({"knob": knob, "proxy": value, "goal": goal, **measure(candidate)})
        last = history[-1]
        if len(history) > refine:
            break
        if last["disturbed"]:
            continue  # measure the same knob again
        if abs(last["ratio"] - target) <= TOLERANCE * target:
            break
        nxt = _bracketed(history, target)
        if nxt is None:
            goal = _next_goal(history, target)
            nxt = cache.land(goal, lo, hi, steps)
        if any(h["knob"] == nxt for h in history):
            break  # the proxy cannot move the candidate any further
        knob = nxt
    best = min(history, key=lambda h: (h["disturbed"], abs(h["ratio"] - target)))
    record = {
        "knob": best["knob"],
        "proxy": best["proxy"],
        "ratio": best["ratio"],
        "stderr": best["stderr"],
        "within_tolerance": abs(best["ratio"] - target) <= TOLERANCE * target,
        "disturbed": best["disturbed"],
        "busy": best["busy"],
        "load": best["load"],
        "measurements": history,
    }
    return cache.at(best["knob"])[0], record
