"""The weight slicing of the rewrite: every kept slice, nothing shared, with or without scratch."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

from fairfx.engine.edits import scratch_buffers, select_axes


def _masks(shape: tuple[int, ...], axes: tuple[int, ...], seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for d in axes:
        keep = rng.random(shape[d]) < 0.5
        keep[rng.integers(shape[d])] = True  # at least one stays
        out[d] = keep
    return out


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (0, 2), (0, 1, 2), (1, 2, 3)])
def test_select_axes_keeps_exactly_the_marked_slices(pooled: bool, axes: tuple[int, ...]) -> None:
    """Equal to numpy's indexing of the same masks, for one to three axes (three use both
    scratch slots in turn), and every result owns its storage: later selects in the same
    pool and leaving the pool do not change it."""
    shape = (6, 5, 4, 3)
    results = []
    with scratch_buffers() if pooled else nullcontext():
        for seed in range(3):
            t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
            cuts = _masks(shape, axes, seed)
            want = t.numpy()
            for d in sorted(cuts):
                want = np.compress(cuts[d], want, axis=d)
            got = select_axes(t, cuts)
            assert got is not None and got.is_contiguous()
            results.append((got, want.copy()))
    for got, want in results:
        np.testing.assert_array_equal(got.numpy(), want)
    storages = {got.untyped_storage().data_ptr() for got, _ in results}
    assert len(storages) == len(results)


def test_select_axes_returns_none_when_nothing_is_removed() -> None:
    t = torch.randn(4, 3)
    assert select_axes(t, {0: np.ones(4, dtype=bool), 1: None}) is None
    assert select_axes(t, {}) is None


def test_select_axes_detaches_from_autograd() -> None:
    w = torch.nn.Parameter(torch.randn(4, 3))
    got = select_axes(w, {0: np.array([True, False, True, True]), 1: np.array([1, 0, 1], bool)})
    assert got is not None and not got.requires_grad and got.shape == (3, 2)


def test_every_edit_kind_follows_one_protocol() -> None:
    """The rewrite treats edits alike: a phase, a key, the slots sliced, the weights owned, and
    apply(site, kept) returning what changed; no isinstance dispatch is needed."""
    import torchvision

    from fairfx.engine.edits import ArgEdit, EditSite, ModuleEdit, ParamEdit
    from fairfx.engine.group_graph import build

    graph = build(torchvision.models.shufflenet_v2_x0_5().eval(), torch.randn(2, 3, 32, 32))
    edits = graph.channel_pass.edits
    assert {type(e) for e in edits} >= {ArgEdit, ModuleEdit}
    for e in edits:
        assert e.phase in ("graph", "tensors")
        assert isinstance(e.key(), tuple) and len(e.key()) == 2
        assert all(isinstance(s, np.ndarray) for s in e.slots())
        assert (e.weights is None) == isinstance(e, ArgEdit)
    keep_all = np.ones(len(graph.roots), dtype=bool)
    site = EditSite({n.name: n for n in graph.captured.graph.nodes}, graph.captured)
    for e in edits:
        if isinstance(e, (ModuleEdit, ParamEdit)):
            assert e.apply(site, keep_all) is None  # nothing removed: nothing changes
