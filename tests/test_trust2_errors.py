"""Bad inputs that used to end in a traceback (or a silent wrong value) end in one line naming
the problem and the fix: data files and images, full disks, dead ranks, labels, untraceable
models, command-line typos and flags."""

from __future__ import annotations

import datetime
import errno
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fairfx
from fairfx import CalibrationError, CaptureError, FairfxError
from fairfx.apps.cli import main
from fairfx.apps.cli_inputs import UserError, load_data, load_image

from .conftest import cli_error, model_folder
from .test_errors import OPTS, X, Y, net

MODULE = "fairfx_trust2_errors_net"


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text.strip(), text
    return text


@pytest.fixture
def cli(tmp_path, monkeypatch):
    source = (
        "import torchvision\n"
        "from tests.test_errors import net\n"
        "def vit():\n"
        "    return torchvision.models.VisionTransformer(32, 8, 1, 2, 16, 32, num_classes=3)\n"
    )
    return model_folder(tmp_path, monkeypatch, MODULE, source)


# ---------------------------------------------------------------------------- data and images
def test_float64_inputs_in_a_data_file_are_used(cli, capsys) -> None:
    torch.save((X.double(), Y), cli / "d.pt")
    ds = load_data(str(cli / "d.pt"), 8, 3)
    assert ds[0][0].dtype == torch.float32
    argv = ["compress", "--model", f"{MODULE}:net", "--data", "d.pt", "--alpha", "0.1",
            "--samples-per-class", "8", "--out", "m.pt2", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert (cli / "m.pt2").exists()


def _folder(root: Path, images: dict[str, Image.Image]) -> Path:
    for name, img in images.items():
        d = root / "images" / name.split("/")[0]
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / name.split("/")[1])
    return root / "images"


def test_16_bit_grey_png_is_scaled_not_saturated(tmp_path) -> None:
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(values)
    path = tmp_path / "g16.png"
    img.save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = np.asarray(load_image(str(path)))
    assert rgb.shape == (4, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 4, 128, 255]  # 65535 -> 255, 32768 -> 128, not 255s
    root = _folder(tmp_path, {"a/x.png": img, "b/y.png": img})
    x = load_data(str(root), 4, 3)[0][0]
    assert 0.4 < float(x[0, 0, 2]) < 0.6  # mid-grey stays mid-grey


def test_float_image_is_refused(tmp_path) -> None:
    path = tmp_path / "f.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(UserError) as exc:
        load_image(str(path))
    assert "floating-point pixels" in one_line(exc)


def test_decompression_bomb_is_one_line(cli, capsys, monkeypatch) -> None:
    # A 14000x14000 PNG trips Pillow's limit; the same check at a lower limit, in little memory.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    small = Image.new("RGB", (8, 8))
    big = Image.new("RGB", (40, 40))
    root = _folder(cli, {"a/x.png": small, "a/big.png": big, "b/y.png": small, "b/z.png": small})
    line = cli_error(
        capsys,
        ["compress", "--model", f"{MODULE}:net", "--data", str(root), "--image-size", "8",
         "--alpha", "0.1", "--samples-per-class", "2", "--out", "m.pt2", "--quiet"],
    )  # fmt: skip
    assert "big.png is too large to decode safely" in line and "resize it" in line


# ------------------------------------------------------------------------------- full disk
@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _big_pruned():
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    return fairfx.prune(model, x, {"0": list(range(48))}), x  # about 110 KB of weights


