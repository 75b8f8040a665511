"""Option checks for planning and scoring, run before any capture or scoring pass.

A typo such as ``group_rule="members"`` or a budget of ``"0.5"`` must fail in milliseconds with
one line naming the valid values, not after minutes of calibration; every entry point
(:func:`fairfx.analyze`, :func:`fairfx.compress`, ``Analysis.plan/plan_for``, the CLI) calls
these first.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from ..errors import CalibrationError, PlanError
from .allocation import ALLOCATIONS, BOUNDED
from .codec import check_codec
from .scoring import OBSERVE

IMPORTANCE = ("fair", "l1", "random")


GROUP_RULES = ("joint", "member")


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


def check_round_to(round_to: Any) -> int | None:
    if round_to is not None and (
        isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1
    ):
        raise PlanError(f"round_to must be a positive integer (e.g. 8), got {round_to!r}")
    return None if round_to is None else int(round_to)


def check_plan_options(
    *,
    alpha: Any = None,
    importance: Any = "fair",
    uniform: Any = None,
    group_rule: Any = "joint",
    allocation: Any = None,
    round_to: Any = None,
    budget: bool = False,
) -> None:
    """Every planning option checked up front, so ``compress`` refuses a typo before scoring.

    ``budget``: the plan will be bisected to a params/FLOPs budget (no alpha needed)."""
    check_choice("importance", importance, IMPORTANCE)
    check_choice("group_rule", group_rule, GROUP_RULES)
    if allocation is not None:
        check_choice("allocation", allocation, ALLOCATIONS)
    check_round_to(round_to)
    if uniform is not None and not budget:
        check_uniform_ratio(uniform)
    elif budget:
        if alpha is not None:
            check_alpha(alpha)
    elif allocation not in (None, "tod", *BOUNDED):
        raise PlanError(
            f"allocation={allocation!r} spreads a budget over the layers and needs one: give "
            "params= or flops= (alpha is for the paper's ToD counts)"
        )
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


def check_analyze_options(
    *,
    samples_per_class: Any = 32,
    max_classes: Any = 100,
    projections: Any = 128,
    observe: Any = "consumer",
    loss_fn: Any = None,
    state_dtype: Any = "auto",
    batch_size: Any = None,
    **others: Any,
) -> None:
    """The options of :func:`analyze`, checked before the model is even traced."""
    if state_dtype != "auto":
        check_codec(state_dtype)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise CalibrationError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    for name, value, least in (
        ("samples_per_class", samples_per_class, 1),
        ("max_classes", max_classes, 2),
        ("projections", projections, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise CalibrationError(f"{name} must be an integer >= {least}, got {value!r}")
    try:
        check_choice("observe", observe, OBSERVE)
    except PlanError as exc:
        raise CalibrationError(str(exc)) from None
    if loss_fn is not None and not callable(loss_fn):
        raise CalibrationError(
            f"loss_fn must be callable (output, targets) -> loss, got {loss_fn!r}"
        )
