"""Fine-tuning after pruning, with the FAIR-Pruner paper's recipe.

The authors fine-tune a pruned model with plain SGD (learning rate 1e-3, momentum 0.9, weight
decay 1e-4) and keep the weights of the best validation epoch. :func:`finetune` does the same on
any module (a pruned ``GraphModule`` or not) and records what happened, so a user can see whether
fine-tuning helped and which epoch was kept.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FairfxError
from .labels import LABEL_KEYS, describe_batch, split_dict

HISTORY_ATTRIBUTE = "finetune_history"


@dataclass
class FinetuneHistory:
    """What :func:`finetune` did, one entry per epoch.

    Attributes:
        train_loss: mean training loss of each epoch (per sample, over the epoch's batches).
        val_accuracy: validation accuracy after each epoch (empty without ``val_data``).
        initial_val_accuracy: validation accuracy before the first epoch (None without
            ``val_data``).
        best_epoch: 1-based epoch whose weights were restored; 0 when no epoch beat the
            starting weights on validation, which are then kept (None without ``val_data``:
            the last epoch's weights are kept).
        best_val_accuracy: validation accuracy of that epoch.
        seconds: wall time of the whole run.
    """

    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    initial_val_accuracy: float | None = None
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serializable)."""
        return asdict(self)


def _batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, targets)`` from a pair or from a dict batch, as :func:`fairfx.analyze` reads
    them (targets under ``label``/``labels``/``target``/``targets``/``y``)."""
    pair = split_dict(batch) if isinstance(batch, dict) else None
    if pair is None and isinstance(batch, (tuple, list)) and len(batch) == 2:
        pair = tuple(batch)
    if pair is not None and isinstance(pair[1], torch.Tensor):
        return pair
    raise FairfxError(
        "fine-tuning data must yield (inputs, targets) pairs or dicts with the targets under one "
        f"of {', '.join(LABEL_KEYS)}, targets as a tensor; got {describe_batch(batch)}"
    )


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _call(module: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):  # several named inputs of a dict batch: keyword arguments
        return module(**x)
    return module(*x) if isinstance(x, tuple) else module(x)


def _length(data: Iterable[Any]) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_reiterable(data: Iterable[Any], name: str) -> None:
    if isinstance(data, Iterator):
        raise FairfxError(
            f"{name} is a one-shot iterator (a generator?), but it is read once per epoch; pass a "
            "DataLoader or a list of (inputs, targets) batches"
        )


@torch.no_grad()
def evaluate_accuracy(module: nn.Module, data: Iterable[Any]) -> float:
    """Top-1 accuracy of ``module`` (in eval mode) over ``(inputs, targets)`` batches."""
    device = _device(module)
    was = module.training
    module.eval()
    correct = total = 0
    try:
        for batch in data:
            x, y = _batch(batch)
            out = _call(module, _to(x, device))
            correct += int((out.argmax(dim=1) == y.to(device)).sum())
            total += int(y.numel())
    finally:
        module.train(was)
    if total == 0:
        raise FairfxError("validation data is empty")
    return correct / total


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def finetune(
    module: nn.Module,
    train_data: Iterable[Any],
    *,
    epochs: int,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    val_data: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Fine-tune ``module`` in place with SGD and return it in eval mode.

    Args:
        module: the model to train (e.g. the GraphModule from ``Analysis.compress``); its
            parameters are updated in place, frozen parameters (``requires_grad=False``) stay.
        train_data: re-iterable ``(inputs, targets)`` batches (a DataLoader or a list), or dict
            batches as :func:`fairfx.analyze` takes them (targets under ``label``, ``labels``,
            ``target``, ``targets`` or ``y``; several other entries are passed as keyword
            arguments); shuffling is the loader's job. Batches are moved to the module's device.
        epochs: passes over ``train_data`` (0 changes nothing).
        lr, momentum, weight_decay: SGD settings; the defaults are the FAIR-Pruner paper's.
        val_data: ``(inputs, targets)`` batches; when given, top-1 accuracy is measured before
            training and after every epoch, and the weights (and buffers) of the best of these
            are restored at the end (the earliest one on ties, so the starting weights when no
            epoch improves on them).
        loss_fn: ``(output, targets) -> scalar loss``; mean cross-entropy by default.
        progress: show a progress bar over the training batches (all epochs, updated per
            batch; the postfix shows the epoch, the loss and the last validation accuracy).

    Returns:
        ``module`` itself, in eval mode. The :class:`FinetuneHistory` is on
        ``module.finetune_history``, and as a plain dict on ``module.meta["fairfx"]["finetune"]``
        when the module has a ``meta`` dict (a GraphModule does).
    """
    if not isinstance(module, nn.Module):
        raise FairfxError(f"finetune expects a torch.nn.Module, got {type(module).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise FairfxError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise FairfxError(f"lr must be positive, got {lr!r}")
    _check_reiterable(train_data, "train_data")
    if val_data is not None:
        _check_reiterable(val_data, "val_data")
    loss_fn = loss_fn or F.cross_entropy
    history = FinetuneHistory(epochs, lr, momentum, weight_decay)
    start = time.perf_counter()
    params = [p for p in module.parameters() if p.requires_grad]
    if epochs and not params:
        raise FairfxError("the module has no trainable parameters (all requires_grad=False)")
    device = _device(module)
    best_state: dict[str, torch.Tensor] | None = None
    if val_data is not None:
        # The starting weights compete too: a short run from a recalibrated pruned model can
        # end below where it started (digits DenseNet-style at 50% params, 1 epoch: validation
        # 72% -> 56%), and returning that would make fine-tuning a loss.
        history.initial_val_accuracy = evaluate_accuracy(module, val_data)
        history.best_epoch, history.best_val_accuracy = 0, history.initial_val_accuracy
        best_state = copy.deepcopy(module.state_dict())

    from tqdm.auto import tqdm

    # One bar over every batch of every epoch: a large epoch shows progress, not 0% for minutes.
    per_epoch = _length(train_data)
    bar = tqdm(
        total=None if per_epoch is None else per_epoch * epochs,
        desc="fine-tuning",
        unit="batch",
        disable=not progress or not epochs,
    )
    if epochs:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    shown: dict[str, str] = {}
    for epoch in range(epochs):
        module.train()
        total, count = 0.0, 0
        for step, batch in enumerate(train_data):
            x, y = _batch(batch)
            x, y = _to(x, device), y.to(device)
            loss = loss_fn(_call(module, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int(y.shape[0]) if y.dim() else 1
            value = float(loss.detach())
            total += value * n
            count += n
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(shown | {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{value:.4f}"})
        if count == 0:
            raise FairfxError("train_data yielded no batches")
        history.train_loss.append(total / count)
        shown = {"epoch": f"{epoch + 1}/{epochs}", "loss": f"{total / count:.4f}"}
        if val_data is not None:
            acc = evaluate_accuracy(module, val_data)
            history.val_accuracy.append(acc)
            if acc > history.best_val_accuracy:  # type: ignore[operator]
                history.best_epoch, history.best_val_accuracy = epoch + 1, acc
                best_state = copy.deepcopy(module.state_dict())
            shown["val_acc"] = f"{acc:.4f}"
        bar.set_postfix(shown)
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    for p in params:
        p.grad = None
    module.eval()
    history.seconds = time.perf_counter() - start
    setattr(module, HISTORY_ATTRIBUTE, history)
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict):
        meta.setdefault("fairfx", {})["finetune"] = history.as_dict()
    return module
