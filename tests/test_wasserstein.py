"""Wasserstein-1 statistics for the U score, checked against scipy and naive loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from fairfx.method import wasserstein
from fairfx.method.wasserstein import max_pairwise_w1, project, projection_matrix, w1_1d


def classes(
    counts: list[int], c: int, p: int, seed: int, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """Per-class samples with class-dependent shifts and scales, so the max pair is not trivial."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        shift = torch.randn(1, c, p, generator=g)
        scale = torch.rand(1, c, p, generator=g) + 0.5
        out.append((torch.randn(n, c, p, generator=g) * scale + shift).to(dtype))
    return out


def naive_sliced(per_class: list[torch.Tensor]) -> torch.Tensor:
    """max over pairs of mean over projections of scipy's 1-D W1, one channel at a time."""
    xs = [x.double().numpy() for x in per_class]
    _, c, p = xs[0].shape
    out = np.zeros(c)
    for ch in range(c):
        best = 0.0
        for a, b in itertools.combinations(xs, 2):
            d = np.mean([wasserstein_distance(a[:, ch, j], b[:, ch, j]) for j in range(p)])
            best = max(best, d)
        out[ch] = best
    return torch.from_numpy(out)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("na", "nb"), [(32, 32), (7, 7), (1, 1), (5, 3), (32, 20), (1, 9), (6, 4)])
