"""Scoring: the Utilization score U and the Reconstruction score R of every unit, in one pass.

One forward and one backward per chunk of calibration samples serve every layer at once (the
chunk is sized for memory, :mod:`fairfx.method.memory`; U and R are computed from the filled
state in :mod:`fairfx.method.finalize`):

- the forward runs the captured graph node by node (a ``torch.fx.Interpreter``); at each
  observation point a map of S >= P positions is projected onto P fixed random directions right
  away (``[N, C, S] @ [S, P]``), a smaller map is kept as it is (projected at finalize), and the
  ``[N, C, min(S, P)]`` rows are stored in the state's codec (:mod:`fairfx.method.codec`);
- the backward is ``torch.autograd.grad`` of the loss with respect to every producer's output
  ``z``, and ``z * dL/dz`` summed over samples and positions is accumulated *signed*; the
  absolute value is taken once at the end (sum first, absolute value last: the
  first-order Taylor estimate of removing the unit, arXiv 2508.02291).

The graph is a structural copy of the user's model that shares its weights; it runs in eval mode
(BatchNorm statistics are not touched), gradients flow to the activations only (``.grad`` of the
user's parameters is never written), and nothing about the user's model changes.

Coupled groups (decision, see docs/decisions.md): a group has one channel identity, so it is scored
as one tensor. R of a unit is the signed Taylor sum over every producer of the group, then the
absolute value: for a residual add this equals the Taylor estimate on the joined tensor, because
``dL/da = dL/d(a + b)``. U of a unit is the largest U over the group's observation points (a unit
is useful if it separates two classes anywhere it is read). Per-producer scores are kept too, so
the reference package's per-member rule can be compared (``Analysis.plan(group_rule="member")``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..engine.group_graph import GroupGraph
from ..errors import CalibrationError
from .codec import check_codec, encode
from .labels import check_labels, split_batch
from .stats import CalibrationState, sample_keys
from .wasserstein import project, projection_matrix

OBSERVE = ("post_act", "module", "consumer")


@dataclass
class _Point:
    """Where U is measured for one producer call: a node, its channel axis and unit map."""

    producer: str
    node: str
    gid: int
    dim: int
    units: np.ndarray  # unit index (within gid) of each position along ``dim``


@dataclass
class Scores:
    """Per-unit scores of one group (arrays of length ``group.size``)."""

    u: np.ndarray
    r: np.ndarray
    l1: np.ndarray
    member_u: dict[str, np.ndarray] = field(default_factory=dict)
    member_r: dict[str, np.ndarray] = field(default_factory=dict)


def observation_points(graph: GroupGraph, observe: str) -> list[_Point]:
    """Where U is measured for every prunable producer call (maps from the channel engine)."""
    if observe not in OBSERVE:
        raise ValueError(f"observe must be one of {OBSERVE}, got {observe!r}")
    if observe == "consumer":
        return [
            _Point(m.producer, node, m.gid, dim, units)
            for m in graph.unit_maps()
            for node, dim, units in graph.read_points(m.node, m.gid)
        ]
    if observe == "post_act":
        return [
            _Point(m.producer, m.read, m.gid, m.read_dim, m.read_units) for m in graph.unit_maps()
        ]
    return [_Point(m.producer, m.node, m.gid, m.dim, m.units) for m in graph.unit_maps()]


class _Collector(fx.Interpreter):
    """Runs the graph, projects observed maps and keeps producer outputs for the backward."""

    def __init__(
        self,
        gm: fx.GraphModule,
        points: list[_Point],
        watch: set[str],
        projections: int,
        seed: int,
        codec: str,
    ) -> None:
        super().__init__(gm)
        self.codec = codec
        self.values: dict[str, int] = {}
        self.points: dict[str, list[_Point]] = {}
        for p in points:
            self.points.setdefault(p.node, []).append(p)
        self.watch = watch
        self.projections = projections
        self.seed = seed
        self.thetas: dict[int, torch.Tensor] = {}
        self.projected: dict[str, list[torch.Tensor]] = {}
        self.z: dict[str, torch.Tensor] = {}
        self.batch = 1

    def theta(self, size: int, device: torch.device) -> torch.Tensor:
        if size not in self.thetas:
            self.thetas[size] = projection_matrix(size, self.projections, self.seed)
        return self.thetas[size].to(device)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        pts = self.points.get(n.name)
        if pts and isinstance(out, torch.Tensor):
            with torch.no_grad():
                flat = out.detach().movedim(pts[0].dim, 1).float()
                flat = flat.flatten(2) if flat.dim() > 2 else flat.unsqueeze(2)
                if len(flat) == 1 and self.batch > 1:  # shared by the batch (position embedding)
                    flat = flat.expand(self.batch, -1, -1)
                # Fewer positions than projections: keep the map itself (projected at finalize).
                if flat.shape[2] >= self.projections:
                    flat = project(flat, self.theta(flat.shape[2], flat.device))
                self.values[n.name] = flat.shape[2]
                stored = encode(flat, self.codec)
            self.projected.setdefault(n.name, []).append(stored.cpu())
        if n.name in self.watch and isinstance(out, torch.Tensor) and out.requires_grad:
            self.z[n.name] = out
        return out


def producer_outputs(graph: GroupGraph) -> dict[str, tuple[int, str, int, np.ndarray]]:
    """Producer call node -> (group, producer name, channel axis, unit of each position)."""
    return {m.node: (m.gid, m.producer, m.dim, m.units) for m in graph.unit_maps()}


def filter_l1(graph: GroupGraph, gid: int) -> np.ndarray:
    """L1 norm of each unit's filters, summed over the group's producers."""
    total = np.zeros(graph.groups[gid].size)
    for name in graph.groups[gid].producers:
        weight, out_dim = graph.producer_weight(name)
        if weight is None:
            continue
        w = weight.detach().abs().float().movedim(out_dim, 0).flatten(1).sum(1).numpy()
        units = graph.producer_units(name)
        np.add.at(total, units[units >= 0], w[units >= 0])
    return total


def new_state(
    graph: GroupGraph,
    *,
    samples_per_class: int,
    max_classes: int,
    projections: int,
    observe: str,
    seed: int,
    loss_fn: Callable[..., torch.Tensor] | None,
    state_dtype: str = "float16",
) -> CalibrationState:
    """An empty state for this model and these options."""
    logits = logit_count(graph)
    if loss_fn is None and logits is None:
        raise CalibrationError(
            "the model's output is not class logits [N, classes]; FAIR scoring needs a "
            "classification output, or pass loss_fn=(output, targets) -> scalar loss"
        )
    if samples_per_class < 1:
        raise CalibrationError(f"samples_per_class must be at least 1, got {samples_per_class}")
    if max_classes < 2:
        raise CalibrationError(f"max_classes must be at least 2, got {max_classes}")
    points = sorted({p.node for p in observation_points(graph, observe)})
    return CalibrationState(
        max_classes,
        samples_per_class,
        projections,
        observe,
        seed,
        points,
        sorted(producer_outputs(graph)),
        check_codec(state_dtype),
    )


def calibrate(
    graph: GroupGraph,
    data: Iterable[Any],
    state: CalibrationState,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    progress: bool,
    shard: tuple[int, int] = (0, 1),
    batch_size: int = 64,
) -> CalibrationState:
    """Stream ``data`` into ``state``: one forward and one backward per chunk of candidates.

    ``shard = (rank, world)`` takes every world-th batch starting at rank. The candidates of a
    batch (samples that may enter the state) run in chunks of at most ``batch_size`` samples,
    which bounds the autograd memory whatever the data loader's batch size; results do not
    depend on it (BatchNorm runs in eval mode, every statistic is per sample). ``loss_fn`` must
    sum over samples (the default, summed cross-entropy, does) so each sample's Taylor sum is its
    own.
    """
    gm = graph.captured
    points = observation_points(graph, state.observe)
    producers = producer_outputs(graph)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))
    runner = _Collector(
        gm, points, set(producers), state.projections, state.seed, state.state_dtype
    )
    num_classes = logit_count(graph)
    was_training = gm.training
    gm.eval()
    total = len(data) if hasattr(data, "__len__") else None
    bar = tqdm(total=total, desc="fairfx: scoring", unit="batch", disable=not progress)
    rank, world = shard
    try:
        for i, batch in enumerate(data):
            bar.update(1)
            if i % world != rank:
                continue
            x, y = split_batch(batch)
            labels = check_labels(y, num_classes)
            keys = sample_keys(x, state.seed)
            idx = state.wanted(keys, labels)
            state.batches_seen += 1
            for start in range(0, len(idx), max(1, batch_size)):
                part = idx[start : start + max(1, batch_size)]
                sel = torch.as_tensor(part)
                proj, taylor = _run_batch(
                    runner, producers, x[sel.to(x.device)], y[sel.to(y.device)], loss_fn
                )
                state.add(keys[part], labels[part], proj, taylor, dict(runner.values))
    finally:
        bar.close()
        gm.train(was_training)
    return state


def logit_count(graph: GroupGraph) -> int | None:
    """Number of classes when the model's output is ``[N, classes]`` logits, else None."""
    shape = graph.output_shape()
    return shape[1] if shape is not None and len(shape) == 2 else None


def _run_batch(runner, producers, x, y, loss_fn):
    runner.z, runner.projected, runner.batch = {}, {}, len(x)
    x = x.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)
    out = runner.run(x)
    names = list(runner.z)
    grads = torch.autograd.grad(loss_fn(out, y), [runner.z[k] for k in names], allow_unused=True)
    taylor = {}
    with torch.no_grad():
        for k, g in zip(names, grads, strict=True):
            dim = producers[k][2]
            z = runner.z[k]
            if g is None:
                g = torch.zeros_like(z)
            per = (z * g).movedim(dim, -1).reshape(len(z), -1, z.shape[dim]).sum(1)
            if len(per) == 1 and len(x) > 1:  # a tensor the batch shares: split its sum evenly
                per = per.expand(len(x), -1) / len(x)
            taylor[k] = per.float().cpu()
    runner.z = {}
    proj = {k: torch.cat(v) for k, v in runner.projected.items()}
    return proj, taylor
