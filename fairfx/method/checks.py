"""Checks that turn bad inputs to scoring into one-line errors before (or instead of) bad scores.

NaN or Inf anywhere (a weight, a calibration input, an overflowing activation) makes U and R NaN,
and a NaN score sorts arbitrarily: the plan would be garbage that looks like a plan. So weights
and every calibration batch are checked, and finished scores must be finite. Scoring needs
gradients, so it enables them itself: ``analyze`` under ``torch.no_grad()`` works
(docs/decisions.md); ``torch.inference_mode()`` cannot be undone from inside and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.group_graph import GroupGraph
from ..errors import CalibrationError, FairfxError


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
