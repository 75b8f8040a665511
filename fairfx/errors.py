"""Exceptions raised by fairfx.

Every error a user can trigger names the problem and the fix, so the classes are few and the
messages carry the detail.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none):
    other libraries' errors can run to dozens of lines, and fairfx reports one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FairfxError(Exception):
    """Base class for every error fairfx raises on purpose."""


class CaptureError(FairfxError):
    """The model could not be traced into a torch.fx graph."""


class PlanError(FairfxError, ValueError):
    """A pruning plan (keep indices, alpha, budget) is invalid for this model."""


class CalibrationError(FairfxError, ValueError):
    """Calibration data cannot be used to score channels."""