def test_w1_1d_matches_scipy(seed: int, na: int, nb: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(na, generator=g, dtype=torch.float64)
    b = torch.randn(nb, generator=g, dtype=torch.float64) * 2 + 0.3
    want = wasserstein_distance(a.numpy(), b.numpy())
    assert w1_1d(a, b).item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert w1_1d(b, a).item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_w1_1d_equal_sizes_is_mean_sorted_difference() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    want = (a.sort().values - b.sort().values).abs().mean()
    torch.testing.assert_close(w1_1d(a, b), want)
    assert w1_1d(a, a).item() == 0.0
    assert w1_1d(a.half(), b.half()).dtype == torch.float32  # never sums in half precision


def test_w1_1d_with_ties_and_validation() -> None:
    a = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    b = torch.tensor([0.0, 1.0, 1.0])
    assert w1_1d(a, b).item() == pytest.approx(wasserstein_distance(a.numpy(), b.numpy()))
    with pytest.raises(ValueError, match="1-D"):
        w1_1d(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="at least one sample"):
        w1_1d(torch.zeros(0), torch.zeros(2))


def test_projection_matrix_is_deterministic_unit_norm() -> None:
    t1 = projection_matrix(49, 128, seed=3)
    t2 = projection_matrix(49, 128, seed=3)
    assert t1.shape == (49, 128) and t1.dtype == torch.float32 and t1.device.type == "cpu"
    assert torch.equal(t1, t2)
    assert not torch.equal(t1, projection_matrix(49, 128, seed=4))
    torch.testing.assert_close(t1.norm(dim=0), torch.ones(128))
    # The global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    projection_matrix(49, 128, seed=3)
    assert torch.equal(torch.rand(1), before)


def test_projection_matrix_scalar_and_validation() -> None:
    assert torch.equal(projection_matrix(1, 128, seed=0), torch.ones(1, 1))
    with pytest.raises(ValueError, match="must be >= 1"):
        projection_matrix(0, 4, seed=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        projection_matrix(4, 0, seed=0)


def test_project_shapes_and_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64).flatten(2)  # [N, C, H*W]
    theta = projection_matrix(20, 7, seed=1)
    z = project(x, theta)
    assert z.shape == (6, 3, 7) and z.dtype == torch.float64
    torch.testing.assert_close(z[2, 1], x[2, 1] @ theta.double())
    with pytest.raises(ValueError, match=r"\[S, P\]"):
        project(x, projection_matrix(19, 7, seed=1))
    with pytest.raises(ValueError, match=r"\[N, C, S\]"):
        project(x[0], theta)


@pytest.mark.parametrize("seed", range(4))
def test_identity_projection_equals_scipy_per_channel(seed: int) -> None:
    """P = 1 (Linear units): U is the max over class pairs of scipy's exact 1-D W1."""
    per_class = classes([12] * 5, c=9, p=1, seed=seed, dtype=torch.float64)
    got = max_pairwise_w1(per_class)
    torch.testing.assert_close(got, naive_sliced(per_class), rtol=1e-12, atol=1e-12)


def test_linear_units_through_project() -> None:
    """A Linear output [N, C] goes through project() with the [1, 1] identity direction."""
    g = torch.Generator().manual_seed(0)
    ys = [torch.randn(10, 4, generator=g, dtype=torch.float64) + k for k in range(3)]
    theta = projection_matrix(1, 128, seed=0)
    zs = [project(y[:, :, None], theta) for y in ys]
    want = torch.tensor(
        [
            max(wasserstein_distance(a[:, c], b[:, c]) for a, b in itertools.combinations(ys, 2))
            for c in range(4)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(max_pairwise_w1(zs), want)


@pytest.mark.parametrize("seed", range(3))
def test_sliced_equals_naive_double_loop(seed: int) -> None:
    per_class = classes([8] * 4, c=5, p=6, seed=seed)
    got = max_pairwise_w1(per_class)
    assert got.dtype == torch.float32 and got.shape == (5,)
    torch.testing.assert_close(got.double(), naive_sliced(per_class), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "counts", [[8, 5, 8, 3], [4, 6], [1, 7, 7, 2, 2, 2], [10, 9, 10, 9, 1], [3, 3]]
)
def test_unequal_counts_are_exact(counts: list[int]) -> None:
    per_class = classes(counts, c=4, p=3, seed=sum(counts), dtype=torch.float64)
    got = max_pairwise_w1(per_class, class_block=2)
    torch.testing.assert_close(got, naive_sliced(per_class), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("counts", [[6] * 7, [6, 4, 6, 5, 4, 6, 1]])
def test_chunking_does_not_change_the_result(counts: list[int]) -> None:
    per_class = classes(counts, c=11, p=5, seed=7, dtype=torch.float64)
    reference = max_pairwise_w1(per_class, channel_chunk=11, class_block=64)  # one chunk
    for chunk, block in [(1, 1), (2, 3), (4, 2), (5, 100)]:
        got = max_pairwise_w1(per_class, channel_chunk=chunk, class_block=block)
        torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threaded", [False, True])
def test_float32_path_matches_float64(threaded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 (numpy sort, pdist) agrees with float64, with and without the threaded paths."""
    if threaded:  # force the parallel sort and multi-threaded pdist on this small input
        monkeypatch.setattr(wasserstein, "_PARALLEL_SORT_MIN", 0)
        monkeypatch.setattr(wasserstein, "_PARALLEL_PDIST_MIN", 0)
    per_class = classes([32] * 12, c=16, p=128, seed=1)
    got = max_pairwise_w1(per_class)
    want = max_pairwise_w1([x.double() for x in per_class], channel_chunk=3)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_inputs_are_left_untouched_and_low_precision_is_upcast() -> None:
    per_class = classes([5, 5, 5], c=3, p=4, seed=2)
    copies = [x.clone() for x in per_class]
    max_pairwise_w1(per_class)
    assert all(torch.equal(a, b) for a, b in zip(per_class, copies, strict=True))
    half = max_pairwise_w1([x.half() for x in per_class])
    assert half.dtype == torch.float32
    want = max_pairwise_w1([x.half().float() for x in per_class])
    torch.testing.assert_close(half, want)


def test_identical_classes_give_zero() -> None:
    x = classes([6], c=3, p=2, seed=0)[0]
    assert torch.equal(max_pairwise_w1([x, x.flip(0)]), torch.zeros(3))


def test_max_pairwise_validation() -> None:
    x = torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        max_pairwise_w1([x])
    with pytest.raises(ValueError, match="share C and P"):
        max_pairwise_w1([x, torch.zeros(4, 2, 2)])
    with pytest.raises(ValueError, match=r"\[n_k, C, P\]"):
        max_pairwise_w1([x, torch.zeros(4, 3)])
    with pytest.raises(ValueError, match="1 sample"):
        max_pairwise_w1([x, torch.zeros(0, 3, 2)])
    with pytest.raises(ValueError, match=">= 1"):
        max_pairwise_w1([x, x], channel_chunk=0)


def test_thread_setting_is_restored() -> None:
    before = torch.get_num_threads()
    max_pairwise_w1(classes([4, 4, 4], c=2, p=3, seed=0))
    assert torch.get_num_threads() == before
