"""Cost of a plan (parameters and multiply-accumulates) without building the pruned weights.

The plan is applied to a copy of the captured graph whose tensors live on the meta device, then
the copy runs under ``torch.utils.flop_counter`` on meta inputs: the count comes from the same
rewrite that produces the real model, so the two cannot disagree, and it costs no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .channel_pass import ChannelPass
from .rewrite import count_params, rebuild
from .shapes import ShapeInterpreter


@dataclass(frozen=True)
class Cost:
    """Parameters and MACs (multiply-accumulates, what pruning papers call FLOPs)."""

    params: int
    macs: int


@torch.no_grad()
def slot_cost(a: ChannelPass, kept_slot: np.ndarray) -> Cost:
    """Cost of the captured model pruned to a slot keep-mask, computed on the meta device.

    Graphs that cannot run on meta (a ``torch.export`` capture makes ``arange(...,
    device='cpu')``) are counted on fake tensors over the pruned real weights.
    """
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: not at import time

    if a.gm.meta.get("fairfx_shapes", "meta") != "meta":
        return _fake_cost(a, kept_slot)
    gm, _ = rebuild(a, kept_slot, tensors="meta")
    gm.eval()
    inputs = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in a.captured.inputs]
    with FlopCounterMode(display=False) as counter:
        ShapeInterpreter(gm, meta=True, macs=True).run(*inputs)
    return Cost(count_params(gm), counter.get_total_flops() // 2)


def _fake_cost(a: ChannelPass, kept_slot: np.ndarray) -> Cost:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    gm, _ = rebuild(a, kept_slot, tensors="shared")
    gm.eval()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    inputs = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in a.captured.inputs]
    with mode, FlopCounterMode(display=False) as counter:
        ShapeInterpreter(gm).run(*inputs)
    return Cost(count_params(gm), counter.get_total_flops() // 2)


__all__ = ["Cost", "slot_cost"]
