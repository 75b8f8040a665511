"""Files: no load runs code, no write loses the previous file, no output clobbers an input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import fairfx
from fairfx.apps.cli import main
from fairfx.errors import CalibrationError, FairfxError
from fairfx.files import atomic_path, check_clashes, check_output, save_payload, write_text
from fairfx.method.stats import CalibrationState

from .conftest import cli_error, model_folder

MODULE = "fairfx_files_net"
MODEL_SOURCE = """
import torch
from torch import nn


def net(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )
"""


class Evil:
    """Unpickling this creates ``marker``: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def data(n: int = 24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.arange(n) % 3
    return x, y


@pytest.fixture
def evil(tmp_path):
    """A file that looks like every fairfx payload and runs code when unpickled."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"format": "fairfx.analysis/2", "state": Evil(marker), "scores": Evil(marker)}
    torch.save(payload, path)
    return path, marker


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), text
    return text


# ----------------------------------------------------------------------------- crafted pickles
def test_crafted_scores_file_never_runs(evil) -> None:
    path, marker = evil
    with pytest.raises(FairfxError) as exc:
        fairfx.load_analysis(path)
    assert not marker.exists()
    line = _one_line(exc.value)
    assert "refuses to run" in line and str(path) in line and "Analysis.save" in line
    with pytest.raises(FairfxError):
        fairfx.load_analysis(path, net(), torch.randn(2, 3, 8, 8))
    assert not marker.exists()


def test_crafted_calibration_state_never_runs(evil) -> None:
    path, marker = evil
    with pytest.raises(CalibrationError) as exc:
        CalibrationState.load(path)
    assert "refuses to run" in _one_line(exc.value)
    x, y = data()
    with pytest.raises(CalibrationError):
        fairfx.analyze(net(), x[:2], [(x, y)], state=path, progress=False)
    assert not marker.exists()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    model_folder(tmp_path, monkeypatch, MODULE, MODEL_SOURCE)
    x, y = data()
    torch.save((x, y), tmp_path / "data.pt")
    return tmp_path


MODEL_ARGS = ["--model", f"{MODULE}:net", "--image-size", "8"]
COMPRESS = ["compress", *MODEL_ARGS, "--alpha", "0.1", "--quiet"]


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", *MODEL_ARGS, "--analysis", "EVIL"],
        [*COMPRESS, "--data", "data.pt", "--out", "m.pt2", "--analysis", "EVIL"],
        [*COMPRESS, "--data", "data.pt", "--out", "m.pt2", "--weights", "EVIL"],
        [*COMPRESS, "--data", "EVIL", "--out", "m.pt2"],
        ["inspect", *MODEL_ARGS, "--weights", "EVIL"],
    ],
    ids=["plan --analysis", "compress --analysis", "--weights", "--data", "inspect --weights"],
)
def test_crafted_cli_inputs_never_run(cli, evil, capsys, argv) -> None:
    path, marker = evil
    argv = [str(path) if a == "EVIL" else a for a in argv]
    line = cli_error(capsys, argv)
    assert "refuses to run" in line and str(path) in line
    assert not marker.exists()
    assert not (cli / "m.pt2").exists()


def test_a_file_of_another_format_is_refused(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "fairfx.state/2", "state": {}}, path)
    with pytest.raises(FairfxError, match=r"holds format 'fairfx.state/2', expected"):
        fairfx.load_analysis(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CalibrationError, match="holds a Tensor"):
        CalibrationState.load(path)
    path.write_text("not a torch file")
    with pytest.raises(FairfxError, match="cannot read"):
        fairfx.load_analysis(path)


def test_saved_files_are_plain_and_round_trip(tmp_path) -> None:
    x, y = data()
    model = net()
    an = fairfx.analyze(model, x[:2], [(x, y)], samples_per_class=4, progress=False)
    an.save(tmp_path / "scores.pt")
    an.state.save(tmp_path / "state.pt")
    for name in ("scores.pt", "state.pt"):
        torch.load(tmp_path / name, weights_only=True)  # nothing but tensors and plain values
    again = fairfx.load_analysis(tmp_path / "scores.pt", model, x[:2])
    assert again.plan(0.2).units.keys() == an.plan(0.2).units.keys()
    for gid, s in an.scores.items():
        assert (again.scores[gid].u == s.u).all() and (again.scores[gid].r == s.r).all()
    bare = fairfx.load_analysis(tmp_path / "scores.pt")
    bare.save(tmp_path / "again.pt")  # a model-less load keeps the group table when re-saved
    fairfx.load_analysis(tmp_path / "again.pt", model, x[:2])
    state = CalibrationState.load(tmp_path / "state.pt")
    assert state.sample_count() == an.state.sample_count()
    resumed = fairfx.analyze(
        model, x[:2], [], samples_per_class=4, state=tmp_path / "state.pt", progress=False
    )
    for gid, s in an.scores.items():
        assert (resumed.scores[gid].u == s.u).all()


# ------------------------------------------------------------------------------ atomic writes
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_interrupted_write_keeps_the_previous_file(tmp_path) -> None:
    target = tmp_path / "out.pt"
    save_payload({"format": "x", "v": 1}, target)
    good = target.read_bytes()

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        interrupted(tmp)
    assert target.read_bytes() == good
    assert _leftovers(tmp_path) == []
    with pytest.raises(OSError), atomic_path(tmp_path / "new.json") as tmp:
        raise OSError("disk full")
    assert not (tmp_path / "new.json").exists() and _leftovers(tmp_path) == []


def test_atomic_text_keeps_extension_and_mode(tmp_path) -> None:
    target = tmp_path / "r.json"
    seen = []
    with atomic_path(target) as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert seen[0].endswith(".json") and target.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    write_text(target, "[]")
    assert target.read_text() == "[]" and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- path checks
def test_clashing_paths_are_refused(tmp_path) -> None:
    a = tmp_path / "a.pt"
    a.write_text("input")
    with pytest.raises(FairfxError, match=r"--out .* is also the input --weights"):
        check_clashes({"--out": a}, {"--weights": tmp_path / "." / "a.pt"})
    link = tmp_path / "link.pt"
    os.link(a, link)  # another name of the same file
    with pytest.raises(FairfxError, match="is also the input"):
        check_clashes({"--out": link}, {"--data": a})
    with pytest.raises(FairfxError, match="--report and --out are the same file"):
        check_clashes({"--out": "x.pt2", "--report": "./x.pt2"}, {})
    folder = tmp_path / "images"
    folder.mkdir()
    with pytest.raises(FairfxError, match="inside the input folder --data"):
        check_clashes({"--plot": folder / "p.png"}, {"--data": folder})
    check_clashes({"--out": tmp_path / "b.pt2", "--report": None}, {"--data": a})
    assert a.read_text() == "input"


def test_unwritable_outputs_are_refused(tmp_path) -> None:
    with pytest.raises(FairfxError, match="does not exist"):
        check_output(tmp_path / "no" / "x.pt2", "--out")
    with pytest.raises(FairfxError, match="is a directory"):
        check_output(tmp_path, "--out")
    ro = tmp_path / "ro.pt2"
    ro.write_text("old")
    ro.chmod(0o444)  # a rename would replace it: refused by its mode, for root too
    with pytest.raises(FairfxError, match="exists and is read-only"):
        check_output(ro, "--out")
    assert ro.read_text() == "old"


def test_unwritable_folder_is_refused(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    real = os.access
    # the tests may run as root, who writes anywhere: answer as the file system would a user
    monkeypatch.setattr(os, "access", lambda p, m: Path(p) != folder and real(p, m))
    with pytest.raises(FairfxError, match=r"directory .*locked is not writable"):
        check_output(folder / "x.pt2", "--out")


# -------------------------------------------------------------------- the command line's files
@pytest.fixture
def inputs(cli):
    """Weights, a .pt data file and an ImageFolder, with their bytes to prove them intact."""
    from PIL import Image

    torch.save(net().state_dict(), cli / "w.pth")
    for c in range(2):
        (cli / "images" / f"c{c}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(cli / "images" / f"c{c}" / "0.png")
    (cli / "old.pt2").write_bytes(b"the previous good program")
    return {p: p.read_bytes() for p in (cli / "w.pth", cli / "data.pt", cli / "old.pt2")}


CLASHES = [
    (["--out", "w.pth"], "--out w.pth is also the input --weights"),
    (["--out", "data.pt"], "--out data.pt is also the input --data"),
    (["--out", "./sub/../w.pth"], "is also the input --weights"),
    (["--report", "old.pt2"], "--report and --out are the same file"),
    (["--analysis", "old.pt2"], "--analysis and --out are the same file"),
    (["--analysis", "w.pth"], "--analysis w.pth is also the input --weights"),
    (["--plot", "r.png", "--report", "r.png"], "--plot and --report are the same file"),
    (["--data", "images", "--plot", "images/c0/p.png"], "inside the input folder --data"),
    (["--plot", "kept.xyz"], "matplotlib cannot write .xyz files; use one of"),
    (["--analysis", "nodir/s.pt"], "--analysis nodir/s.pt: directory nodir does not exist"),
    (["--report", "nodir/r.json"], "directory nodir does not exist"),
    (["--out", "ro.pt2"], "--out ro.pt2 exists and is read-only"),
]


@pytest.mark.parametrize(("argv", "message"), CLASHES, ids=[m for _, m in CLASHES])
def test_outputs_are_checked_before_any_work(cli, inputs, capsys, monkeypatch, argv, message):
    (cli / "sub").mkdir()
    (cli / "ro.pt2").write_text("read-only")
    (cli / "ro.pt2").chmod(0o444)

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr("fairfx.apps.cli_compress.load_model", no_work)
    options = {"--data": "data.pt", "--weights": "w.pth", "--out": "old.pt2"}
    options.update(zip(argv[::2], argv[1::2], strict=True))
    line = cli_error(capsys, [*COMPRESS, *(a for kv in options.items() for a in kv)])
    assert message in line
    for path, content in inputs.items():
        assert path.read_bytes() == content
    assert (cli / "ro.pt2").read_text() == "read-only"
    assert _leftovers(cli) == []


def test_interrupted_export_keeps_the_previous_program(cli, inputs, capsys, monkeypatch) -> None:
    def interrupted(program, f, **kw):
        f.write(b"half a program")  # serialized in memory, then written by fairfx
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "save", interrupted)
    argv = [*COMPRESS, "--data", "data.pt", "--out", "old.pt2", "--report", "r.json"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert (cli / "old.pt2").read_bytes() == b"the previous good program"
    assert not (cli / "r.json").exists()
    assert _leftovers(cli) == []


def test_compress_writes_every_output_through_a_rename(cli, inputs, capsys, monkeypatch) -> None:
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(b).name), real(a, b)))
    argv = [*COMPRESS, "--data", "data.pt", "--out", "old.pt2", "--report", "r.json"]
    argv += ["--analysis", "s.pt", "--plot", "p.svg"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(renamed) == ["old.pt2", "p.svg", "r.json", "s.pt"]
    assert torch.export.load(str(cli / "old.pt2")) is not None
    assert (cli / "p.svg").read_text().lstrip().startswith("<?xml")
    assert _leftovers(cli) == []
