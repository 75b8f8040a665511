"""FAIR scoring, ToD planning and compress, on a small CNN trained on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

import fairfx
from fairfx import CalibrationError, PlanError
from fairfx.apps import digits
from fairfx.method.tod import prune_count

from .conftest import assert_same_state, state_snapshot


@pytest.fixture(scope="module")
def trained(split):
    torch.manual_seed(0)
    return digits.train(digits.VGGStyle(width=8), split, epochs=3)


def calib(split, n=600, bs=100):
    return list(digits.batches(split.x_train[:n], split.y_train[:n], bs))


@pytest.fixture(scope="module")
def analysis(trained, split):
    return fairfx.analyze(trained, split.x_train[:8], calib(split), progress=False)


def test_analyze_scores_every_prunable_group(analysis) -> None:
    prunable = [g for g in analysis.graph.groups if g.prunable]
    assert set(analysis.scores) == {g.id for g in prunable}
    for g in prunable:
        s = analysis.scores[g.id]
        assert s.u.shape == s.r.shape == (g.size,)
        assert np.isfinite(s.u).all() and (s.u >= 0).all() and (s.r >= 0).all()
        assert s.u.max() > 0 and s.r.max() > 0
    per_name = analysis.by_producer()
    assert per_name["features.0.0"]["u"].shape == (8,)
    assert analysis.record["samples"] == 320 and len(analysis.record["classes"]) == 10


def test_analyze_leaves_the_model_untouched(split) -> None:
    torch.manual_seed(1)
    model = digits.ResNetStyle(width=4).train()
    model.layer1[0].conv1.weight.requires_grad_(False)
    snap = state_snapshot(model)
    fairfx.analyze(model, split.x_train[:8], calib(split, 200), progress=False)
    assert_same_state(model, snap)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def _taylor_by_weights(model, batches, conv):
    """R from the weights' side: |sum over batches of sum_w w dL/dw + b dL/db| per channel."""
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        w = (conv.weight * conv.weight.grad).flatten(1).sum(1) + conv.bias * conv.bias.grad
        total += w.detach().double()
    model.zero_grad()
    return total.abs().numpy()


def test_reconstruction_score_equals_weight_side_taylor(split) -> None:
    torch.manual_seed(0)
    model = digits.VGGStyle(width=4, bn=False).eval()
    data = exactly(split, 5)
    an = fairfx.analyze(model, split.x_train[:4], data, samples_per_class=5, progress=False)
    conv = model.features[1][0]
    want = _taylor_by_weights(model, data, conv)
    got = an.by_producer()["features.1.0"]["r"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())


def exactly(split, per_class, bs=25):
    """Batches holding exactly ``per_class`` samples of each class, so every one is used."""
    idx = torch.cat([torch.nonzero(split.y_train == c).flatten()[:per_class] for c in range(10)])
    return list(digits.batches(split.x_train[idx], split.y_train[idx], bs))


