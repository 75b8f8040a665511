"""Which channel groups a layer name selects: for ``ignored_layers`` (kept exactly) and
``layer_ratios`` (a fixed fraction removed).

Names are qualified module names (a name also covers the modules under it); modules are matched
by their parameters, which the captured graph shares with the user's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import PlanError


def check_module_names(model: torch.nn.Module, names: Iterable[str], option: str) -> None:
    """Refuse a name that is no module of ``model`` (a name covers the modules under it), in one
    line naming a few that are. The CLI calls it on the user's model before any data is read;
    planning, on the captured one."""
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        if not any(_hit(k, [name]) for k in known):
            layers = [n for n, m in model.named_modules() if n and m._parameters]
            raise PlanError(
                f"{option}: {name!r} is not a module of the model; give qualified names such "
                f"as {', '.join(layers[:4])}"
            )


def _module_names(graph: Any, item: Any, option: str) -> set[str]:
    """The qualified names ``item`` (a name or a module) stands for in the captured model."""
    gm = graph.captured
    if isinstance(item, str):
        check_module_names(gm, [item], option)
        return {item}
    if isinstance(item, torch.nn.Module):
        ptrs = {p.data_ptr() for p in item.parameters()}
        owners = {n.rpartition(".")[0] for n, p in gm.named_parameters() if p.data_ptr() in ptrs}
        if not ptrs or not owners:
            raise PlanError(
                f"{option}: the {type(item).__name__} given has no parameters in this model; "
                "pass submodules of the model or their qualified names"
            )
        return owners
    raise PlanError(f"{option} takes module names or modules, got {type(item).__name__}")


def _hit(layer: str, names: Iterable[str]) -> bool:
    return any(layer == n or layer.startswith(n + ".") for n in names)


def ignored_groups(graph: Any, ignored: Any) -> set[int]:
    """Groups that touch an ignored layer (as producer or consumer): they stay whole, so the
    layer's weights stay exactly as they were."""
    if not ignored:
        return set()
    if isinstance(ignored, (str, torch.nn.Module)):
        ignored = [ignored]
    names: set[str] = set()
    for item in ignored:
        names |= _module_names(graph, item, "ignored_layers")
    return {g.id for g in graph.groups if any(_hit(x, names) for x in (*g.producers, *g.consumers))}


def layer_ratio_groups(graph: Any, ratios: Mapping[str, float] | None) -> dict[int, float]:
    """``{group id: fraction removed}`` for the groups a named layer produces. Two names that
    select one group with different fractions are refused (one group has one width)."""
    out: dict[int, float] = {}
    origin: dict[int, str] = {}
    for name, ratio in (ratios or {}).items():
        names = _module_names(graph, name, "layer_ratios")
        hit = [g for g in graph.groups if any(_hit(p, names) for p in g.producers)]
        if not hit:
            raise PlanError(
                f"layer_ratios: {name!r} produces no channel group (it may only read channels); "
                "name a layer whose output channels are pruned (see fairfx.channel_groups)"
            )
        for g in hit:
            if not g.prunable:
                raise PlanError(f"layer_ratios: {name!r} cannot be pruned: the group {g.reason}")
            if g.id in out and out[g.id] != ratio:
                raise PlanError(
                    f"layer_ratios: {name!r} and {origin[g.id]!r} share one channel group "
                    f"(coupled channels) but ask for {ratio} and {out[g.id]}; give one fraction"
                )
            out[g.id], origin[g.id] = float(ratio), name
    return out
