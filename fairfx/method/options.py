"""Option checks for scoring (:func:`fairfx.analyze`), run before any capture or scoring pass.

A typo such as ``observe="post-act"`` must fail in milliseconds with one line naming the valid
values, not after minutes of calibration. Planning options are checked by
:class:`~fairfx.method.plan_options.PlanOptions` itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CalibrationError, PlanError
from .codec import check_codec
from .plan_options import check_choice
from .scoring import OBSERVE


def check_analyze_options(
    *,
    samples_per_class: Any = 32,
    max_classes: Any = 100,
    projections: Any = 128,
    observe: Any = "consumer",
    loss_fn: Any = None,
    state_dtype: Any = "auto",
    batch_size: Any = None,
    **others: Any,
) -> None:
    """The options of :func:`analyze`, checked before the model is even traced."""
    if state_dtype != "auto":
        check_codec(state_dtype)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise CalibrationError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    for name, value, least in (
        ("samples_per_class", samples_per_class, 1),
        ("max_classes", max_classes, 2),
        ("projections", projections, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise CalibrationError(f"{name} must be an integer >= {least}, got {value!r}")
    try:
        check_choice("observe", observe, OBSERVE)
    except PlanError as exc:
        raise CalibrationError(str(exc)) from None
    if loss_fn is not None and not callable(loss_fn):
        raise CalibrationError(
            f"loss_fn must be callable (output, targets) -> loss, got {loss_fn!r}"
        )
