"""BatchNorm recalibration, allocations, round_to, ignored_layers, observe="consumer", rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairfx
from fairfx import CalibrationError, PlanError
from fairfx.apps import digits
from fairfx.method.allocation import ALLOCATIONS, round_kept

from .conftest import assert_same_state, state_snapshot


@pytest.fixture(scope="module")
def dense(split):
    torch.manual_seed(0)
    return digits.train(digits.DenseNetStyle(growth=6), split, epochs=1)


def calib(split, n=400, bs=100):
    return list(digits.batches(split.x_train[:n], split.y_train[:n], bs))


@pytest.fixture(scope="module")
def analysis(resnet, split):
    return fairfx.analyze(resnet, split.x_train[:8], calib(split), progress=False)


# ---------------------------------------------------------------------------- recalibration
class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.9)
        self.fc = nn.Linear(4 * 64, 10)
        self.bn1 = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.bn1(self.fc(self.drop(self.bn(self.conv(x))).flatten(1)))


def test_recalibrate_is_the_cumulative_batch_average(split) -> None:
    model = WithDropout().eval()
    snap = state_snapshot(model)
    data = calib(split, 300, 100)
    out = fairfx.recalibrate(model, data)
    assert_same_state(model, snap)  # the caller's module is untouched
    assert out.fairfx_recalibration == {"modules": 2, "batches": 3, "samples": 300}
    with torch.no_grad():
        feats = [model.conv(x) for x, _ in data]
    want = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)  # momentum None: equal weights
    torch.testing.assert_close(out.bn.running_mean, want, rtol=1e-5, atol=1e-6)
    assert out.bn.momentum == model.bn.momentum and not out.training
    assert all(not m.training for m in out.modules())
    again = fairfx.recalibrate(model, data)
    assert torch.equal(again.bn1.running_var, out.bn1.running_var)  # deterministic
    for p, q in zip(out.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q) and p.grad is None  # no weight update, no gradients


def test_recalibrate_keeps_dropout_off(split) -> None:
    # Dropout(0.9) in train mode would change what the BatchNorm after it sees.
    model = WithDropout().eval()
    data = calib(split, 200, 100)
    out = fairfx.recalibrate(model, data)
    means = []
    with torch.no_grad():
        for x, _ in data:
            h = F.batch_norm(model.conv(x), None, None, model.bn.weight, model.bn.bias, True)
            means.append(model.fc(h.flatten(1)).mean(0))  # dropout an identity
    torch.testing.assert_close(out.bn1.running_mean, torch.stack(means).mean(0))


def test_recalibrate_errors(split) -> None:
    with pytest.raises(CalibrationError, match="no batches"):
        fairfx.recalibrate(WithDropout(), [])
    with pytest.raises(CalibrationError, match="at least 2"):
        fairfx.recalibrate(WithDropout(), [(split.x_train[:1], split.y_train[:1])])


def test_compress_recalibrates_and_still_verifies(resnet, split) -> None:
    x = split.x_train[:8]
    snap = state_snapshot(resnet)
    pruned = fairfx.compress(resnet, x, 0.1, data=calib(split), progress=False)
    assert_same_state(resnet, snap)
    info = pruned.meta["fairfx"]
    assert info["recalibration"]["batches"] == 4 and info["verify"]["passed"]
    assert fairfx.verify(resnet, pruned, split.x_test[:8]).passed  # proves the rewrite
    off = fairfx.compress(resnet, x, 0.1, data=calib(split), progress=False, recalibrate=False)
    assert "recalibration" not in off.meta["fairfx"]
    bn = next(n for n, m in pruned.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(
        pruned.get_submodule(bn).running_mean, off.get_submodule(bn).running_mean
    )


# ---------------------------------------------------------------------------- allocations
@pytest.mark.parametrize("allocation", ALLOCATIONS)
def test_every_allocation_meets_a_budget_and_verifies(analysis, resnet, split, allocation) -> None:
    plan = analysis.plan_for(params=0.6, allocation=allocation)
    assert abs(plan.params_kept - 0.6) < 0.06, plan.note
    assert plan.summary()["allocation"] == allocation
    pruned = analysis.compress(plan)
    assert fairfx.verify(resnet, pruned, split.x_test[:8]).passed


def test_global_r_removes_the_lowest_r_in_count(analysis) -> None:
    plan = analysis.plan(ratio=0.3, allocation="global_r")
    pooled = np.concatenate([s.r for s in analysis.scores.values()])
    thr = np.sort(pooled)[int(0.3 * len(pooled)) - 1]
    for gid, s in analysis.scores.items():
        n = len(s.u)
        want = min(int((s.r <= thr).sum()), n - 1)
        assert plan.removed[gid] == want
        # the units that go are the lowest-U ones, not the lowest-R ones
        gone = np.setdiff1d(np.arange(n), plan.units[gid])
        assert set(gone) == set(np.argsort(s.u, kind="stable")[:want].tolist())


def test_hybrid_is_bounded_by_tod(analysis) -> None:
    from fairfx.method.tod import prune_count

    plan = analysis.plan(0.2, ratio=0.6, allocation="hybrid")
    for gid, s in analysis.scores.items():
        assert plan.removed[gid] <= prune_count(s.u, s.r, 0.2)


def test_hybrid_cost_thresholds_r_per_parameter_within_tod(analysis) -> None:
    from fairfx.method.planning import unit_costs
    from fairfx.method.tod import prune_count

    graph = analysis.graph
    ids = set(analysis.scores)
    cost = unit_costs(graph, ids)
    base = graph.cost().params
    for gid in ids:  # one unit's cost is what removing it frees, computed independently
        n = graph.groups[gid].size
        fewer = graph.cost({gid: np.arange(1, n)}).params
        assert cost[gid] == base - fewer > 0
    assert len(set(cost.values())) > 1  # units of different layers cost different amounts
    plan = analysis.plan(0.5, ratio=0.4, allocation="hybrid_cost")
    pooled = np.concatenate([s.r / cost[g] for g, s in analysis.scores.items()])
    thr = np.sort(pooled)[int(0.4 * len(pooled)) - 1]
    for gid, s in analysis.scores.items():
        n = len(s.u)
        want = min(int((s.r / cost[gid] <= thr).sum()), n - 1, prune_count(s.u, s.r, 0.5))
        assert plan.removed[gid] == want
    # weighing by cost changes the counts against plain hybrid (same threshold share)
    plain = analysis.plan(0.5, ratio=0.4, allocation="hybrid")
    assert plan.removed != plain.removed


def test_tod_plan_keeps_the_papers_meaning(analysis) -> None:
    from fairfx.method.tod import prune_count

    plan = analysis.plan(0.05)
    for gid, s in analysis.scores.items():
        assert plan.removed[gid] == prune_count(s.u, s.r, 0.05)


def test_bad_options_are_refused_before_scoring(resnet, split) -> None:
    def boom():
        raise AssertionError("data was read")
        yield  # pragma: no cover

    for opts, match in (
        ({"allocation": "globl"}, "allocation"),
        ({"round_to": 0}, "round_to"),
        ({"round_to": 8.0}, "round_to"),
        ({"rounds": 0}, "rounds"),
        ({"params": 1.5}, "params"),
        ({"allocation": "global_r"}, "needs one"),
    ):
        with pytest.raises(PlanError, match=match):
            fairfx.compress(resnet, split.x_train[:8], data=boom(), progress=False, **opts)


# ---------------------------------------------------------------------------- round_to, ignored
def test_round_kept() -> None:
    assert round_kept(42, 64, 8) == 40
    assert round_kept(45, 64, 8) == 48
    assert round_kept(3, 64, 8) == 8  # never zero
    assert round_kept(60, 61, 8) == 56  # never above the group size
    assert round_kept(61, 61, 8) == 61  # an untouched group stays whole
    assert round_kept(5, 6, 8) == 6  # no multiple fits
    assert round_kept(5, 6, None) == 5


def test_round_to_on_a_budget(analysis, resnet, split) -> None:
    plan = analysis.plan_for(params=0.5, round_to=4)
    groups = analysis.graph.groups
    for gid, units in plan.units.items():
        k, n = len(units), groups[gid].size
        assert k == n or k % 4 == 0, (gid, k, n)
    assert any(len(u) < groups[g].size for g, u in plan.units.items())
    pruned = analysis.compress(plan)
    # costs are those of the rounded plan
    assert plan.cost.params == sum(p.numel() for p in pruned.parameters())
    assert fairfx.verify(resnet, pruned, split.x_test[:8]).passed


def test_ignored_layers_stay_exact(analysis, resnet, split) -> None:
    names = ["layer1.0.conv1", "layer2"]
    plan = analysis.plan_for(params=0.5, ignored_layers=[names[0], resnet.layer2])
    pruned = analysis.compress(plan)
    before = dict(resnet.named_parameters())
    exact = [n for n in before if n.startswith(("layer1.0.conv1.", "layer2."))]
    assert exact
    for n in exact:
        assert torch.equal(pruned.get_parameter(n), before[n]), n
    assert plan.params_kept < 0.9
    with pytest.raises(PlanError, match="not a module"):
        analysis.plan(0.1, ignored_layers=["layer9"])


# ---------------------------------------------------------------------------- observe, rounds
def test_observe_consumer_reads_through_concat(dense, split) -> None:
    from fairfx.method.scoring import observation_points

    an = fairfx.analyze(dense, split.x_train[:8], calib(split), observe="consumer", progress=False)
    stem = an.graph.group_of_producer["stem"]
    points = [p for p in observation_points(an.graph, "consumer") if p.gid == stem]
    # the stem's channels are read by every dense layer of block 1 and the transition
    assert len(points) >= 4
    post = fairfx.analyze(
        dense, split.x_train[:8], calib(split), observe="post_act", progress=False
    )
    assert not np.allclose(an.scores[stem].u, post.scores[stem].u)
    pruned = an.compress(an.plan_for(params=0.6))
    assert fairfx.verify(dense, pruned, split.x_test[:8]).passed


def test_rounds_split_a_budget(resnet, split) -> None:
    snap = state_snapshot(resnet)
    pruned = fairfx.compress(
        resnet, split.x_train[:8], data=calib(split), params=0.4, rounds=2, progress=False
    )
    assert_same_state(resnet, snap)
    info = pruned.meta["fairfx"]
    kept = [r["params_after"] / info["rounds"][0]["params_before"] for r in info["rounds"]]
    assert len(kept) == 2 and kept[0] > kept[1]
    assert abs(kept[0] - 0.4**0.5) < 0.08 and abs(kept[1] - 0.4) < 0.06
    # keep lists are in the original model's channels: rebuilding from them gives the shapes
    rebuilt = fairfx.prune(resnet, split.x_train[:8], info["keep"])
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in pruned.parameters()]
    with pytest.raises(PlanError, match="needs labelled data"):
        fairfx.compress(resnet, split.x_train[:64], params=0.5, rounds=2, progress=False)
