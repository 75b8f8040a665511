"""Calibration data: validate labelled batches and pick a fixed number of samples per class.

The sampler is streaming: it walks the user's batches once, keeps a sample when its class still
needs samples, and stops as soon as every chosen class is full, so the dataset's size never
matters. Which classes take part is a seeded choice (METHOD.md: at most ``max_classes``); which
samples is the first ``samples_per_class`` of each class in data order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .errors import CalibrationError


def choose_classes(num_classes: int, max_classes: int, seed: int) -> np.ndarray:
    """All classes, or a seeded random subset of ``max_classes`` of them (sorted)."""
    if max_classes < 2:
        raise CalibrationError(f"max_classes must be at least 2, got {max_classes}")
    if num_classes <= max_classes:
        return np.arange(num_classes)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_classes, max_classes, replace=False))


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, targets)`` of one batch, with a clear error when targets are missing."""
    if isinstance(batch, dict):
        for key in ("label", "labels", "target", "targets", "y"):
            if key in batch:
                inputs = {k: v for k, v in batch.items() if k != key}
                return next(iter(inputs.values())) if len(inputs) == 1 else inputs, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point():
            return x, y
        if isinstance(y, (list, tuple)) and all(isinstance(v, int) for v in y):
            return x, torch.as_tensor(y)
    raise CalibrationError(
        "calibration batches must be (inputs, targets) pairs with integer class labels of shape "
        f"[N]; got {type(batch).__name__}. Pass a DataLoader over a labelled dataset as data=, "
        "or call fairfx.compress without data to label example_input by the model's predictions"
    )


class ClassSampler:
    """Streams batches and yields only the samples still needed, class by class."""

    def __init__(self, classes: np.ndarray, per_class: int, num_classes: int) -> None:
        if per_class < 1:
            raise CalibrationError(f"samples_per_class must be at least 1, got {per_class}")
        self.classes = classes
        self.per_class = per_class
        self.num_classes = num_classes
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.wanted = np.zeros(num_classes, dtype=bool)
        self.wanted[classes] = True

    def full(self) -> bool:
        return bool((self.counts[self.classes] >= self.per_class).all())

    def take(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        labels = y.detach().cpu().numpy()
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise CalibrationError(
                f"targets must be class indices in [0, {self.num_classes}) for a model with "
                f"{self.num_classes} outputs; got values from {labels.min()} to {labels.max()}"
            )
        keep = []
        for i, c in enumerate(labels.tolist()):
            if self.wanted[c] and self.counts[c] < self.per_class:
                self.counts[c] += 1
                keep.append(i)
        if not keep:
            return None
        idx = torch.as_tensor(keep, dtype=torch.long)
        return x[idx.to(x.device)], y[idx.to(y.device)]

    def batches(self, data: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in data:
            x, y = split_batch(batch)
            picked = self.take(x, y)
            if picked is not None:
                yield picked
            if self.full():
                return

    def check(self) -> None:
        seen = int((self.counts[self.classes] > 0).sum())
        if seen < 2:
            raise CalibrationError(
                f"calibration data holds {seen} class(es) of the model's {self.num_classes}; the "
                "Utilization score compares classes, so at least 2 classes are needed"
            )


def self_labelled(model: torch.nn.Module, inputs: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    """One batch labelled by the model's own predictions (``compress`` without ``data``)."""
    with torch.no_grad():
        out = model(*inputs)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise CalibrationError(
            "the model's output is not class logits of shape [N, classes]; FAIR scoring needs "
            "labelled data and a classification loss: pass data= and, if needed, loss_fn="
        )
    labels = out.argmax(dim=1)
    if len(inputs) != 1 or labels.unique().numel() < 2 or labels.numel() < 4:
        raise CalibrationError(
            f"example_input yields {labels.numel()} sample(s) predicted as "
            f"{labels.unique().numel()} class(es); labelling by predictions needs a batch with "
            "at least 4 samples and 2 predicted classes. Pass labelled batches as data="
        )
    return [(inputs[0], labels)]