def test_linear_utilization_is_exact_max_pairwise_w1(split) -> None:
    torch.manual_seed(0)
    model = digits.VGGStyle(width=4, bn=False).eval()
    data = exactly(split, 8)
    an = fairfx.analyze(
        model, split.x_train[:4], data, samples_per_class=8, observe="module", progress=False
    )
    fc = model.classifier[1]
    feats, labels = [], []
    with torch.no_grad():
        for x, y in data:
            feats.append(fc(model.features(x).flatten(1)))
            labels.append(y)
    feats, labels = torch.cat(feats).numpy(), torch.cat(labels).numpy()
    want = np.zeros(feats.shape[1])
    for j in range(feats.shape[1]):
        for a in range(10):
            for b in range(a + 1, 10):
                d = scipy.stats.wasserstein_distance(feats[labels == a, j], feats[labels == b, j])
                want[j] = max(want[j], d)
    got = an.by_producer()["classifier.1"]["u"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_plans_are_deterministic(trained, split) -> None:
    a = fairfx.analyze(trained, split.x_train[:8], calib(split), progress=False)
    b = fairfx.analyze(trained, split.x_train[:8], calib(split), progress=False)
    for gid in a.scores:
        np.testing.assert_array_equal(a.scores[gid].u, b.scores[gid].u)
        np.testing.assert_array_equal(a.scores[gid].r, b.scores[gid].r)
    pa, pb = a.plan(0.05), b.plan(0.05)
    assert {g: u.tolist() for g, u in pa.units.items()} == {
        g: u.tolist() for g, u in pb.units.items()
    }
    ga, gb = a.compress(0.05), b.compress(0.05)
    assert ga.code == gb.code


def test_analyze_reuses_a_given_channel_graph(analysis, trained, split, monkeypatch) -> None:
    """One capture for the groups (or the memory estimate) and the scoring: same scores."""
    import fairfx.engine.group_graph as groups

    graph = fairfx.channel_graph(trained, split.x_train[:8])
    monkeypatch.setattr(groups, "capture", None)  # analyze must not capture again
    again = fairfx.analyze(trained, split.x_train[:8], calib(split), progress=False, graph=graph)
    assert again.graph is graph
    for gid in analysis.scores:
        np.testing.assert_array_equal(again.scores[gid].u, analysis.scores[gid].u)
        np.testing.assert_array_equal(again.scores[gid].r, analysis.scores[gid].r)
    monkeypatch.undo()
    other = digits.VGGStyle(width=8)
    with pytest.raises(PlanError, match="another model"):
        fairfx.analyze(other, split.x_train[:8], calib(split), progress=False, graph=graph)


def test_higher_alpha_prunes_more_and_respects_the_half_bound(analysis) -> None:
    kept = [analysis.plan(alpha).params_kept for alpha in (0.0, 0.05, 0.2, 0.5)]
    assert kept == sorted(kept, reverse=True) and kept[-1] < kept[0]
    plan = analysis.plan(0.5)
    for gid, m in plan.removed.items():
        n = analysis.graph.groups[gid].size
        assert m <= n / (2 - 0.5) + 1e-9


def test_importance_and_uniform_options(analysis) -> None:
    fair, l1 = analysis.plan(0.1), analysis.plan(0.1, importance="l1")
    rnd = analysis.plan(0.1, importance="random")
    assert fair.removed == l1.removed == rnd.removed  # ToD fixes counts, importance picks units
    uni = analysis.plan(uniform=0.25)
    for gid, m in uni.removed.items():
        assert m == int(0.25 * analysis.graph.groups[gid].size)
    with pytest.raises(PlanError, match="importance"):
        analysis.plan(0.1, importance="taylor")


def test_plan_for_meets_a_budget(analysis) -> None:
    plan = analysis.plan_for(params=0.7)
    assert abs(plan.params_kept - 0.7) < 0.05, plan.note
    plan = analysis.plan_for(flops=0.8)
    assert abs(plan.macs_kept - 0.8) < 0.05, plan.note
    uniform = analysis.plan_for(params=0.7, uniform=True, importance="l1")
    assert abs(uniform.params_kept - 0.7) < 0.05
    unreachable = analysis.plan_for(params=0.001)
    assert "not reachable" in unreachable.note


def test_save_and_load_give_the_same_plan(analysis, trained, split, tmp_path) -> None:
    path = tmp_path / "scores.pt"
    analysis.save(path)
    again = fairfx.load_analysis(path, trained, split.x_train[:8])
    assert again.plan(0.05).units.keys() == analysis.plan(0.05).units.keys()
    for gid, units in analysis.plan(0.05).units.items():
        np.testing.assert_array_equal(again.plan(0.05).units[gid], units)
    bare = fairfx.load_analysis(path)
    with pytest.raises(fairfx.FairfxError, match="without its model"):
        bare.plan(0.05)


def test_compress_end_to_end_on_digits(trained, split) -> None:
    pruned = fairfx.compress(trained, split.x_train[:8], 0.05, data=calib(split), progress=False)
    info = pruned.meta["fairfx"]
    assert info["params_after"] < info["params_before"]
    assert fairfx.verify(trained, pruned, split.x_test[:16]).passed
    ep = torch.export.export(pruned.eval(), (split.x_test[:4],))
    with torch.no_grad():
        assert torch.allclose(ep.module()(split.x_test[:4]), pruned(split.x_test[:4]), atol=1e-5)
    acc = digits.accuracy(pruned, split.x_test, split.y_test)
    assert acc > 0.25, acc  # one-shot, before fine-tuning; chance is 0.1


def test_compress_residual_model(resnet, split) -> None:
    an = fairfx.analyze(resnet, split.x_train[:8], calib(split), progress=False)
    pruned = an.compress(0.1)
    assert pruned.meta["fairfx"]["plan"]["units_removed"] > 0
    assert fairfx.verify(resnet, pruned, split.x_test[:8]).passed
    member = an.plan(0.1, group_rule="member")
    stream = next(g.id for g in an.graph.groups if "layer1.0.conv2" in g.producers)
    s = an.scores[stream]
    assert set(s.member_u) == set(an.graph.groups[stream].producers)
    # The reference's rule: each member planned on its own scores, the largest kept count wins.
    want = min(prune_count(s.member_u[p], s.member_r[p], 0.1) for p in s.member_u)
    assert member.removed[stream] == want


def test_compress_without_data_labels_by_predictions(trained, split) -> None:
    pruned = fairfx.compress(trained, split.x_train[:64], 0.05, progress=False)
    assert pruned.meta["fairfx"]["analysis"]["samples"] > 0


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_alpha_out_of_range(trained, split, alpha) -> None:
    with pytest.raises(PlanError, match="alpha"):
        fairfx.compress(trained, split.x_train[:8], alpha, data=calib(split), progress=False)


def test_batches_without_targets(trained, split) -> None:
    with pytest.raises(CalibrationError, match="targets"):
        fairfx.analyze(trained, split.x_train[:8], [split.x_train[:32]], progress=False)


def test_single_class_is_refused(trained, split) -> None:
    ones = split.x_train[split.y_train == 1]
    data = [(ones, torch.ones(len(ones), dtype=torch.long))]
    with pytest.raises(CalibrationError, match="at least 2 classes"):
        fairfx.analyze(trained, split.x_train[:8], data, progress=False)


def test_targets_out_of_range(trained, split) -> None:
    data = [(split.x_train[:8], torch.full((8,), 12))]
    with pytest.raises(CalibrationError, match=r"\[0, 10\)"):
        fairfx.analyze(trained, split.x_train[:8], data, progress=False)


def test_output_that_is_not_logits(split) -> None:
    class Embed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.c(x)

    with pytest.raises(CalibrationError, match="logits"):
        fairfx.analyze(Embed(), split.x_train[:8], calib(split, 100), progress=False)
    with pytest.raises(CalibrationError, match="logits"):
        fairfx.compress(Embed(), split.x_train[:8], 0.05, progress=False)


def test_one_predicted_class_needs_data(split) -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 3)
            self.bias = nn.Parameter(torch.tensor([100.0, 0.0, 0.0]))

        def forward(self, x):
            return self.fc(self.c(x).mean((2, 3))) + self.bias

    with pytest.raises(CalibrationError, match="data="):
        fairfx.compress(Constant(), split.x_train[:16], 0.05, progress=False)


def test_progress_bar_can_be_silenced(trained, split, capsys) -> None:
    fairfx.analyze(trained, split.x_train[:8], calib(split, 200), progress=False)
    assert "scoring" not in capsys.readouterr().err
    fairfx.analyze(trained, split.x_train[:8], calib(split, 200), progress=True)
    assert "scoring" in capsys.readouterr().err
