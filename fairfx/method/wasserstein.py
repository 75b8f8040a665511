"""Wasserstein-1 statistics behind the Utilization score U.

A unit is useful when its output distribution differs between at least two classes, so

    U_j = max over class pairs (k1 < k2) of  W1( A_j(Z_k1), A_j(Z_k2) ).

For a Linear unit each sample is a scalar and W1 is the exact 1-D distance. For a conv channel each
sample is a whole H*W map; FAIR-Pruner compares those with the *sliced* W1: project every map onto
P fixed random unit directions and average the 1-D W1 over directions. The projections are taken
inside the forward hook (:func:`project`), so only ``[N, C, P]`` numbers per layer are stored,
never the raw feature maps.

The 1-D W1 between two empirical samples is the L1 distance between their quantile functions,
``∫_0^1 |Q_a(t) - Q_b(t)| dt``. With equal sample counts that is ``mean |sort(a) - sort(b)|``;
with unequal counts both quantile functions are step functions and the integral is exact on the
union of their breakpoints. :func:`max_pairwise_w1` turns the all-pairs problem into L1
distances between sorted (quantile) vectors, one ``torch.pdist(p=1)`` call per channel: fused
native code that never materialises an ``|a - b|`` tensor.

The math is torch and works on any device the inputs live on. The one exception is speed-only:
CPU tensors are sorted through numpy's in-place SIMD sort (see ``sort_inplace``), which gives the
same values as ``torch.sort``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = [
    "max_pairwise_l1",
    "max_pairwise_w1",
    "project",
    "projection_matrix",
    "sort_inplace",
    "w1_1d",
]

# Below this many |a - b| terms per pdist call (one channel), the call runs on one thread; above
# it, the call is long enough for torch's intra-op threads to pay off.
_PARALLEL_PDIST_MIN = 2**23
# numpy sorts in parallel slices only when there is enough to sort.
_PARALLEL_SORT_MIN = 2**20

# Default channel chunk of max_pairwise_w1 is chosen so that the sorted copy of one chunk of every
# class stays under this many bytes (see the memory bound in its docstring).
_DEFAULT_CHUNK_BYTES = 256 * 2**20


def projection_matrix(dim: int, num_projections: int, seed: int) -> Tensor:
    """Random unit directions for the sliced W1, as the columns of a ``[dim, P]`` matrix.

    Drawn from a private CPU ``torch.Generator`` seeded with ``seed`` (Gaussian columns, then
    normalised, i.e. uniform on the sphere), so the same arguments give bit-identical directions on
    every call and scoring is reproducible without touching the global RNG. float32, CPU; move it
    to the feature map's device once per layer.

    When ``dim == 1`` the result is the ``[1, 1]`` matrix ``[[1.]]`` whatever ``num_projections``
    is: the only unit directions in 1-D are ±1 and W1 is invariant under sign flip, so the sliced
    W1 of scalars *is* the exact 1-D W1, and P copies would only cost P times the work.
    """
    if dim < 1 or num_projections < 1:
        raise ValueError(f"dim and num_projections must be >= 1, got {dim=}, {num_projections=}")
    if dim == 1:
        return torch.ones(1, 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    theta = torch.randn(dim, num_projections, generator=gen, dtype=torch.float32)
    return theta / theta.norm(dim=0, keepdim=True)


def project(x: Tensor, theta: Tensor) -> Tensor:
    """Project each channel's flattened map onto the directions: ``[N,C,S] @ [S,P] -> [N,C,P]``.

    ``x`` is a feature map with its spatial dims flattened into S (``x.flatten(2)`` for a conv
    output; a Linear output is ``x[:, :, None]`` with S == 1). ``theta`` is cast to ``x``'s device
    and dtype so the hook does not have to care. One matmul per batch: the cost of scoring a conv
    layer is this product, after which only ``N * C * P`` numbers are kept.
    """
    if x.dim() != 3:
        raise ValueError(
            f"x must be [N, C, S] (spatial dims flattened), got shape {tuple(x.shape)}"
        )
    if theta.dim() != 2 or theta.shape[0] != x.shape[2]:
        raise ValueError(
            f"theta must be [S, P] with S == x.shape[2] == {x.shape[2]}, got {tuple(theta.shape)}"
        )
    return x @ theta.to(device=x.device, dtype=x.dtype)


def _quantile_grid(na: int, nb: int) -> tuple[list[int], list[int], list[float]]:
    """Common step grid of two empirical quantile functions with ``na`` and ``nb`` samples.

    ``Q_a(t) = sort(a)[ceil(t * na) - 1]`` is constant between consecutive breakpoints ``i / na``,
    and likewise for b, so on the sorted union of both breakpoint sets ``0 = t_0 < ... < t_G = 1``
    each interval ``(t_{g-1}, t_g]`` sees one sample of each. Returns, per interval, the index
    into ``sort(a)``, the index into ``sort(b)`` and the interval length. Breakpoints are handled
    as integers over ``L = lcm(na, nb)``, so the indices are exact (no float ``ceil``).
    ``G <= na + nb - 1``; with ``na == nb`` it is the identity with weights ``1 / na``.
    """
    big = math.lcm(na, nb)
    ends = sorted(
        {i * (big // na) for i in range(1, na + 1)} | {j * (big // nb) for j in range(1, nb + 1)}
    )
    idx_a = [-(-e * na // big) - 1 for e in ends]  # ceil(e * na / L) - 1
    idx_b = [-(-e * nb // big) - 1 for e in ends]
    weights = [(e - s) / big for s, e in zip([0, *ends[:-1]], ends, strict=True)]
    return idx_a, idx_b, weights


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 at least (half-precision storage is fine, summing 4096 terms in it is not)."""
    dt = torch.float32
    for t in tensors:
        dt = torch.promote_types(dt, t.dtype)
    if not dt.is_floating_point:
        raise ValueError(f"expected real floating-point samples, got {dt}")
    return dt


