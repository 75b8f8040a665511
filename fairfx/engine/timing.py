"""Wall-clock timing under the rules that make CPU latency comparable.

A fixed intra-op thread count (restored afterwards), warm-up runs first, medians over repeats,
and, when two models are compared, runs that alternate between them: a background job that
slows the machine for a few seconds then slows both sides alike instead of whichever happened to
be running (the machines fairfx is benchmarked on are shared).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (None: the current count)."""
    before = torch.get_num_threads()
    n = before if threads is None else int(threads)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def batch_inputs(inputs: Sequence[Any], batch: int | None) -> tuple[Any, ...]:
    """The example inputs at another batch size: the first sample repeated ``batch`` times
    along dim 0 of every tensor input (contiguous copies, as a real batch would be)."""
    if batch is None:
        return tuple(inputs)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dim():
            x = x[:1].expand(batch, *x.shape[1:]).contiguous()
        out.append(x)
    return tuple(out)


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy(load: float | None, threads: int) -> str:
    """Why timings taken at ``load`` are not to be trusted, or ``""``: more runnable threads than
    this job's own ``threads`` plus one. With OpenMP's default wait policy, an op whose thread
    was preempted waits for it, so a busy machine makes time follow the count of ops, not their
    work (a ResNet-50 cut to 2% of its MACs measured 0.55 of the original at load 3.9 on 2
    cores; docs/latency.md)."""
    if load is None or load <= threads + 1:
        return ""
    return (
        f"the machine was busy (load average {load:.1f} with {threads} thread(s) of ours on "
        f"{os.cpu_count()} cores): measured ratios follow waiting, not work; measure on a "
        "quiet machine"
    )


def _once(fn: Callable[..., Any], inputs: Sequence[Any]) -> float:
    start = time.perf_counter()
    fn(*inputs)
    return (time.perf_counter() - start) * 1e3


@torch.no_grad()
def median_ms(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    repeats: int = 7,
    warmup: int = 2,
    fastest: bool = False,
) -> float:
    """Median milliseconds of ``fn(*inputs)`` over ``repeats`` runs after ``warmup`` runs, or
    the fastest run (``fastest``: an isolated op's own cost, least disturbed by other load)."""
    for _ in range(warmup):
        fn(*inputs)
    times = [_once(fn, inputs) for _ in range(max(1, repeats))]
    return min(times) if fastest else statistics.median(times)


@torch.no_grad()
def paired_ms(
    first: Callable[..., Any],
    second: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    repeats: int = 15,
    warmup: int = 3,
    threads: int | None = None,
) -> tuple[float, float, float]:
    """Medians (ms) of ``first`` and ``second`` run alternately, with fixed threads, and the
    median of the per-pair ratios second/first: each pair runs back to back, so load that comes
    and goes over seconds cancels in the ratio (a ratio of two medians keeps it). One round of
    :func:`paired_ratio` with a fixed count of pairs."""
    m = paired_ratio(
        first, second, inputs, repeats=repeats, max_repeats=repeats, warmup=warmup,
        threads=threads,
    )  # fmt: skip
    return m["first_ms"], m["second_ms"], m["ratio"]


@torch.no_grad()
def paired_ratio(
    first: Callable[..., Any],
    second: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    repeats: int = 15,
    max_repeats: int = 60,
    precision: float = 0.01,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, float]:
    """The median ratio second/first over alternating pairs, measured in rounds of ``repeats``
    pairs until its standard error is at most ``precision`` or ``max_repeats`` pairs ran.

    The standard error of a median is about 1.25 sigma / sqrt(n), with sigma estimated from
    the interquartile range (IQR / 1.35), so it holds against the outliers a shared machine
    produces. Returns ``{"first_ms", "second_ms", "ratio", "stderr", "pairs", "load"}`` (the
    load average when it finished: see :func:`busy`).
    """
    a: list[float] = []
    b: list[float] = []
    with fixed_threads(threads):
        for _ in range(warmup):
            first(*inputs)
            second(*inputs)
        while True:
            for _ in range(max(1, repeats)):
                a.append(_once(first, inputs))
                b.append(_once(second, inputs))
            ratios = sorted(y / max(x, 1e-12) for x, y in zip(a, b, strict=True))
            n = len(ratios)
            iqr = ratios[(3 * n) // 4] - ratios[n // 4] if n >= 4 else float("inf")
            stderr = 1.25 * (iqr / 1.35) / n**0.5
            if stderr <= precision or n >= max_repeats:
                break
    return {
        "first_ms": statistics.median(a),
        "second_ms": statistics.median(b),
        "ratio": statistics.median(ratios),
        "stderr": stderr,
        "pairs": n,
        "load": load_average(),
    }


__all__ = [
    "batch_inputs",
    "busy",
    "fixed_threads",
    "load_average",
    "median_ms",
    "paired_ms",
    "paired_ratio",
]
