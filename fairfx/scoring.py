"""Scoring: the Utilization score U and the Reconstruction score R of every unit, in one pass.

One forward and one backward per calibration batch serve every layer at once:

- the forward runs the captured graph node by node (a ``torch.fx.Interpreter``); at each
  observation point the feature map is projected onto P fixed random directions right away
  (``[N, C, S] @ [S, P]``), so only ``[N, C, P]`` numbers per sample are kept, never the maps;
- the backward is ``torch.autograd.grad`` of the loss with respect to every producer's output
  ``z``, and ``z * dL/dz`` summed over samples and positions is accumulated *signed*; the
  absolute value is taken once at the end (METHOD.md: sum first, absolute value last).

The graph is a structural copy of the user's model that shares its weights; it runs in eval mode
(BatchNorm statistics are not touched), gradients flow to the activations only (``.grad`` of the
user's parameters is never written), and nothing about the user's model changes.

Coupled groups (decision, see README): a group has one channel identity, so it is scored as one
tensor. R of a unit is the signed Taylor sum over every producer of the group, then the absolute
value: for a residual add this equals the Taylor estimate on the joined tensor, because
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

from .calibration import ClassSampler, choose_classes
from .errors import CalibrationError
from .groups import ChannelGraph
from .slots import Layout
from .wasserstein import max_pairwise_w1, project, projection_matrix

OBSERVE = ("post_act", "module")


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


def _follow(graph: ChannelGraph, node: fx.Node) -> fx.Node:
    """From a producer, walk through per-channel ops (BN, activation, pooling, scale) to the
    tensor the next layer reads; stop at anything that joins tensors or reshapes channels."""
    layouts = graph.analysis.layouts
    cur, lay = node, layouts[node.name]
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        ulay = layouts.get(user.name)
        if not isinstance(ulay, Layout) or ulay.slots is not lay.slots or ulay.dim != lay.dim:
            break
        laid = [a for a in user.all_input_nodes if isinstance(layouts.get(a.name), Layout)]
        if len(laid) != 1:
            break
        cur, lay = user, ulay
    return cur


def observation_points(graph: ChannelGraph, observe: str) -> list[_Point]:
    if observe not in OBSERVE:
        raise ValueError(f"observe must be one of {OBSERVE}, got {observe!r}")
    a = graph.analysis
    nodes = {n.name: n for n in a.gm.graph.nodes}
    points = []
    for group in graph.groups:
        if not group.prunable:
            continue
        for name in group.producers:
            for node_name in a.producers[a.producer_index[name]].nodes:
                node = nodes[node_name]
                seen = _follow(graph, node) if observe == "post_act" else node
                lay = a.layouts[seen.name]
                units = graph.unit_index(group.id, lay.slots)
                points.append(_Point(name, seen.name, group.id, lay.dim, units))
    return points


class _Collector(fx.Interpreter):
    """Runs the graph, projects observed maps and keeps producer outputs for the backward."""

    def __init__(
        self,
        gm: fx.GraphModule,
        points: list[_Point],
        watch: set[str],
        projections: int,
        seed: int,
    ) -> None:
        super().__init__(gm)
        self.points: dict[str, list[_Point]] = {}
        for p in points:
            self.points.setdefault(p.node, []).append(p)
        self.watch = watch
        self.projections = projections
        self.seed = seed
        self.thetas: dict[int, torch.Tensor] = {}
        self.projected: dict[str, list[torch.Tensor]] = {}
        self.z: dict[str, torch.Tensor] = {}

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
                proj = project(flat, self.theta(flat.shape[2], flat.device))
            self.projected.setdefault(n.name, []).append(proj.cpu())
        if n.name in self.watch and isinstance(out, torch.Tensor) and out.requires_grad:
            self.z[n.name] = out
        return out


def _producer_outputs(graph: ChannelGraph) -> dict[str, tuple[int, str, int, np.ndarray]]:
    """Producer node -> (group, producer name, channel axis, unit of each position)."""
    a = graph.analysis
    out = {}
    for group in graph.groups:
        if not group.prunable:
            continue
        for name in group.producers:
            for node_name in a.producers[a.producer_index[name]].nodes:
                lay = a.layouts[node_name]
                out[node_name] = (group.id, name, lay.dim, graph.unit_index(group.id, lay.slots))
    return out


def _l1(graph: ChannelGraph, gid: int) -> np.ndarray:
    """L1 norm of each unit's filters, summed over the group's producers."""
    a = graph.analysis
    total = np.zeros(graph.groups[gid].size)
    for name in graph.groups[gid].producers:
        prod = a.producers[a.producer_index[name]]
        weight, out_dim = _producer_weight(graph, name)
        if weight is None:
            continue
        w = weight.detach().abs().float().movedim(out_dim, 0).flatten(1).sum(1).numpy()
        units = graph.unit_index(gid, prod.slots)
        np.add.at(total, units[units >= 0], w[units >= 0])
    return total


def _producer_weight(graph: ChannelGraph, name: str) -> tuple[torch.Tensor | None, int]:
    gm = graph.analysis.gm
    try:
        m = gm.get_submodule(name)
    except AttributeError:
        m = None
    if isinstance(m, torch.nn.Module) and isinstance(getattr(m, "weight", None), torch.Tensor):
        transposed = isinstance(m, torch.nn.modules.conv._ConvTransposeNd)
        return m.weight, 1 if transposed else 0
    for target in (f"{name}.weight", name):
        try:
            return gm.get_parameter(target), 0
        except AttributeError:
            continue
    return None, 0


def collect(
    graph: ChannelGraph,
    data: Iterable[Any],
    *,
    samples_per_class: int,
    max_classes: int,
    projections: int,
    observe: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    seed: int,
    progress: bool,
) -> tuple[dict[int, Scores], dict[str, Any]]:
    """Stream ``data`` once and return per-group scores plus a record of what was used."""
    gm = graph.analysis.gm
    out_shape = graph.analysis.gm.graph.find_nodes(op="output")[0].args[0]
    logits_shape = out_shape.meta.get("fairfx_shape") if isinstance(out_shape, fx.Node) else None
    if loss_fn is None and (logits_shape is None or len(logits_shape) != 2):
        raise CalibrationError(
            "the model's output is not class logits [N, classes]; FAIR scoring needs a "
            "classification output, or pass loss_fn=(output, targets) -> scalar loss"
        )
    num_classes = logits_shape[1] if logits_shape is not None else max_classes
    classes = choose_classes(num_classes, max_classes, seed)
    sampler = ClassSampler(classes, samples_per_class, num_classes)
    points = observation_points(graph, observe)
    producers = _producer_outputs(graph)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))

    runner = _Collector(gm, points, set(producers), projections, seed)
    taylor = {gid: np.zeros(graph.groups[gid].size) for gid in {v[0] for v in producers.values()}}
    member_taylor: dict[str, np.ndarray] = {}
    labels: list[torch.Tensor] = []
    was_training = gm.training
    gm.eval()
    total = len(classes) * samples_per_class
    bar = tqdm(total=total, desc="fairfx: scoring", unit="sample", disable=not progress)
    try:
        for x, y in sampler.batches(data):
            runner.z = {}
            x = x.detach().clone()
            if x.is_floating_point():
                x.requires_grad_(True)
            out = runner.run(x)
            loss = loss_fn(out, y)
            names = list(runner.z)
            grads = torch.autograd.grad(loss, [runner.z[k] for k in names], allow_unused=True)
            with torch.no_grad():
                for k, g in zip(names, grads, strict=True):
                    if g is None:
                        continue
                    gid, pname, dim, units = producers[k]
                    contrib = (runner.z[k] * g).movedim(dim, -1).reshape(-1, g.shape[dim])
                    per_pos = contrib.sum(0).double().cpu().numpy()
                    ok = units >= 0
                    np.add.at(taylor[gid], units[ok], per_pos[ok])
                    mt = member_taylor.setdefault(pname, np.zeros(graph.groups[gid].size))
                    np.add.at(mt, units[ok], per_pos[ok])
            labels.append(y.detach().cpu())
            bar.update(len(y))
    finally:
        bar.close()
        gm.train(was_training)
    sampler.check()
    y_all = torch.cat(labels)
    present = [c for c in classes.tolist() if bool((y_all == c).any())]
    scores: dict[int, Scores] = {}
    for gid in taylor:
        size = graph.groups[gid].size
        scores[gid] = Scores(np.zeros(size), np.abs(taylor[gid]), _l1(graph, gid))
    for name, t in member_taylor.items():
        scores[graph.group_of_producer[name]].member_r[name] = np.abs(t)
    for p in points:
        proj = torch.cat(runner.projected[p.node])
        per_class = [proj[y_all == c] for c in present]
        u_pos = max_pairwise_w1(per_class).double().numpy()
        ok = p.units >= 0
        s = scores[p.gid]
        np.maximum.at(s.u, p.units[ok], u_pos[ok])
        mu = s.member_u.setdefault(p.producer, np.zeros(len(s.u)))
        np.maximum.at(mu, p.units[ok], u_pos[ok])
    record = {
        "classes": present,
        "samples": int(sampler.counts.sum()),
        "samples_per_class": samples_per_class,
        "projections": projections,
        "observe": observe,
        "seed": seed,
    }
    return scores, record
