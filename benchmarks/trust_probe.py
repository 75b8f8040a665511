"""Issue 22 probe: what fairfx does with bad data, images, labels, models and disks.

Run against any fairfx tree (``PYTHONPATH=<tree>``) to compare before and after::

    PYTHONPATH=. python benchmarks/trust_probe.py > benchmarks/results/trust_probe_after.txt

Each line is one case and what came out: the exit status and stderr lines of a CLI run, the
exception of an API call, pixel values, or the files left. Work happens in a temporary folder;
the full-disk case mounts a 256 KiB tmpfs (root only; skipped elsewhere).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fairfx
from fairfx.apps.cli import main

NET = """import torch
from torch import nn
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
"""
X = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.arange(24) % 3


def cli(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # the traceback case
            return f"traceback {type(exc).__name__}: {str(exc)[:120]}"
    lines = err.getvalue().strip().splitlines()
    last = lines[-1] if lines else ""
    last = last if len(last) <= 200 else f"{last[:90]} ... {last[-100:]}"
    return f"exit {code}, {len(lines)} stderr line(s): {last}"


def api(call) -> str:
    try:
        call()
    except Exception as exc:  # what the user sees
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return "accepted"


def stderr_lines(call) -> int:
    """Lines written to file descriptor 2 while ``call`` runs (torch prints there directly)."""
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        api(call)
    finally:
        os.dup2(saved, 2)
        os.close(write)
    text = os.read(read, 1 << 20).decode(errors="replace")
    return len([line for line in text.splitlines() if line.strip()])


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = self.b(x)
        return x


def _full_disk(out: dict[str, str]) -> None:
    os.makedirs("full", exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", "full"]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        out["full disk during save_pruned"] = "skipped (cannot mount a tmpfs)"
        return
    try:
        Path("full/filler").write_bytes(b"\0" * 200_000)
        code = (
            "import torch, fairfx\nfrom torch import nn\n"
            "m = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()\n"
            "x = torch.randn(2, 3, 8, 8)\n"
            "fairfx.save_pruned('full/m.pt2', fairfx.prune(m, x, {'0': list(range(48))}), x)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        out["full disk during save_pruned"] = (
            f"rc {done.returncode}, {len(lines)} stderr line(s), last: "
            f"{lines[-1][:140] if lines else ''}; files left: {sorted(os.listdir('full'))}"
        )
    finally:
        subprocess.run(["umount", "full"], check=False)


def probe() -> dict[str, str]:
    out: dict[str, str] = {}
    Path("probe_net.py").write_text(NET)
    sys.path.insert(0, os.getcwd())
    from probe_net import net

    torch.save((X.double(), Y), "d64.pt")
    out["float64 inputs in a .pt data file"] = cli(
        ["compress", "--model", "probe_net:net", "--data", "d64.pt", "--alpha", "0.1",
         "--samples-per-class", "8", "--out", "m.pt2", "--quiet"]
    )  # fmt: skip
    grey = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(grey).save("g16.png")
    try:
        from fairfx.apps.cli_inputs import load_image
    except ImportError:
        from torchvision.datasets.folder import default_loader as load_image
    pixels = np.asarray(load_image("g16.png"))[0, :, 0].tolist()
    out["16-bit grey PNG, pixels 0/1000/32768/65535 read as"] = str(pixels)
    for c in "ab":
        os.makedirs(f"imgs/{c}", exist_ok=True)
        for name in ("x", "y"):
            Image.new("RGB", (8, 8)).save(f"imgs/{c}/{name}.png")
    Image.new("RGB", (40, 40)).save("imgs/a/big.png")
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 100  # a 14000x14000 PNG, scaled
    out["decompression bomb (Pillow limit lowered to 100 px)"] = cli(
        ["compress", "--model", "probe_net:net", "--data", "imgs", "--image-size", "8",
         "--alpha", "0.1", "--samples-per-class", "2", "--out", "m2.pt2", "--quiet"]
    )  # fmt: skip
    Image.MAX_IMAGE_PIXELS = limit
    out["typo --alpah"] = cli(["compress", "--model", "a", "--data", "b", "--out", "c", "--alpah"])
    out["--channels 1"] = cli(["inspect", "--model", "probe_net:net", "--channels", "1"])
    one_hot = nn.functional.one_hot(Y).float()
    for name, data in (
        ("float labels", DataLoader(TensorDataset(X, Y.float()), batch_size=8)),
        ("one-hot labels", DataLoader(TensorDataset(X, one_hot), batch_size=8)),
        ("a TensorDataset as data=", TensorDataset(X, Y)),
    ):
        out[name] = api(lambda d=data: fairfx.analyze(net(), X[:2], d, progress=False))
    branchy = lambda: fairfx.channel_groups(_Branchy(), torch.randn(2, 3, 8, 8))  # noqa: E731
    out["untraceable if: stderr lines besides the error"] = str(stderr_lines(branchy))
    pruned = fairfx.prune(net(), X[:2], {"0": [0, 1, 2]})
    out["save_pruned into a missing folder"] = api(
        lambda: fairfx.save_pruned("nowhere/m.pt2", pruned, X[:2])
    )
    _full_disk(out)
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for key, value in probe().items():
            print(f"{key}: {value}")
