"""From a calibration state to the scores: R from Taylor sums, U from the class-pair loop.

R sums the kept samples' signed Taylor sums in key order (so it reproduces), then takes the
absolute value (METHOD.md). U, per observation point and chunk of channels: decode every class's
rows (:mod:`fairfx.method.codec`), project raw maps (stored when a map has fewer positions than
projections) onto the same P directions the forward would have used, and sort each (channel,
direction) into a *quantile sketch* of one common size, the largest class's sample count. A
class with that many samples is its own sketch (exact); a class with n fewer samples is read off
its empirical quantile function at the sketch's midpoint levels (exact when n divides the size,
within one quantile step otherwise). With one size for every class each pair is a plain L1
distance between sorted vectors: the whole pair loop is ``torch.pdist``, and unequal class counts
cost no resampling per pair.

Under ``torch.distributed`` the ranks split the points (balanced by channels x values) and gather
the U arrays, so each rank does 1/world of the pair loop and all end with the same scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..engine.groups import ChannelGraph
from ..errors import CalibrationError
from .codec import decode
from .scoring import Scores, filter_l1, observation_points, producer_outputs
from .stats import CalibrationState
from .wasserstein import max_pairwise_w1, projection_matrix, sort_inplace

# Decoded floats of one channel chunk, over every class, stay under this many bytes; the pair
# loop's whole workspace (stored rows in key order, decoded floats, sketches, sorted copy) is a
# few of those.
_CHUNK_BYTES = 128 * 2**20
WORKSPACE_BYTES = 4 * _CHUNK_BYTES


def quantile_sketch(x: Tensor, size: int) -> Tensor:
    """``[n, C, P]`` samples -> ``[size, C, P]``: each column's empirical quantiles at the
    midpoint levels ``(i + 1/2) / size`` (the sorted samples themselves when ``n == size``).

    Sorted as ``[C, n, P]`` rows through the same in-place sort as the pair loop (numpy's SIMD
    sort on CPU, ~10x faster than ``torch.sort`` along a short leading dim); the result is a
    ``[size, C, P]`` view of that buffer."""
    n = x.shape[0]
    rows = x.permute(1, 0, 2).contiguous()
    sort_inplace(rows, 1)
    if n != size:
        idx = torch.tensor([((2 * i + 1) * n - 1) // (2 * size) for i in range(size)])
        rows = rows.index_select(1, idx)
    return rows.permute(1, 0, 2)


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
    graph: ChannelGraph, state: CalibrationState, shard: tuple[int, int] = (0, 1)
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
    owner = balanced_split([first[n].shape[1] * state.values[n] for n in nodes], world)
    u_at = {
        n: _utilization(state, [(state.per_class[c], order[c]) for c in present], n)
        for n, r in zip(nodes, owner, strict=True)
        if r == rank
    }
    if world > 1:
        parts: list[dict[str, np.ndarray]] = [{} for _ in range(world)]
        torch.distributed.all_gather_object(parts, u_at)
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
    """U of every channel at one point from its stored rows, one channel chunk at a time (rows
    are put in key order chunk by chunk: no copy of the whole point)."""
    p, values = state.projections, state.values[node]
    theta = projection_matrix(values, p, state.seed) if values < p else None
    width = theta.shape[1] if theta is not None else values
    size = max(len(st.keys) for st, _ in classes)
    channels = classes[0][0].proj[node].shape[1]
    chunk = max(1, _CHUNK_BYTES // (4 * len(classes) * size * max(width, values)))
    out = np.empty(channels)
    for start in range(0, channels, chunk):
        ch = slice(start, min(start + chunk, channels))
        sketches = []
        for st, order in classes:
            stored = st.proj[node][: len(st.keys), ch].index_select(0, order)
            x = decode(stored, state.state_dtype, values)
            if theta is not None:
                x = x @ theta
            sketches.append(quantile_sketch(x, size))
        out[ch] = max_pairwise_w1(sketches, channel_chunk=chunk).double().numpy()
    return out
