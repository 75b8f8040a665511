"""How close U from the compact calibration state is to the exact computation.

Scores the digits nets (VGG-, ResNet- and DenseNet-style, trained in seconds) and a random-weight
torchvision resnet18 (digits at 32x32, 3 channels) twice: once with a reference checkout of
fairfx (``--reference``, e.g. the commit before the compact state: float32 projections taken in
the forward, exact W1 for unequal class counts) and once with this checkout for every
``state_dtype``. Two data sets: every training image (equal class counts, 32 kept per class) and
the first 150 images (unequal counts, 9-19 per class). Prints the Spearman rank correlation of U
over all units and the lowest per-group value (groups of 8+ units), and the median relative
difference.

    python benchmarks/bench_state_accuracy.py --reference /path/to/old/checkout
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CODECS = ("float32", "float16", "bfloat16", "uint8", "int4")
MODELS = ("vgg", "resnet", "densenet", "resnet18")


def build(name: str):
    import torchvision

    from fairfx.apps import digits

    if name == "vgg":
        return digits.VGGStyle(width=16)
    if name == "resnet":
        return digits.ResNetStyle(width=16)
    if name == "densenet":
        return digits.DenseNetStyle(growth=12)
    return torchvision.models.resnet18(num_classes=10)


def data(name: str, subset: str):
    from fairfx.apps import digits

    split = digits.load(size=32 if name == "resnet18" else 8)
    x, y = split.x_train, split.y_train
    if name == "resnet18":
        x = x.repeat(1, 3, 1, 1)
    if subset == "unequal":
        x, y = x[:150], y[:150]
    return x[:4], list(digits.batches(x, y, 50))


def child(weights: str, out: str, codecs: list[str]) -> None:
    import inspect

    import torch

    import fairfx

    torch.set_num_threads(1)
    has_dtype = "state_dtype" in inspect.signature(fairfx.analyze).parameters
    result = {}
    for name in MODELS:
        model = build(name)
        model.load_state_dict(torch.load(Path(weights) / f"{name}.pt", weights_only=True))
        model.eval()
        for subset in ("equal", "unequal"):
            example, batches = data(name, subset)
            for codec in codecs if has_dtype else ["reference"]:
                kw = {"state_dtype": codec} if has_dtype else {}
                an = fairfx.analyze(model, example, batches, progress=False, **kw)
                for gid, s in an.scores.items():
                    result[f"{name}/{subset}/{codec}/{gid}"] = s.u
    np.savez(out, **result)


def prepare(weights: Path) -> None:
    import torch

    from fairfx.apps import digits

    split = digits.load()
    for name in MODELS:
        torch.manual_seed(0)
        model = build(name)
        if name != "resnet18":
            digits.train(model, split, epochs=8, seed=0)
        torch.save(model.state_dict(), weights / f"{name}.pt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="checkout whose fairfx is the reference")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--codecs", nargs="*", default=list(CODECS))
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.codecs)
        return
    from scipy.stats import spearmanr

    here = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp))
        runs = {}
        for tag, root in (("ref", args.reference), ("new", here)):
            env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
            out = os.path.join(tmp, f"{tag}.npz")
            cmd = [sys.executable, __file__, "--reference", root, "--child", tmp, out]
            subprocess.run([*cmd, "--codecs", *args.codecs], check=True, env=env)
            runs[tag] = dict(np.load(out))
    ref, new = runs["ref"], runs["new"]
    print(
        "| model | data | state_dtype | Spearman (all units) | lowest group Spearman | "
        "median rel. diff |"
    )
    print("|---|---|---|---|---|---|")
    for name in MODELS:
        for subset in ("equal", "unequal"):
            keys = sorted(k for k in ref if k.startswith(f"{name}/{subset}/"))
            gids = [k.rsplit("/", 1)[1] for k in keys]
            for codec in args.codecs:
                a = np.concatenate([ref[k] for k in keys])
                b = np.concatenate([new[f"{name}/{subset}/{codec}/{g}"] for g in gids])
                per = [
                    spearmanr(ref[k], new[f"{name}/{subset}/{codec}/{g}"])[0]
                    for k, g in zip(keys, gids, strict=True)
                    if len(ref[k]) >= 8
                ]
                rel = np.median(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))
                print(
                    f"| {name} | {subset} | {codec} | {spearmanr(a, b)[0]:.4f} | "
                    f"{min(per):.4f} | {rel:.2e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
