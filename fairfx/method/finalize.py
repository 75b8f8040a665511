"""From a calibration state to the scores: R from Taylor sums, U from the class-pair loop.

R sums the kept samples' signed Taylor sums in key order (so it reproduces), then takes the
absolute value (the paper). U, per observation point and chunk of channels: decode every class's
rows (:mod:`fairfx.method.codec`), project raw maps (stored when a map has fewer positions than
projections) onto the same P directions the forward would have used, and sort each (channel,
direction) into a *quantile sketch* of one common size, the largest class's sample count. A
class with that many samples is its own sketch (exact); a class with n fewer samples is read off
its empirical quantile function at the sketch's midpoint levels (exact when n divides the size,
within one quantile step otherwise). With one size for every class each pair is a plain L1
distance between sorted vectors, U is the L1 diameter of the classes' sketch vectors
(:mod:`fairfx.method.diameter`: exact, with triangle-inequality pruning of the pairs), and
unequal class counts cost no resampling per pair.

Under ``torch.distributed`` the ranks split the points (balanced by channels x projections) and
gather the U arrays, so each rank does 1/world of the pair loop and all end with the same scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..engine.group_graph import GroupGraph
from ..errors import CalibrationError
from .codec import decode
from .collective import collective
from .diameter import l1_diameter
from .scoring import Scores, filter_l1, observation_points, producer_outputs
from .stats import CalibrationState
from .wasserstein import projection_matrix, sort_inplace

# Decoded floats of one channel chunk, over every class, stay under this many bytes; the pair
# loop's whole workspace (decoded and projected floats, the sketch buffer) is a few of those.
_CHUNK_BYTES = 128 * 2**20
WORKSPACE_BYTES = 4 * _CHUNK_BYTES


def sketch_index(n: int, size: int) -> Tensor:
    """Rows of ``n`` sorted samples read at the midpoint levels ``(i + 1/2) / size``: the
    empirical quantile function ``Q(t) = sorted[ceil(t n) - 1]`` at each level."""
    return torch.tensor([((2 * i + 1) * n - 1) // (2 * size) for i in range(size)])


def balanced_split(costs: list[int], world: int) -> list[int]:
    """Rank of each item: longest first onto the least-loaded rank (same answer on every rank)."""
    load = [0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def finalize(
    graph: GroupGraph, state: CalibrationState, shard: tuple[int, int] = (0, 1)
) -> dict[int, Scores]:
    """Per-group U and R from a (merged) state; ``shard = (rank, world)`` splits the pair loop
    across an initialised ``torch.distributed`` group (every rank gets every score)."""
    present = [c for c in state.classes if len(state.per_class[c].keys)]
    if len(present) < 2:
        raise CalibrationError(
            f"calibration data holds {len(present)} class(es) ({len(state.seen)} seen); the "
            "Utilization score compares classes, so at least 2 classes are needed"
        )
    order = {
        c: torch.as_tensor(np.argsort(state.per_class[c].keys, kind="stable")) for c in present
    }

    def rows(store: str, node: str) -> list[Tensor]:
        out = []
        for c in present:
            st = state.per_class[c]
            table = getattr(st, store)
            if node in table:
                out.append(table[node][: len(st.keys)].index_select(0, order[c]))
        return out

    scores: dict[int, Scores] = {}
    signed: dict[int, np.ndarray] = {}
    for g in graph.groups:
        if g.prunable:
            scores[g.id] = Scores(np.zeros(g.size), np.zeros(g.size), filter_l1(graph, g.id))
            signed[g.id] = np.zeros(g.size)
    member: dict[str, np.ndarray] = {}
    for node, (gid, pname, _, units) in producer_outputs(graph).items():
        taylor = rows("taylor", node)
        if not taylor:
            continue
        per_pos = torch.cat(taylor).double().sum(0).numpy()
        ok = units >= 0
        np.add.at(signed[gid], units[ok], per_pos[ok])
        mt = member.setdefault(pname, np.zeros(graph.groups[gid].size))
        np.add.at(mt, units[ok], per_pos[ok])
    for gid, values in signed.items():
        scores[gid].r = np.abs(values)
    for name, values in member.items():
        scores[graph.group_of_producer[name]].member_r[name] = np.abs(values)

    points = observation_points(graph, state.observe)
    nodes = sorted({p.node for p in points if p.node in state.values})
    rank, world = shard
    first = state.per_class[present[0]].proj
    # Pair-loop work of a point: channels x compared values (raw maps are projected to P).
    owner = balanced_split(
        [first[n].shape[1] * (1 if state.values[n] == 1 else state.projections) for n in nodes],
        world,
    )
    u_at = {
        n: _utilization(state, [state.per_class[c] for c in present], n)
        for n, r in zip(nodes, owner, strict=True)
        if r == rank
    }
    if world > 1:
        parts: list[dict[str, np.ndarray]] = [{} for _ in range(world)]
        collective("U gathering", lambda: torch.distributed.all_gather_object(parts, u_at))
        u_at = {k: v for part in parts for k, v in part.items()}
    for p in points:
        if p.node not in u_at:
            continue
        u_pos = u_at[p.node]
        ok = p.units >= 0
        s = scores[p.gid]
        np.maximum.at(s.u, p.units[ok], u_pos[ok])
        mu = s.member_u.setdefault(p.producer, np.zeros(len(s.u)))
        np.maximum.at(mu, p.units[ok], u_pos[ok])
    return scores


def _utilization(state: CalibrationState, classes: list, node: str) -> np.ndarray:
    """U of every channel at one point from its stored rows, one channel chunk at a time.

    Rows are taken in storage order: each column is sorted over samples, so U does not depend
    on their order (only R's sums need key order). Each class's chunk is decoded straight into
    ``[channels, samples, values]``, projected when raw, sorted in place, read at the sketch
    levels and written into one ``[channels, classes, size, P]`` buffer for the pair loop.
    """
    p, values = state.projections, state.values[node]
    theta = projection_matrix(values, p, state.seed) if values < p else None
    width = theta.shape[1] if theta is not None else values
    size = max(len(st.keys) for st in classes)
    channels = classes[0].proj[node].shape[1]
    chunk = max(1, _CHUNK_BYTES // (4 * len(classes) * size * max(width, values)))
    out = np.empty(channels)
    for start in range(0, channels, chunk):
        ch = slice(start, min(start + chunk, channels))
        cc = ch.stop - ch.start
        buf = torch.empty(cc, len(classes), size, width)
        for j, st in enumerate(classes):
            n = len(st.keys)
            x = decode(st.proj[node][:n, ch].permute(1, 0, 2), state.state_dtype, values)
            x = (x @ theta if theta is not None else x).contiguous()
            sort_inplace(x, 1)
            buf[:, j] = x if n == size else x.index_select(1, sketch_index(n, size))
        u = l1_diameter(buf.view(cc, len(classes), size * width)) / (size * width)
        out[ch] = u.double().numpy()
    return out
