"""The correctness oracle: masked execution of the original graph.

For a plan, the pruned graph must compute what the original computes when every pruned channel is
forced to zero wherever it is carried. For channel-separable ops this is exact. LayerNorm over the
channel axis is the exception: removing a channel changes the statistics, so the oracle evaluates
such a norm over the kept channels only (renormalized masking) and reports the group as not
provable by zero-masking.

Outputs alone can prove nothing: a freshly built classifier with a zero-initialised head
(torchvision's ViT) outputs zeros whatever its weights hold. So the oracle also compares every
intermediate tensor that carries channels, at the kept channels, node by node (the rewrite keeps
node names), and says when an output is the same for every example of the batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..errors import FairfxError
from .group_graph import GroupGraph, build
from .rewrite import rewrite
from .slots import Layout


def _mask(value: Any, lay: Any, kept_slot: np.ndarray) -> Any:
    if isinstance(lay, Layout) and isinstance(value, torch.Tensor):
        keep = torch.as_tensor(kept_slot[lay.slots], dtype=torch.bool, device=value.device)
        shape = [1] * value.dim()
        shape[lay.dim] = -1
        # Filled, not multiplied: a pruned channel divided by a pruned channel is 0/0, and
        # NaN times zero would carry the NaN into every kept channel downstream.
        return value.masked_fill(~keep.view(shape), 0)
    if isinstance(lay, tuple) and isinstance(value, (tuple, list)):
        return type(value)(_mask(v, lv, kept_slot) for v, lv in zip(value, lay, strict=False))
    return value


class MaskedInterpreter(fx.Interpreter):
    """Runs the original graph with pruned channels zeroed at every tensor that carries them.

    With ``compare``, each tensor with channels is compared with the pruned graph's tensor of
    the same node at the kept channels as it is computed.
    """

    def __init__(
        self, graph: GroupGraph, kept_slot: np.ndarray, compare: _Compare | None = None
    ) -> None:
        super().__init__(graph.channel_pass.gm)
        self.layouts = graph.channel_pass.layouts
        self.masked = graph.channel_pass.masked
        self.kept_slot = kept_slot
        self.compare = compare or _Compare({}, 0.0)

    def run_node(self, n: fx.Node) -> Any:
        special = self.masked.get(n.name)
        if special is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            lay = self.layouts[n.args[0].name]
            result = special(self.module, n, args, kwargs, self.kept_slot[lay.slots])
        else:
            result = super().run_node(n)
        lay = self.layouts.get(n.name)
        result = _mask(result, lay, self.kept_slot)
        if isinstance(lay, Layout) and isinstance(result, torch.Tensor):
            self.compare.check(n.name, result, lay.dim, self.kept_slot[lay.slots])
        return result


class _Compare:
    """The worst disagreement between masked-original and pruned intermediates at kept channels.

    Each tensor gets its own tolerance, ``rtol`` times its largest reference magnitude, so a
    small activation deep in the network is held to its own scale, not the output's."""

    def __init__(self, pruned: dict[str, torch.Tensor], rtol: float) -> None:
        self.pruned, self.rtol = pruned, rtol
        self.count, self.failed = 0, ""

    def check(self, name: str, ref: torch.Tensor, dim: int, keep: np.ndarray) -> None:
        got = self.pruned.pop(name, None)
        if got is None or self.failed:
            return
        self.count += 1
        idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long, device=ref.device)
        ref = ref.index_select(dim, idx)
        if ref.shape != got.shape:
            self.failed = f"node '{name}' has shape {tuple(got.shape)}, {tuple(ref.shape)} kept"
            return
        if not ref.numel():
            return
        diff = float((ref.float() - got.float()).abs().max())
        tol = self.rtol * float(ref.float().abs().max())
        if not diff <= tol:  # NaN fails too
            self.failed = (
                f"node '{name}' differs at kept channels by {diff:.3g} (tolerance {tol:.3g})"
            )


