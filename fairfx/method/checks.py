"""Checks that turn bad inputs to scoring into one-line errors before (or instead of) bad scores.

NaN or Inf anywhere (a weight, a calibration input, an overflowing activation) makes U and R NaN,
and a NaN score sorts arbitrarily: the plan would be garbage that looks like a plan. So weights
and every calibration batch are checked, and finished scores must be finite. Scoring needs
gradients, so it enables them itself: ``analyze`` under ``torch.no_grad()`` works
(docs/decisions.md); ``torch.inference_mode()`` cannot be undone from inside and is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.group_graph import GroupGraph
from ..errors import CalibrationError, FairfxError
from ..files import weights_fingerprint


def _bad(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def check_weights(model: torch.nn.Module) -> None:
    """Refuse a model with a NaN or Inf parameter or buffer, naming the first one."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            n = _bad(t.detach())
            if n:
                raise CalibrationError(
                    f"model {kind} {name!r} holds {n} NaN/Inf value(s); scores would be NaN. "
                    "Load finite weights (a diverged run or a damaged checkpoint gives these)"
                )


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class FiniteBatches:
    """``data`` unchanged (its length too, for the progress bar); a batch holding NaN or Inf is
    refused by its index."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            n = sum(_bad(t.detach()) for t in _tensors(batch))
            if n:
                raise CalibrationError(
                    f"calibration batch {i} holds {n} NaN/Inf value(s); scores would be NaN. "
                    "Clean or drop those samples (torch.isfinite finds them)"
                )
            yield batch


def finite_batches(data: Iterable[Any]) -> Iterable[Any]:
    """``data`` checked batch by batch as it is read (see :class:`FiniteBatches`)."""
    return FiniteBatches(data) if hasattr(data, "__len__") else iter(FiniteBatches(data))


def check_prunable(graph: Any) -> None:
    """Refuse to score a model none of whose channel groups may be pruned."""
    if any(g.prunable for g in graph.groups):
        return
    first = graph.groups[0] if graph.groups else None
    why = f"; e.g. group 0 ({first.producers[0]}): {first.reason}" if first else ""
    raise FairfxError(
        f"the model has no prunable channel group ({len(graph.groups)} group(s), all fixed"
        f"{why}); nothing to score or prune. fairfx.channel_groups lists every reason"
    )


def check_grad_mode() -> None:
    """Scoring takes gradients; inference mode forbids them and cannot be left from inside."""
    if torch.is_inference_mode_enabled():
        raise CalibrationError(
            "analyze cannot run under torch.inference_mode(): the Reconstruction score needs "
            "gradients. Call it outside the inference_mode block (torch.no_grad() is fine)"
        )


def check_scores(graph: Any, scores: dict[int, Any]) -> None:
    """Finished scores must be finite: a NaN means activations or the loss overflowed."""
    for gid, s in scores.items():
        for field in ("u", "r"):
            values = np.asarray(getattr(s, field))
            if not np.isfinite(values).all():
                name = graph.groups[gid].producers[0]
                raise CalibrationError(
                    f"the {field.upper()} scores of group {gid} ({name}) are NaN/Inf although "
                    "weights and data are finite: activations or the loss overflowed on the "
                    "calibration data (float16? an exploding model?); score in float32 on data "
                    "the model handles"
                )
    check_r_not_all_zero(graph, scores)


def check_saved_groups(
    path: str | Path, saved: Any, graph: GroupGraph, scores: dict[int, Any]
) -> None:
    """Refuse scores computed for other channel groups: names AND sizes must agree."""
    now = [(tuple(g.producers), g.size) for g in graph.groups]
    if saved is not None:
        then = [(tuple(p), int(n)) for p, n in saved]
        if [p for p, _ in then] != [p for p, _ in now]:
            raise FairfxError(
                f"{path} was computed for a model with different channel groups; re-run "
                "fairfx.analyze on this model"
            )
        for (producers, n_then), (_, n_now) in zip(then, now, strict=True):
            if n_then != n_now:
                raise FairfxError(
                    f"{path} was computed for a model whose group {producers[0]} has {n_then} "
                    f"units; this model's has {n_now} (same names, other widths); re-run "
                    "fairfx.analyze on this model"
                )
    for gid, s in scores.items():
        if gid >= len(now) or len(s.u) != now[gid][1]:
            raise FairfxError(
                f"{path} holds scores that do not fit this model's channel group {gid}; re-run "
                "fairfx.analyze on this model"
            )


def check_r_not_all_zero(graph: Any, scores: dict[int, Any]) -> None:
    """R is the loss change when a unit is removed; zero for every unit means the loss
    gradient reaches no prunable layer (a zero-initialised head: torchvision ViT and Swin
    without weights), and a plan made from it would rank channels by nothing."""
    if scores and all(not np.asarray(s.r).any() for s in scores.values()):
        raise CalibrationError(
            "the Reconstruction scores R are zero for every channel: the loss gradient does "
            "not reach the prunable layers (a zero-initialised classifier head, e.g. a "
            "torchvision ViT/Swin built without weights, or a loss that ignores the output), "
            "so a plan would be meaningless; load trained weights and score again"
        )


_FIELDS = ("u", "r", "l1")


def check_loaded_scores(path: str | Path, scores: dict[int, Any], saved: Any) -> None:
    """A scores file read back must hold what Analysis.save writes: per group, finite 1-D
    float arrays of one length (U, R, L1 and the per-member U and R), and a group list of
    ``[producer names, size]``. An edited or damaged file is refused here, not later with a
    traceback (or a plan sorted by NaN)."""

    def bad(why: str) -> FairfxError:
        return FairfxError(
            f"{path} is a damaged fairfx scores file ({why}); write it again with "
            "Analysis.save or fairfx compress --analysis"
        )

    if saved is not None and not (
        isinstance(saved, list)
        and all(
            isinstance(g, (list, tuple))
            and len(g) == 2
            and isinstance(g[0], (list, tuple))
            and all(isinstance(p, str) for p in g[0])
            and type(g[1]) is int
            and g[1] > 0
            for g in saved
        )
    ):
        raise bad("'groups' is not a list of [producer names, size]")
    for gid, s in scores.items():
        arrays = {f: getattr(s, f) for f in _FIELDS}
        arrays.update({f"member_u[{k}]": v for k, v in s.member_u.items()})
        arrays.update({f"member_r[{k}]": v for k, v in s.member_r.items()})
        n = len(s.u) if getattr(s.u, "ndim", 0) == 1 else -1
        for name, a in arrays.items():
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind != "f":
                raise bad(f"group {gid} {name} is not a 1-D float array")
            if len(a) != n:
                raise bad(f"group {gid} {name} has {len(a)} values, U has {n}")
            if not np.isfinite(a).all():
                raise bad(f"group {gid} {name} holds NaN/Inf")


def check_fingerprint(path: str | Path, saved: Any, model: torch.nn.Module) -> None:
    """Scores are valid for the weights they were computed on: refuse another set (same
    architecture, other values), and say so when an older file cannot tell."""
    if saved is None:
        warnings.warn(
            f"{path} records no weights fingerprint (written before fairfx kept one): make sure "
            "the model has the weights the scores were computed with",
            stacklevel=3,
        )
    elif saved != weights_fingerprint(model):
        raise FairfxError(
            f"{path} holds scores of other weights than this model's (same architecture, other "
            "values): a plan from them would prune by another model's scores; pass the model "
            "with the weights the scores were computed with, or score these weights again"
        )
