"""Command-line values that need parsing: factory arguments, normalization, the held-out split.

Each parser turns what the user typed into Python values or a :class:`UserError` naming the fix,
before any model is built or any image is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .cli_inputs import UserError

#: torchvision's ImageNet statistics, the usual normalization of pretrained ImageFolder models.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def parse_model_args(tokens: Sequence[str] | None) -> dict[str, Any]:
    """``--model-args image_size=64 dropout=0.1`` or ``--model-args '{"image_size": 64}'``.

    Values are read as JSON (``64`` an int, ``0.1`` a float, ``true`` a bool, ``[1, 2]`` a list)
    and kept as strings when they are not JSON (``norm=batch``)."""
    if not tokens:
        return {}
    if len(tokens) == 1 and tokens[0].lstrip().startswith("{"):
        try:
            value = json.loads(tokens[0])
        except json.JSONDecodeError as exc:
            raise UserError(f"--model-args {tokens[0]!r} is not a JSON object: {exc}") from exc
        if not isinstance(value, dict):
            raise UserError(f"--model-args {tokens[0]!r} must be a JSON object")
        return value
    out: dict[str, Any] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(
                f"--model-args takes KEY=VALUE pairs (e.g. image_size=64) or one JSON object; "
                f"got {token!r}"
            )
        if key in out:
            raise UserError(f"--model-args gives {key} twice")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def parse_normalize(text: str | None, channels: int) -> tuple[tuple[float, ...], ...] | None:
    """``none``, ``imagenet`` or ``MEAN,MEAN,MEAN/STD,STD,STD`` (one value per channel, or one
    for all) -> ``(mean, std)`` or None."""
    if text is None or text == "none":
        return None
    if text == "imagenet":
        if channels != 3:
            raise UserError(
                f"--normalize imagenet is for 3 channels, not --channels {channels}; give "
                "MEAN/STD instead (e.g. 0.5/0.25)"
            )
        return IMAGENET
    fix = "--normalize takes none, imagenet or MEAN/STD with one value per channel (e.g. "
    fix += "0.485,0.456,0.406/0.229,0.224,0.225, or 0.5/0.25 for every channel)"
    mean_text, sep, std_text = text.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise UserError(f"{fix}; got {text!r}") from None
    if not sep or len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise UserError(f"{fix}; got {text!r} for {channels} channel(s)")
    if not all(s > 0 for s in std):
        raise UserError(f"--normalize: every std must be positive, got {text!r}")
    return tuple(mean * (channels // len(mean))), tuple(std * (channels // len(std)))


def check_fraction(value: float) -> float:
    if not 0 <= value < 1:
        raise UserError(f"--val-fraction is the share held out, in [0, 1); got {value:g}")
    return value


def dataset_labels(ds: torch.utils.data.Dataset) -> np.ndarray:
    """Class labels of every sample without decoding an image (ImageFolder's ``targets``)."""
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets)
    return ds.tensors[1].numpy()


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic stratified split: ``round(fraction * n_c)`` samples of each class ``c``
    (at least one when ``fraction > 0``, never all of them) go to the validation part, chosen by
    a permutation seeded with ``seed``; the same data and seed give the same split."""
    if fraction == 0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    if not val:
        raise UserError(
            "--val-fraction leaves no validation sample (every class has a single sample); "
            "give more data or --val-fraction 0"
        )
    return sorted(train), sorted(val)
