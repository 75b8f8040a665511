"""Bad input gets one line naming the problem and the fix, never a traceback or NaN scores.

(Output paths: read-only ``--out``, unwritable ``--analysis``, ``--plot`` extensions are in
``test_files.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fairfx
from fairfx.apps.cli import main
from fairfx.apps.cli_inputs import weights_fingerprint
from fairfx.errors import CalibrationError, CaptureError, FairfxError, PlanError

from .conftest import cli_error, model_folder

OPTS = {"samples_per_class": 8, "progress": False}


def net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


X = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.arange(24) % 3


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text.strip(), text
    return text


@pytest.fixture(scope="module")
def analysis():
    return fairfx.analyze(net(), X[:2], [(X, Y)], **OPTS)


# ------------------------------------------------------------------------------ NaN and Inf
def test_nan_in_data_is_refused_by_batch() -> None:
    bad = X.clone()
    bad[5, 0, 1, 1] = float("nan")
    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(net(), X[:2], [(X, Y), (bad, Y)], **OPTS)
    assert "calibration batch 1 holds 1 NaN/Inf" in one_line(exc)


def test_inf_in_weights_is_refused_by_name() -> None:
    model = net()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(model, X[:2], [(X, Y)], **OPTS)
    assert "model parameter '2.weight' holds 1 NaN/Inf" in one_line(exc)


def test_overflowing_scores_are_refused_not_returned() -> None:
    def inf_loss(out, y):
        return (out * float("inf")).sum()

    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(net(), X[:2], [(X, Y)], loss_fn=inf_loss, **OPTS)
    assert "are NaN/Inf although weights and data are finite" in one_line(exc)


def test_scores_are_finite(analysis) -> None:
    for s in analysis.scores.values():
        assert np.isfinite(s.u).all() and np.isfinite(s.r).all()


# ------------------------------------------------------------------------- models and modes
def test_model_without_prunable_group() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3)).eval()
    with pytest.raises(FairfxError) as exc:
        fairfx.analyze(model, X[:2], [(X, Y)], **OPTS)
    assert "no prunable channel group" in one_line(exc) and "reaches the model output" in str(
        exc.value
    )


def test_analyze_under_no_grad_enables_grad_itself(analysis) -> None:
    with torch.no_grad():
        again = fairfx.analyze(net(), X[:2], [(X, Y)], **OPTS)
    for gid, s in analysis.scores.items():
        np.testing.assert_array_equal(again.scores[gid].r, s.r)


def test_analyze_under_inference_mode_is_refused() -> None:
    with torch.inference_mode(), pytest.raises(CalibrationError) as exc:
        fairfx.analyze(net(), X[:2], [(X, Y)], **OPTS)
    assert "torch.inference_mode()" in one_line(exc)


def test_capture_error_names_submodule_and_line() -> None:
    class Gate(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.block = nn.Sequential(nn.ReLU(), Gate())

        def forward(self, x):
            return self.block(self.conv(x))

    with pytest.raises(CaptureError) as exc:
        fairfx.channel_groups(Branchy(), X[:2])
    line = one_line(exc)
    assert "in submodule 'block.1' (Gate)" in line
    assert f"{__file__}:" in line and "`if x.sum() > 0:`" in line


# ------------------------------------------------------------------------- plans and values
def test_scores_of_a_wider_same_named_model_are_refused(analysis, tmp_path) -> None:
    analysis.save(tmp_path / "s.pt")
    with pytest.raises(FairfxError) as exc:
        fairfx.load_analysis(tmp_path / "s.pt", net(width=16), X[:2])
    assert "group 0 has 8 units; this model's has 16" in one_line(exc)


def test_budget_given_as_a_string(analysis) -> None:
    with pytest.raises(PlanError) as exc:
        analysis.plan_for(params="0.5")
    assert "got '0.5'" in one_line(exc)


def test_plain_int_keep_list() -> None:
    with pytest.raises(PlanError) as exc:
        fairfx.prune(net(), X[:2], {"0": 3})
    assert "got the number 3; list(range(3)) keeps the first 3" in one_line(exc)


def test_numpy_alpha_is_accepted(analysis) -> None:
    assert analysis.plan(np.float32(0.1)).units.keys() == analysis.plan(0.1).units.keys()
    pruned = fairfx.compress(net(), X[:2], np.float64(0.1), data=[(X, Y)], **OPTS)
    assert fairfx.verify(net(), pruned, X[:2]).passed
    with pytest.raises(PlanError):
        analysis.plan(np.bool_(True))


def test_int32_labels_are_accepted_bool_refused(analysis) -> None:
    again = fairfx.analyze(net(), X[:2], [(X, Y.int())], **OPTS)
    for gid, s in analysis.scores.items():
        np.testing.assert_array_equal(again.scores[gid].u, s.u)
    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(net(), X[:2], [(X, Y.bool())], **OPTS)
    assert "targets are bool" in one_line(exc) and "y.long()" in str(exc.value)


# ------------------------------------------------------------------------ the command line
MODULE = "fairfx_errors_net"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    return model_folder(tmp_path, monkeypatch, MODULE, "from tests.test_errors import net\n")


def test_plan_checks_the_weights_fingerprint(cli, analysis, capsys) -> None:
    scored = net()
    analysis.record["weights_sha1"] = weights_fingerprint(scored)
    analysis.record["input_shape"] = [3, 8, 8]
    analysis.save(cli / "s.pt")
    other = net()
    with torch.no_grad():
        other[0].weight.mul_(2)
    torch.save(scored.state_dict(), cli / "scored.pth")
    torch.save(other.state_dict(), cli / "other.pth")
    base = ["plan", "--model", f"{MODULE}:net", "--analysis", "s.pt", "--alpha", "0.1"]
    line = cli_error(capsys, [*base, "--weights", "other.pth"])
    assert "holds scores of other weights" in line and "--weights other.pth" in line
    assert main([*base, "--weights", "scored.pth", "--quiet"]) == 0


def test_cli_data_and_weights_with_nan_or_bool(cli, capsys) -> None:
    bad = X.clone()
    bad[0, 0, 0, 0] = float("inf")
    torch.save((bad, Y), cli / "nan.pt")
    torch.save((X, Y.bool()), cli / "bool.pt")
    model = net()
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    torch.save(model.state_dict(), cli / "nan.pth")
    base = ["compress", "--model", f"{MODULE}:net", "--alpha", "0.1", "--out", "m.pt2"]
    line = cli_error(capsys, [*base, "--data", "nan.pt"])
    assert "inputs hold 1 NaN/Inf value(s)" in line
    assert "targets are bool" in cli_error(capsys, [*base, "--data", "bool.pt"])
    line = cli_error(capsys, [*base, "--data", "nan.pt", "--weights", "nan.pth"])
    assert "tensor '0.bias' holds NaN/Inf" in line
    assert not (cli / "m.pt2").exists()
