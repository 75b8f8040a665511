"""One collective across torch.distributed ranks, with a one-line error when a peer is gone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import CalibrationError


def collective(name: str, run: Callable[[], Any]) -> Any:
    """Run one collective; a peer that died (killed, out of memory, its own error) makes gloo
    and NCCL raise a RuntimeError with a C++ trace, turned here into one line saying so."""
    try:
        return run()
    except RuntimeError as exc:
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CalibrationError(
            f"rank {_rank()}: the {name} across ranks failed ({text}); another rank stopped "
            "(killed, out of memory or an error of its own): see its log, then start all ranks "
            "again"
        ) from None


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
