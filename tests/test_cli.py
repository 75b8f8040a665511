"""The command line, driven as a user would: ``python -m fairfx ...`` in a subprocess.

Every subprocess pays for importing torch (several seconds on a busy machine), so the
independent commands of each phase run concurrently, and the bad-input cases past the first run
in-process through ``fairfx.apps.cli.main`` (the console script's entry point, same code path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fairfx.apps.cli import main

MODEL_MODULE = "fairfx_cli_tinynet"
MODEL = f"{MODEL_MODULE}:tiny"

MODEL_SOURCE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def tiny(num_classes=3):
    torch.manual_seed(0)
    return TinyNet(num_classes)
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A model module, an ImageFolder of 3 classes x 6 noisy 16x16 PNGs, an unlabelled .pt."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    (root / f"{MODEL_MODULE}.py").write_text(MODEL_SOURCE)
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 180, (16, 16, 3), dtype=np.uint8)
            pixels[..., c] += 75  # a class-dependent colour cast
            Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.save(torch.randn(6, 3, 16, 16), root / "nolabels.pt")
    return root


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # a shared, oversubscribed CPU: avoid OpenMP spin-waiting
    return env


def _run_all(root: Path, commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once, then collect them."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "fairfx", *argv],
            cwd=root,
            env=_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


COMMON = ["--model", MODEL, "--data", "images", "--image-size", "16", "--samples-per-class", "6"]


@pytest.fixture(scope="module")
def first(work):
    """Phase 1: a full compress (scores saved), inspect, and an unknown model."""
    return _run_all(
        work,
        {
            "compress": [
                "compress",
                *COMMON,
                "--alpha",
                "0.05",
                "--out",
                "tiny.pt2",
                "--report",
                "report.json",
                "--plot",
                "layers.png",
                "--analysis",
                "scores.pt",
                "--finetune-epochs",
                "1",
                "--batch-size",
                "8",
                "--model-args",
                "num_classes=3",
                "--normalize",
                "imagenet",
                "--val-fraction",
                "0.2",
            ],
            "inspect": ["inspect", "--model", MODEL, "--image-size", "16"],
            "unknown": [
                "compress",
                *COMMON,
                "--model",
                "torchvision:resnet999",
                "--alpha",
                "0.1",
                "--out",
                "x.pt2",
            ],
        },
    )


@pytest.fixture(scope="module")
def second(work, first):
    """Phase 2 (needs the saved scores): compress on a budget reusing them, and plan."""
    assert first["compress"].returncode == 0, first["compress"].stderr
    return _run_all(
        work,
        {
            "compress": [
                "compress",
                *COMMON,
                "--params",
                "0.6",
                "--out",
                "budget.pt2",
                "--report",
                "report2.json",
                "--analysis",
                "scores.pt",
                "--quiet",
            ],
            "plan": [
                "plan",
                "--model",
                MODEL,
                "--analysis",
                "scores.pt",
                "--alpha",
                "0.001",
                "0.05",
                "0.3",
            ],
            "rounds": [
                "compress",
                *COMMON,
                "--params",
                "0.5",
                "--rounds",
                "2",
                "--round-to",
                "4",
                "--ignore",
                "features.0",
                "--out",
                "rounds.pt2",
                "--report",
                "report3.json",
                "--plot",
                "rounds.png",
                "--finetune-epochs",
                "1",
                "--val-fraction",
                "0.2",
                "--quiet",
            ],
        },
    )


def test_compress_in_rounds_with_rounding_and_ignored_layers(work, second) -> None:
    res = second["rounds"]
    assert res.returncode == 0, res.stderr
    report = json.loads((work / "report3.json").read_text())
    rounds = report["rounds"]
    assert len(rounds) == 2 and all(r["verify"] for r in rounds)
    kept = rounds[-1]["params_after"] / rounds[0]["params_before"]
    assert abs(kept - 0.5) < 0.1 and rounds[0]["params_kept"] < 1
    assert rounds[0]["round_to"] == 4 and rounds[0]["ignored_groups"]
    program = torch.export.load(work / "rounds.pt2").module()
    # The export is the deployment form: the first conv has its BatchNorm folded in.
    first_conv = program.get_parameter("features.0_bn_folded.weight")
    assert first_conv.shape[0] == 8  # ignored: kept exactly
    assert report["export"]["equal"]
    # The rounds path runs through the same pipeline as one round: plot, accuracy, fine-tuning,
    # the budget asked for against what was reached, every group's kept count.
    assert (work / "rounds.png").stat().st_size > 0
    acc = report["accuracy"]
    assert acc["samples"] == 3 and acc["one_shot"] is not None and acc["fine_tuned"] is not None
    assert report["finetune"]["epochs"] == 1
    assert report["reached"]["budget"] == "params" and report["reached"]["target"] == 0.5
    assert report["reached"]["reached"] == pytest.approx(kept, abs=1e-6)
    assert report["plan"]["params_kept"] == pytest.approx(kept, abs=1e-6)
    assert any(g["kept"] < g["size"] for g in report["groups"])
    assert "rounds         2" in res.stdout and "validation" in res.stdout


def test_compress_writes_a_checked_program_report_plot_and_scores(work, first) -> None:
    res = first["compress"]
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "parameters" in out and "MACs" in out
    assert "verify         PASS" in out and "export         OK" in out
    assert "fine-tune      1 epoch(s) on the training split" in out
    assert "validation     3 held-out samples: accuracy original" in out
    assert "scoring channels" in res.stderr and "fine-tuning" in res.stderr  # not --quiet
    assert "3 held out for validation" in res.stderr

    report = json.loads((work / "report.json").read_text())
    plan = report["plan"]
    assert plan["params_after"] < plan["params_before"] and plan["alpha"] == 0.05
    assert 0 < plan["params_kept"] < 1 and 0 < plan["macs_kept"] < 1
    assert report["verify"]["passed"] and not report["scores"]["reused"]
    # One of the 6 images of each class is held out (stratified, seeded): 15 scored, 3 validated.
    assert report["split"] == {"train": 15, "validation": 3, "seed": 0}
    assert report["scores"]["classes"] == 3 and report["scores"]["samples"] == 15
    acc = report["accuracy"]
    assert acc["samples"] == 3 and acc["split"] == "validation"
    for key in ("original", "one_shot", "fine_tuned"):
        assert acc[key] in (0.0, 1 / 3, 2 / 3, 1.0), acc  # a share of 3 samples
    assert acc["fine_tuned"] == report["finetune"]["best_val_accuracy"]
    assert acc["one_shot"] == report["finetune"]["initial_val_accuracy"]
    assert report["normalize"]["mean"] == [0.485, 0.456, 0.406]
    assert report["model_args"] == {"num_classes": 3}
    assert report["export"]["equal"] and report["export"]["dynamic_batch"]
    assert len(report["finetune"]["train_loss"]) == 1
    assert report["recalibration"] == {"modules": 3, "batches": 2, "samples": 15}
    assert {"load", "analyze", "plan", "compress", "verify", "finetune", "export"} <= set(
        report["timings_seconds"]
    )
    groups = report["groups"]
    assert [g["size"] for g in groups] == [8, 12, 16, 3]
    assert all(1 <= g["kept"] <= g["size"] for g in groups)
    assert groups[-1]["kept"] == 3 and not groups[-1]["prunable"]  # the classifier stays
    assert sum(g["size"] - g["kept"] for g in groups) == plan["units_removed"]
    assert (work / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "scores.pt").is_file()

    # The saved program is a real deployable artifact: any batch size, plan in its extra files.
    extra = {"fairfx.json": ""}
    program = torch.export.load(work / "tiny.pt2", extra_files=extra)
    assert json.loads(extra["fairfx.json"])["plan"]["params_after"] == plan["params_after"]
    with torch.no_grad():
        y = program.module()(torch.randn(3, 3, 16, 16))
    assert y.shape == (3, 3)
    import fairfx

    loaded = fairfx.load_pruned(work / "tiny.pt2")  # the CLI's program carries the keep lists
    assert set(loaded.meta["fairfx"]["keep"]) == {"features.0", "features.3", "features.7"}


def test_compress_reuses_saved_scores_for_a_budget(work, second) -> None:
    res = second["compress"]
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # --quiet: no progress bars, no chatter
    assert "verify         PASS" in res.stdout and "export         OK" in res.stdout
    report = json.loads((work / "report2.json").read_text())
    assert report["scores"]["reused"] and report["finetune"] is None
    assert "target 0.600 of parameters kept" in report["plan"]["note"]
    assert (work / "budget.pt2").is_file()


def test_inspect_prints_the_channel_groups(first) -> None:
    res = first["inspect"]
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["id", "size", "producers", "status"]
    assert lines[1].split() == ["0", "8", "features.0", "prunable"]
    assert lines[4].split()[:4] == ["3", "3", "head", "fixed:"]
    assert "reaches the model output" in lines[4]
    assert "4 channel groups, 3 prunable holding 36 of 39 units" in res.stdout


def test_plan_sweeps_alphas_from_saved_scores(work, second) -> None:
    res = second["plan"]
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1].split()[:3] == ["target", "alpha", "params"]
    rows = {line.split()[1]: line.split() for line in lines[2:]}
    assert set(rows) == {"0.001", "0.05", "0.3"}
    kept = [float(rows[a][4].rstrip("%")) for a in ("0.001", "0.05", "0.3")]
    assert kept == sorted(kept, reverse=True)  # a larger alpha never keeps more
    report = json.loads((work / "report.json").read_text())  # compress at alpha 0.05
    assert rows["0.05"][3] == f"{report['plan']['params_after']:,}"
    assert "input (3, 16, 16)" in res.stderr  # the scored input size, no --image-size needed


def _one_line_error(err: str, code: int, expected: int = 2) -> str:
    assert code == expected
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fairfx: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unknown_model_in_a_real_process(first) -> None:
    res = first["unknown"]
    line = _one_line_error(res.stderr, res.returncode)
    assert "unknown torchvision model 'resnet999'" in line and "resnet18" in line
    assert res.stdout == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "missing"], "--data missing does not exist"),
        (["--model", "torchvision:resnet999"], "unknown torchvision model 'resnet999'"),
        (["--model", "no_such_module_xyz:net"], "cannot import 'no_such_module_xyz'"),
        (["--model", "resnet18"], "--model must be torchvision:NAME or package.module:factory"),
        (["--alpha", "1.5"], "alpha must be a number in [0, 1), got 1.5"),
        (["--data", "nolabels.pt"], "holds one tensor and no labels"),
        (["--params", "0"], "--params is the fraction to keep, a number in (0, 1]; got 0"),
        (["--flops", "1.5"], "--flops is the fraction to keep"),
        (["--out", "nodir/m.pt2"], "directory nodir does not exist"),
        (["--weights", "missing.pth"], "--weights missing.pth does not exist"),
        (["--num-classes", "2"], "targets must be class indices in [0, 2)"),
        (["--normalize", "0.5,0.5/0.2"], "one value per channel"),
        (["--normalize", "imagenet", "--channels", "1"], "--normalize imagenet is for 3 channels"),
        (["--val-fraction", "1"], "--val-fraction is the share held out, in [0, 1)"),
        (["--model-args", "image_size"], "--model-args takes KEY=VALUE pairs"),
        (["--model-args", "num_classes=4", "--num-classes", "3"], "disagree; give one"),
        (["--model-args", "depth=3"], "tiny(depth=3) failed"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--round-to", "0"], "--round-to must be at least 1"),
        (["--ignore", "features.99"], "--ignore: 'features.99' is not a module of the model"),
        (["--allocation", "global_r"], "give --params or --flops, not --alpha"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(work, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    options = {"--model": MODEL, "--data": "images", "--out": "m.pt2", "--image-size": "16"}
    if not {"--alpha", "--params", "--flops"} & set(argv):
        options["--alpha"] = "0.1"
    options.update(zip(argv[::2], argv[1::2], strict=True))
    code = main(["compress", *(a for pair in options.items() for a in pair), "--quiet"])
    captured = capsys.readouterr()
    line = _one_line_error(captured.err, code)
    assert message in line
    assert not (work / "m.pt2").exists()


def test_wrong_weights_file_names_the_mismatch(work, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(work))
    from fairfx_cli_tinynet import tiny

    torch.save(tiny(num_classes=5).state_dict(), tmp_path / "w5.pth")
    code = main(["inspect", "--model", MODEL, "--weights", str(tmp_path / "w5.pth")])
    line = _one_line_error(capsys.readouterr().err, code)
    assert "does not match the model: 2 of another shape (e.g. head.bias" in line
    assert "same architecture and --num-classes?" in line


def test_plan_refuses_a_bad_alpha_and_a_missing_scores_file(work, monkeypatch, capsys) -> None:
    monkeypatch.chdir(work)
    code = main(["plan", "--model", MODEL, "--analysis", "nothing.pt", "--alpha", "0.01"])
    assert "--analysis nothing.pt does not exist" in _one_line_error(capsys.readouterr().err, code)
    code = main(["plan", "--model", MODEL, "--analysis", "nothing.pt", "--alpha", "-1"])
    assert "alpha must be a number in [0, 1)" in _one_line_error(capsys.readouterr().err, code)


def test_usage_errors_keep_argparse_exit_code(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--model", MODEL, "--data", "x", "--out", "m.pt2"])  # no target
    assert exc.value.code == 2
    assert "one of the arguments --alpha --params --flops --latency is required" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--model", MODEL, "--data", "x", "--out", "m", "--alpha", "abc"])
    assert exc.value.code == 2


def test_plan_takes_budgets(work, first, monkeypatch, capsys) -> None:
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    assert first["compress"].returncode == 0, first["compress"].stderr
    base = ["plan", "--model", MODEL, "--analysis", "scores.pt", "--quiet"]
    assert main([*base, "--params", "0.5", "0.8"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {" ".join(line.split()[:2]): line.split() for line in out[2:4]}
    assert set(rows) == {"params 0.5", "params 0.8"}
    assert float(rows["params 0.5"][4].rstrip("%")) < float(rows["params 0.8"][4].rstrip("%"))
    assert any(line.startswith("params 0.5: target 0.500 of parameters kept") for line in out)
    assert main([*base, "--flops", "0.6"]) == 0
    assert "MACs 0.6: target 0.600 of MACs kept" in capsys.readouterr().out
    code = main([*base, "--params", "1.5"])
    assert "--params is the fraction to keep" in _one_line_error(capsys.readouterr().err, code)
    with pytest.raises(SystemExit):
        main([*base, "--params", "0.5", "--alpha", "0.1"])  # one kind of target per run
    assert "not allowed with argument" in capsys.readouterr().err


def test_model_args_reach_the_factory(work, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(work))
    assert (
        main(
            [
                "inspect",
                "--model",
                MODEL,
                "--image-size",
                "16",
                "--model-args",
                '{"num_classes": 5}',
            ]
        )
        == 0
    )
    assert "4 channel groups, 3 prunable holding 36 of 41 units" in capsys.readouterr().out
    assert (
        main(["inspect", "--model", MODEL, "--image-size", "16", "--model-args", "num_classes=7"])
        == 0
    )
    assert "36 of 43 units" in capsys.readouterr().out


def test_version(capsys) -> None:
    import fairfx

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"fairfx {fairfx.__version__} (torch ")
    from importlib.metadata import version

    assert fairfx.__version__ == version("fairfx")  # pyproject reads the same constant


def test_plot_names_layers_not_group_ids(work, first) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from fairfx.apps.report import kept_figure

    groups = json.loads((work / "report.json").read_text())["groups"]
    fig = kept_figure(groups, "t")
    try:
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    finally:
        plt.close(fig)
    assert labels == ["features.0", "features.3", "features.7", "head"]
    shared = [{"producers": ["a.conv", "b.conv", "c.conv"], "size": 4, "kept": 2, "prunable": True}]
    fig = kept_figure(shared, "t")
    try:
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a.conv (+2)"]
    finally:
        plt.close(fig)
