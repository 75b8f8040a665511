"""``compress``: FAIR-Pruner in one call, optionally in rounds of prune -> fine-tune -> re-score.

One ToD round removes at most about half of each group (two sets of more than n/2 units must
overlap), and scores measured on the unpruned network describe it less well the more is removed.
Rounds fix both: each round prunes a share of the budget, BatchNorm statistics are re-estimated,
the model is fine-tuned briefly, and the next round scores the smaller model afresh. A budget is
split geometrically: after round i of k the model keeps ``budget ** (i / k)`` of the original
cost (each round's target is relative to what the model costs then, so misses do not add up).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..engine.capture import as_inputs
from ..engine.oracle import verify
from ..errors import PlanError
from .calibration import self_labelled
from .fair import Analysis, analyze
from .finetune import finetune
from .options import check_alpha, check_analyze_options, check_plan_options
from .planning import Plan
from .recalibrate import recalibrate as recalibrate_bn

_PLAN_KEYS = ("importance", "group_rule", "uniform", "allocation", "round_to", "ignored_layers")


def _check_budget(value: Any, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise PlanError(f"{flag} must be a kept fraction in (0, 1], got {value!r}")
    return float(value)


def _one_round(
    analysis: Analysis,
    alpha: float | None,
    budget: dict[str, float] | None,
    options: dict[str, Any],
) -> Plan:
    if budget is not None:
        return analysis.plan_for(**budget, **options)
    return analysis.plan(alpha, **options)


def _names(model: torch.nn.Module, ignored: Any) -> list[Any]:
    """Modules as qualified names: later rounds prune copies, which share no tensors with them."""
    if isinstance(ignored, (str, torch.nn.Module)):
        ignored = [ignored]
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(x), x) if isinstance(x, torch.nn.Module) else x for x in ignored]


def _compose_keep(before: dict[str, list[int]], now: dict[str, list[int]]) -> dict[str, list]:
    """Keep lists of round i+1 (indices into round i's channels) in original channel indices."""
    out = {k: list(v) for k, v in before.items()}
    for name, idx in now.items():
        out[name] = np.asarray(before[name])[idx].tolist() if name in before else list(idx)
    return out


def compress(
    model: torch.nn.Module,
    example_input: Any,
    alpha: float | None = None,
    data: Iterable[Any] | None = None,
    *,
    params: float | None = None,
    flops: float | None = None,
    rounds: int = 1,
    recalibrate: bool = True,
    finetune_data: Iterable[Any] | None = None,
    finetune_epochs: int = 1,
    **options: Any,
) -> fx.GraphModule:
    """FAIR-Pruner in one call: score, plan, rewrite, re-estimate BatchNorm statistics.

    Args:
        model: never modified.
        example_input: traces the model; also the calibration batch when ``data`` is None
            (labelled by the model's own predictions).
        alpha: Tolerance of Difference (the paper's planning; 0.005 when no budget is given).
        data: labelled calibration batches ``(inputs, targets)``.
        params / flops: a budget instead of alpha: the kept fraction of parameters or MACs
            (``Analysis.plan_for``; its ``allocation`` default is the benchmark's winner).
        rounds: prune in this many rounds; between rounds the model is recalibrated,
            fine-tuned for ``finetune_epochs`` on ``finetune_data`` (default: ``data``) and
            scored again. Needs ``data``.
        recalibrate: re-estimate BatchNorm statistics on ``data`` after each rewrite
            (:func:`fairfx.recalibrate`); on by default when ``data`` is given.
        options: for :func:`analyze` (``samples_per_class``, ``observe``, ``progress``, ...) and
            planning (``importance``, ``group_rule``, ``allocation``, ``round_to``,
            ``ignored_layers``, ``uniform``).

    ``.meta["fairfx"]`` holds the plan, the keep lists in the original model's channel indices,
    ``recalibration`` when it ran and ``rounds`` (one plan summary per round) when ``rounds > 1``.
    Every round's rewrite is checked against the masked model it pruned (``fairfx.verify``,
    before recalibration and fine-tuning): ``.meta["fairfx"]["verify"]`` (last round) and
    ``verify`` in each round's summary.
    """
    if (params is not None) and (flops is not None):
        raise PlanError("give at most one budget: params= or flops=")
    budget = None
    if params is not None:
        budget = {"params": _check_budget(params, "params")}
    elif flops is not None:
        budget = {"flops": _check_budget(flops, "flops")}
    if budget is not None and alpha is not None:
        raise PlanError("give alpha (Tolerance of Difference) or a budget (params=/flops=)")
    if budget is None:
        alpha = check_alpha(0.005 if alpha is None else alpha)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PlanError(f"rounds must be a positive integer, got {rounds!r}")
    if rounds > 1 and data is None:
        raise PlanError("rounds > 1 fine-tunes between rounds and needs labelled data=")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise PlanError(f"finetune_epochs must be an integer, got {finetune_epochs!r}")
    plan_options = {k: options.pop(k) for k in list(options) if k in _PLAN_KEYS}
    # Every option is checked before the scoring pass: a typo must cost milliseconds, not a scan.
    check_plan_options(
        alpha=alpha,
        budget=budget is not None,
        **{k: v for k, v in plan_options.items() if k != "ignored_layers"},
    )
    check_analyze_options(**options)
    if plan_options.get("ignored_layers") is not None:
        plan_options["ignored_layers"] = _names(model, plan_options["ignored_layers"])
    calib = data if data is not None else self_labelled(model, as_inputs(example_input))
    current: torch.nn.Module = model
    keep: dict[str, list[int]] = {}
    summaries: list[dict[str, Any]] = []
    pruned: fx.GraphModule | None = None
    for i in range(1, rounds + 1):
        analysis = analyze(current, example_input, calib, **options)
        plan = _one_round(
            analysis, alpha, _round_budget(budget, summaries, i, rounds), plan_options
        )
        pruned = analysis.compress(plan)
        info = pruned.meta["fairfx"]
        # Each round's rewrite is proved against the model it pruned, before recalibration.
        check = verify(current, pruned, example_input)
        info["verify"] = {"passed": check.passed, "max_abs_diff": check.max_abs_diff}
        keep = _compose_keep(keep, info["keep"])
        summaries.append({**info["plan"], "verify": check.passed})
        if recalibrate and data is not None:
            recalibrate_bn(pruned, calib, inplace=True)
        if i < rounds:
            finetune(
                pruned,
                finetune_data if finetune_data is not None else calib,
                epochs=finetune_epochs,
                progress=options.get("progress", True),
            )
        current = pruned
    assert pruned is not None
    info = pruned.meta["fairfx"]
    info["keep"] = keep
    info["params_before"] = summaries[0]["params_before"]
    if rounds > 1:
        info["rounds"] = summaries
    return pruned


def _round_budget(
    budget: dict[str, float] | None, done: list[dict[str, Any]], i: int, rounds: int
) -> dict[str, float] | None:
    """Round i's budget relative to the current model: after it the model keeps
    ``total ** (i / rounds)`` of the original cost (geometric split)."""
    if budget is None:
        return None
    ((key, total),) = budget.items()
    if not done:
        return {key: total ** (1 / rounds)}
    cost = "params" if key == "params" else "macs"
    original = done[0][f"{cost}_before"]
    now = done[-1][f"{cost}_after"]
    return {key: min(1.0, original * total ** (i / rounds) / max(now, 1))}
