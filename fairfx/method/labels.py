"""Calibration data: validate labelled batches and choose the classes that take part.

Which classes take part (at most ``max_classes``, chosen among the labels seen) and
which samples of each class is decided in :mod:`fairfx.method.stats` by seeded hashes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import CalibrationError

LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def split_dict(batch: dict[str, Any]) -> tuple[Any, Any] | None:
    """``(inputs, targets)`` of a dict batch whose targets sit under one of :data:`LABEL_KEYS`
    (the other entries are the inputs: the value itself when there is one, else a dict of them);
    None when no key names the targets."""
    for key in LABEL_KEYS:
        if key in batch:
            inputs = {k: v for k, v in batch.items() if k != key}
            return next(iter(inputs.values())) if len(inputs) == 1 else inputs, batch[key]
    return None


def integer_labels(y: Any) -> Any:
    """Integer class labels as int64 (int32, uint8, ... are accepted); bool labels are refused:
    True/False is a mask or a binary target, and which class is which must be the caller's call."""
    if isinstance(y, torch.Tensor) and y.dtype == torch.bool:
        raise CalibrationError(
            "targets are bool; class labels must be integers: pass y.long() (False -> class 0, "
            "True -> class 1) if they are two classes"
        )
    if isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex():
        return y.long()
    return y


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, targets)`` of one batch, with a clear error when targets are missing."""
    if isinstance(batch, dict) and (pair := split_dict(batch)) is not None:
        return pair[0], integer_labels(pair[1])
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point():
            return x, integer_labels(y)
        if isinstance(y, (list, tuple)) and all(isinstance(v, int) for v in y):
            return x, torch.as_tensor(y)
    raise CalibrationError(
        "calibration batches must be (inputs, targets) pairs with integer class labels of shape "
        f"[N]; got {describe_batch(batch)}. Pass a DataLoader over a labelled dataset as data=, "
        "or call fairfx.compress without data to label example_input by the model's predictions"
    )


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def describe_batch(batch: Any) -> str:
    """What a refused batch is, in the terms of the fix: float or one-hot targets, one sample
    of a Dataset instead of a batch, or the types it holds."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        y = batch[1]
        if isinstance(y, torch.Tensor) and y.dim() == 0:
            return (
                f"one sample ({_kind(y)} as its target): data= yields samples, not batches "
                "(a Dataset such as TensorDataset? wrap it in torch.utils.data.DataLoader)"
            )
        if isinstance(y, torch.Tensor) and y.is_floating_point() and y.dim() == 1:
            return f"targets as {_kind(y)} (class indices? pass y.long())"
        if isinstance(y, torch.Tensor) and y.dim() == 2:
            return f"targets as {_kind(y)} (one-hot or probabilities? pass y.argmax(1))"
    if isinstance(batch, (tuple, list)):
        items = ", ".join(_kind(v) for v in batch[:3]) + (", ..." if len(batch) > 3 else "")
        return f"a {type(batch).__name__} of {len(batch)} item(s) ({items})"
    return _kind(batch)


def check_labels(y: torch.Tensor, num_classes: int | None) -> np.ndarray:
    """Targets as a numpy array, refused when they are not class indices of this model
    (``num_classes`` None: the output is not logits, any label >= 0 is a class)."""
    labels = y.detach().cpu().numpy()
    if labels.size and labels.min() < 0 and num_classes is None:
        raise CalibrationError(
            f"targets must be class indices >= 0; got values from {labels.min()} to {labels.max()}"
        )
    if (
        labels.size
        and num_classes is not None
        and (labels.min() < 0 or labels.max() >= num_classes)
    ):
        raise CalibrationError(
            f"targets must be class indices in [0, {num_classes}) for a model with "
            f"{num_classes} outputs; got values from {labels.min()} to {labels.max()}"
        )
    return labels


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
