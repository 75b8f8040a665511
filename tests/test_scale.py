"""Calibration at scale: mergeable, resumable, order-free statistics and torch.distributed."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fairfx
from fairfx.apps import digits
from fairfx.method.stats import CalibrationState


def model_and_data(n: int = 400, bs: int = 40):
    torch.manual_seed(0)
    model = digits.VGGStyle(width=4).eval()
    split = digits.load()
    data = list(digits.batches(split.x_train[:n], split.y_train[:n], bs))
    return model, split.x_train[:4], data


def analyze(model, x, data, **kw):
    return fairfx.analyze(model, x, data, samples_per_class=12, progress=False, **kw)


def assert_same_scores(a, b, exact: bool) -> None:
    assert a.scores.keys() == b.scores.keys()
    for gid in a.scores:
        for field in ("u", "r"):
            got, want = getattr(a.scores[gid], field), getattr(b.scores[gid], field)
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                close(got, want)


def close(got, want) -> None:
    """Equal up to float32 summation order (batches of different composition)."""
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))


def same_plans(a, b) -> bool:
    pa, pb = a.plan(0.05), b.plan(0.05)
    return {g: u.tolist() for g, u in pa.units.items()} == {
        g: u.tolist() for g, u in pb.units.items()
    }


def test_saved_state_resumes_to_the_uninterrupted_scores(tmp_path) -> None:
    model, x, data = model_and_data()
    whole = analyze(model, x, data)
    first = analyze(model, x, data[:4])
    first.state.save(tmp_path / "state.pt")
    resumed = analyze(model, x, data[4:], state=tmp_path / "state.pt")
    assert_same_scores(resumed, whole, exact=True)
    assert same_plans(resumed, whole)


def test_sample_choice_does_not_depend_on_batch_order() -> None:
    model, x, data = model_and_data()
    a = analyze(model, x, data)
    b = analyze(model, x, list(reversed(data)))
    for c in a.state.per_class:
        np.testing.assert_array_equal(a.state.ordered(c).keys, b.state.ordered(c).keys)
    assert_same_scores(a, b, exact=False)
    assert same_plans(a, b)


def test_merged_shards_equal_one_pass() -> None:
    model, x, data = model_and_data()
    whole = analyze(model, x, data)
    even = analyze(model, x, data[0::2]).state
    odd = analyze(model, x, data[1::2]).state
    merged = odd.merge(even)
    for c in whole.state.per_class:
        np.testing.assert_array_equal(merged.ordered(c).keys, whole.state.ordered(c).keys)
    from fairfx.method.finalize import finalize

    scores = finalize(whole.graph, merged)
    for gid, s in scores.items():
        close(s.r, whole.scores[gid].r)
        close(s.u, whole.scores[gid].u)


def test_incompatible_states_are_refused() -> None:
    model, x, data = model_and_data(120)
    a = analyze(model, x, data).state
    b = fairfx.analyze(model, x, data, samples_per_class=5, progress=False).state
    with pytest.raises(fairfx.CalibrationError, match="cannot be merged"):
        a.merge(b)
    with pytest.raises(fairfx.CalibrationError, match="cannot be merged"):
        analyze(model, x, data, state=b)


def test_memory_is_bounded_by_kept_samples() -> None:
    model, x, data = model_and_data(400)
    small = analyze(model, x, data[:5]).state
    large = analyze(model, x, data).state
    assert small.sample_count() <= 12 * 10 and large.sample_count() == 12 * 10
    assert isinstance(large, CalibrationState)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, x, data = model_and_data()
        an = analyze(model, x, data)
        result = {
            "scores": {g: (s.u, s.r) for g, s in an.scores.items()},
            "plan": {g: u.tolist() for g, u in an.plan(0.05).units.items()},
        }
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    model, x, data = model_and_data()
    single = analyze(model, x, data)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["plan"] == ranks[1]["plan"]  # every rank ends with the same plan
    assert ranks[0]["plan"] == {g: u.tolist() for g, u in single.plan(0.05).units.items()}
    for gid, s in single.scores.items():
        for r in ranks:
            u, rr = r["scores"][gid]
            close(u, s.u)
            close(rr, s.r)
        np.testing.assert_array_equal(ranks[0]["scores"][gid][0], ranks[1]["scores"][gid][0])
