"""The one compression pipeline: score, plan, rewrite, verify, recalibrate, fine-tune, measure.

:func:`run` is what :func:`fairfx.compress`, the CLI's ``fairfx compress`` (one round or
``--rounds``) and the demo all call; they only print and save its :class:`CompressResult`.

Rounds: one ToD round removes at most about half of each group (two sets of more than n/2 units
must overlap), and scores measured on the unpruned network describe it less well the more is
removed. Each round prunes a share of the budget, BatchNorm statistics are re-estimated, the
model is fine-tuned briefly, and the next round scores the smaller model afresh. A budget is
split geometrically: after round i of k the model keeps ``budget ** (i / k)`` of the original
cost (each round's target is relative to what the model costs then, so misses do not add up).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..engine.capture import as_inputs
from ..engine.oracle import VerifyReport, verify
from ..errors import PlanError
from .fair import Analysis, analyze
from .finetune import evaluate_accuracy, finetune
from .labels import self_labelled
from .options import check_analyze_options
from .plan_options import FIELDS, PlanOptions
from .planning import Plan
from .recalibrate import recalibrate as recalibrate_bn


@dataclass
class CompressResult:
    """Everything one compression produced; callers print or save it, nothing else.

    ``keep`` holds kept channels in the original model's indices (composed over rounds);
    ``rounds`` one plan summary per round (with ``verify``); ``accuracy`` (when validation data
    was given) the top-1 of the original, the pruned model before fine-tuning and after;
    ``timings`` seconds per stage."""

    pruned: fx.GraphModule
    plan: Plan
    analysis: Analysis
    verify: VerifyReport
    keep: dict[str, list[int]]
    rounds: list[dict[str, Any]]
    groups: list[Any] = field(default_factory=list)  # the original model's channel groups
    recalibration: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise PlanError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _compose_keep(before: dict[str, list[int]], now: dict[str, list[int]]) -> dict[str, list]:
    """Keep lists of round i+1 (indices into round i's channels) in original channel indices."""
    out = {k: list(v) for k, v in before.items()}
    for name, idx in now.items():
        out[name] = np.asarray(before[name])[idx].tolist() if name in before else list(idx)
    return out


def _round_options(options: PlanOptions, done: list[dict[str, Any]], i: int, k: int) -> PlanOptions:
    """Round i's options: a budget relative to the current model, so that after it the model
    keeps ``total ** (i / k)`` of the original cost (geometric split). A latency target is
    measured against the model each round starts from, so each round keeps ``total ** (1 / k)``
    of it."""
    if options.latency is not None and k > 1:
        return options.replace(latency=options.latency ** (1 / k))
    if options.budget is None or k == 1:
        return options
    name, total = options.budget
    if not done:
        return options.replace(**{name: total ** (1 / k)})
    cost = "params" if name == "params" else "macs"
    original, now = done[0][f"{cost}_before"], done[-1][f"{cost}_after"]
    return options.replace(**{name: min(1.0, original * total ** (i / k) / max(now, 1))})


def _names(model: torch.nn.Module, options: PlanOptions) -> PlanOptions:
    """Ignored modules as qualified names: later rounds prune copies, which share no tensors."""
    ignored = options.ignored_layers
    if ignored is None:
        return options
    if isinstance(ignored, (str, torch.nn.Module)):
        ignored = [ignored]
    names = {id(m): n for n, m in model.named_modules()}
    named = [names.get(id(x), x) if isinstance(x, torch.nn.Module) else x for x in ignored]
    return options.replace(ignored_layers=named)


def run(
    model: torch.nn.Module,
    example_input: Any,
    options: PlanOptions,
    data: Iterable[Any] | None = None,
    *,
    rounds: int = 1,
    recalibrate: bool = True,
    finetune_data: Iterable[Any] | None = None,
    finetune_epochs: int = 1,
    final_finetune_epochs: int = 0,
    lr: float = 1e-3,
    val_data: Iterable[Any] | None = None,
    analysis: Analysis | None = None,
    analyze_options: dict[str, Any] | None = None,
    on_scored: Callable[[Analysis], None] | None = None,
) -> CompressResult:
    """Compress ``model`` (never modified) in ``rounds`` and return everything that happened.

    Args:
        options: how to plan (checked before any work).
        data: labelled calibration batches; None labels ``example_input`` by the model's own
            predictions (one round only).
        rounds: prune -> recalibrate -> fine-tune ``finetune_epochs`` on ``finetune_data``
            (default ``data``) -> re-score, this many times.
        final_finetune_epochs: fine-tune the result this many epochs on ``finetune_data`` (or
            ``data``) at the end, keeping the best ``val_data`` epoch when validation is given.
        val_data: labelled batches held out from calibration: accuracy of the original, the
            one-shot pruned model and the fine-tuned one.
        analysis: scores of ``model`` already computed (one round only).
        analyze_options: keywords for :func:`fairfx.analyze`.
        on_scored: called with each round's fresh Analysis (the CLI saves and reports it).
    """
    rounds = _check_int("rounds", rounds, 1)
    finetune_epochs = _check_int("finetune_epochs", finetune_epochs, 0)
    final_finetune_epochs = _check_int("final_finetune_epochs", final_finetune_epochs, 0)
    analyze_options = dict(analyze_options or {})
    check_analyze_options(**analyze_options)
    if rounds > 1 and data is None:
        raise PlanError("rounds > 1 fine-tunes between rounds and needs labelled data=")
    if rounds > 1 and analysis is not None:
        raise PlanError("rounds > 1 re-scores the model every round; it cannot reuse scores")
    progress = analyze_options.get("progress", True)
    options = _names(model, options)
    calib = data if data is not None else self_labelled(model, as_inputs(example_input))
    train = finetune_data if finetune_data is not None else calib
    timings: dict[str, float] = {}
    stage = functools.partial(_stage, timings)
    current: torch.nn.Module = model
    keep: dict[str, list[int]] = {}
    summaries: list[dict[str, Any]] = []
    for i in range(1, rounds + 1):
        if analysis is None or i > 1:
            with stage("analyze"):
                analysis = analyze(current, example_input, calib, **analyze_options)
            if on_scored is not None:
                on_scored(analysis)
        if i == 1:
            groups = list(analysis.graph.groups) if analysis.graph is not None else []
        with stage("plan"):
            plan = analysis.plan(_round_options(options, summaries, i, rounds))
        with stage("compress"):
            pruned = analysis.compress(plan)
        # Each round's rewrite is proved against the model it pruned, before recalibration.
        with stage("verify"):
            check = verify(current, pruned, example_input)
        info = pruned.meta["fairfx"]
        info["verify"] = {"passed": check.passed, "max_abs_diff": check.max_abs_diff}
        keep = _compose_keep(keep, info["keep"])
        summaries.append({**info["plan"], "verify": check.passed})
        if recalibrate and data is not None:
            with stage("recalibrate"):
                recalibrate_bn(pruned, calib, inplace=True)
        if i < rounds and finetune_epochs:
            with stage("finetune"):
                finetune(pruned, train, epochs=finetune_epochs, lr=lr, progress=progress)
        current = pruned
    info = pruned.meta["fairfx"]
    info["keep"] = keep
    info["params_before"] = summaries[0]["params_before"]
    if rounds > 1:
        info["rounds"] = summaries
    accuracy = None
    if val_data is not None:
        with stage("accuracy"):
            accuracy = {
                "original": evaluate_accuracy(model, val_data),
                "one_shot": evaluate_accuracy(pruned, val_data),
                "fine_tuned": None,
            }
    history = None
    if final_finetune_epochs:
        with stage("finetune"):
            finetune(
                pruned,
                train,
                epochs=final_finetune_epochs,
                lr=lr,
                val_data=val_data,
                progress=progress,
            )
        history = info["finetune"]
        if accuracy is not None:
            # The best epoch's weights were restored: its validation accuracy is the result.
            accuracy["fine_tuned"] = history["best_val_accuracy"]
            accuracy["best_epoch"] = history["best_epoch"]
    return CompressResult(
        pruned=pruned,
        plan=plan,
        analysis=analysis,
        verify=check,
        keep=keep,
        rounds=summaries,
        groups=groups,
        recalibration=info.get("recalibration"),
        finetune=history,
        accuracy=accuracy,
        timings=timings,
    )


# compress() keywords that go to analyze(): its own keyword parameters, read from its signature so
# the two lists cannot drift apart.
_ANALYZE_KEYS = tuple(
    name
    for name, p in inspect.signature(analyze).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


def compress(
    model: torch.nn.Module,
    example_input: Any,
    alpha: float | PlanOptions | None = None,
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
    """FAIR-Pruner in one call: score, plan, rewrite, verify, re-estimate BatchNorm statistics.

    Args:
        model: never modified.
        example_input: traces the model; also the calibration batch when ``data`` is None
            (labelled by the model's own predictions).
        alpha: Tolerance of Difference (the paper's planning; 0.005 in its examples), or a
            whole :class:`~fairfx.PlanOptions`.
        data: labelled calibration batches ``(inputs, targets)``.
        params / flops: a budget instead of alpha: the kept fraction of parameters or MACs.
        rounds: prune in this many rounds; between rounds the model is recalibrated,
            fine-tuned for ``finetune_epochs`` on ``finetune_data`` (default: ``data``) and
            scored again. Needs ``data``.
        recalibrate: re-estimate BatchNorm statistics on ``data`` after each rewrite
            (:func:`fairfx.recalibrate`); on by default when ``data`` is given.
        options: for :func:`analyze` (``samples_per_class``, ``observe``, ``progress``, ...) and
            the fields of :class:`~fairfx.PlanOptions` (``importance``, ``allocation``,
            ``round_to``, ``ignored_layers``, ``max_ratio``, ``layer_ratios``, ``uniform``).

    One of ``alpha``, ``params``, ``flops`` (or ``ratio``/``uniform``) is required: no plan is
    chosen silently. ``.meta["fairfx"]`` holds the plan, the keep lists in the original model's
    channel indices, ``verify`` (the last round's oracle check, made before recalibration),
    ``recalibration`` when it ran and ``rounds`` (one plan summary per round) when
    ``rounds > 1``. :func:`fairfx.method.pipeline.run` returns the whole record.
    """
    rounds = _check_int("rounds", rounds, 1)
    for key in options:
        if key not in (*_ANALYZE_KEYS, *FIELDS, "uniform"):
            valid = sorted({*_ANALYZE_KEYS, *FIELDS, "uniform"} - {"alpha", "params", "flops"})
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise PlanError(
                f"compress() got an unknown option {key}={options[key]!r}{hint} (planning: the "
                "fields of fairfx.PlanOptions; scoring: the keywords of fairfx.analyze)"
            )
    analyze_options = {k: options.pop(k) for k in list(options) if k in _ANALYZE_KEYS}
    if isinstance(alpha, PlanOptions):
        if params is not None or flops is not None or options:
            raise PlanError("give a PlanOptions or planning keywords, not both")
        plan_options = alpha
    else:
        budget = params is not None or flops is not None
        if budget and alpha is not None:
            raise PlanError("give alpha (Tolerance of Difference) or a budget (params=/flops=)")
        uniform = options.pop("uniform", None)
        keywords = {"alpha": alpha, "params": params, "flops": flops, **options}
        plan_options = PlanOptions.from_keywords(budget=budget, uniform=uniform, **keywords)
    return run(
        model,
        example_input,
        plan_options,
        data,
        rounds=rounds,
        recalibrate=recalibrate,
        finetune_data=finetune_data,
        finetune_epochs=finetune_epochs,
        analyze_options=analyze_options,
    ).pruned
