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

What no layer benchmark sees is split in two: per-call dispatch (the graph's calls times one
trivial module call; constant) and ``rest``, the ops between layers (additions, pooling,
attention: the whole model's time minus the layers and the dispatch), scaled with the layers'
predicted fraction since their work follows the activations' widths. Every time in the table
is the fastest of its repeats: an isolated op's own cost, the statistic least disturbed by
other jobs on a shared machine (the planner's whole-model comparisons use medians). The planner
measures the pruned model and corrects for what the table misses
(:mod:`fairfx.method.latency_plan`).

The table also looks for the kernels' width steps: on a few mid-width layers it times w, w-1,
w-3, w-7 and w-15 channels (w a multiple of 16). When removing s-1 channels below a multiple
saves almost nothing, widths should move in steps of s; ``step`` is the largest such s, and the
planner rounds kept counts to it (an automatic ``round_to``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from tqdm.auto import tqdm

from . import latency_cache
from .deploy import FOLDED, deployment_form
from .edits import ModuleEdit
from .latency_layers import bench_input, bench_module, configs, find_layers, find_step, macs
from .timing import batch_inputs, fixed_threads, median_ms


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


# ------------------------------------------------------------------ a channel graph's view
def graph_inputs(graph: Any, batch: int | None = None) -> tuple[Any, ...]:
    """The captured example inputs of a channel graph, at ``batch`` (default: as captured)."""
    return batch_inputs(graph.channel_pass.captured.inputs, batch)


def graph_table(graph: Any, **options: Any) -> LatencyTable:
    """:func:`measure` for a channel graph's captured model and example inputs."""
    return measure(graph.channel_pass.gm, graph.channel_pass.captured.inputs, **options)


def predicted_fraction(graph: Any, units: Mapping[int, Any], table: LatencyTable) -> float:
    """The table's predicted latency of a plan ``{group id: kept units}``, as a fraction of
    the unpruned model's."""
    kept = graph.kept_slots(units)
    return table.fraction(layer_widths(graph.channel_pass, kept, table))


# ------------------------------------------------------------------ measuring
def measure(
    gm: fx.GraphModule,
    inputs: tuple[Any, ...],
    *,
    batch: int | None = None,
    threads: int | None = None,
    mode: str = "eager",
    deploy: bool = True,
    path: str | Path | None = None,
    any_machine: bool = False,
    repeats: int = 7,
    progress: bool = True,
) -> LatencyTable:
    """The latency table of the captured graph ``gm`` at ``batch``: loaded from ``path`` (default:
    the cache, :func:`fairfx.engine.latency_cache.default_path`) when one was measured for the
    same key, else measured now and written there. ``deploy``: time the model and its layers in
    the deployment form (:func:`fairfx.engine.deploy.deployment_form`: BatchNorm folded into
    the layers, 2-D convs in channels_last), the form ``save_pruned`` ships."""
    example = next((x for x in inputs if isinstance(x, torch.Tensor) and x.dim()), None)
    n0 = int(example.shape[0]) if example is not None else 1
    batch = n0 if batch is None else int(batch)
    with fixed_threads(threads) as n_threads:
        key = latency_cache.table_key(
            gm, inputs, batch=batch, threads=n_threads, mode=mode, deploy=deploy
        )
        file = Path(path) if path is not None else latency_cache.default_path(key)
        payload, why = latency_cache.read(file, key, any_machine=any_machine)
        if payload is not None:
            try:
                table = _from_payload(payload)
                table.path = str(file)
                return table
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                why = f"{file} holds a damaged table ({type(exc).__name__}); measured again"
        source = deployment_form(gm, channels_last=True) if deploy else gm
        table = _measure(
            source, batch_inputs(inputs, batch), batch / n0, key, mode, repeats, progress
        )
        table.note = why
        latency_cache.write(file, table.payload())
        table.path = str(file)
        return table


def _from_payload(p: dict[str, Any]) -> LatencyTable:
    """The table of a cached payload; every layer's curve is read once, so a damaged file
    fails here (and is measured again) rather than in the middle of a plan."""
    table = LatencyTable(
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
    table.predict_ms()
    return table


def _measure(gm, inputs, scale, key, mode, repeats, progress) -> LatencyTable:
    """Times ``gm`` (the captured graph, or its deployment form when the key says so)."""
    start = time.perf_counter()
    layers = find_layers(gm, scale, channels_last=key.get("deploy", False))
    distinct = {layer.sig: layer for layer in layers}
    jobs = [(s, cfg) for s, layer in distinct.items() for cfg in configs(layer)]
    own = copy.deepcopy(gm).eval()  # never run the user's shared tensors in train mode
    model = torch.compile(own) if mode == "compile" else own
    whole = median_ms(model, inputs, repeats=2 * repeats, warmup=2, fastest=True)
    # A time estimate first: the whole model's time per MAC times the MACs to be measured.
    todo = sum(macs(distinct[s], *cfg) for s, cfg in jobs)
    full = sum(macs(layer, layer.ci, layer.co) for layer in layers) or 1
    guess = whole * todo / full * (repeats + 2) / 1e3
    bar = tqdm(
        jobs,
        desc=f"fairfx: latency table ({len(distinct)} layer kinds, about {guess:.0f} s)",
        unit="width",
        disable=not progress,
    )
    curves: dict[str, list[list[float]]] = {}
    for sig, (ci, co) in bar:
        layer = distinct[sig]
        bench = bench_module(gm, layer, ci, co)
        t = median_ms(bench, (bench_input(layer, ci),), repeats=repeats, warmup=2, fastest=True)
        curves.setdefault(sig, []).append([ci, co, t])
    step, evidence = find_step(gm, layers, curves, repeats)
    # A folded layer is named after the captured layer it was (plans address those).
    info = {
        lay.node: {
            "sig": lay.sig, "target": lay.target.removesuffix(FOLDED), "ci": lay.ci,
            "co": lay.co, "joint": lay.joint,
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


__all__ = [
    "LatencyTable",
    "graph_inputs",
    "graph_table",
    "layer_widths",
    "measure",
    "predicted_fraction",
]
