"""ToD planning: the O(n) curve against explicit set intersections, and the m_hat rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfx.method.tod import prune_count, ranks, removal_order, tod_curve


def brute_curve(u: np.ndarray, r: np.ndarray) -> np.ndarray:
    """ToD(m) by the definition: explicit Remove/Protect sets, stable tie-breaking by index."""
    n = len(u)
    by_u = sorted(range(n), key=lambda i: (u[i], i))
    by_r = sorted(range(n), key=lambda i: (-r[i], i))
    return np.array([len(set(by_u[:m]) & set(by_r[:m])) / m for m in range(1, n + 1)])


def brute_count(u: np.ndarray, r: np.ndarray, alpha: float, cap: float = 0.99) -> int:
    n = len(u)
    curve = brute_curve(u, r)
    top = min(math.floor(cap * n + 1e-9), n - 1)
    return max((m for m in range(1, top + 1) if curve[m - 1] <= alpha), default=0)


def random_scores(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    if ties:  # few distinct values: exercises the index tie-break
        return rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
    return rng.random(n), rng.random(n)


@pytest.mark.parametrize("seed", range(40))
def test_curve_matches_set_intersection(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    u, r = random_scores(rng, n, ties=seed % 2 == 0)
    np.testing.assert_array_equal(tod_curve(u, r), brute_curve(u, r))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.floats(-5, 5, allow_nan=False)), min_size=1, max_size=60
    ),
    st.floats(0, 0.99),
)
def test_curve_and_count_hypothesis(pairs: list[tuple[int, float]], alpha: float) -> None:
    u = np.array([a for a, _ in pairs], dtype=float)
    r = np.array([b for _, b in pairs], dtype=float)
    np.testing.assert_array_equal(tod_curve(u, r), brute_curve(u, r))
    assert prune_count(u, r, alpha) == brute_count(u, r, alpha)


def test_ranks_are_permutations_with_index_tiebreak() -> None:
    u = np.array([1.0, 0.0, 1.0, 0.0])
    r = np.array([2.0, 5.0, 5.0, 2.0])
    r_u, r_r = ranks(u, r)
    # U ascending: units 1, 3 (tie at 0, lower index first), then 0, 2.
    np.testing.assert_array_equal(r_u, [2, 0, 3, 1])
    # R descending: units 1, 2 (tie at 5), then 0, 3 (tie at 2).
    np.testing.assert_array_equal(r_r, [2, 0, 1, 3])
    np.testing.assert_array_equal(removal_order(u), [1, 3, 0, 2])


def test_ties_are_deterministic_and_index_ordered() -> None:
    u = np.zeros(10)  # e.g. ten dead units
    r = np.zeros(10)
    np.testing.assert_array_equal(removal_order(u), np.arange(10))
    r_u, r_r = ranks(u, r)
    np.testing.assert_array_equal(r_u, np.arange(10))
    np.testing.assert_array_equal(r_r, np.arange(10))
    # Identical orders: Remove(m) == Protect(m) for every m.
    np.testing.assert_array_equal(tod_curve(u, r), np.ones(10))
    assert prune_count(u, r, 0.5) == 0
    # Repeated calls give the same answer.
    for _ in range(3):
        np.testing.assert_array_equal(removal_order(u), np.arange(10))


def test_largest_feasible_m_on_non_monotone_curve() -> None:
    # n = 20, U ascending by index. Unit 1 (second-lowest U) is the top-R unit, the high-U units
    # come next in R, and unit 0 has the lowest R. So ToD(1) = 0, ToD(m) = 1/m for 2 <= m <= 10
    # (only unit 1 overlaps), then the high-U / high-R units start to overlap.
    n = 20
    u = np.arange(n, dtype=float)
    r = np.arange(n, dtype=float)
    r[0], r[1] = 0.5, 1000.0
    curve = tod_curve(u, r)
    np.testing.assert_allclose(curve[:10], [0.0] + [1 / m for m in range(2, 11)])
    np.testing.assert_allclose(curve[10:12], [2 / 11, 4 / 12])
    # alpha = 0.25: feasible at m = 1, violated at m = 2 and 3, feasible again for 4..11.
    assert curve[0] <= 0.25 < curve[1]
    assert prune_count(u, r, 0.25) == 11  # stopping at the first violation would give 1
    # alpha = 0.05: feasible only at m = 1.
    assert prune_count(u, r, 0.05) == 1
    assert prune_count(u, r, 0.0) == 1
    assert prune_count(u, r, 0.25) == brute_count(u, r, 0.25)


def test_cap_floor_099() -> None:
    # Rankings in opposite orders: Remove(m) and Protect(m) are disjoint until m > n/2, so the
    # count is bounded by n/(2 - alpha) and, for large alpha, by floor(0.99 n).
    n = 200
    u = np.arange(n, dtype=float)
    r = np.arange(n, dtype=float)  # highest R = highest U: protect the units we keep anyway
    curve = tod_curve(u, r)
    assert curve[n // 2 - 1] == 0.0
    # alpha close to 1: ToD(m) = (2m - n)/m <= alpha for all m up to n/(2 - alpha) ~ n.
    assert prune_count(u, r, 0.999) == math.floor(0.99 * n)  # 198, not 199
    assert prune_count(u, r, 0.999, cap=0.5) == 100
    assert prune_count(u, r, 0.999, cap=1.0) == n - 1  # never all units
    # Decimal cap values that are not exact in binary still mean what they say.
    assert prune_count(u, r, 0.999, cap=0.29) == 58  # 0.29 * 200 == 57.99999999999999 in floats


@pytest.mark.parametrize("seed", range(30))
def test_count_never_exceeds_half_bound(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(1, 300))
    alpha = float(rng.choice([0.0, 0.005, 0.05, 0.3, 0.9, 0.999]))
    if seed % 3 == 0:  # correlated rankings reach the bound
        u = rng.random(n)
        r = u + 0.05 * rng.random(n)
    else:
        u, r = random_scores(rng, n, ties=seed % 3 == 1)
    m = prune_count(u, r, alpha)
    assert 0 <= m <= n / (2 - alpha) + 1e-9
    assert m <= max(n - 1, 0)
    assert m == brute_count(u, r, alpha)


def test_tiny_layers() -> None:
    assert prune_count([0.5], [0.5], 0.5) == 0  # one unit always stays
    np.testing.assert_array_equal(tod_curve([0.5], [0.5]), [1.0])
    # n = 2: floor(0.99 * 2) = 1 unit at most.
    assert prune_count([0.0, 1.0], [0.0, 1.0], 0.0) == 1  # disjoint at m = 1
    assert prune_count([0.0, 1.0], [1.0, 0.0], 0.9) == 0  # lowest U is the top-R unit
    np.testing.assert_array_equal(tod_curve([0.0, 1.0], [1.0, 0.0]), [1.0, 1.0])
    assert tod_curve([], []).shape == (0,)
    assert prune_count([], [], 0.1) == 0


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_alpha_validation(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\), got"):
        prune_count([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], alpha)  # type: ignore[arg-type]


def test_alpha_boundary_and_numpy_scalars() -> None:
    u = np.arange(5, dtype=float)
    # Opposite rankings: overlap max(0, 2m - 5), so ToD is 0 up to m = 2, then 1/3, 3/4.
    assert prune_count(u, u, 0) == prune_count(u, u, np.float32(0.0)) == 2
    assert prune_count(u, u, 1 / 3) == 3  # ToD(3) == 1/3 exactly: "<=" holds at equality
    assert prune_count(u, u, np.float64(0.999)) == 4  # floor(0.99 * 5)


@pytest.mark.parametrize("cap", [0.0, -1.0, 1.01, float("nan")])
def test_cap_validation(cap: float) -> None:
    with pytest.raises(ValueError, match="cap must be"):
        prune_count([0.0, 1.0], [0.0, 1.0], 0.1, cap=cap)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="same units"):
        tod_curve([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="1-D"):
        tod_curve(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        prune_count([0.0, np.nan], [0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="finite"):
        removal_order([np.inf, 0.0])
