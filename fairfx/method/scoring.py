"""Scoring: the Utilization score U and the Reconstruction score R of every unit, in one pass.

One forward and one backward per calibration batch serve every layer at once:

- the forward runs the captured graph node by node (a ``torch.fx.Interpreter``); at each
  observation point the feature map is projected onto P fixed random directions right away
  (``[N, C, S] @ [S, P]``), so only ``[N, C, P]`` numbers per sample are kept, never the maps;
- the backward is ``torch.autograd.grad`` of the loss with respect to every producer's output
  ``z``, and ``z * dL/dz`` summed over samples and positions is accumulated *signed*; the
  absolute value is taken once at the end (sum first, absolute value last: the
  first-order Taylor estimate of removing the unit, arXiv 2508.02291).

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

from ..engine.groups import ChannelGraph
from ..engine.slots import Layout
from ..errors import CalibrationError
from .calibration import check_labels, choose_classes, split_batch
from .stats import CalibrationState, sample_keys
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


def new_state(
    graph: ChannelGraph,
    *,
    samples_per_class: int,
    max_classes: int,
    projections: int,
    observe: str,
    seed: int,
    loss_fn: Callable[..., torch.Tensor] | None,
) -> CalibrationState:
    """An empty state for this model and these options."""
    logits = _logit_count(graph)
    if loss_fn is None and logits is None:
        raise CalibrationError(
            "the model's output is not class logits [N, classes]; FAIR scoring needs a "
            "classification output, or pass loss_fn=(output, targets) -> scalar loss"
        )
    if samples_per_class < 1:
        raise CalibrationError(f"samples_per_class must be at least 1, got {samples_per_class}")
    classes = choose_classes(logits or max_classes, max_classes, seed).tolist()
    points = sorted({p.node for p in observation_points(graph, observe)})
    return CalibrationState(
        classes,
        samples_per_class,
        projections,
        observe,
        seed,
        points,
        sorted(_producer_outputs(graph)),
    )


def calibrate(
    graph: ChannelGraph,
    data: Iterable[Any],
    state: CalibrationState,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    progress: bool,
    shard: tuple[int, int] = (0, 1),
) -> CalibrationState:
    """Stream ``data`` into ``state``: one forward and one backward per batch of candidates.

    ``shard = (rank, world)`` takes every world-th batch starting at rank. ``loss_fn`` must sum
    over samples (the default, summed cross-entropy, does) so each sample's Taylor sum is its own.
    """
    gm = graph.analysis.gm
    points = observation_points(graph, state.observe)
    producers = _producer_outputs(graph)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="sum"))
    runner = _Collector(gm, points, set(producers), state.projections, state.seed)
    num_classes = max(max(state.classes) + 1, _logit_count(graph) or 0)
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
            if len(idx) == 0:
                continue
            sel = torch.as_tensor(idx)
            proj, taylor = _run_batch(
                runner, producers, x[sel.to(x.device)], y[sel.to(y.device)], loss_fn
            )
            state.add(keys[idx], labels[idx], proj, taylor)
    finally:
        bar.close()
        gm.train(was_training)
    return state


def _logit_count(graph: ChannelGraph) -> int | None:
    """Number of classes when the model's output is ``[N, classes]`` logits, else None."""
    out_node = graph.analysis.gm.graph.find_nodes(op="output")[0].args[0]
    shape = out_node.meta.get("fairfx_shape") if isinstance(out_node, fx.Node) else None
    return shape[1] if shape is not None and len(shape) == 2 else None


def _run_batch(runner, producers, x, y, loss_fn):
    runner.z, runner.projected = {}, {}
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
            taylor[k] = per.double().cpu()
    proj = {k: torch.cat(v) for k, v in runner.projected.items()}
    return proj, taylor


def finalize(graph: ChannelGraph, state: CalibrationState) -> dict[int, Scores]:
    """Per-group U and R from a (merged) state; sums run in key order, so they reproduce."""
    present = [c for c in state.classes if c in state.per_class and len(state.per_class[c].keys)]
    if len(present) < 2:
        raise CalibrationError(
            f"calibration data holds {len(present)} of the chosen classes; the Utilization "
            "score compares classes, so at least 2 classes are needed"
        )
    producers = _producer_outputs(graph)
    scores: dict[int, Scores] = {}
    signed: dict[int, np.ndarray] = {}
    for g in graph.groups:
        if g.prunable:
            scores[g.id] = Scores(np.zeros(g.size), np.zeros(g.size), _l1(graph, g.id))
            signed[g.id] = np.zeros(g.size)
    member: dict[str, np.ndarray] = {}
    # Rows in key order, one tensor at a time: no second copy of the whole state.
    order = {
        c: torch.as_tensor(np.argsort(state.per_class[c].keys, kind="stable")) for c in present
    }

    def rows(store: str, node: str) -> list[torch.Tensor]:
        out = []
        for c in present:
            st = state.per_class[c]
            table = getattr(st, store)
            if node in table:
                out.append(table[node][: len(st.keys)].index_select(0, order[c]))
        return out

    for node, (gid, pname, _, units) in producers.items():
        taylor = rows("taylor", node)
        if not taylor:
            continue
        per_pos = torch.cat(taylor).sum(0).numpy()
        ok = units >= 0
        np.add.at(signed[gid], units[ok], per_pos[ok])
        mt = member.setdefault(pname, np.zeros(graph.groups[gid].size))
        np.add.at(mt, units[ok], per_pos[ok])
    for gid, values in signed.items():
        scores[gid].r = np.abs(values)
    for name, values in member.items():
        scores[graph.group_of_producer[name]].member_r[name] = np.abs(values)
    for p in observation_points(graph, state.observe):
        u_pos = max_pairwise_w1(rows("proj", p.node)).double().numpy()
        ok = p.units >= 0
        s = scores[p.gid]
        np.maximum.at(s.u, p.units[ok], u_pos[ok])
        mu = s.member_u.setdefault(p.producer, np.zeros(len(s.u)))
        np.maximum.at(mu, p.units[ok], u_pos[ok])
    return scores
