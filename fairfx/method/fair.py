"""The FAIR-Pruner entry points: ``analyze`` (score once) and ``Analysis`` (plan, compress,
save); ``compress`` (all in one call, also in rounds) is in :mod:`fairfx.method.pipeline`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import CalibrationError, FairfxError, PlanError
from ..files import load_payload, plain, save_payload, weights_fingerprint
from . import distributed
from .checks import (
    check_fingerprint,
    check_grad_mode,
    check_loaded_scores,
    check_prunable,
    check_saved_groups,
    check_scores,
    check_weights,
    finite_batches,
)
from .finalize import finalize
from .graph import ChannelGraph, channel_graph
from .memory import class_hint, estimate_for_graph
from .options import check_analyze_options
from .plan_options import PlanOptions
from .planning import Plan
from .recalibrate import STATS_KEY
from .recalibrate import recalibrate as recalibrate_bn
from .scoring import Scores, calibrate, new_state
from .stats import CalibrationState, describe

_FORMAT = "fairfx.analysis/2"  # /1 pickled numpy arrays: a safe load refuses it


@dataclass
class Analysis:
    """Scores of every prunable group of one model, ready to plan for any alpha or budget.

    ``scores[group id]`` holds per-unit U, R and filter L1 arrays; ``graph`` is the channel graph
    of the captured model (present unless the analysis was loaded without a model).
    """

    scores: dict[int, Scores]
    graph: ChannelGraph | None
    record: dict[str, Any] = field(default_factory=dict)
    state: CalibrationState | None = None
    saved_groups: list[Any] | None = None  # (producers, size) per group, of a loaded file

    # ------------------------------------------------------------------ queries
    def by_producer(self) -> dict[str, dict[str, np.ndarray]]:
        """U and R of every producer's output channels, keyed by qualified name."""
        graph = self._need_graph()
        out = {}
        for gid, s in self.scores.items():
            for name in graph.groups[gid].producers:
                units = graph.producer_units(name)
                out[name] = {"u": s.u[units], "r": s.r[units], "l1": s.l1[units]}
        return out

    def _need_graph(self) -> ChannelGraph:
        if self.graph is None:
            raise FairfxError(
                "this Analysis was loaded without its model; use "
                "fairfx.load_analysis(path, model, example_input) to plan or compress"
            )
        return self.graph

    # ------------------------------------------------------------------ planning
    def plan(
        self, alpha: float | PlanOptions | None = None, *, uniform: Any = None, **options: Any
    ) -> Plan:
        """Per-group kept units for a :class:`PlanOptions` (or its fields as keywords):
        Tolerance of Difference at ``alpha`` (the paper), ``uniform=ratio`` (the fraction
        removed from every group), another ``allocation`` with a global ``ratio``, or a budget
        (``params=``/``flops=``, as :meth:`plan_for`)."""
        if isinstance(alpha, PlanOptions):
            if uniform is not None or options:
                raise PlanError("give a PlanOptions or keywords, not both")
            return self._need_graph().plan(alpha, self.scores)
        if alpha is not None:
            options["alpha"] = alpha
        budget = options.get("params") is not None or options.get("flops") is not None
        plan_options = PlanOptions.from_keywords(budget=budget, uniform=uniform, **options)
        return self._need_graph().plan(plan_options, self.scores)

    def plan_for(self, *, uniform: bool = False, **options: Any) -> Plan:
        """The plan whose kept fraction of parameters (``params=``) or FLOPs (``flops=``,
        counted as MACs) is closest to the target, by bisecting the allocation's knob over the
        cached scores (alpha for ``tod``); ``plan.note`` says how close. ``uniform=True``
        bisects one ratio for every group; ``allocation`` defaults to the benchmark's winner
        (docs/decisions.md). Other keywords: the fields of :class:`PlanOptions`."""
        plan_options = PlanOptions.from_keywords(budget=True, uniform=uniform, **options)
        return self._need_graph().plan(plan_options, self.scores)

    def compress(
        self,
        alpha: float | Plan | PlanOptions | None = None,
        *,
        data: Iterable[Any] | None = None,
        recalibrate: bool = True,
        **plan_options: Any,
    ) -> fx.GraphModule:
        """The pruned GraphModule for a ready ``Plan``, a :class:`PlanOptions`, or ``alpha``
        and planning keywords; plan and summary in ``.meta["fairfx"]``. With ``data``,
        BatchNorm statistics are re-estimated on it afterwards (:func:`fairfx.recalibrate`;
        ``recalibrate=False`` skips it)."""
        graph = self._need_graph()
        plan = alpha if isinstance(alpha, Plan) else self.plan(alpha, **plan_options)
        start = time.perf_counter()
        pruned = graph.prune(plan)
        # A model pruned again carries its earlier recalibration's record: not this rewrite's.
        pruned.meta.pop(STATS_KEY, None)
        info = pruned.meta["fairfx"]
        info["rewrite_seconds"] = time.perf_counter() - start
        info["analysis"] = dict(self.record)
        if data is not None and recalibrate:
            start = time.perf_counter()
            recalibrate_bn(pruned, data, inplace=True)
            info["recalibration"]["seconds"] = time.perf_counter() - start
        return pruned

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Keep the scores; reload with :func:`load_analysis` and plan with no data.

        The file holds tensors and plain values only (``torch.load(weights_only=True)`` reads
        it, so loading a shared file cannot run code) and is written atomically."""
        if self.graph is not None:
            groups = [(g.producers, g.size) for g in self.graph.groups]
        else:
            groups = self.saved_groups
        payload = {
            "format": _FORMAT,
            "record": plain(self.record),
            "groups": None if groups is None else [[list(p), int(n)] for p, n in groups],
            "scores": {
                int(gid): {
                    "u": plain(s.u),
                    "r": plain(s.r),
                    "l1": plain(s.l1),
                    "member_u": plain(s.member_u),
                    "member_r": plain(s.member_r),
                }
                for gid, s in self.scores.items()
            },
        }
        save_payload(payload, path)


_FIX = "write it with fairfx (Analysis.save or fairfx compress --analysis) from this version"


def _arrays(v: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: t.numpy() for k, t in v.items()}


def load_analysis(
    path: str | Path, model: torch.nn.Module | None = None, example_input: Any = None
) -> Analysis:
    """Load saved scores; with the model and example input, planning and compressing work.

    The file is read with ``torch.load(weights_only=True)``: a file holding anything but
    tensors and plain values is refused without running it. With a model, the saved channel
    groups (producer names and sizes) must match the model's, so scores of a same-named but
    wider or narrower model are refused."""
    payload = load_payload(path, _FORMAT, "a fairfx scores file", _FIX)
    try:
        scores = {
            int(g): Scores(
                v["u"].numpy(),
                v["r"].numpy(),
                v["l1"].numpy(),
                _arrays(v["member_u"]),
                _arrays(v["member_r"]),
            )
            for g, v in payload["scores"].items()
        }
        record = dict(payload["record"])
        saved = payload["groups"]
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise FairfxError(
            f"{path} is a damaged fairfx scores file ({type(exc).__name__}: {exc}); {_FIX}"
        ) from None
    check_loaded_scores(path, scores, saved)
    graph = None
    if model is not None:
        graph = channel_graph(model, example_input)
        check_saved_groups(path, saved, graph, scores)
        check_fingerprint(path, record.get("weights_sha1"), model)
    return Analysis(scores, graph, record, saved_groups=saved)


def analyze(
    model: torch.nn.Module,
    example_input: Any,
    data: Iterable[Any],
    *,
    samples_per_class: int = 32,
    max_classes: int = 100,
    projections: int = 128,
    observe: str = "consumer",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    state: CalibrationState | str | Path | None = None,
    state_dtype: str = "auto",
    batch_size: int | None = None,
    memory_check: bool = True,
    graph: ChannelGraph | None = None,
) -> Analysis:
    """Score every prunable channel group of ``model`` on labelled calibration ``data``.

    Args:
        model: the model; never modified (weights, buffers, flags and mode are as before).
        example_input: input used to trace the model (a batch of the data works).
        data: iterable of ``(inputs, targets)`` batches, e.g. a DataLoader.
        samples_per_class: samples kept per class: the ones with the smallest seeded content
            hash, so the choice does not depend on data order or on which process saw them.
        max_classes: classes compared at most (a seeded subset when the model has more).
        projections: random directions of the sliced Wasserstein distance for conv maps.
        observe: ``"consumer"`` (default) measures U on every tensor a layer reads the
            channel from, following it through BatchNorm, activations, ``cat`` and residual
            ``add`` (after the consumer's BatchNorm and activation, e.g. in a DenseNet), and takes
            the largest U; ``"post_act"`` stops after the producer's own BatchNorm and
            activation; ``"module"`` uses the raw conv/linear output, as the authors' package.
        loss_fn: ``(output, targets) -> loss`` for R, summed over samples; summed
            cross-entropy by default.
        seed: seeds the class subset, the sample choice and the projections.
        progress: show a progress bar over calibration batches.
        state: a :class:`~fairfx.method.stats.CalibrationState` (or its file) to continue from, e.g.
            after an interruption; ``Analysis.state`` is the state to save for that.
        state_dtype: how kept projections are stored: ``"float32"``, ``"float16"``,
            ``"bfloat16"``, or quantized ``"uint8"`` / ``"int4"`` (see
            :mod:`fairfx.method.codec`). ``"auto"`` (default): the most precise of float32,
            float16, uint8, int4 whose estimate fits in a third of the memory available (see
            :mod:`fairfx.method.memory`; ``record["memory"]["line"]`` says which and why); a
            resumed ``state`` keeps its own.
        batch_size: samples per forward/backward while scoring (default: chosen so autograd
            stays near 1 GiB; results do not depend on it).
        memory_check: refuse before reading any data when :func:`fairfx.estimate_memory` says
            the state, autograd and pair loop will not fit in the memory available.
        graph: ``fairfx.channel_graph(model, example_input)`` when it was built already (to
            look at the groups or the memory estimate first), so the model is captured once;
            built here when None. A graph of another model is refused.

    Memory is bounded by the kept samples (``Analysis.record["memory"]`` holds the estimate; see
    :mod:`fairfx.method.memory` for the formula), never by the dataset or the feature maps. Under
    ``torch.distributed`` (an initialised process group) each rank takes every world-th batch of
    ``data``; the states are gathered and merged, the ranks split the class-pair loop, and every
    rank ends with the same scores as one process over the same batches.
    """
    check_analyze_options(
        samples_per_class=samples_per_class,
        max_classes=max_classes,
        projections=projections,
        observe=observe,
        loss_fn=loss_fn,
        state_dtype=state_dtype,
        batch_size=batch_size,
    )
    check_grad_mode()
    check_weights(model)
    start = time.perf_counter()
    if graph is None:
        graph = channel_graph(model, example_input)
    elif not graph.built_from(model):
        raise PlanError(
            "graph= was built from another model; pass fairfx.channel_graph(model, "
            "example_input) of the model being analyzed, or leave graph out"
        )
    captured = time.perf_counter()
    fresh = new_state(
        graph,
        samples_per_class=samples_per_class,
        max_classes=max_classes,
        projections=projections,
        observe=observe,
        seed=seed,
        loss_fn=loss_fn,
        state_dtype="float16" if state_dtype == "auto" else state_dtype,  # auto: set below
    )
    check_prunable(graph)  # after the output check above: that error is the more specific
    if isinstance(state, (str, Path)):
        state = CalibrationState.load(state)
    shard = distributed.shard()
    estimate = functools.partial(
        estimate_for_graph,
        graph,
        classes=class_hint(graph, data, max_classes),
        samples_per_class=samples_per_class,
        projections=projections,
        observe=observe,
        batch_size=batch_size,
    )
    resumed = state is not None and state_dtype == "auto"  # continues in the state's codec
    memory = estimate(state_dtype=state.state_dtype if resumed else state_dtype)
    if shard[1] > 1 and state_dtype == "auto" and state is None:
        agreed = distributed.agreed_codec(memory.state_dtype)
        if agreed != memory.state_dtype:
            memory = replace(
                estimate(state_dtype=agreed), chosen=" (auto: the least precise rank's pick)"
            )
    fresh.state_dtype = memory.state_dtype
    if memory_check and not memory.fits:
        raise CalibrationError(memory.refusal())
    if state is not None:
        fresh.compatible(state)
    else:
        state = fresh
    with torch.enable_grad():  # R needs gradients, also when called under torch.no_grad()
        state = calibrate(
            graph,
            finite_batches(data),
            state,
            loss_fn=loss_fn,
            progress=progress,
            shard=shard,
            batch_size=memory.batch_size,
        )
    if shard[1] > 1:
        state = distributed.gather_states(state, shard[1])
    pairs_start = time.perf_counter()
    scores = finalize(graph, state, shard)
    check_scores(graph, scores)
    finalize_seconds = time.perf_counter() - pairs_start
    record = describe(state)
    record["weights_sha1"] = weights_fingerprint(model)  # scores are valid for these weights
    record["memory"] = {
        "state_dtype": memory.state_dtype,
        "estimate_bytes": memory.total_bytes,
        "state_bytes": memory.state_bytes,
        "batch_size": memory.batch_size,
        "line": memory.line(),
    }
    record["capture_seconds"] = captured - start
    record["scoring_seconds"] = time.perf_counter() - captured
    record["finalize_seconds"] = finalize_seconds
    return Analysis(scores, graph, record, state)
