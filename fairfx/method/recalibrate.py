"""BatchNorm recalibration: re-estimate running statistics of a pruned model on calibration data.

Removing channels changes what every later BatchNorm sees (a consumer's input loses some of its
terms), while its running mean and variance still describe the unpruned network. On the digits
benchmark this statistics shift costs more one-shot accuracy than the choice of which channels to
remove (``benchmarks/results/quality.md``). Re-estimating the statistics needs no labels, no
gradients and no weight update: a few forward passes with only the BatchNorm layers in train mode
and ``momentum=None`` (a cumulative average over the batches, so the result does not depend on
a momentum constant or on how many batches came before). Everything else, dropout included,
stays in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CalibrationError
from .labels import describe_batch

# GraphModule.meta key of the BatchNorm buffers as the rewrite left them (read by the oracle).
STATS_KEY = "fairfx_bn_before_recalibration"


@dataclass
class RecalibrationReport:
    """What :func:`recalibrate` did: how many BatchNorm layers, batches and samples."""

    modules: int
    batches: int
    samples: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _inputs(batch: Any) -> tuple[Any, ...]:
    """The model inputs of one batch: ``(x, y)`` pairs, dicts with a label key, or bare inputs."""
    if isinstance(batch, dict):
        rest = {k: v for k, v in batch.items() if k not in ("label", "labels", "target", "y")}
        return (next(iter(rest.values())),) if len(rest) == 1 else (rest,)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return (batch[0],)
    if isinstance(batch, torch.Tensor):
        return (batch,)
    raise CalibrationError(
        "recalibration batches must be (inputs, targets) pairs, dicts or input tensors; got "
        f"{describe_batch(batch)}"
    )


def _size(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, dict) and x:
        return _size(next(iter(x.values())))
    return 0


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm (1d/2d/3d, lazy, SyncBatchNorm) that tracks running statistics."""
    return [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def recalibrate(
    model: nn.Module,
    data: Iterable[Any],
    *,
    max_batches: int | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Re-estimate the running statistics of every BatchNorm of ``model`` on ``data``.

    Args:
        model: typically a pruned GraphModule; any module works.
        data: batches of ``(inputs, targets)`` (targets are ignored), dicts, or input tensors.
        max_batches: use at most this many batches (all by default).
        inplace: update ``model`` itself; by default a deep copy is recalibrated and returned,
            so the caller's module is untouched.

    Returns the recalibrated module; ``module.meta["fairfx"]["recalibration"]`` (GraphModules)
    or the attribute ``fairfx_recalibration`` records a :class:`RecalibrationReport` as a dict.
    A pruned GraphModule also keeps its pre-recalibration statistics in ``meta``, so
    :func:`fairfx.verify` still proves the rewrite itself.
    Deterministic for the same data in the same order. Weights and gradients are never touched.
    """
    if max_batches is not None and max_batches < 1:
        raise CalibrationError(f"max_batches must be at least 1, got {max_batches}")
    out = model if inplace else copy.deepcopy(model)
    norms = batchnorms(out)
    meta = getattr(out, "meta", None)
    if isinstance(meta, dict) and "fairfx" in meta and norms:
        # The rewrite's own statistics, so fairfx.verify can still prove the rewrite.
        names = {m: n for n, m in out.named_modules()}
        meta.setdefault(
            STATS_KEY,
            {
                names[m]: {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}
                for m in norms
            },
        )
    modes = {m: m.training for m in out.modules()}
    momenta = {m: m.momentum for m in norms}
    batches = samples = 0
    try:
        out.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: every batch weighs the same
            m.train()
        with torch.no_grad():
            for batch in data if norms else ():
                if max_batches is not None and batches >= max_batches:
                    break
                inputs = _inputs(batch)
                try:
                    out(*inputs)
                except ValueError as exc:  # e.g. a batch of one sample through BatchNorm1d
                    raise CalibrationError(
                        f"recalibration forward failed on batch {batches}: {exc}; use batches "
                        "of at least 2 samples"
                    ) from exc
                batches += 1
                samples += _size(inputs[0])
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if norms and batches == 0:
        raise CalibrationError("recalibration got no batches; pass a non-empty data iterable")
    report = RecalibrationReport(len(norms), batches, samples).as_dict()
    if isinstance(meta, dict):
        meta.setdefault("fairfx", {})["recalibration"] = report
    else:
        out.fairfx_recalibration = report  # type: ignore[attr-defined]
    return out
