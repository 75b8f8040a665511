"""Latency tables, latency-targeted plans and the deployment form.

Timings are never asserted (the test machines are shared and noisy): these tests check the
structure. A table is cached and reloaded, a table for other conditions is measured again, the
plan meets the table's own prediction with widths on the table's step, the measure-and-correct
loop stops and says why, and the deployment form is proved by ``fairfx.verify``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import fairfx
from fairfx.engine import latency_cache
from fairfx.engine.deploy import deployment_form
from fairfx.engine.latency import graph_table, predicted_fraction
from fairfx.method.latency_plan import plan_for_latency, table_plan
from fairfx.method.plan_options import PlanOptions


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1, groups=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRFX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def analysis():
    model = _net()
    # A few BatchNorm statistics that are not the identity, so folding has something to do.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(12, 3, 8, 8)
    y = torch.arange(12) % 3
    an = fairfx.analyze(model, x[:1], [(x, y)], samples_per_class=4, projections=8, progress=False)
    return model, x, an


def _table(an, **kw):
    return graph_table(an.graph, repeats=1, threads=1, progress=False, **kw)


def test_table_is_cached_and_reloaded(analysis, tmp_path) -> None:
    _, _, an = analysis
    path = tmp_path / "t.json"
    first = _table(an, path=path)
    assert first.note == "" and path.is_file()
    payload = json.loads(path.read_text())
    assert payload["format"] == latency_cache.FORMAT
    assert set(payload["key"]) == {
        "machine", "torch", "model", "input_shapes", "batch", "threads", "mode", "deploy"
    }  # fmt: skip
    # every conv and the linear are timed, at more than one width each
    assert len(first.layers) == 4
    assert all(len(first.curves[v["sig"]]) >= 2 for v in first.layers.values())
    again = _table(an, path=path)
    assert again.note == "loaded from cache"
    assert again.curves == first.curves and again.step == first.step
    # the default place is keyed by the conditions: the same conditions find the same file
    auto = _table(an)
    assert auto.path is not None and _table(an).note == "loaded from cache"


def test_another_batch_machine_or_a_broken_file_measures_again(analysis, tmp_path) -> None:
    _, _, an = analysis
    path = tmp_path / "t.json"
    _table(an, path=path)
    other = _table(an, path=path, batch=3)
    assert "another batch" in other.note and other.key["batch"] == 3
    # a table copied from another machine: refused by default, used when asked for
    payload = json.loads(path.read_text())
    payload["key"]["machine"] = "elsewhere"
    path.write_text(json.dumps(payload))
    assert "another machine" in _table(an, path=path, batch=3).note
    path.write_text(json.dumps(payload))
    assert _table(an, path=path, batch=3, any_machine=True).note == "loaded from cache"
    path.write_text("{not json")
    assert "unreadable" in _table(an, path=path).note
    path.write_text(json.dumps({"format": "something else"}))
    assert "not a fairfx latency table" in _table(an, path=path).note
    payload = json.loads(path.read_text())
    payload["curves"] = {}
    path.write_text(json.dumps(payload))
    assert "damaged table" in _table(an, path=path).note


def test_the_table_times_the_deployment_form_unless_told_not_to(analysis, tmp_path) -> None:
    _, _, an = analysis
    path = tmp_path / "t.json"
    deployed, plain = _table(an, path=path), _table(an, deploy=False)
    assert deployed.key["deploy"] and not plain.key["deploy"]
    assert "another deploy" in _table(an, path=path, deploy=False).note
    # the same layers, named as the captured graph names them (plans address those), timed
    # without their BatchNorm once it is folded into them
    assert deployed.layers.keys() == plain.layers.keys()
    for node, info in deployed.layers.items():
        assert info["target"] == plain.layers[node]["target"]
        assert an.graph.node(node).target == info["target"]
    assert not any("BatchNorm" in v["sig"] for v in deployed.layers.values())
    assert sum("BatchNorm" in v["sig"] for v in plain.layers.values()) == 3
    half = an.plan(uniform=0.5).units
    assert predicted_fraction(an.graph, half, deployed) < 1


def test_latency_is_measured_in_the_form_that_ships(analysis) -> None:
    _, _, an = analysis
    common = dict(table=None, repeats=1, threads=1, progress=False, tolerance=100.0)
    shipped = plan_for_latency(an.graph, an.scores, PlanOptions(latency=0.5), **common)
    assert shipped.extra["latency"]["deploy"] and "in the deployment form" in shipped.note
    options = PlanOptions(latency=0.5, latency_deploy=False)
    plain = plan_for_latency(an.graph, an.scores, options, **common)
    assert not plain.extra["latency"]["deploy"] and "as GraphModules" in plain.note
    assert not _table(an, deploy=False).key["deploy"]


def test_plan_meets_the_tables_prediction_on_its_width_step(analysis) -> None:
    _, _, an = analysis
    table = _table(an)
    for target in (0.8, 0.5, 0.3):
        options = PlanOptions(latency=target, round_to=8)
        units, predicted = table_plan(an.graph, an.scores, table, target, options)
        assert predicted == pytest.approx(predicted_fraction(an.graph, units, table))
        floor = table_plan(an.graph, an.scores, table, 0.0, options)[1]
        assert predicted <= max(target, floor) + 1e-9
        for gid, u in units.items():  # widths snapped to the step (or the group kept whole)
            assert len(u) % 8 == 0 or len(u) == an.graph.groups[gid].size
    plan = plan_for_latency(
        an.graph, an.scores, PlanOptions(latency=0.5), table=table, measure=False
    )
    assert plan.extra["latency"]["achieved"] is None and "not measured" in plan.note
    # at or below the target, unless the table's widest cut cannot get there
    floor = table_plan(an.graph, an.scores, table, 0.0, PlanOptions(latency=0.5))[1]
    assert plan.extra["latency"]["predicted"] <= max(0.5, floor) + 1e-9
    assert plan.cost.macs < plan.base.macs
    pruned = an.compress(plan)
    assert fairfx.verify(analysis[0], pruned, analysis[1][:2]).passed


def test_measure_and_correct_loop_stops_and_reports(analysis) -> None:
    _, _, an = analysis
    table = _table(an)
    common = dict(table=table, repeats=1, threads=1, progress=False)
    half = PlanOptions(latency=0.5)
    # An unreachable tolerance: the loop runs its iterations and says it did not get there.
    plan = plan_for_latency(an.graph, an.scores, half, tolerance=1e-12, iterations=2, **common)
    info = plan.extra["latency"]
    assert 1 <= len(info["iterations"]) <= 2 and not info["met"]
    assert "not within" in plan.note and info["achieved"] > 0
    assert all(len(step["ms"]) == 2 and step["pairs"] >= 1 for step in info["iterations"])
    # Any result is within a huge tolerance: one measurement, reported as met.
    plan = plan_for_latency(an.graph, an.scores, half, tolerance=100.0, **common)
    assert len(plan.extra["latency"]["iterations"]) == 1 and plan.extra["latency"]["met"]
    assert "achieved" in plan.note


def test_deployment_form_folds_batchnorm_and_verify_still_proves_it(analysis, tmp_path) -> None:
    model, x, an = analysis
    pruned = an.compress(an.plan(uniform=0.5))
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    for channels_last in (False, True):
        deployed = deployment_form(pruned, channels_last=channels_last)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
        assert len(deployed.meta["fairfx"]["deploy"]["fold_bn"]) == 3
        report = fairfx.verify(model, deployed, x[:4])
        assert report.passed, report
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())
    assert "deploy" not in pruned.meta["fairfx"]  # the pruned module itself is untouched
    # save_pruned writes the deployment form; both ways back compute the pruned outputs
    path = tmp_path / "d.pt2"
    fairfx.save_pruned(path, pruned, x[:2])
    loaded = fairfx.load_pruned(path)
    rebuilt = fairfx.load_pruned(path, model, x[:2])
    assert loaded.meta["fairfx"]["deploy"]["fold_bn"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rebuilt.modules())
    with torch.no_grad():
        want = pruned.eval()(x)
        for got in (loaded(x), rebuilt(x)):
            assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_rest_and_prediction_are_consistent(analysis) -> None:
    _, _, an = analysis
    table = _table(an)
    assert table.rest_ms >= 0 and table.step in (1, 2, 4, 8, 16)
    full = table.predict_ms()
    # fewer channels never predict more time than the full model
    half = {n: (max(1, v["ci"] // 2), max(1, v["co"] // 2)) for n, v in table.layers.items()}
    assert table.predict_ms(half) <= full + 1e-9
    assert np.isfinite(full)


def test_latency_through_plan_options_analysis_and_compress(analysis) -> None:
    model, x, an = analysis
    plan = an.plan(latency=0.6, batch_size=2)
    info = plan.extra["latency"]
    assert info["target"] == 0.6 and info["batch"] == 2 and info["iterations"]
    assert plan.extra["allocation"] == "latency" and "measured latency" in plan.note
    assert an.plan_for(latency=0.6).extra["latency"]["batch"] == 1  # the example input's
    pruned = fairfx.compress(
        model,
        x[:1],
        data=[(x, torch.arange(12) % 3)],
        latency=0.6,
        samples_per_class=4,
        projections=8,
        progress=False,
    )
    assert pruned.meta["fairfx"]["plan"]["allocation"] == "latency"
    assert pruned.meta["fairfx"]["verify"]["passed"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latency": 0}, "latency must be a number in"),
        ({"latency": 1.5}, "latency must be a number in"),
        ({"latency": 0.5, "params": 0.5}, "takes no params="),
        ({"latency": 0.5, "allocation": "uniform"}, "takes no allocation="),
        ({"latency": 0.5, "batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"latency": 0.5, "latency_mode": "compiled"}, "did you mean 'compile'"),
        ({"alpha": 0.01, "batch_size": 8}, "give latency="),
        ({"alpha": 0.01, "latency_deploy": False}, "give latency="),
        ({"latency": 0.5, "latency_deploy": "no"}, "latency_deploy must be True or False"),
    ],
)
def test_latency_options_are_checked_in_one_line(fields, message) -> None:
    with pytest.raises(fairfx.PlanError, match=message):
        PlanOptions(**fields)


CLI_MODEL = """
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    )
"""


def test_cli_compress_to_a_latency_target_exports_the_deployment_form(
    tmp_path, monkeypatch, capsys
) -> None:
    from fairfx.apps.cli import main

    (tmp_path / "latency_cli_model.py").write_text(CLI_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    torch.save((torch.randn(18, 3, 12, 12), torch.arange(18) % 3), tmp_path / "data.pt")
    out, report = tmp_path / "small.pt2", tmp_path / "report.json"
    args = ["compress", "--model", "latency_cli_model:tiny", "--data", str(tmp_path / "data.pt")]
    args += ["--latency", "0.7", "--out", str(out), "--report", str(report), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads(report.read_text())
    assert record["plan"]["allocation"] == "latency" and record["verify"]["passed"]
    assert "measured latency" in record["plan"]["note"]
    assert record["export"]["equal"] and len(record["export"]["deploy"]["fold_bn"]) == 2
    loaded = fairfx.load_pruned(out)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    # --no-deploy exports the GraphModule as it is, so its latency is measured that way too
    assert main([*args, "--no-deploy"]) == 0, capsys.readouterr().err
    assert "as GraphModules" in json.loads(report.read_text())["plan"]["note"]
    bad = [*args[:5], "--alpha", "0.01", "--latency-batch", "4", "--out", str(out), "--quiet"]
    assert main(bad) == 2 and "--latency" in capsys.readouterr().err


def test_paired_ratio_measures_until_precise_or_out_of_pairs() -> None:
    from fairfx.engine.timing import paired_ratio

    x = (torch.randn(2, 8),)
    fast, slow = nn.Identity(), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    done = paired_ratio(fast, slow, x, repeats=5, max_repeats=40, precision=float("inf"))
    assert done["pairs"] == 5 and done["ratio"] > 0 and done["first_ms"] > 0
    capped = paired_ratio(fast, slow, x, repeats=5, max_repeats=15, precision=0.0)
    assert capped["pairs"] == 15 and capped["stderr"] >= 0


def test_planning_for_latency_leaves_a_training_model_untouched(tmp_path) -> None:
    model = _net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(12, 3, 8, 8)
    an = fairfx.analyze(
        model, x[:2], [(x, torch.arange(12) % 3)], samples_per_class=4, projections=8,
        progress=False,
    )  # fmt: skip
    table = _table(an, path=tmp_path / "t.json")
    plan_for_latency(
        an.graph, an.scores, PlanOptions(latency=0.7), table=table, repeats=1, iterations=1,
        progress=False,
    )  # fmt: skip
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_correction_stays_inside_a_bracket() -> None:
    from fairfx.method.latency_plan import _next_goal

    seen = [
        {"goal": 0.5, "predicted": 0.48, "achieved": 0.64},
        {"goal": 0.37, "predicted": 0.37, "achieved": 0.59},
        {"goal": 0.19, "predicted": 0.18, "achieved": 0.35},
        {"goal": 0.30, "predicted": 0.30, "achieved": 0.37},
    ]
    goal = _next_goal(seen, 0.5)
    assert 0.30 < goal < 0.37  # between the largest fast-enough and the smallest too-slow goal
    assert 0.25 <= _next_goal(seen[:1], 0.5) < 0.5  # the first step scales, within /2


def test_a_latency_floor_is_named_and_not_chased() -> None:
    """Quiet-machine mobilenet_v2 (batch 1, OMP_WAIT_POLICY=PASSIVE, which adds a thread wake-up
    to every op): the measured ratio stayed near 0.57 while the table predicted 0.50 -> 0.18, and
    the loop cut the model to 0.5% of its parameters, blaming noise. The floor is now named, and
    noise or a converging loop is not mistaken for one."""
    from fairfx.method.latency_plan import _floor

    stuck = [
        {"goal": 0.5, "predicted": 0.48, "achieved": 0.644, "stderr": 0.013},
        {"goal": 0.37, "predicted": 0.37, "achieved": 0.623, "stderr": 0.009},
        {"goal": 0.19, "predicted": 0.19, "achieved": 0.571, "stderr": 0.012},
    ]
    reason = _floor(stuck, 0.5, 0.05)
    assert "stops near 0.571" in reason and "no channel plan reaches 0.500" in reason
    converging = [
        {"goal": 0.5, "predicted": 0.50, "achieved": 0.573},
        {"goal": 0.44, "predicted": 0.44, "achieved": 0.489},
    ]
    assert _floor(converging, 0.5, 0.05) == ""  # two measurements, and it got there
    tracking = [dict(h, achieved=h["predicted"] + 0.1) for h in stuck]  # time follows the table
    assert _floor(tracking, 0.5, 0.05) == ""


def test_a_busy_machine_is_named_and_its_timings_not_chased(analysis, monkeypatch) -> None:
    """At load 3.9 on 2 cores a ResNet-50 cut to 2% of its MACs measured 0.55 of the original
    (spinning OpenMP threads wait for preempted ones): the loop must not chase that."""
    from fairfx.engine import timing

    assert timing.busy(None, 2) == "" and timing.busy(2.9, 2) == ""
    assert "load average 3.5" in timing.busy(3.5, 2)
    _, _, an = analysis
    monkeypatch.setattr(timing, "load_average", lambda: 9.0)
    common = dict(table=_table(an), repeats=1, threads=1, progress=False)
    plan = plan_for_latency(
        an.graph, an.scores, PlanOptions(latency=0.5), tolerance=1e-12, iterations=3, **common
    )
    info = plan.extra["latency"]
    assert "the machine was busy (load average 9.0" in plan.note
    assert all(step["load"] == 9.0 for step in info["iterations"])
    # the table's own plan for the target is kept, not the loop's deepest correction
    assert info["predicted"] == info["iterations"][0]["predicted"]


def test_a_round_where_the_original_ran_slow_is_measured_again(analysis, monkeypatch) -> None:
    """The original is the same module in every round: when its median jumps (85 ms against
    47-56 ms, compiled densenet121), the round's ratio is not the plan's, so it is repeated."""
    import fairfx.method.latency_plan as lp

    rounds = iter([(10.0, 9.0), (20.0, 9.0), (10.0, 8.0), (10.0, 7.0)])

    def fake(first, second, inputs, **kw):
        a, b = next(rounds)
        return {"first_ms": a, "second_ms": b, "ratio": b / a, "stderr": 0.0, "pairs": 1,
                "load": None}  # fmt: skip

    monkeypatch.setattr(lp, "paired_ratio", fake)
    _, _, an = analysis
    plan = plan_for_latency(
        an.graph, an.scores, PlanOptions(latency=0.5), table=_table(an), iterations=3,
        tolerance=1e-12, progress=False,
    )  # fmt: skip
    steps = plan.extra["latency"]["iterations"]
    assert [s["remeasured"] for s in steps] == [False, True, False]
    assert steps[1]["ms"] == [10.0, 8.0] and steps[1]["achieved"] == 0.8


def test_the_note_says_what_the_latency_cost_in_parameters(analysis) -> None:
    _, _, an = analysis
    table = _table(an)
    for target in (0.9, 0.05):
        plan = plan_for_latency(
            an.graph, an.scores, PlanOptions(latency=target), table=table, measure=False
        )
        kept = f"keeps {plan.params_kept:.1%} of parameters and {plan.macs_kept:.1%} of MACs"
        assert kept in plan.note
        assert ("check accuracy" in plan.note) == (plan.params_kept < 0.1)