def w1_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact Wasserstein-1 distance between two 1-D empirical samples (uniform weights).

    Sizes may differ: the distance is ``∫_0^1 |Q_a(t) - Q_b(t)| dt`` summed exactly over the union
    of both quantile functions' breakpoints; with equal sizes this is ``mean |sort(a) - sort(b)|``.
    Returns a 0-d tensor in float32 or wider. Matches ``scipy.stats.wasserstein_distance``.
    """
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"a and b must be 1-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("W1 needs at least one sample on each side")
    dt = _compute_dtype(a, b)
    qa = torch.sort(a.to(dt)).values
    qb = torch.sort(b.to(dt)).values.to(qa.device)
    if qa.numel() == qb.numel():
        return (qa - qb).abs().mean()
    idx_a, idx_b, weights = _quantile_grid(qa.numel(), qb.numel())
    dev = qa.device
    w = torch.tensor(weights, dtype=dt, device=dev)
    ia = torch.tensor(idx_a, device=dev)
    ib = torch.tensor(idx_b, device=dev)
    return (w * (qa[ia] - qb[ib]).abs()).sum()


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def sort_inplace(t: Tensor, dim: int) -> None:
    """Sort ``t`` in place along ``dim`` (``dim`` > 0; dim 0 is split across threads).

    On CPU this goes through numpy's in-place sort, which uses SIMD sorting networks for float
    rows and was measured ~10x faster than ``torch.sort`` on the short rows used here (32 samples,
    millions of rows: 0.2 s vs 3 s for 10 classes x 2048 channels x P=128). numpy releases the GIL
    while sorting, so slices along dim 0 are sorted by ``torch.get_num_threads()`` threads. Sorting
    is exact, so the backend changes no value. Other devices use ``torch.sort``.
    """
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        arr = t.numpy()
        workers = min(torch.get_num_threads(), arr.shape[0])
        if workers <= 1 or arr.size < _PARALLEL_SORT_MIN:
            arr.sort(axis=dim)
            return
        parts = [arr[s] for s in _blocks(arr.shape[0], -(-arr.shape[0] // workers))]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda part: part.sort(axis=dim), parts))
    else:
        t.copy_(torch.sort(t, dim=dim).values)


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch ops with ``n`` threads (``None``: leave the setting alone).

    ``pdist`` opens one parallel region per call; when a call is only a few hundred microseconds
    of work the thread hand-off dominates, and on a busy machine (data-loader workers, other jobs)
    it was measured 100x slower than one thread. The previous setting is always restored.
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def max_pairwise_l1(rows: Tensor) -> Tensor:
    """``[C, K, L]`` -> ``[C]``: per channel, the largest L1 distance between two of its K rows.

    With each row a class's sorted samples (or quantile sketch) over all directions, this is the
    pair loop of U for classes of equal size (divide by L for the mean). One ``torch.pdist`` call
    per channel; calls too small to pay for threads run on one.
    """
    c, k, length = rows.shape
    if k < 2:
        raise ValueError(f"U needs at least 2 classes to compare, got {k}")
    small = k * (k - 1) // 2 * length < _PARALLEL_PDIST_MIN
    with _intra_op_threads(1 if small and rows.device.type == "cpu" else None):
        return torch.stack([torch.nn.functional.pdist(rows[i], p=1).max() for i in range(c)])


def max_pairwise_w1(
    per_class: Sequence[Tensor],
    *,
    channel_chunk: int | None = None,
    class_block: int = 32,
) -> Tensor:
    """Utilization score of every channel: max over class pairs of the (sliced) W1.

    Args:
        per_class: one tensor ``[n_k, C, P]`` per class (K >= 2): the ``n_k`` samples of that
            class, projected onto the same P directions (P == 1 and the identity direction for
            scalar units). Sample counts may differ between classes; C and P may not.
        channel_chunk: channels processed at once. Default: as many as keep the sorted chunk
            under 256 MiB. Results do not depend on it (beyond float summation order).
        class_block: classes per side of one cross-count ``cdist`` call (only used when sample
            counts differ); bounds the resampled temporaries. Results do not depend on it.

    Returns:
        ``[C]`` tensor: for channel c, ``max_{k1<k2} mean_p W1(x_k1[:, c, p], x_k2[:, c, p])``.
        The mean over directions sits *inside* the max, as in the sliced W1. dtype is float32 or
        the inputs' wider float dtype; device is the inputs'. Not differentiable (no autograd).

    How: for a fixed channel, class k's sorted samples over all P directions form one vector
    ``Q_k`` of ``n_k * P`` numbers, and with equal counts the sliced W1 of a pair is
    ``||Q_k1 - Q_k2||_1 / (n P)``. So each channel chunk of each class is copied once into a
    ``[c, K, n, P]`` buffer and sorted once along the sample dim, classes are grouped by sample
    count, and within a group every channel is one ``torch.pdist(p=1)`` call: fused, vectorised
    native code that visits each unordered pair once (``torch.cdist`` is ~5x slower here and
    computes both triangles). Pairs of classes whose counts differ are resampled onto the union
    of both quantile grids with the interval lengths folded in as weights
    (``w |x - y| = |w x - w y|`` for ``w > 0``), which is the exact W1, not an interpolation, and
    go through a batched ``torch.cdist(p=1)``. Work is ``~ K^2 / 2 * n * C * P`` absolute
    differences; there is no exact shortcut for an L1 max over pairs.

    Memory bound (beyond the inputs), with ``c = channel_chunk``, ``N = sum_k n_k``,
    ``B = class_block``, ``G <= n_a + n_b - 1`` for a pair of distinct counts, one float each:
    the sorted chunk ``N * c * P``, plus ``K (K - 1) / 2`` pair distances for one channel, plus,
    only when counts differ, two resampled blocks ``2 * B * G * c * P`` and ``B^2 * c`` distances.
    With the default chunk the first term is <= 256 MiB (or one channel, if one channel is larger).
    """
    k = len(per_class)
    if k < 2:
        raise ValueError(f"U needs at least 2 classes to compare, got {k}")
    shapes = [tuple(x.shape) for x in per_class]
    if any(len(s) != 3 for s in shapes):
        raise ValueError(f"every class must be [n_k, C, P], got shapes {shapes}")
    c_all, p = shapes[0][1], shapes[0][2]
    if any(s[1:] != (c_all, p) for s in shapes):
        raise ValueError(f"all classes must share C and P, got shapes {shapes}")
    if any(s[0] < 1 for s in shapes) or p < 1:
        raise ValueError(f"every class needs >= 1 sample and P >= 1, got shapes {shapes}")
    if class_block < 1 or (channel_chunk is not None and channel_chunk < 1):
        raise ValueError(
            f"channel_chunk and class_block must be >= 1, got {channel_chunk} and {class_block}"
        )
    dt = _compute_dtype(*per_class)
    dev = per_class[0].device
    counts = [s[0] for s in shapes]
    total = sum(counts)
    itemsize = torch.empty((), dtype=dt).element_size()
    if channel_chunk is None:
        channel_chunk = max(1, _DEFAULT_CHUNK_BYTES // (total * max(p, 1) * itemsize))
    channel_chunk = min(channel_chunk, max(c_all, 1))

    # Group classes by sample count: equal counts need no resampling at all.
    groups: dict[int, list[int]] = {}
    for idx, n in enumerate(counts):
        groups.setdefault(n, []).append(idx)
    sizes = sorted(groups)
    cross = [(na, nb) for i, na in enumerate(sizes) for nb in sizes[i + 1 :]]

    out = torch.full((c_all,), -math.inf, dtype=dt, device=dev)
    # One flat buffer reused by every chunk: re-allocating hundreds of MiB per chunk costs page
    # faults comparable to the sort itself.
    flat = torch.empty(channel_chunk * total * p, dtype=dt, device=dev)
    with torch.no_grad():
        for ch in _blocks(c_all, channel_chunk):
            cc = ch.stop - ch.start
            q: dict[int, Tensor] = {}
            offset = 0
            for n in sizes:
                size = cc * len(groups[n]) * n * p
                buf = flat[offset : offset + size].view(cc, len(groups[n]), n, p)
                offset += size
                for j, i in enumerate(groups[n]):
                    buf[:, j].copy_(per_class[i].detach()[:, ch].permute(1, 0, 2))
                sort_inplace(buf, 2)
                q[n] = buf
            best = torch.full((cc,), -math.inf, dtype=dt, device=dev)
            for n in sizes:  # pairs within one count group
                kg = len(groups[n])
                if kg < 2:
                    continue
                best = torch.maximum(best, max_pairwise_l1(q[n].view(cc, kg, n * p)) / (n * p))
            for na, nb in cross:  # pairs across count groups
                idx_a, idx_b, weights = _quantile_grid(na, nb)
                w = torch.tensor(weights, dtype=dt, device=dev).view(1, 1, -1, 1)
                ia = torch.tensor(idx_a, device=dev)
                ib = torch.tensor(idx_b, device=dev)
                g = len(weights)
                for sa in _blocks(len(groups[na]), class_block):
                    ra = (q[na][:, sa].index_select(2, ia) * w).view(cc, -1, g * p)
                    for sb in _blocks(len(groups[nb]), class_block):
                        rb = (q[nb][:, sb].index_select(2, ib) * w).view(cc, -1, g * p)
                        d = torch.cdist(ra, rb, p=1)
                        best = torch.maximum(best, d.flatten(1).amax(1) / p)
            out[ch] = best
    return out
