"""Command-line inputs and formatting: build the model, load weights and data, check values.

Every failure a user can cause becomes a :class:`UserError` with one line that names the fix;
the command line prints it and exits 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FairfxError, first_line
from ..files import check_clashes, check_output, safe_load
from ..files import weights_fingerprint as weights_fingerprint  # the CLI's name for it

PROG = "fairfx"


class UserError(Exception):
    """A problem the user can fix; reported as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


# ---------------------------------------------------------------------------------------- model
def load_model(
    spec: str,
    weights: str | None = None,
    num_classes: int | None = None,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """``torchvision:NAME`` (random init, ``weights=None``) or ``package.module:factory``,
    called with ``model_args`` (and ``num_classes``), with an optional state_dict file;
    returned in eval mode."""
    if ":" not in spec:
        raise UserError(
            f"--model must be torchvision:NAME or package.module:factory, got {spec!r} "
            f"(e.g. torchvision:{spec})"
        )
    where, name = spec.split(":", 1)
    if not where or not name:
        raise UserError(f"--model must be torchvision:NAME or package.module:factory, got {spec!r}")
    kwargs: dict[str, Any] = dict(model_args or {})
    if num_classes is not None:
        if kwargs.get("num_classes", num_classes) != num_classes:
            raise UserError(
                f"--num-classes {num_classes} and --model-args num_classes="
                f"{kwargs['num_classes']} disagree; give one"
            )
        kwargs["num_classes"] = num_classes
    if where == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(
                f"unknown torchvision model {name!r}{hint} (torchvision.models.list_models() "
                "lists them)"
            )
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as exc:
            raise UserError(f"cannot build torchvision model {name!r}: {_first_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise UserError(
                f"cannot import {where!r} for --model {spec}: {_first_line(exc)} (is it on "
                "PYTHONPATH?)"
            ) from exc
        obj: Any = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise UserError(f"module {where!r} has no attribute {name!r} (--model {spec})")
            obj = getattr(obj, part)
        if isinstance(obj, nn.Module):
            if kwargs:
                raise UserError(
                    f"--num-classes / --model-args cannot be applied: {spec} is a module instance"
                )
            model = obj
        elif callable(obj):
            try:
                model = obj(**kwargs)
            except Exception as exc:
                call = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
                raise UserError(f"{call} failed: {_first_line(exc)}") from exc
        else:
            raise UserError(f"{spec} is neither a model factory nor a torch.nn.Module")
        if not isinstance(model, nn.Module):
            raise UserError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict (or a checkpoint dict holding one under ``state_dict``) strictly."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--weights {path} does not exist")
    state = _safe_load(
        p, "--weights", "a state_dict", "save one with torch.save(model.state_dict(), path)"
    )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} does not hold a state_dict of tensors")
    bad = next(
        (k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()), None
    )
    if bad is not None:
        raise UserError(
            f"--weights {path}: tensor {bad!r} holds NaN/Inf values (a diverged run or a damaged "
            "file); give finite weights"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        k = sorted(shapes)[0]
        problems.append(
            f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the model: same architecture and --num-classes?)"
        )
    if problems:
        raise UserError(f"--weights {path} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state)


_MAX_SAMPLE = 1 << 26  # values in one input sample: far above any image or sequence scored


def check_input_shape(path: Path, shape: object) -> None:
    """The scores record's ``input_shape`` makes the example input: an edited one must not
    ask for terabytes."""
    ok = (
        isinstance(shape, list)
        and 1 <= len(shape) <= 4
        and all(type(n) is int and n > 0 for n in shape)
        and math.prod(shape) <= _MAX_SAMPLE
    )
    if not ok:
        raise UserError(
            f"--analysis {path}: its input_shape {str(shape)[:60]} is not one input sample's "
            f"shape (1 to 4 positive sizes, at most {_MAX_SAMPLE} values); the file was edited "
            "or damaged: give --image-size, or score again with fairfx compress --analysis"
        )


# ----------------------------------------------------------------------------------------- data
def load_data(
    path: str,
    image_size: int,
    channels: int,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> torch.utils.data.Dataset:
    """An ImageFolder directory (resized, then normalized by ``(mean, std)`` when given) or a
    ``.pt`` file holding ``(inputs, targets)`` used as saved."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--data {path} does not exist")
    if p.is_dir():
        from torchvision import datasets, transforms

        if channels not in (1, 3):
            raise UserError(f"an ImageFolder gives 1 or 3 channels, not --channels {channels}")
        steps: list[Any] = [transforms.Resize((image_size, image_size))]
        if channels == 1:
            steps.append(transforms.Grayscale(1))
        steps.append(transforms.ToTensor())
        if normalize is not None:
            steps.append(transforms.Normalize(*normalize))
        try:
            ds = datasets.ImageFolder(
                str(p), transform=transforms.Compose(steps), loader=load_image
            )
        except (FileNotFoundError, OSError) as exc:
            raise UserError(
                f"--data {path} is not an ImageFolder (one sub-folder of images per class): "
                f"{_one_line(exc)}"
            ) from exc
        if len(ds.classes) < 2:
            raise UserError(f"--data {path} has {len(ds.classes)} class folder(s); need at least 2")
        return ds
    if normalize is not None:
        raise UserError(
            f"--normalize applies to ImageFolder directories; --data {path} is used as saved "
            "(normalize the inputs before torch.save)"
        )
    obj = _safe_load(
        p,
        "--data",
        "labelled data",
        "give an ImageFolder directory or a .pt file saved with "
        "torch.save((inputs, targets), path)",
    )
    x, y = _pair(obj, path)
    return torch.utils.data.TensorDataset(x, y)


def load_image(path: str) -> Any:
    """An ImageFolder image as RGB. 16-bit grey images (PNG mode ``I;16``, ``I``) are scaled to
    8 bits first (Pillow's own RGB conversion clips them at 255, saturating nearly every
    pixel); float images and images past Pillow's decompression-bomb limit are refused."""
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as exc:
        raise UserError(
            f"--data image {path} is too large to decode safely ({_one_line(exc)}); resize it "
            "or remove it from the folder"
        ) from None
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise UserError(
                f"--data image {path} holds 32-bit integer pixels outside 0..65535; save it as "
                "8- or 16-bit"
            )
        img = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise UserError(
            f"--data image {path} holds floating-point pixels (mode F), which have no fixed "
            "range; save it as an 8- or 16-bit image"
        )
    return img.convert("RGB")


def _safe_load(p: Path, flag: str, what: str, fix: str) -> Any:
    """A load that cannot run code (weights_only=True); failures are one line naming ``flag``."""
    try:
        return safe_load(p, what, fix)
    except FairfxError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _pair(obj: Any, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    fix = "save labelled data with torch.save((inputs, targets), path)"
    if isinstance(obj, dict):
        xs = [obj[k] for k in ("inputs", "x", "images", "data") if k in obj]
        ys = [obj[k] for k in ("targets", "labels", "y", "target", "label") if k in obj]
        if not xs or not ys:
            raise UserError(
                f"--data {path} holds a dict with keys {sorted(map(str, obj))} but no inputs and "
                f"targets; {fix}"
            )
        obj = (xs[0], ys[0])
    if isinstance(obj, torch.Tensor):
        raise UserError(f"--data {path} holds one tensor and no labels; {fix}")
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        size = f" of {len(obj)} items" if isinstance(obj, (tuple, list)) else ""
        raise UserError(f"--data {path} holds a {type(obj).__name__}{size}, not a pair; {fix}")
    x, y = obj
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError(f"--data {path}: inputs and targets must be tensors; {fix}")
    if not x.is_floating_point():
        raise UserError(f"--data {path}: inputs must be floating point, got {x.dtype}")
    if y.is_floating_point() or y.dim() != 1:
        raise UserError(
            f"--data {path}: targets must be integer class labels of shape [N], got "
            f"{y.dtype} of shape {tuple(y.shape)}"
        )
    if len(x) != len(y):
        raise UserError(f"--data {path}: {len(x)} inputs but {len(y)} targets")
    if not x.isfinite().all():
        n = int((~x.isfinite()).sum())
        raise UserError(
            f"--data {path}: inputs hold {n} NaN/Inf value(s); clean or drop those samples"
        )
    if y.dtype == torch.bool:
        raise UserError(
            f"--data {path}: targets are bool; save integer class labels (y.long() makes "
            "False class 0 and True class 1)"
        )
    if len(y) < 2:
        raise UserError(f"--data {path} holds {len(y)} sample(s); need at least 2")
    # float64 (numpy's default) would fail on float32 weights; the values fit float32.
    return (x.float() if x.dtype == torch.float64 else x), y.long()


def example_batch(ds: torch.utils.data.Dataset) -> torch.Tensor:
    """The first two samples: batch 2 keeps torch.export from specializing the batch to 1."""
    return torch.stack([ds[i][0] for i in range(min(2, len(ds)))])


# ------------------------------------------------------------------ checks and formatting
class _Chatter:
    """Progress lines on stderr, silenced by ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------- helpers
def _writable(path: str | None, flag: str) -> Path | None:
    """Refuse an output that cannot be written (see :func:`fairfx.files.check_output`)."""
    if path is None:
        return None
    try:
        return check_output(path, flag)
    except FairfxError as exc:
        raise UserError(str(exc)) from None


def _no_clashes(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """Refuse an output that is an input or another output, before any work."""
    try:
        check_clashes(outputs, inputs)
    except FairfxError as exc:
        raise UserError(str(exc)) from None


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g}"


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, right, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _example_from_size(args: argparse.Namespace, image_size: int) -> torch.Tensor:
    if image_size < 1 or args.channels < 1:
        raise UserError("--image-size and --channels must be positive")
    return torch.randn(2, args.channels, image_size, image_size)