class _Record(fx.Interpreter):
    """Runs a graph, keeping the tensor of every node in ``names`` (pruned node -> the original
    node it computes) under the original node's name."""

    def __init__(self, gm: fx.GraphModule, names: dict[str, str]) -> None:
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.names and isinstance(result, torch.Tensor):
            # a clone: a later in-place op (relu_) must not reach it
            self.values[self.names[n.name]] = result.clone()
        return result


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`."""

    passed: bool
    max_abs_diff: float
    tolerance: float
    outputs_compared: int
    inexact_groups: list[str] = field(default_factory=list)
    intermediates_compared: int = 0
    intermediate_failure: str = ""
    silent_outputs: list[int] = field(default_factory=list)
    changed_since_pruning: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        text = (
            f"{verdict}: max |pruned - masked original| = {self.max_abs_diff:.3g} "
            f"(tolerance {self.tolerance:.3g}) over {self.outputs_compared} output tensor(s) "
            f"and {self.intermediates_compared} intermediate tensor(s) at kept channels"
        )
        if self.intermediate_failure:
            text += f"; {self.intermediate_failure}"
        if self.silent_outputs:
            text += (
                f"; output(s) {', '.join(map(str, self.silent_outputs))} carry no signal (the "
                "same for every example, e.g. a zero-initialised head): the intermediates "
                "carry the proof"
            )
        if self.inexact_groups:
            text += (
                "; not provable by zero-masking (checked with renormalized LayerNorm): "
                + "; ".join(self.inexact_groups)
            )
        changed = self.changed_since_pruning
        if changed:
            text += (
                f"; the pruned model's weights changed since pruning ({len(changed)} tensor(s), "
                f"e.g. {changed[0]!r}: fine-tuned?), so it no longer "
                "equals the masked original; verify right after pruning (fairfx.compress records "
                "that result in meta['fairfx']['verify'])"
            )
        return text


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    return []


@torch.no_grad()
def masked_output(
    graph: GroupGraph,
    kept_slot: np.ndarray,
    inputs: tuple[Any, ...],
    compare: _Compare | None = None,
) -> Any:
    """The masked original's output; ``compare`` checks intermediates along the way."""
    gm = graph.channel_pass.gm
    was = gm.training
    gm.eval()
    try:
        return MaskedInterpreter(graph, kept_slot, compare).run(*inputs)
    finally:
        gm.train(was)


def _aligned(original: fx.Graph, pruned: fx.Graph) -> dict[str, str]:
    """Pruned node -> the original node it computes, for nodes that are the same computation:
    same op and target, inputs that are themselves aligned. The rewrite keeps the names of the
    capture it was made from, but a fresh capture may name nodes differently (``torch.export``
    of T5 numbers its ``mul`` nodes differently from one capture to the next), so a name alone
    proves nothing. A node the rewrite inserted after one of the original's, taking over all its
    uses (the rescale after a mean or RMSNorm over pruned channels), stands for that node; the
    node before it is then not compared (its value is not the original's until rescaled)."""
    ref = {n.name: n for n in original.nodes}
    takeover: dict[str, str] = {}
    for n in pruned.nodes:
        first = n.args[0] if n.args else None
        new = n.name not in ref and isinstance(first, fx.Node) and first.name in ref
        if new and list(first.users) == [n]:
            takeover[n.name] = first.name
    mine = {n.name: n for n in pruned.nodes}
    same: dict[str, str] = {}
    for n in pruned.nodes:
        r = ref.get(takeover.get(n.name, n.name))
        if r is None:
            continue
        node = mine[r.name] if n.name in takeover else n  # compare what the original computes
        inputs = [same.get(a.name) for a in node.all_input_nodes]
        if (r.op, r.target) == (node.op, node.target) and inputs == [
            a.name for a in r.all_input_nodes
        ]:
            same[n.name] = r.name
    for n in takeover.values():
        same.pop(n, None)
    return same


def _silent(t: torch.Tensor) -> bool:
    """An output that is the same for every example of the batch (or all zero) proves nothing."""
    if not t.numel():
        return False
    if t.dim() and t.shape[0] > 1:
        return bool((t == t[:1]).all())
    return not bool(t.any())


_RECALIBRATED = "fairfx_bn_before_recalibration"  # written by fairfx.method.recalibrate


@torch.no_grad()
def verify(
    model: torch.nn.Module, pruned: fx.GraphModule, example_input: Any, *, rtol: float = 1e-4
) -> VerifyReport:
    """Check ``pruned`` against masked execution of ``model`` on ``example_input`` (eval mode).

    The plan is read from ``pruned.meta["fairfx"]`` and re-derived on a fresh analysis of the
    original model, so the check does not trust the rewrite's own bookkeeping. The tolerance is
    ``rtol`` times the largest magnitude of the reference output (random-init networks can have
    outputs of 1e-14, so an absolute tolerance would prove nothing).
    """
    info = getattr(pruned, "meta", {}).get("fairfx")
    if info is None:
        raise FairfxError(
            "pruned has no fairfx plan in .meta['fairfx']; pass a module returned by "
            "fairfx.prune or fairfx.compress"
        )
    graph = build(model, example_input)
    units = graph.units_from_keep(info["keep"]) if info["keep"] else {}
    kept_slot = graph.kept_slots(units)
    inputs = graph.channel_pass.captured.inputs
    work = copy.deepcopy(pruned).eval()
    # After fairfx.recalibrate the BatchNorm statistics differ from the original's on purpose;
    # the rewrite is proved with the statistics it produced (kept in meta by recalibrate).
    for name, buffers in getattr(pruned, "meta", {}).get(_RECALIBRATED, {}).items():
        for key, value in buffers.items():
            work.get_submodule(name).get_buffer(key).copy_(value)
    laid = {k for k, v in graph.channel_pass.layouts.items() if isinstance(v, Layout)}
    aligned = _aligned(graph.channel_pass.gm.graph, work.graph)
    recorder = _Record(work, {p: o for p, o in aligned.items() if o in laid})
    got = flat_tensors(recorder.run(*inputs))
    compare = _Compare(recorder.values, rtol)
    reference = flat_tensors(masked_output(graph, kept_slot, inputs, compare))
    if len(got) != len(reference):
        return VerifyReport(False, float("inf"), 0.0, 0)
    diff, scale = 0.0, 0.0
    for r, g in zip(reference, got, strict=True):
        if r.shape != g.shape:
            return VerifyReport(False, float("inf"), 0.0, len(reference))
        if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(g).all())):
            return VerifyReport(False, float("nan"), 0.0, len(reference))  # NaN proves nothing
        diff = max(diff, float((r.float() - g.float()).abs().max()) if r.numel() else 0.0)
        scale = max(scale, float(r.float().abs().max()) if r.numel() else 0.0)
    tol = rtol * scale
    inexact = [
        f"group {g.id} ({g.producers[0]}): {g.note}"
        for g in graph.groups
        if not g.exact and g.id in units and len(units[g.id]) < g.size
    ]
    silent = [i for i, r in enumerate(reference) if _silent(r)]
    passed = diff <= tol and not compare.failed
    recal = getattr(pruned, "meta", {}).get(_RECALIBRATED, {})
    skip = {f"{name}.{key}" for name, buffers in recal.items() for key in buffers}
    changed = [] if passed else _changed_since_pruning(graph, kept_slot, work, skip)
    return VerifyReport(
        passed,
        diff,
        tol,
        len(reference),
        inexact,
        compare.count,
        compare.failed,
        silent,
        changed,
    )


def _changed_since_pruning(
    graph: GroupGraph, kept_slot: np.ndarray, pruned: torch.nn.Module, skip: set[str]
) -> list[str]:
    """Tensors of ``pruned`` that differ from a fresh rewrite of the original with the same
    plan: what training or editing after pruning changed (a failed check then says why).
    ``skip``: buffers fairfx.recalibrate set on purpose."""
    fresh = rewrite(graph.channel_pass, kept_slot).state_dict()
    now = pruned.state_dict()
    return [
        k
        for k, v in now.items()
        if k in fresh
        and k not in skip
        and v.shape == fresh[k].shape
        and v.is_floating_point()
        and not torch.equal(v, fresh[k])
    ]
