"""The class-pair maximum of U without visiting every pair: an exact L1 diameter with pruning.

With one quantile-sketch size for every class (:mod:`fairfx.method.finalize`), the sliced W1
between two classes at a channel is the L1 distance between their sketch vectors, so U is the
L1 *diameter* of K points (one per class) in ``L = size x P`` dimensions. Visiting all
``K (K - 1) / 2`` pairs costs ``K^2 / 2 x L`` absolute differences per channel: 2e9 at 1,000
classes, hours for a ResNet-50. The diameter does not need them all:

1. **Pivots.** Distances from every point to a few pivots, two passes over the K points: the
   mean of the K points; then the points with the largest and smallest coordinate sum (the
   pair of extreme means, since the W1 of two classes is at least the difference of their
   means) and the point farthest from the mean. Each distance from a pivot that is one of the
   points is a real pair's distance: the largest is a *lower bound* ``lb`` on the diameter.
2. **Bounds.** By the triangle inequality ``d(i, j) <= d(i, r) + d(r, j)`` for every pivot r, so
   ``ub(i, j) = min_r d(i, r) + d(r, j)`` bounds every pair from ``K^2`` additions per pivot.
3. **Candidates.** Only pairs with ``ub > lb`` can beat the best pair found; they are visited
   in decreasing ``ub`` order, in blocks, each block's exact distances raising ``lb``, until the
   next bound is no larger than ``lb``. The maximum over the visited pairs is the diameter.

Exact, not approximate: a pair is skipped only when its bound proves it cannot exceed a pair
already measured. A float32 sum of L non-negative terms, in any order, is within a relative
``gamma = L u`` (``u = 2^-24``) of the true sum, so a pair is skipped only when its bound is
below ``lb`` by a relative margin of ``4 gamma`` (:func:`slack`), which covers the rounding of
the bound and of ``lb`` both: the pair the brute-force loop would report is always visited,
and the value returned is its distance. Deterministic: no randomness, ties broken by index.

How many pairs it visits depends on the data, not only on K. Where classes differ (a channel
that fires for some classes and not others) few pairs survive the bounds. Where every class is
the same distribution (random labels), all pairwise distances concentrate near one value while
every triangle bound is about 1.4x larger (for independent noise ``d(i, median) ~ d(i, j) /
sqrt(2)``), so nothing can be skipped; for such channels, and below :data:`PRUNE_MIN` classes,
the brute-force ``torch.pdist`` loop runs instead (the fastest exact loop measured). Work per
channel is reported through ``stats``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .wasserstein import max_pairwise_l1

__all__ = ["PRUNE_MIN", "l1_diameter", "slack"]

PRUNE_MIN = 64  # fewer classes: the brute-force loop is cheaper than the bounds
FALLBACK = 0.1  # more surviving pairs than this share: the brute-force loop is faster
# (visiting a pair costs ~5x its share of one brute-force call, measured)
_BLOCK_VALUES = 2**22  # differences per block of candidate pairs (16 MiB of float32)


def slack(length: int) -> float:
    """Relative margin below ``lb`` a bound must have for its pair to be skipped."""
    return 4 * length * 2.0**-24


def _to(x: Tensor, pivots: Tensor) -> Tensor:
    """``[C, K, L]`` x ``[C, m, L]`` -> ``[C, m, K]`` L1 distances (one fused pass)."""
    return torch.cdist(pivots, x, p=1)


def l1_diameter(
    rows: Tensor, *, prune_min: int = PRUNE_MIN, stats: dict[str, int] | None = None
) -> Tensor:
    """``[C, K, L]`` -> ``[C]``: per channel, the largest L1 distance between two of its K rows.

    The same value as :func:`~fairfx.method.wasserstein.max_pairwise_l1` (up to float
    summation order), found as described in the module docstring. ``prune_min``: fewer rows
    than this use the brute-force loop directly. ``stats``, when given, gets ``"pairs"`` (pairs
    there are) and ``"checked"`` (distances computed: to the pivots, of visited pairs, and every
    pair of the channels that fell back to the brute-force loop) added to it. Returns ``rows``'
    dtype (float32 at least).
    """
    c, k, length = rows.shape
    if k < 2:
        raise ValueError(f"U needs at least 2 classes to compare, got {k}")
    pairs = k * (k - 1) // 2
    x = rows.to(torch.promote_types(rows.dtype, torch.float32))
    if k < max(prune_min, 2) or c == 0:
        _count(stats, c * pairs, c * pairs)
        return max_pairwise_l1(x)
    margin = 1 - slack(length)
    with torch.no_grad():
        lb, ub, checked = _bounds(x)
        out = torch.empty(c, dtype=x.dtype)
        upper = torch.ones(k, k, dtype=torch.bool).triu_(1)
        for ch in range(c):
            best = float(lb[ch])
            survive = upper & (ub[ch] > best * margin)
            if int(survive.sum()) > FALLBACK * pairs:
                out[ch] = max_pairwise_l1(x[ch : ch + 1])[0]
                checked += pairs
                continue
            best, visited = _visit(x[ch], ub[ch], survive, best, margin)
            out[ch] = best
            checked += visited
    _count(stats, c * pairs, checked)
    return out


def _count(stats: dict[str, int] | None, pairs: int, checked: int) -> None:
    if stats is not None:
        stats["pairs"] = stats.get("pairs", 0) + pairs
        stats["checked"] = stats.get("checked", 0) + checked


def _bounds(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Best pair distance found, ``[C, K, K]`` triangle bounds, distances computed."""
    c, k, _ = x.shape
    ar = torch.arange(c)
    to_mean = _to(x, x.mean(1, keepdim=True))[:, 0]
    sums = x.sum(2)
    picks = torch.stack([sums.argmax(1), sums.argmin(1), to_mean.argmax(1)], 1)  # [C, 3]
    to_pick = _to(x, x[ar[:, None], picks])  # [C, 3, K]
    lb = to_pick.flatten(1).amax(1)
    ub = to_mean[:, :, None] + to_mean[:, None, :]
    for m in range(picks.shape[1]):
        torch.minimum(ub, to_pick[:, m, :, None] + to_pick[:, m, None, :], out=ub)
    return lb, ub, c * k * (1 + picks.shape[1])


def _visit(x: Tensor, ub: Tensor, survive: Tensor, best: float, margin: float) -> tuple[float, int]:
    """Exact distances of the surviving pairs in decreasing-bound order, until no bound is left
    above the best distance. Returns the diameter and the pairs visited."""
    i, j = survive.nonzero(as_tuple=True)
    bound = ub[i, j]
    order = torch.sort(bound, descending=True, stable=True).indices
    i, j, bound = i[order], j[order], bound[order]
    block = max(1, _BLOCK_VALUES // x.shape[1])
    visited = 0
    for s in range(0, len(i), block):
        if float(bound[s]) <= best * margin:
            break
        d = _pair_distances(x, i[s : s + block], j[s : s + block])
        visited += len(d)
        best = max(best, float(d.max()))
    return best, visited


def _pair_distances(x: Tensor, i: Tensor, j: Tensor) -> Tensor:
    """Distances of the pairs ``(i, j)``: one ``cdist`` between the distinct rows on each side
    when that costs at most 4x the pairs (pairs of a few extreme classes), else row by row."""
    ui, ii = torch.unique(i, return_inverse=True)
    uj, jj = torch.unique(j, return_inverse=True)
    if len(ui) * len(uj) <= 4 * len(i):
        return torch.cdist(x[ui], x[uj], p=1)[ii, jj]
    return (x[i] - x[j]).abs().sum(-1)
