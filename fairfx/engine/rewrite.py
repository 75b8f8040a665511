"""Rewrite: apply a plan to a copy of the captured graph and return a smaller GraphModule."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import FairfxError, PlanError
from .capture import record_shapes
from .edits import ArgEdit
from .groups import ChannelGraph, build
from .slots import Layout


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_nonempty(graph: ChannelGraph, kept_slot: np.ndarray) -> None:
    """Refuse a plan that would leave some tensor with no channels at all."""
    empty = graph.empty_tensors(kept_slot)
    if empty:
        raise PlanError(
            f"the plan removes every channel of node {empty[0][0]!r}; keep at least one channel "
            "of each tensor (e.g. of each branch that is concatenated or split)"
        )


def apply_plan(graph: ChannelGraph, units: Mapping[int, Sequence[int]]) -> fx.GraphModule:
    """Rewrite ``graph``'s captured model for ``{group id: kept unit indices}``."""
    kept_slot = graph.kept_slots(units)
    check_nonempty(graph, kept_slot)
    a = graph.analysis
    gm = apply_edits(graph, copy.deepcopy(a.gm), kept_slot)
    _check_shapes(graph, gm, kept_slot)
    keep = graph.keep_from_units(units)
    gm.meta["fairfx"] = {
        "keep": keep,
        "units": {int(g): np.asarray(u).tolist() for g, u in units.items()},
        "params_before": count_params(a.gm),
        "params_after": count_params(gm),
    }
    return gm


def apply_edits(graph: ChannelGraph, gm: fx.GraphModule, kept_slot: np.ndarray) -> fx.GraphModule:
    """Apply every recorded edit to ``gm`` (a copy of the captured graph) in place."""
    nodes = {n.name: n for n in gm.graph.nodes}
    done: set[tuple[str, str]] = set()
    for edit in graph.analysis.edits:
        if isinstance(edit, ArgEdit):
            edit.apply(gm, kept_slot, nodes)
            continue
        if edit.key() in done:
            continue
        done.add(edit.key())
        edit.apply(gm, kept_slot)
    gm.graph.lint()
    gm.recompile()
    return gm


def _check_shapes(graph: ChannelGraph, gm: fx.GraphModule, kept_slot: np.ndarray) -> None:
    """Every channel axis must have exactly the kept count: catches a shape constant we missed."""
    try:
        record_shapes(gm, graph.analysis.captured.inputs)
    except Exception as exc:
        raise FairfxError(f"the pruned graph does not run: {exc}") from exc
    for node in gm.graph.nodes:
        lay = graph.analysis.layouts.get(node.name)
        shape = node.meta.get("fairfx_shape")
        if isinstance(lay, Layout) and shape is not None:
            want = int(kept_slot[lay.slots].sum())
            if shape[lay.dim] != want:
                raise FairfxError(
                    f"internal error: node {node.name!r} has {shape[lay.dim]} channels on axis "
                    f"{lay.dim} after rewriting, expected {want}; please report this model"
                )


def prune(
    model: torch.nn.Module, example_input: Any, keep: Mapping[str, Sequence[int]]
) -> fx.GraphModule:
    """Physically remove channels and return a new, smaller ``torch.fx.GraphModule``.

    Args:
        model: the model (or a GraphModule); it is never modified.
        example_input: a tensor or tuple of positional inputs used to trace and check shapes.
        keep: ``{producer qualified name: output-channel indices to keep}``. Naming any producer
            of a channel group prunes the whole group; names of one group must agree.

    Raises:
        PlanError: unknown names, empty or out-of-range indices, disagreeing lists, a split unit.
    """
    if not keep:
        raise PlanError("keep is empty: name at least one producer (see fairfx.channel_groups)")
    graph = build(model, example_input)
    return apply_plan(graph, graph.units_from_keep(keep))
