"""A latency table measured on this machine: what each layer costs at the widths a plan can give it.

Measuring the whole model once per candidate width would cost minutes; the table instead times
every conv and linear layer of the captured graph (with the per-channel modules right after it:
BatchNorm, activation) as an isolated micro-benchmark, on an input of the shape it sees in the
model at the requested batch size, at a few output widths (input full) and a few input widths
(output full). Layers of the same configuration and input shape are measured once (a ResNet-50
has 54 such layers and 20-odd distinct ones). Between measured widths, time is interpolated
linearly; a layer pruned on both sides is predicted as ``t_full * r_out(co) * r_in(ci)`` (a
conv's work is the product of its two widths). Depthwise and grouped convs, whose input and
output widths move together, get one joint curve.

Everything else (additions, pooling, attention, reshapes) is ``rest``: the whole model's time
minus the layers' sum, held constant. Every time in the table is the fastest of its repeats: an
isolated op's own cost, the statistic least disturbed by other jobs on a shared machine (the
planner's whole-model comparisons use medians); the planner measures the pruned model and corrects
for what the table misses (:mod:`fairfx.method.latency_plan`).

The table also looks for the kernels' width steps: on a few mid-width layers it times w, w-1,
w-3, w-7 and w-15 channels (w a multiple of 16). When removing s-1 channels below a multiple
saves almost nothing, widths should move in steps of s; ``step`` is the largest such s, and the
planner rounds kept counts to it (an automatic ``round_to``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from . import latency_cache
from .edits import ModuleEdit
from .timing import batch_inputs, fixed_threads, median_ms

MODES = ("eager", "compile")
FRACTIONS = (1.0, 0.75, 0.5, 0.25)
STEPS = (16, 8, 4, 2)


def _conv(m: nn.Module, ci: int, co: int, groups: int) -> nn.Module:
    return type(m)(
        ci, co, m.kernel_size, m.stride, m.padding, m.dilation, groups,
        m.bias is not None, m.padding_mode,
    )  # fmt: skip


def _linear(m: nn.Module, ci: int, co: int, groups: int) -> nn.Module:
    return nn.Linear(ci, co, m.bias is not None)


def _norm(m: nn.Module, co: int) -> nn.Module:
    return type(m)(co, eps=m.eps, affine=m.affine).eval()


# Layers the table times, by type: how to build one at other widths.
LAYERS = {nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv, nn.Linear: _linear}
# Per-channel modules timed with the layer they follow: how to rebuild them at ``co`` channels.
FOLLOWERS = {
    **{t: _norm for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
    **{
        t: (lambda m, co: m)
        for t in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid)
    },
}


def _layer_type(m: nn.Module) -> type | None:
    return next((t for t in LAYERS if isinstance(m, t)), None)


@dataclass
class Layer:
    """One conv/linear call: its widths, its input shape and the followers timed with it."""

    node: str
    target: str
    ci: int
    co: int
    groups: int
    shape: tuple[int, ...]  # input shape at the table's batch, channels included
    chain: tuple[str, ...]
    channel_dim: int  # 1 for a conv's input, -1 for a linear's
    sig: str = ""

    @property
    def joint(self) -> bool:
        """Input and output widths move together (depthwise/grouped convs)."""
        return self.groups > 1


def _layers(gm: fx.GraphModule, scale: float) -> list[Layer]:
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        kind = _layer_type(mod)
        if kind is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        shape = node.args[0].meta.get("fairfx_shape")
        if not isinstance(shape, (tuple, list, torch.Size)) or not shape:
            continue
        shape = (max(1, round(shape[0] * scale)), *shape[1:])
        chain, cur = [], node
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            if user.op != "call_module" or type(gm.get_submodule(user.target)) not in FOLLOWERS:
                break
            chain.append(user.target)
            cur = user
        w = mod.weight
        groups = getattr(mod, "groups", 1)
        ci, co = (w.shape[1] * groups, w.shape[0])
        dim = -1 if kind is nn.Linear else 1
        layer = Layer(node.name, node.target, int(ci), int(co), groups, (*shape,), (*chain,), dim)
        follow = ",".join(type(gm.get_submodule(t)).__name__ for t in chain)
        layer.sig = f"{type(mod).__name__}({mod.extra_repr()})|{list(shape)}|{follow}"
        out.append(layer)
    return out


def _snap(c: float, size: int, multiple: int = 8) -> int:
    if size < 2 * multiple:
        return max(1, round(c))
    return int(min(size, max(multiple, round(c / multiple) * multiple)))


def _widths(size: int, multiple: int = 8) -> list[int]:
    return sorted({_snap(f * size, size, multiple) for f in FRACTIONS})


def _bench_module(gm: fx.GraphModule, layer: Layer, ci: int, co: int) -> nn.Module:
    mod = gm.get_submodule(layer.target)
    groups = layer.groups
    if layer.joint and groups == layer.ci:  # depthwise: one group per channel
        groups = ci
    parts = [LAYERS[_layer_type(mod)](mod, ci, co, groups)]
    for t in layer.chain:
        follower = gm.get_submodule(t)
        parts.append(FOLLOWERS[type(follower)](follower, co))
    return nn.Sequential(*parts).eval()


def _input(layer: Layer, ci: int) -> torch.Tensor:
    shape = list(layer.shape)
    shape[layer.channel_dim] = ci
    return torch.randn(shape)


def _joint(layer: Layer, f: float) -> tuple[int, int]:
    """Widths of a depthwise conv (one group per channel: ``groups`` follows the width) or a
    grouped one (the groups stay; each loses the same columns) at fraction ``f``."""
    if layer.groups == layer.ci:
        c = _snap(f * layer.ci, layer.ci)
        return c, c * layer.co // layer.ci
    g = layer.groups
    return g * max(1, round(f * layer.ci / g)), g * max(1, round(f * layer.co / g))


def _configs(layer: Layer) -> list[tuple[int, int]]:
    """The (input, output) widths measured for one layer."""
    if layer.joint:
        return sorted({_joint(layer, f) for f in FRACTIONS})
    outs = [(layer.ci, w) for w in _widths(layer.co)]
    ins = [(w, layer.co) for w in _widths(layer.ci)] if layer.ci > 3 else []
    return sorted(set(outs + ins))


@dataclass
class LatencyTable:
    """Measured layer times (ms) at a few widths, the rest of the model, and the width step."""

    key: dict[str, Any]
    layers: dict[str, dict[str, Any]]  # node -> {"sig", "ci", "co", "joint"}
    curves: dict[str, list[list[float]]]  # sig -> [[ci, co, ms], ...]
    whole_ms: float
    rest_ms: float  # the ops between the timed layers, at full width
    step: int
    overhead_ms: float = 0.0  # per-call dispatch of every graph node: does not shrink
    step_evidence: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""
    path: str | None = None

    # ------------------------------------------------------------------ prediction
    def layer_ms(self, node: str, ci: int, co: int) -> float:
        info = self.layers[node]
        pts = np.asarray(self.curves[info["sig"]], dtype=np.float64)
        full = pts[(pts[:, 0] == info["ci"]) & (pts[:, 1] == info["co"]), 2]
        t_full = float(full[0]) if len(full) else float(pts[:, 2].max())
        if info["joint"]:
            return _interp(pts[:, 1], pts[:, 2], co)
        r_out = _interp(*_axis(pts, 0, info["ci"], 1), co) / t_full
        r_in = _interp(*_axis(pts, 1, info["co"], 0), ci) / t_full if info["ci"] > 3 else 1.0
        return t_full * r_out * r_in

    def layers_ms(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """The timed layers' predicted ms at the given (input, output) widths (others full)."""
        widths = widths or {}
        total = 0.0
        for node, info in self.layers.items():
            ci, co = widths.get(node, (info["ci"], info["co"]))
            total += self.layer_ms(node, ci, co)
        return total

    def predict_ms(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Predicted ms of the whole model: the layers, the dispatch overhead, and the rest
        (elementwise ops, pooling, joins: their work follows the activations' widths, so it
        is scaled by the layers' own predicted fraction)."""
        layers = self.layers_ms(widths)
        scale = layers / max(self.layers_ms(), 1e-12) if widths else 1.0
        return layers + self.overhead_ms + self.rest_ms * scale

    def fraction(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Predicted latency of the pruned widths as a fraction of the unpruned model's."""
        return self.predict_ms(widths) / max(self.predict_ms(), 1e-9)

    def payload(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "layers": self.layers,
            "curves": self.curves,
            "whole_ms": self.whole_ms,
            "rest_ms": self.rest_ms,
            "overhead_ms": self.overhead_ms,
            "step": self.step,
            "step_evidence": self.step_evidence,
            "seconds": self.seconds,
        }


def _axis(pts: np.ndarray, fixed: int, value: int, moving: int) -> tuple[np.ndarray, np.ndarray]:
    sel = pts[pts[:, fixed] == value]
    return sel[:, moving], sel[:, 2]


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    order = np.argsort(xs)
    xs, ys = np.asarray(xs)[order], np.asarray(ys)[order]
    # A narrower layer can always run as the wider one padded: no width costs more than a
    # wider measured one (which also keeps timing noise from inverting the curve).
    ys = np.minimum.accumulate(ys[::-1])[::-1]
    if x < xs[0]:  # below the narrowest measured width: proportional to the width
        return float(ys[0] * x / xs[0])
    return float(np.interp(x, xs, ys))


# ------------------------------------------------------------------ plan -> widths
def layer_widths(analysis: Any, kept_slot: np.ndarray, table: LatencyTable) -> dict[str, tuple]:
    """(input, output) widths of every timed layer under a slot keep-mask."""
    by_target = {e.target: e for e in analysis.edits if isinstance(e, ModuleEdit)}
    out = {}
    for node, info in table.layers.items():
        edit = by_target.get(info["target"])
        ci, co = info["ci"], info["co"]
        if edit is not None:
            if edit.in_slots is not None:
                ci = int(kept_slot[edit.in_slots].sum())
            if edit.out_slots is not None:
                co = int(kept_slot[edit.out_slots].sum())
        out[node] = (ci, co)
    return out


# ------------------------------------------------------------------ measuring
def measure(
    gm: fx.GraphModule,
    inputs: tuple[Any, ...],
    *,
    batch: int | None = None,
    threads: int | None = None,
    mode: str = "eager",
    path: str | Path | None = None,
    any_machine: bool = False,
    repeats: int = 7,
    progress: bool = True,
) -> LatencyTable:
    """The latency table of the captured graph ``gm`` at ``batch``: loaded from ``path`` (default:
    the cache, :func:`fairfx.engine.latency_cache.default_path`) when one was measured for the
    same key, else measured now and written there."""
    example = next((x for x in inputs if isinstance(x, torch.Tensor) and x.dim()), None)
    n0 = int(example.shape[0]) if example is not None else 1
    batch = n0 if batch is None else int(batch)
    with fixed_threads(threads) as n_threads:
        key = latency_cache.table_key(gm, inputs, batch=batch, threads=n_threads, mode=mode)
        file = Path(path) if path is not None else latency_cache.default_path(key)
        payload, why = latency_cache.read(file, key, any_machine=any_machine)
        if payload is not None:
            table = _from_payload(payload)
            table.path = str(file)
            return table
        table = _measure(gm, batch_inputs(inputs, batch), batch / n0, key, mode, repeats, progress)
        table.note = why
        latency_cache.write(file, table.payload())
        table.path = str(file)
        return table


def _from_payload(p: dict[str, Any]) -> LatencyTable:
    return LatencyTable(
        key=p["key"],
        layers=p["layers"],
        curves=p["curves"],
        whole_ms=float(p["whole_ms"]),
        rest_ms=float(p["rest_ms"]),
        overhead_ms=float(p.get("overhead_ms", 0.0)),
        step=int(p["step"]),
        step_evidence=list(p.get("step_evidence", [])),
        seconds=float(p.get("seconds", 0.0)),
        note="loaded from cache",
    )


def _measure(gm, inputs, scale, key, mode, repeats, progress) -> LatencyTable:
    start = time.perf_counter()
    layers = _layers(gm, scale)
    distinct = {layer.sig: layer for layer in layers}
    jobs = [(s, cfg) for s, layer in distinct.items() for cfg in _configs(layer)]
    model = torch.compile(gm) if mode == "compile" else gm
    whole = median_ms(model, inputs, repeats=2 * repeats, warmup=2, fastest=True)
    # A time estimate first: the whole model's time per MAC times the MACs to be measured.
    macs = sum(_macs(distinct[s], *cfg) for s, cfg in jobs)
    full = sum(_macs(layer, layer.ci, layer.co) for layer in layers) or 1
    guess = whole * macs / full * (repeats + 2) / 1e3
    bar = tqdm(
        jobs,
        desc=f"fairfx: latency table ({len(distinct)} layer kinds, about {guess:.0f} s)",
        unit="width",
        disable=not progress,
    )
    curves: dict[str, list[list[float]]] = {}
    for sig, (ci, co) in bar:
        layer = distinct[sig]
        bench = _bench_module(gm, layer, ci, co)
        t = median_ms(bench, (_input(layer, ci),), repeats=repeats, warmup=2, fastest=True)
        curves.setdefault(sig, []).append([ci, co, t])
    step, evidence = _find_step(gm, layers, curves, repeats)
    info = {
        lay.node: {
            "sig": lay.sig, "target": lay.target, "ci": lay.ci, "co": lay.co, "joint": lay.joint
        }
        for lay in layers
    }  # fmt: skip
    table = LatencyTable(key, info, curves, whole, 0.0, step, evidence)
    calls = sum(n.op in ("call_module", "call_function", "call_method") for n in gm.graph.nodes)
    tiny = nn.Identity()
    per_call = median_ms(tiny, (torch.zeros(1),), repeats=50, warmup=5, fastest=True)
    table.overhead_ms = min(calls * per_call, whole)
    table.rest_ms = max(0.0, whole - table.layers_ms() - table.overhead_ms)
    table.seconds = time.perf_counter() - start
    return table


def _macs(layer: Layer, ci: int, co: int) -> float:
    spatial = float(np.prod(layer.shape[2:])) if len(layer.shape) > 2 else 1.0
    linear = layer.channel_dim == -1
    lead = float(np.prod(layer.shape[:-1])) if linear else layer.shape[0]
    spatial = 1.0 if linear else spatial
    groups = ci if (layer.joint and layer.groups == layer.ci) else layer.groups
    return lead * spatial * ci * co / max(groups, 1)


def _find_step(gm, layers: Sequence[Layer], curves, repeats: int) -> tuple[int, list[dict]]:
    """The kernels' width step: the largest s such that removing s-1 channels below a multiple
    of 16 saves under a quarter of what a proportional model predicts, voted over up to three
    mid-width dense layers (the slowest ones)."""
    dense = [
        lay for lay in {lay.sig: lay for lay in layers}.values()
        if not lay.joint and 48 <= lay.co <= 1024
    ]  # fmt: skip
    dense.sort(key=lambda lay: -max(t for _, _, t in curves[lay.sig]))
    votes, evidence = [], []
    for lay in dense[:3]:
        w = 16 * int(0.75 * lay.co // 16)
        times = {}
        for d in (0, 1, 3, 7, 15):
            bench = _bench_module(gm, lay, lay.ci, w - d)
            times[w - d] = median_ms(
                bench, (_input(lay, lay.ci),), repeats=repeats, warmup=2, fastest=True
            )
        step = next(
            (s for s in STEPS if times[w - s + 1] >= times[w] * (1 - 0.25 * (s - 1) / w)), 1
        )
        votes.append(step)
        evidence.append({"layer": lay.target, "ms": {str(k): v for k, v in times.items()}})
    step = int(statistics.median_low(votes)) if votes else 1
    return step, evidence


__all__ = ["MODES", "LatencyTable", "layer_widths", "measure"]