def test_full_disk_during_save_is_one_line_and_leaves_nothing(full_disk) -> None:
    pruned, x = _big_pruned()
    (full_disk / "filler").write_bytes(b"\0" * 200_000)
    with pytest.raises(FairfxError) as exc:
        fairfx.save_pruned(full_disk / "m.pt2", pruned, x)
    assert "No space left on device" in one_line(exc)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_full_disk_during_cli_export_is_one_line(full_disk, cli, capsys) -> None:
    torch.save((X, Y), cli / "d.pt")
    (full_disk / "filler").write_bytes(b"\0" * 250_000)
    argv = ["compress", "--model", f"{MODULE}:net", "--data", "d.pt", "--alpha", "0.1",
            "--samples-per-class", "8", "--out", str(full_disk / "m.pt2"), "--quiet"]  # fmt: skip
    assert main(argv) == 1  # the CLI's status for a failed write
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_write_error_during_save_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    pruned, x = _big_pruned()
    real_open = Path.open

    def failing_open(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if "w" in mode and ".tmp" in self.name:
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return f

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(FairfxError) as exc:
        fairfx.save_pruned(tmp_path / "m.pt2", pruned, x)
    assert "No space left on device" in one_line(exc)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ a dead rank
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dying_rank(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    dist.barrier()
    if rank == 1:
        os._exit(0)  # killed: no goodbye to the other rank
    import time

    from fairfx.method.ranks import agreed_codec

    time.sleep(1.0)
    try:
        agreed_codec("float16")
        Path(out).write_text("no error")
    except CalibrationError as exc:
        Path(out).write_text(str(exc))
    except BaseException as exc:  # written for the test to show
        Path(out).write_text(f"RAW {type(exc).__name__}: {exc}")
    os._exit(0)


@pytest.mark.slow  # two gloo processes: about 20 s on a busy machine
def test_a_killed_rank_gives_the_other_one_line(tmp_path) -> None:
    out = tmp_path / "rank0.txt"
    mp.spawn(_dying_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    text = out.read_text()
    assert "\n" not in text.strip() and text.startswith("rank 0: the state codec agreement"), text
    assert "another rank stopped" in text


# ----------------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    ("data", "words"),
    [
        (DataLoader(TensorDataset(X, Y.float()), batch_size=8), "float32 tensor of shape [8]"),
        (
            DataLoader(TensorDataset(X, nn.functional.one_hot(Y).float()), batch_size=8),
            "y.argmax(1)",
        ),
        (TensorDataset(X, Y), "wrap it in torch.utils.data.DataLoader"),
    ],
)
def test_label_mistakes_are_named(data, words) -> None:
    with pytest.raises(CalibrationError) as exc:
        fairfx.analyze(net(), X[:2], data, **OPTS)
    line = one_line(exc)
    assert words in line and "got list" not in line and "got tuple" not in line


# -------------------------------------------------------------------------- capture and CLI
class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = self.b(x)
        return x


def test_untraceable_if_prints_only_the_good_message(capfd) -> None:
    with pytest.raises(CaptureError) as exc:
        fairfx.channel_groups(_Branchy(), torch.randn(2, 3, 8, 8))
    assert "`if x.sum() > 0:`" in one_line(exc)
    printed = capfd.readouterr()
    assert "def forward" not in printed.err + printed.out, printed.err[:500]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "--model", "m:f", "--analysis", "s.pt", "--alpah", "0.1"],
         "did you mean --alpha?"),
        (["compress", "--model", "m:f", "--data", "d", "--out", "o.pt2", "--alpah", "0.1"],
         "did you mean --alpha?"),
        (["compres"], "invalid choice"),
    ],
)  # fmt: skip
def test_command_line_typos_are_one_line(capsys, argv, words) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fairfx: error: "), err
    assert words in err and "usage:" not in err


def test_wrong_channels_and_image_size_name_the_flags(cli, capsys) -> None:
    line = cli_error(capsys, ["inspect", "--model", f"{MODULE}:net", "--channels", "1"])
    assert "--channels" in line and "example_input" not in line
    line = cli_error(capsys, ["inspect", "--model", f"{MODULE}:vit", "--image-size", "48"])
    assert "--image-size" in line and "example_input" not in line


# ------------------------------------------------------------------------ API keyword mistakes
def test_plan_ratio_alone_is_a_uniform_ratio_not_alpha_none() -> None:
    analysis = fairfx.analyze(net(), X[:2], [(X, Y)], **OPTS)
    plan = analysis.plan(ratio=0.3)  # was "alpha must be a number in [0, 1), got None"
    assert plan.summary()["units_removed"] > 0


def test_compress_with_a_mistyped_option_names_the_close_option() -> None:
    with pytest.raises(fairfx.PlanError) as exc:
        fairfx.compress(net(), X[:2], 0.1, data=[(X, Y)], round_too=8, **OPTS)
    line = one_line(exc)
    assert "round_too" in line and "round_to" in line and "analyze()" not in line


def test_compress_without_alpha_or_budget_is_not_silent() -> None:
    with pytest.raises(fairfx.PlanError) as exc:
        fairfx.compress(net(), X[:2], data=[(X, Y)], **OPTS)
    assert "alpha" in one_line(exc)
