"""Option checks happen before any work: a typo costs milliseconds, not a scoring pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairfx
from fairfx import CalibrationError, PlanError


class _Untouchable(nn.Module):
    """Fails the test if fairfx traces or runs it: options must be refused before that."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        raise AssertionError("the model was traced or run before the options were checked")


class _NoData:
    def __iter__(self):
        raise AssertionError("calibration data was read before the options were checked")


X = torch.randn(2, 4)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"group_rule": "members"}, PlanError, "group_rule must be one of 'joint', 'member'"),
        ({"group_rule": "members"}, PlanError, "did you mean 'member'"),
        ({"importance": "L1"}, PlanError, "did you mean 'l1'"),
        ({"uniform": True}, PlanError, "uniform is the fraction of units removed"),
        ({"uniform": 1.0}, PlanError, r"a number in \[0, 1\); got 1.0"),
        ({"alpha": 1.5}, PlanError, r"alpha must be a number in \[0, 1\)"),
        ({"alpha": "0.1"}, PlanError, "alpha must be a number"),
        ({"observe": "post-act"}, CalibrationError, "did you mean 'post_act'"),
        ({"samples_per_class": 0}, CalibrationError, "samples_per_class must be an integer >= 1"),
        ({"max_classes": 1}, CalibrationError, "max_classes must be an integer >= 2"),
        ({"projections": 2.5}, CalibrationError, "projections must be an integer"),
        ({"loss_fn": "ce"}, CalibrationError, "loss_fn must be callable"),
    ],
)
def test_compress_refuses_bad_options_before_tracing_or_scoring(options, error, message) -> None:
    options = dict(options)
    alpha = options.pop("alpha", 0.05)
    with pytest.raises(error, match=message):
        fairfx.compress(_Untouchable(), X, alpha, data=_NoData(), **options)


def test_analyze_refuses_bad_options_before_tracing() -> None:
    with pytest.raises(CalibrationError, match="did you mean 'module'"):
        fairfx.analyze(_Untouchable(), X, _NoData(), observe="modules")
    with pytest.raises(CalibrationError, match="samples_per_class"):
        fairfx.analyze(_Untouchable(), X, _NoData(), samples_per_class=True)


@pytest.fixture(scope="module")
def analysis():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(60, 4)
    y = torch.arange(60) % 3
    return fairfx.analyze(model, x[:2], [(x, y)], samples_per_class=8, progress=False)


def test_plan_for_budget_errors_name_the_real_keywords(analysis) -> None:
    with pytest.raises(PlanError, match="params=fraction of parameters to keep or flops="):
        analysis.plan_for()
    with pytest.raises(PlanError, match="exactly one budget"):
        analysis.plan_for(params=0.5, flops=0.5)
    with pytest.raises(PlanError, match=r"flops= is the fraction to keep, a number in \(0, 1\]"):
        analysis.plan_for(flops=0)
    with pytest.raises(PlanError, match="params= is the fraction"):
        analysis.plan_for(params="half")
    with pytest.raises(PlanError, match="did you mean 'member'"):
        analysis.plan_for(params=0.5, group_rule="members")


def test_uniform_is_a_ratio_in_plan_and_a_switch_in_plan_for(analysis) -> None:
    # plan(uniform=r) removes the fraction r of every group ...
    plan = analysis.plan(uniform=0.5)
    assert plan.removed[0] == 8 and plan.uniform == 0.5
    # ... plan_for(uniform=True) bisects that ratio to the budget; a number is refused, not
    # silently read as True.
    with pytest.raises(PlanError, match=r"is True or False .* use plan\(uniform=0.5\)"):
        analysis.plan_for(params=0.5, uniform=0.5)
    with pytest.raises(PlanError, match="uniform is the fraction"):
        analysis.plan(uniform=True)
    assert analysis.plan_for(params=0.7, uniform=True).uniform is not None
