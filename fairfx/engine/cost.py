"""Cost of a plan (parameters and multiply-accumulates) without building the pruned weights.

The plan is applied to a copy of the captured graph whose tensors live on the meta device, then
the copy runs under ``torch.utils.flop_counter`` on meta inputs: the count comes from the same
rewrite that produces the real model, so the two cannot disagree, and it costs no arithmetic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .capture import _share_tensors
from .groups import ChannelGraph
from .rewrite import apply_edits, count_params


@dataclass(frozen=True)
class Cost:
    """Parameters and MACs (multiply-accumulates, what pruning papers call FLOPs)."""

    params: int
    macs: int


def _macs(module: torch.nn.Module, inputs: tuple[Any, ...]) -> int:
    meta_inputs = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*meta_inputs)
    return counter.get_total_flops() // 2


def model_cost(graph: ChannelGraph) -> Cost:
    """Cost of the unpruned captured model."""
    return plan_cost(graph, {})


def plan_cost(graph: ChannelGraph, units: Mapping[int, Sequence[int]]) -> Cost:
    """Cost of the model pruned to ``{group id: kept units}``, computed on the meta device."""
    gm = graph.analysis.gm
    meta = copy.deepcopy(gm, _share_tensors(gm, "meta"))
    if units:
        apply_edits(graph, meta, graph.kept_slots(units))
    meta.eval()
    return Cost(count_params(meta), _macs(meta, graph.analysis.captured.inputs))


__all__ = ["Cost", "model_cost", "plan_cost"]
