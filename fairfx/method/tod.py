"""Tolerance of Difference (ToD): how many units of one layer to prune.

FAIR-Pruner scores every unit twice: the Utilization score ``U`` says how useful a unit is (low U
means "safe to remove") and the Reconstruction score ``R`` says how much the loss would change
without it (high R means "protect it"). For a layer of ``n`` units and a candidate count ``m``,

    Remove(m)  = the m units with the lowest U
    Protect(m) = the m units with the highest R
    ToD(m)     = |Remove(m) ∩ Protect(m)| / m

ToD(m) is the fraction of the removal set that the other signal would rather keep. The planner
prunes the largest ``m`` whose disagreement stays within the tolerance ``alpha``.

Everything here is plain numpy on 1-D score vectors of one layer: no torch, no model. Scores are
computed once per model, so re-planning for another ``alpha`` costs only these O(n log n) calls.

Ties: every ranking in this module is a *stable* sort, so among units with equal scores the one
with the smaller index comes first (in the U order: is removed first; in the R order: is protected
first). This makes plans reproducible across runs and platforms regardless of how scores tie
(e.g. dead units that all have U == 0).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["prune_count", "ranks", "removal_order", "tod_curve"]

# Absorbs the binary rounding of ``cap * n`` (e.g. 0.29 * 100 == 28.999999999999996) so that the
# cap means the decimal value the user wrote. Far below 1 / n for any realistic layer width.
_CAP_EPS = 1e-9


def _as_scores(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return ``x`` as a finite 1-D float64 array, or raise ValueError saying what is wrong.

    NaN or inf would make every ordering arbitrary (NaN compares false with everything), so they
    are rejected here rather than silently producing a plan.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-unit scores, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values; scores must be finite")
    return a


def _is_real(x: object) -> bool:
    """True for int/float scalars (numpy's too) but not bool, which is never a meant tolerance."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _positions(order: NDArray[np.intp]) -> NDArray[np.intp]:
    """Invert a permutation: ``pos[order[j]] = j`` (the rank of each unit)."""
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size, dtype=order.dtype)
    return pos


def _check_pair(u: ArrayLike, r: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    uu = _as_scores(u, "u")
    rr = _as_scores(r, "r")
    if uu.shape != rr.shape:
        raise ValueError(f"u and r must score the same units, got lengths {uu.size} and {rr.size}")
    return uu, rr


def ranks(u: ArrayLike, r: ArrayLike) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Rank every unit by U (ascending) and by R (descending).

    Returns ``(rU, rR)``, two integer arrays of length n, each a permutation of ``0..n-1``:
    ``rU[i]`` is the 0-based position of unit i when units are sorted by U ascending (0 = lowest
    U, removed first), ``rR[i]`` its position when sorted by R descending (0 = highest R,
    protected first). Ties are broken by unit index, lower index first, in both orders (stable
    sort), so ``Remove(m) = {i : rU[i] < m}`` and ``Protect(m) = {i : rR[i] < m}`` are always
    sets of exactly m units.
    """
    uu, rr = _check_pair(u, r)
    r_u = _positions(np.argsort(uu, kind="stable"))
    # Negating keeps the sort stable *and* index-ascending among ties, which a reversed
    # ascending sort would not (it would put the highest index first).
    r_r = _positions(np.argsort(-rr, kind="stable"))
    return r_u, r_r


def tod_curve(u: ArrayLike, r: ArrayLike) -> NDArray[np.float64]:
    """ToD(m) for every m = 1..n; entry ``m - 1`` holds ToD(m).

    Unit i is in both Remove(m) and Protect(m) exactly when ``max(rU[i], rR[i]) < m``, so the
    overlap sizes for all m are one cumulative histogram of ``max(rU, rR)``: O(n) after the
    O(n log n) ranking, instead of one set intersection per m (O(n^2)). An empty layer gives an
    empty curve.
    """
    r_u, r_r = ranks(u, r)
    n = r_u.size
    both = np.maximum(r_u, r_r)
    # overlap[m - 1] = #{i : max(rU, rR) <= m - 1} = |Remove(m) ∩ Protect(m)|
    overlap = np.cumsum(np.bincount(both, minlength=n))
    return overlap / np.arange(1, n + 1, dtype=np.float64)


def prune_count(u: ArrayLike, r: ArrayLike, alpha: float, cap: float = 0.99) -> int:
    """How many units of the layer to prune: ``m_hat`` for tolerance ``alpha``.

    ``m_hat = max{m in [1, floor(cap * n)] : ToD(m) <= alpha}``, or 0 when no m qualifies.
    The *largest* feasible m is taken because ToD is not monotone: a few early disagreements can
    be diluted by a long run of agreeing units, and stopping at the first violation would prune
    far less than the rule allows. The count never removes every unit (at most n - 1), because
    an empty layer would disconnect the network. Since two sets of size m > n/2 must overlap,
    ``m_hat <= n / (2 - alpha)``: one call prunes at most about half of a layer.

    Args:
        u: Utilization scores, one per unit (lower = more removable).
        r: Reconstruction scores, one per unit (higher = more worth protecting).
        alpha: Tolerance of Difference, in ``[0, 1)``. 0 demands that no removed unit be among
            the top-R units of the same size.
        cap: Largest fraction of the layer one plan may prune, in ``(0, 1]``; the paper uses 0.99.

    Returns:
        The number of units to prune; which ones is ``removal_order(u)[:m_hat]``.
    """
    # The comparisons are written so that NaN fails them too.
    if not (_is_real(alpha) and 0.0 <= alpha < 1.0):
        raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}")
    if not (_is_real(cap) and 0.0 < cap <= 1.0):
        raise ValueError(f"cap must be a number in (0, 1], got {cap!r}")
    curve = tod_curve(u, r)
    n = curve.size
    m_max = min(math.floor(cap * n + _CAP_EPS), n - 1)
    if m_max < 1:
        return 0
    feasible = np.flatnonzero(curve[:m_max] <= alpha)
    return int(feasible[-1]) + 1 if feasible.size else 0


def removal_order(scores: ArrayLike) -> NDArray[np.intp]:
    """Unit indices in the order they should be removed: ascending score, ties by index.

    ``removal_order(u)[:m]`` is exactly Remove(m) as used by :func:`tod_curve`, so a plan made
    with :func:`prune_count` and executed with this order removes the units ToD was computed for.
    Any other importance score (L1 norm, random) can be passed to pick units for a ToD count.
    """
    return np.argsort(_as_scores(scores, "scores"), kind="stable")
