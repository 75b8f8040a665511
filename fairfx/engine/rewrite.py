"""Rewrite: build the smaller GraphModule of a plan, holding only the kept slices of each weight.

The captured graph is copied as structure only (its tensors are shared, not copied); every edit
then builds the smaller module or parameter from the kept slices, and every tensor the plan
leaves whole gets one copy of its own. So the rewrite copies each kept weight once, never the
whole model first, and the result shares no storage with the user's model.

The rewrite knows every new size, so its check needs no shape pass over the pruned graph: each
rebuilt module and every function or method call is evaluated once on meta tensors fed the
shapes the plan predicts for its inputs, and must give the shape the plan predicts for its
output (every channel axis at its kept count). Modules the plan leaves as they are take the
predicted shapes without running.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import FairfxError, first_line
from .capture import copy_structure, tensors_of
from .channel_pass import ChannelPass
from .edits import EditSite, scratch_buffers
from .shapes import ShapeInterpreter, meta_twin
from .slots import Layout


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rewrite(a: ChannelPass, kept_slot: np.ndarray) -> fx.GraphModule:
    """The pruned GraphModule for a slot keep-mask, its sizes checked (see the module docstring)."""
    gm, changed = rebuild(a, kept_slot)
    check_sizes(a, gm, kept_slot, changed)
    return gm


def rebuild(
    a: ChannelPass, kept_slot: np.ndarray, *, tensors: str = "own"
) -> tuple[fx.GraphModule, set[str]]:
    """The pruned copy of the captured graph and the names of the modules and nodes it changed.

    The copy is structure only (:func:`~fairfx.engine.capture.copy_structure`): its modules are
    new, its tensors the captured ones. The edits then build every smaller tensor from the kept
    slices, and with ``tensors="own"`` each tensor still shared with the original gets one copy
    of its own, so the result owns its storage. ``"meta"`` moves every tensor to the meta device
    first (the cost model: no data is copied at all); ``"shared"`` leaves the unpruned tensors
    shared (a throwaway copy that is only run).
    """
    graph = copy.deepcopy(a.gm.graph)
    nodes = {n.name: n for n in graph.nodes}
    site = EditSite(nodes)
    changed = {e.apply(site, kept_slot) for e in a.edits if e.phase == "graph"} - {None}
    if changed:
        graph.lint()
    gm = fx.GraphModule(a.gm, graph, type(a.gm).__name__)
    _privatize(a.gm, gm)
    originals = {id(t) for t in tensors_of(a.gm)}
    if tensors == "meta":
        _replace_tensors(gm, originals, lambda t: meta_twin(t, {}))
    site.gm = gm
    done: set[tuple[str, str]] = set()
    with scratch_buffers():
        for edit in a.edits:
            if edit.phase != "tensors" or edit.key() in done:
                continue
            done.add(edit.key())
            name = edit.apply(site, kept_slot)
            if name is not None:
                changed.add(name)
    if tensors == "own":
        _replace_tensors(gm, originals, copy.deepcopy)  # a Parameter stays one, flags included
    return gm, changed


def _privatize(old: fx.GraphModule, gm: fx.GraphModule) -> None:
    """``gm`` was built from ``old``'s modules: give it copies, with ``old``'s train flags.

    One walk down both trees at once, writing the module dicts directly: ``setattr`` and
    ``get_submodule`` per module cost more than the copies (EfficientNet-B0 has 350 modules).
    """
    memo: dict[int, torch.nn.Module] = {}
    theirs = {id(m) for m in old.modules()}
    stack: list[tuple[torch.nn.Module, torch.nn.Module]] = [(gm, old)]
    while stack:
        new, ref = stack.pop()
        new.__dict__["training"] = ref.training  # containers fx made start in train mode
        for key, child in new._modules.items():
            if child is None:
                continue
            if id(child) in theirs:  # copied with its subtree; flags come along
                new._modules[key] = copy_structure(child, memo)
            else:
                stack.append((child, ref._modules[key]))


def _replace_tensors(gm: fx.GraphModule, originals: set[int], make) -> None:
    """Replace every tensor of ``gm`` that is one of ``originals`` by ``make(t)`` (ties kept)."""
    made: dict[int, torch.Tensor] = {}

    def new(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            made[id(t)] = make(t)
        return made[id(t)]

    for m in gm.modules():
        for store in (m._parameters, m._buffers):
            for k, t in store.items():
                if t is not None and id(t) in originals:
                    store[k] = new(t)
        for k, v in list(vars(m).items()):
            if isinstance(v, torch.Tensor) and id(v) in originals:
                m.__dict__[k] = new(v)


def _predicted(node: fx.Node, lay: Any, kept_slot: np.ndarray) -> Any:
    """The shape (or tuple of shapes) the plan gives ``node``: channel axes at their kept count."""
    shape = node.meta.get("fairfx_shape")
    if isinstance(lay, Layout) and shape is not None:
        out = list(shape)
        out[lay.dim] = int(kept_slot[lay.slots].sum())
        return tuple(out)
    if isinstance(lay, tuple) and isinstance(shape, tuple) and len(lay) == len(shape):
        return tuple(_predicted_item(s, la, kept_slot) for s, la in zip(shape, lay, strict=True))
    return shape


def _predicted_item(shape: Any, lay: Any, kept_slot: np.ndarray) -> Any:
    if isinstance(lay, Layout) and isinstance(shape, tuple):
        out = list(shape)
        out[lay.dim] = int(kept_slot[lay.slots].sum())
        return tuple(out)
    return shape


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def _stand_in(want: Any, dtype: torch.dtype) -> Any:
    """Meta tensors of the predicted shapes, for a node the check does not run."""
    if _is_shape(want):
        return torch.empty(want, dtype=dtype, device="meta")
    if isinstance(want, tuple) and all(s is None or _is_shape(s) for s in want):
        return tuple(None if s is None else _stand_in(s, dtype) for s in want)
    return NotImplemented


def _shapes_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in value)
    return None


class _SizeCheck(ShapeInterpreter):
    """Runs what the rewrite changed on meta tensors; the rest takes the plan's shapes."""

    def __init__(
        self,
        a: ChannelPass,
        gm: fx.GraphModule,
        kept_slot: np.ndarray,
        changed: set[str],
        *,
        meta: bool,
    ) -> None:
        super().__init__(gm, meta=meta)
        self.extra_traceback = False  # one-line errors: no fx trailer
        self.changed = changed
        self.originals = {n.name: n for n in a.gm.graph.nodes}
        self.layouts = a.layouts
        self.kept_slot = kept_slot

    def run_node(self, n: fx.Node) -> Any:
        old = self.originals.get(n.name)
        lay = self.layouts.get(n.name)
        want = None if old is None else _predicted(old, lay, self.kept_slot)
        if self.meta and old is not None and n.op == "call_module" and n.target not in self.changed:
            stand_in = _stand_in(want, old.meta.get("fairfx_dtype") or torch.float32)
            if stand_in is not NotImplemented:
                return stand_in
        try:
            result = super().run_node(n)
        except Exception as exc:
            first = first_line(exc)
            raise FairfxError(
                "internal error (a fairfx bug): the pruned graph does not run at node "
                f"{n.name!r} ({self._what(n)}): {type(exc).__name__}: {first}. {_NOT_YOURS}"
            ) from exc
        if lay is not None and want is not None and _shapes_of(result) != want:
            raise FairfxError(
                f"internal error (a fairfx bug): after rewriting, node {n.name!r} "
                f"({self._what(n)}) has shape {_shapes_of(result)}, expected {want} (every "
                f"channel axis at its kept count). {_NOT_YOURS}"
            )
        return result

    def _what(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"{type(self.module.get_submodule(n.target)).__name__} module '{n.target}'"
        return f"{n.op} {getattr(n.target, '__name__', n.target)}"


_NOT_YOURS = (
    "The rewrite is wrong, not your model or example_input: please report this model and plan "
    "to the fairfx developers"
)


@torch.no_grad()
def check_sizes(
    a: ChannelPass, gm: fx.GraphModule, kept_slot: np.ndarray, changed: set[str]
) -> None:
    """Every channel axis must have exactly the kept count: catches a wrong or missed edit.

    Graphs whose shapes were recorded on meta tensors are checked there (rebuilt parts only);
    the rare graph that needed fake or real tensors at capture runs whole on its example input.
    """
    meta = a.gm.meta.get("fairfx_shapes", "meta") == "meta"
    inputs = a.captured.inputs
    if meta:
        inputs = tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs)
    if meta:  # meta twins run in eval mode: the module's own mode need not change
        _SizeCheck(a, gm, kept_slot, changed, meta=True).run(*inputs)
        return
    was = gm.training
    gm.eval()
    try:
        _SizeCheck(a, gm, kept_slot, changed, meta=False).run(*inputs)
    finally:
        gm.train(was)
