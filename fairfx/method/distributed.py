"""torch.distributed coordination of calibration: which shard a rank scores, and merging.

Each rank scores its own share of the calibration data into its own state; the ranks then agree
on one state codec (so that their states merge) and gather and merge the states in rank order,
so every rank finalizes the same scores. Without an initialized process group there is one
shard and nothing to agree on.
"""

from __future__ import annotations

from typing import Any

import torch

from .collective import collective
from .memory import AUTO_ORDER
from .stats import CalibrationState


def shard() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def agreed_codec(mine: str) -> str:
    """The least precise of the ranks' ``"auto"`` picks, so that every rank's state merges."""
    pick = torch.tensor([AUTO_ORDER.index(mine)])
    op = torch.distributed.ReduceOp.MAX
    collective("state codec agreement", lambda: torch.distributed.all_reduce(pick, op=op))
    return AUTO_ORDER[int(pick)]


def gather_states(state: CalibrationState, world: int) -> CalibrationState:
    """Every rank's state, gathered with torch.distributed and merged in rank order."""
    states: list[Any] = [None] * world
    collective("state gathering", lambda: torch.distributed.all_gather_object(states, state))
    merged = states[0]
    for other in states[1:]:
        merged = merged.merge(other)
    return merged
