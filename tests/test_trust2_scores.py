"""Scores and state files: another model's weights, edited or damaged records, and meaningless
scores are refused with one line, never used silently or with a traceback."""

from __future__ import annotations

import warnings

import pytest
import torch

import fairfx
from fairfx import CalibrationError, FairfxError
from fairfx.method.stats import CalibrationState

from .conftest import cli_error, model_folder
from .test_errors import OPTS, X, Y, net

MODULE = "fairfx_trust2_net"


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text.strip(), text
    return text


def _other_weights():
    other = net()
    with torch.no_grad():
        other[0].weight.mul_(2)
    return other


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(analysis, path): scores of net() saved by the API (Analysis.save)."""
    analysis = fairfx.analyze(net(), X[:2], [(X, Y)], **OPTS)
    path = tmp_path_factory.mktemp("scores") / "s.pt"
    analysis.save(path)
    return analysis, path


@pytest.fixture
def cli(tmp_path, monkeypatch):
    return model_folder(tmp_path, monkeypatch, MODULE, "from tests.test_errors import net\n")


def _edited(saved, tmp_path, edit) -> object:
    payload = torch.load(saved[1], weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


# ------------------------------------------------------------------------ weights fingerprint
def test_api_scores_of_other_weights_are_refused(saved) -> None:
    analysis, path = saved
    assert analysis.record["weights_sha1"]
    fairfx.load_analysis(path, net(), X[:2])  # the weights it was scored on
    with pytest.raises(FairfxError) as exc:
        fairfx.load_analysis(path, _other_weights(), X[:2])
    line = one_line(exc)
    assert "scores of other weights" in line and "score these weights again" in line


def test_a_file_without_fingerprint_warns(saved, tmp_path) -> None:
    path = _edited(saved, tmp_path, lambda p: p["record"].pop("weights_sha1"))
    with pytest.warns(UserWarning, match="no weights fingerprint"):
        fairfx.load_analysis(path, net(), X[:2])


def test_cli_compress_with_other_weights_and_api_scores_is_refused(saved, cli, capsys) -> None:
    torch.save((X, Y), cli / "d.pt")
    torch.save(_other_weights().state_dict(), cli / "w2.pth")
    line = cli_error(
        capsys,
        [
            "compress", "--model", f"{MODULE}:net", "--weights", "w2.pth", "--data", "d.pt",
            "--analysis", str(saved[1]), "--alpha", "0.1", "--out", "m.pt2", "--quiet",
        ],
    )  # fmt: skip
    assert "scores of other weights" in line
    assert not (cli / "m.pt2").exists()


# -------------------------------------------------------------------- damaged scores records
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda p: p["scores"][0].update(u=torch.full((8,), float("nan"))), "NaN/Inf"),
        (lambda p: p["scores"][0].update(r=p["scores"][0]["r"][:3]), "has 3 values"),
        (lambda p: p["scores"][0].update(l1=torch.zeros(8, 2)), "not a 1-D float array"),
        (lambda p: p["scores"][0].pop("u"), "KeyError"),
        (lambda p: p.update(scores={"x": p["scores"][0]}), "ValueError"),
        (lambda p: p.update(groups=[["a", 3]]), "'groups'"),
        (lambda p: p.update(record=[1, 2]), "damaged"),
    ],
)
def test_damaged_scores_file_is_one_line(saved, tmp_path, edit, words) -> None:
    path = _edited(saved, tmp_path, edit)
    with pytest.raises(FairfxError) as exc:
        fairfx.load_analysis(path, net(), X[:2])
    line = one_line(exc)
    assert words in line and str(path) in line and "Analysis.save" in line, line


def test_cli_compress_with_nan_scores_is_one_line(saved, cli, capsys) -> None:
    path = _edited(saved, cli, lambda p: p["scores"][0].update(u=torch.full((8,), float("nan"))))
    torch.save((X, Y), cli / "d.pt")
    base = ["compress", "--model", f"{MODULE}:net", "--data", "d.pt", "--out", "m.pt2"]
    line = cli_error(capsys, [*base, "--analysis", str(path), "--alpha", "0.1", "--quiet"])
    assert "NaN/Inf" in line and not (cli / "m.pt2").exists()


@pytest.mark.parametrize("shape", [[3, 100000, 100000], [3, -8, 8], "3x8x8", [3, 8, 8, 8, 8]])
def test_plan_with_an_edited_input_shape_is_one_line(saved, cli, capsys, shape) -> None:
    path = _edited(saved, cli, lambda p: p["record"].update(input_shape=shape))
    base = ["plan", "--model", f"{MODULE}:net", "--analysis", str(path), "--alpha", "0.1"]
    line = cli_error(capsys, base)
    assert "input_shape" in line and "--image-size" in line


# ---------------------------------------------------------------------- damaged state files
@pytest.fixture(scope="module")
def state_file(saved, tmp_path_factory):
    path = tmp_path_factory.mktemp("state") / "state.pt"
    saved[0].state.save(path)
    return path


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(per_class={"x": next(iter(s["per_class"].values()))}),
        lambda s: next(iter(s["per_class"].values())).update(keys=torch.arange(500)),
        lambda s: next(iter(s["per_class"].values())).update(proj=[1, 2]),
        lambda s: s.pop("seed"),
        lambda s: s.update(bogus=1),
    ],
)
def test_damaged_state_file_is_one_line(state_file, tmp_path, edit) -> None:
    payload = torch.load(state_file, weights_only=True)
    edit(payload["state"])
    path = tmp_path / "state.pt"
    torch.save(payload, path)
    with pytest.raises(CalibrationError) as exc:
        CalibrationState.load(path)
    assert "damaged fairfx calibration state" in one_line(exc)


# --------------------------------------------------------------------- meaningless scores
def test_zero_initialised_head_is_refused() -> None:
    model = net()
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.zero_()
    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(model, X[:2], [(X, Y)], **OPTS)
    line = one_line(exc)
    assert "R are zero for every channel" in line and "load trained weights" in line


def test_good_scores_still_plan_without_warning(saved) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = fairfx.load_analysis(saved[1], net(), X[:2])
    assert again.plan(0.1).summary()["params_after"] > 0
