"""The pruned class-pair maximum (an exact L1 diameter) against the brute-force loop."""

from __future__ import annotations

import itertools

import pytest
import torch

from fairfx.method import diameter
from fairfx.method.diameter import l1_diameter, slack
from fairfx.method.wasserstein import max_pairwise_l1


def brute(rows: torch.Tensor) -> torch.Tensor:
    """Every pair, summed in float64: the reference maximum."""
    x = rows.double()
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    for a, b in itertools.combinations(range(x.shape[1]), 2):
        out = torch.maximum(out, (x[:, a] - x[:, b]).abs().sum(-1))
    return out


def check(rows: torch.Tensor, **kw) -> dict[str, int]:
    stats: dict[str, int] = {}
    got = l1_diameter(rows, prune_min=2, stats=stats, **kw)
    want = brute(rows)
    # float32 sums in another order: within the rounding the skip margin is built on
    tol = slack(rows.shape[2]) / 4
    assert torch.all((got.double() - want).abs() <= tol * want + 1e-30), (got, want)
    assert stats["pairs"] == rows.shape[0] * rows.shape[1] * (rows.shape[1] - 1) // 2
    return stats


def gains(c: int, k: int, length: int, sigma: float, seed: int) -> torch.Tensor:
    """Classes whose response magnitude differs (what a useful channel looks like)."""
    g = torch.Generator().manual_seed(seed)
    gain = torch.exp(sigma * torch.randn(c, k, 1, generator=g))
    return (torch.randn(c, 1, length, generator=g) + torch.randn(c, k, length, generator=g)) * gain


@pytest.fixture(params=[True, False], ids=["fallback", "always-pruned"])
def fallback(request, monkeypatch) -> bool:
    """Run every case also with the brute-force fallback off, so the pruned visit sees every
    kind of input (concentrated random rows included)."""
    if not request.param:
        monkeypatch.setattr(diameter, "FALLBACK", 2.0)
    return request.param


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("c", "k", "length"), [(3, 2, 5), (2, 3, 1), (4, 17, 8), (2, 80, 64)])
def test_random_rows(fallback, seed: int, c: int, k: int, length: int) -> None:
    g = torch.Generator().manual_seed(seed)
    check(torch.randn(c, k, length, generator=g))
    check(torch.randn(c, k, length, generator=g).sort(2).values)  # sorted sketches


@pytest.mark.parametrize("sigma", [0.02, 0.5, 1.0])
def test_classes_that_differ(fallback, sigma: float) -> None:
    stats = check(gains(3, 200, 256, sigma, seed=1))
    if sigma >= 0.5:  # clear class differences: pivots + a few candidates
        assert stats["checked"] < stats["pairs"] / 10


def test_collinear_points_bounds_are_tight(fallback) -> None:
    """Points on a line: the triangle bound through the mean is an equality for every pair on
    opposite sides, so the skip margin alone decides; the maximum must still be found."""
    t = torch.tensor([0.0, 3.0, -2.0, 5.0, 5.0, -2.0, 1.0, 0.5])
    v = torch.rand(16, generator=torch.Generator().manual_seed(0)) + 0.1
    check((t[:, None] * v)[None])
    check(torch.stack([(t[:, None] * v), (t.flip(0)[:, None] * v), (t[:, None] * -v)]))


def test_ties_and_equal_classes(fallback) -> None:
    eye = torch.eye(12)[None] * 3  # every pair at distance 6: all tied, every bound >= 6
    check(eye)
    same = torch.randn(1, 1, 10).expand(2, 9, 10).contiguous()  # every class equal
    assert torch.equal(l1_diameter(same, prune_min=2), torch.zeros(2))
    x = torch.randint(-3, 4, (3, 50, 6), generator=torch.Generator().manual_seed(2)).float()
    check(x)  # integer rows: many exact ties among pairs and with the bounds
    dup = torch.cat([x, x], 1)  # every class twice
    check(dup)


def test_extreme_pair_hidden_from_the_pivots(fallback) -> None:
    """The farthest pair is neither the extreme-sum pair nor involves the point farthest from
    the mean: two points that differ only in opposite-signed coordinates (equal sums)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 20, generator=g) * 0.1
    x[7] = 0.0
    x[7, :10], x[7, 10:] = 2.0, -2.0
    x[41] = 0.0
    x[41, :10], x[41, 10:] = -2.0, 2.0
    x[5] = 0.0
    x[5, 0] = 25.0  # farthest from the mean, not part of the farthest pair
    x[6] = 0.0
    x[6, 0] = -14.0
    check(x[None])


def test_same_as_brute_force_loop_and_deterministic() -> None:
    rows = gains(5, 120, 96, 0.2, seed=4)
    got = l1_diameter(rows, prune_min=2)
    torch.testing.assert_close(got, max_pairwise_l1(rows), rtol=1e-5, atol=0)
    assert torch.equal(got, l1_diameter(rows, prune_min=2))
    # chunking channels does not change a channel's value
    assert torch.equal(got[2:4], l1_diameter(rows[2:4], prune_min=2))
    assert l1_diameter(rows.double(), prune_min=2).dtype == torch.float64
    assert l1_diameter(rows.half(), prune_min=2).dtype == torch.float32


def test_below_prune_min_is_the_brute_force_loop() -> None:
    rows = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(5))
    stats: dict[str, int] = {}
    assert torch.equal(l1_diameter(rows, stats=stats), max_pairwise_l1(rows))
    assert stats == {"pairs": 90, "checked": 90}
    with pytest.raises(ValueError, match="at least 2 classes"):
        l1_diameter(rows[:, :1])
