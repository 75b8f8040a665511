"""The one planning API: PlanOptions (checked in one place), ChannelGraph.plan/cost/prune, plans
from the weights alone, per-layer ratios and caps, a user's own importance, fairfx.count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fairfx
from fairfx import PlanError, PlanOptions


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


X = torch.randn(2, 3, 8, 8)


@pytest.fixture(scope="module")
def graph():
    return fairfx.channel_graph(net(), X)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\)"),
        ({"params": 0.5, "flops": 0.5}, "exactly one budget"),
        ({"params": 0}, r"params= is the fraction to keep, a number in \(0, 1\]"),
        ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
        ({"alpha": 0.1, "importance": "L1"}, "did you mean 'l1'"),
        ({"alpha": 0.1, "round_to": 0}, "round_to must be at least 1"),
        ({"alpha": 0.1, "max_ratio": 2}, "max_ratio"),
        ({"alpha": 0.1, "layer_ratios": {"0": 1.2}}, r"layer_ratios\['0'\]"),
        ({"alpha": 0.1, "layer_ratios": [0.5]}, "maps module names"),
        ({}, "give alpha"),
        ({"allocation": "global_r"}, "needs one"),
        ({"params": 0.5, "ratio": 0.3}, "not both"),
    ],
)
def test_plan_options_refuse_bad_fields_in_one_line(fields, message) -> None:
    with pytest.raises(PlanError, match=message) as exc:
        PlanOptions(**fields)
    assert "\n" not in str(exc.value)


def test_unknown_keywords_name_the_closest_option() -> None:
    with pytest.raises(PlanError, match="did you mean round_to="):
        fairfx.compress(net(), X, 0.1, round_too=8)


def test_compress_needs_a_target_instead_of_a_silent_default() -> None:
    with pytest.raises(PlanError, match="give alpha"):
        fairfx.compress(net(), X)


def test_data_free_l1_plan_prunes_by_filter_norm(graph) -> None:
    plan = graph.plan(PlanOptions(ratio=0.5, importance="l1"))
    model = net()
    pruned = graph.prune(plan)
    assert fairfx.verify(model, pruned, X).passed
    # The first conv keeps its 8 filters of largest L1 norm.
    norms = model[0].weight.detach().abs().flatten(1).sum(1).numpy()
    kept = pruned.meta["fairfx"]["keep"]["0"]
    assert sorted(kept) == sorted(np.argsort(-norms)[:8].tolist())
    assert graph.cost(plan).params == plan.cost.params < graph.cost().params


def test_data_free_needs_a_data_free_importance_and_allocation(graph) -> None:
    with pytest.raises(PlanError, match="needs U and R from calibration data"):
        graph.plan(PlanOptions(ratio=0.5))
    with pytest.raises(PlanError, match="weighs units by R"):
        graph.plan(PlanOptions(alpha=0.1, importance="l1"))


def test_data_free_budget_meets_its_target(graph) -> None:
    plan = graph.plan(params=0.6, importance="l1")
    assert abs(plan.params_kept - 0.6) < 0.05, plan.note


def test_layer_ratios_and_max_ratio(graph) -> None:
    plan = graph.plan(ratio=0.5, importance="l1", layer_ratios={"3": 0.25}, max_ratio=0.4)
    sizes = {g.producers[0]: g.size for g in graph.groups}
    kept = {graph.groups[g].producers[0]: len(u) for g, u in plan.units.items()}
    assert kept["3"] == sizes["3"] - int(0.25 * sizes["3"])  # the named layer's own fraction
    assert kept["0"] == sizes["0"] - int(0.4 * sizes["0"])  # 0.5 capped at 0.4
    with pytest.raises(PlanError, match="not a module of the model"):
        graph.plan(ratio=0.5, importance="l1", layer_ratios={"nope": 0.5})
    # the same one check as the CLI's --ignore, with names that exist as the example
    with pytest.raises(PlanError, match=r"ignored_layers: 'nope' .* such as 0, 1"):
        graph.plan(ratio=0.5, importance="l1", ignored_layers=["nope"])


def test_a_callable_importance_chooses_the_units(graph) -> None:
    def last_first(g, group):
        return -np.arange(group.size, dtype=float)

    # lower scores go first: -index makes the LAST unit the lowest, so the first ones stay.
    plan = graph.plan(ratio=0.5, importance=last_first)
    for gid, units in plan.units.items():
        n = graph.groups[gid].size
        assert units.tolist() == list(range(n - n // 2))
    assert plan.summary()["importance"] == "custom"
    with pytest.raises(PlanError, match="importance callable returned 1 values"):
        graph.plan(ratio=0.5, importance=lambda g, group: [0.0])


def test_analysis_plans_take_plan_options_and_keywords_alike() -> None:
    model = net()
    x = torch.randn(30, 3, 8, 8)
    y = torch.arange(30) % 3
    an = fairfx.analyze(model, X, [(x, y)], samples_per_class=8, progress=False)
    a = an.plan(PlanOptions(alpha=0.2))
    b = an.plan(0.2)
    assert {g: u.tolist() for g, u in a.units.items()} == {
        g: u.tolist() for g, u in b.units.items()
    }
    with_budget = an.plan(PlanOptions(params=0.7))
    assert abs(with_budget.params_kept - 0.7) < 0.1
    pruned = fairfx.compress(model, X, PlanOptions(params=0.7), data=[(x, y)], progress=False)
    assert fairfx.verify(model, pruned, X).passed


def test_count_matches_the_graph_cost() -> None:
    model = net()
    cost = fairfx.count(model, X)
    assert cost.params == sum(p.numel() for p in model.parameters())
    conv = 16 * 3 * 9 * 64 + 32 * 16 * 9 * 64
    assert cost.macs >= conv + 32 * 10


def test_prune_in_a_training_loop_keeps_training() -> None:
    """The documented way to prune inside one's own loop: plan from the weights, prune, and
    keep training the GraphModule with any optimizer."""
    model = net().train()
    graph = fairfx.channel_graph(model, X)
    pruned = graph.prune(graph.plan(ratio=0.25, importance="l1")).train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    loss = pruned(torch.randn(4, 3, 8, 8)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)
