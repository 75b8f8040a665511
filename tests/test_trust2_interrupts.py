"""SIGTERM during any output write leaves no temporary file and no changed output; a stopped run
never leaves a new program next to the old report; a batch-1 save stays dynamic; verify after
fine-tuning says the weights changed.

The CLI runs in a subprocess whose atomic writer pauses once the named output's temporary file
is complete (just before the rename), signals that it is there, and waits; the test then sends
SIGTERM. That is the worst moment: every byte written, nothing renamed yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fairfx
from fairfx import FairfxError

from .test_errors import OPTS, X, Y, net

ROOT = Path(__file__).resolve().parents[1]
MODULE = "fairfx_trust2_net"
RUNNER = """
import os, sys, time, pathlib
import fairfx.files as files
original = files._set_mode
def pausing(tmp, target):
    if target.name == os.environ["PAUSE_AT"]:
        pathlib.Path(os.environ["READY"]).write_text(str(tmp))
        time.sleep(120)
    original(tmp, target)
files._set_mode = pausing
if sys.argv[1] == "api":  # fairfx.save_pruned from a plain script: no handler of its own
    import torch, fairfx
    from tests.test_errors import X, net
    fairfx.save_pruned("m.pt2", fairfx.prune(net(), X[:2], {"0": [0, 1, 2]}), X[:2])
    sys.exit(0)
from fairfx.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / f"{MODULE}.py").write_text("from tests.test_errors import net\n")
    (d / "runner.py").write_text(RUNNER)
    torch.save((X, Y), d / "d.pt")
    return d


def _compress(alpha: str, *extra: str) -> list[str]:
    return ["compress", "--model", f"{MODULE}:net", "--data", "d.pt", "--alpha", alpha,
            "--samples-per-class", "8", "--quiet", "--out", "m.pt2", *extra]  # fmt: skip


def _run(cwd: Path, argv: list[str], pause_at: str = "-") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{cwd}", PAUSE_AT=pause_at)
    env["READY"] = str(cwd / "ready")
    (cwd / "ready").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "runner.py", *argv], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    if pause_at != "-":
        deadline = time.monotonic() + 120
        while not (cwd / "ready").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the write was never reached"
            time.sleep(0.05)
        assert Path((cwd / "ready").read_text()).exists()  # the temporary file is there
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        ("m.pt2", ()),
        pytest.param("r.json", ("--report", "r.json"), marks=pytest.mark.slow),
        pytest.param("p.png", ("--plot", "p.png"), marks=pytest.mark.slow),
        ("s.pt", ("--analysis", "s.pt")),
    ],
)
def test_sigterm_during_a_write_leaves_no_temp_and_no_output(workdir, target, extra) -> None:
    for name in ("m.pt2", "r.json", "p.png", "s.pt"):
        (workdir / name).unlink(missing_ok=True)
    done = _run(workdir, _compress("0.1", *extra), pause_at=target)
    assert done.returncode == 143, done.stderr
    lines = done.stderr.strip().splitlines()  # torch may warn while saving: not fairfx's line
    assert lines[-1] == "fairfx: terminated (SIGTERM); no output was changed", done.stderr
    assert "Traceback" not in done.stderr
    assert _temps(workdir) == []
    assert not (workdir / target).exists()
    assert not (workdir / "m.pt2").exists()  # the program is not left without its report


@pytest.mark.slow  # two CLI runs in subprocesses: about 20 s
def test_sigterm_during_an_api_save_leaves_no_temp_and_still_terminates(workdir) -> None:
    (workdir / "m.pt2").unlink(missing_ok=True)
    done = _run(workdir, ["api"], pause_at="m.pt2")
    assert done.returncode == -signal.SIGTERM, done.stderr  # ends by SIGTERM, as it would have
    assert _temps(workdir) == [] and not (workdir / "m.pt2").exists()


def test_a_stopped_run_keeps_the_old_program_with_the_old_report(workdir) -> None:
    for name in ("m.pt2", "r.json"):
        (workdir / name).unlink(missing_ok=True)
    first = _run(workdir, _compress("0.1", "--report", "r.json"))
    assert first.returncode == 0, first.stderr
    program, report = (workdir / "m.pt2").read_bytes(), (workdir / "r.json").read_bytes()
    stopped = _run(workdir, _compress("0.3", "--report", "r.json"), pause_at="r.json")
    assert stopped.returncode == 143, stopped.stderr
    assert (workdir / "m.pt2").read_bytes() == program  # not the new program
    assert (workdir / "r.json").read_bytes() == report
    assert _temps(workdir) == []


# -------------------------------------------------------------------------- save_pruned, verify
def test_batch_one_example_saves_a_dynamic_batch(tmp_path) -> None:
    model = net()
    pruned = fairfx.compress(model, X[:2], 0.1, data=[(X, Y)], **OPTS)
    info = fairfx.save_pruned(tmp_path / "m.pt2", pruned, X[:1])
    assert info["dynamic_batch"], info
    served = fairfx.load_pruned(tmp_path / "m.pt2")
    with torch.no_grad():
        torch.testing.assert_close(served(X[:5]), pruned.eval()(X[:5]), rtol=1e-5, atol=1e-6)


def test_save_into_a_missing_folder_is_one_line(tmp_path) -> None:
    pruned = fairfx.prune(net(), X[:2], {"0": [0, 1, 2]})
    with pytest.raises(FairfxError) as exc:
        fairfx.save_pruned(tmp_path / "nowhere" / "m.pt2", pruned, X[:2])
    line = str(exc.value)
    assert "\n" not in line and "folder" in line and str(tmp_path / "nowhere") in line
    assert ".tmp" not in line


def test_verify_after_finetuning_says_the_weights_changed() -> None:
    model = net()
    pruned = fairfx.prune(model, X[:2], {"0": [0, 1, 2]})
    assert fairfx.verify(model, pruned, X[:2]).passed
    fairfx.finetune(pruned, [(X, Y)], epochs=1, lr=0.5, progress=False)
    report = fairfx.verify(model, pruned, X[:2])
    assert not report.passed
    assert "weights changed since pruning" in str(report) and "fine-tuned?" in str(report)
    assert report.changed_since_pruning
