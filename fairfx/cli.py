"""Command line: ``fairfx compress | inspect | plan`` (also ``python -m fairfx``).

``compress`` runs the whole job on a model and labelled data: score channels (or reuse saved
scores), plan for a Tolerance of Difference or a budget, rewrite, prove the rewrite with the
masked-execution oracle, optionally fine-tune, export with ``torch.export`` (dynamic batch) and
check that the saved program reloads and computes what the pruned module computes.

User errors (missing files, unknown models, bad values, unlabelled data) end with exit status 2
and one line ``fairfx: error: ...`` on stderr, as argparse does for bad command lines.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import FairfxError
from .report import export_and_check, plot_kept

PROG = "fairfx"
DEFAULT_ALPHAS = (0.001, 0.005, 0.01, 0.05)


class UserError(Exception):
    """A problem the user can fix; reported as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class _Chatter:
    """Progress lines on stderr, silenced by ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------- model
def load_model(spec: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """``torchvision:NAME`` (random init, ``weights=None``) or ``package.module:factory``,
    with an optional state_dict file; returned in eval mode."""
    if ":" not in spec:
        raise UserError(
            f"--model must be torchvision:NAME or package.module:factory, got {spec!r} "
            f"(e.g. torchvision:{spec})"
        )
    where, name = spec.split(":", 1)
    if not where or not name:
        raise UserError(f"--model must be torchvision:NAME or package.module:factory, got {spec!r}")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
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
                raise UserError(f"--num-classes cannot be applied: {spec} is a module instance")
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
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot read --weights {path} as a state_dict (save one with "
            f"torch.save(model.state_dict(), path)): {_first_line(exc)}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} does not hold a state_dict of tensors")
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


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-1 of the model's state (names, shapes, values): saved scores are valid for it only."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- data
def load_data(path: str, image_size: int, channels: int) -> torch.utils.data.Dataset:
    """An ImageFolder directory or a ``.pt`` file holding ``(inputs, targets)``."""
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
        try:
            ds = datasets.ImageFolder(str(p), transform=transforms.Compose(steps))
        except (FileNotFoundError, OSError) as exc:
            raise UserError(
                f"--data {path} is not an ImageFolder (one sub-folder of images per class): "
                f"{_one_line(exc)}"
            ) from exc
        if len(ds.classes) < 2:
            raise UserError(f"--data {path} has {len(ds.classes)} class folder(s); need at least 2")
        return ds
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"cannot read --data {path}: give an ImageFolder directory or a .pt file saved with "
            f"torch.save((inputs, targets), path) ({_first_line(exc)})"
        ) from exc
    x, y = _pair(obj, path)
    return torch.utils.data.TensorDataset(x, y)


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
    if len(y) < 2:
        raise UserError(f"--data {path} holds {len(y)} sample(s); need at least 2")
    return x, y.long()


def example_batch(ds: torch.utils.data.Dataset) -> torch.Tensor:
    """The first two samples: batch 2 keeps torch.export from specializing the batch to 1."""
    return torch.stack([ds[i][0] for i in range(min(2, len(ds)))])


# --------------------------------------------------------------------------------------- export
# -------------------------------------------------------------------------------------- helpers
def _fraction(value: float, flag: str) -> float:
    if not 0 < value <= 1:
        raise UserError(f"{flag} is the fraction to keep, in (0, 1]; got {value:g}")
    return value


def _check_alpha(value: float) -> float:
    from .planning import check_alpha

    try:
        return check_alpha(value)
    except FairfxError as exc:
        raise UserError(_one_line(exc)) from exc


def _writable(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if not p.parent.exists():
        raise UserError(f"{flag} {path}: directory {p.parent} does not exist")
    return p


def _human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:g}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


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


# ------------------------------------------------------------------------------------- commands
def cmd_inspect(args: argparse.Namespace) -> int:
    from .groups import channel_groups

    model = load_model(args.model, args.weights, args.num_classes)
    groups = channel_groups(model, _example_from_size(args, args.image_size))
    rows = [("id", "size", "producers", "status")]
    for g in groups:
        if not g.prunable:
            status = f"fixed: {g.reason}"
        elif g.exact:
            status = "prunable"
        else:
            status = f"prunable, inexact: {g.note}"
        rows.append((str(g.id), str(g.size), ", ".join(g.producers), status))
    print(_table(rows, (True, True, False, False)))
    prunable = [g for g in groups if g.prunable]
    print(
        f"\n{len(groups)} channel groups, {len(prunable)} prunable holding "
        f"{sum(g.size for g in prunable)} of {sum(g.size for g in groups)} units "
        f"({args.model}, input {args.channels}x{args.image_size}x{args.image_size})"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    alphas = [_check_alpha(a) for a in args.alpha]
    path = Path(args.analysis)
    if not path.is_file():
        raise UserError(
            f"--analysis {args.analysis} does not exist (fairfx compress --analysis writes it)"
        )
    model = load_model(args.model, args.weights, args.num_classes)
    try:
        raw = torch.load(path, weights_only=False)
        record = raw.get("record", {}) if isinstance(raw, dict) else {}
    except Exception as exc:
        raise UserError(f"cannot read --analysis {args.analysis}: {_first_line(exc)}") from exc
    shape = record.get("input_shape")
    if args.image_size is not None or not shape:
        example = _example_from_size(args, args.image_size or 224)
    else:
        example = torch.randn(2, *shape)
    analysis = _load_scores(path, model, example)
    say = _Chatter(args.quiet)
    say(
        f"scores from {path} ({record.get('samples', '?')} samples, "
        f"{len(record.get('classes', [])) or '?'} classes), input {tuple(example.shape[1:])}"
    )
    rows = [
        (
            "alpha",
            "params after",
            "params kept",
            "MACs after",
            "MACs kept",
            "groups pruned",
            "units removed",
        )
    ]
    for alpha in alphas:
        s = analysis.plan(alpha).summary()
        rows.append(
            (
                f"{alpha:g}",
                f"{s['params_after']:,}",
                f"{s['params_kept']:.1%}",
                _human(s["macs_after"]),
                f"{s['macs_kept']:.1%}",
                str(s["groups_pruned"]),
                str(s["units_removed"]),
            )
        )
    print(
        f"{args.model}: {s['params_before']:,} parameters, {_human(s['macs_before'])} MACs "
        "before pruning"
    )
    print(_table(rows, (True,) * 7))
    return 0


def _load_scores(path: Path, model: nn.Module, example: torch.Tensor) -> Any:
    from .fair import load_analysis

    try:
        return load_analysis(path, model, example)
    except FairfxError:
        raise
    except Exception as exc:
        raise UserError(
            f"cannot read --analysis {path} (written by fairfx compress --analysis): "
            f"{_first_line(exc)}"
        ) from exc


def _classes(ds: torch.utils.data.Dataset) -> int:
    if hasattr(ds, "classes"):
        return len(ds.classes)
    return int(torch.unique(ds.tensors[1]).numel())


def cmd_compress(args: argparse.Namespace) -> int:
    from .fair import analyze
    from .finetune import finetune
    from .oracle import verify

    say = _Chatter(args.quiet)
    # Cheap checks first: a typo must not cost an analysis.
    if args.alpha is not None:
        _check_alpha(args.alpha)
    if args.params is not None:
        _fraction(args.params, "--params")
    if args.flops is not None:
        _fraction(args.flops, "--flops")
    for flag, value in (
        ("--image-size", args.image_size),
        ("--batch-size", args.batch_size),
        ("--samples-per-class", args.samples_per_class),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be 0 or more, got {args.finetune_epochs}")
    out = _writable(args.out, "--out")
    report_path = _writable(args.report, "--report")
    plot_path = _writable(args.plot, "--plot")
    scores_path = _writable(args.analysis, "--analysis")
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install matplotlib (or fairfx[demo])")
    assert out is not None

    times: dict[str, float] = {}
    t = time.perf_counter()
    model = load_model(args.model, args.weights, args.num_classes)
    dataset = load_data(args.data, args.image_size, args.channels)
    example = example_batch(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False)
    fingerprint = weights_fingerprint(model)
    times["load"] = time.perf_counter() - t

    t = time.perf_counter()
    if scores_path is not None and scores_path.exists():
        analysis = _load_scores(scores_path, model, example)
        saved = analysis.record.get("weights_sha1")
        if saved is not None and saved != fingerprint:
            raise UserError(
                f"--analysis {scores_path} holds scores of other weights of this model; delete "
                "it or give another path to score these weights"
            )
        say(f"reusing scores from {scores_path} (delete it to score again)")
        reused = True
    else:
        say(
            f"scoring channels on {args.data} ({len(dataset)} samples, {_classes(dataset)} classes)"
        )
        analysis = analyze(
            model,
            example,
            loader,
            samples_per_class=args.samples_per_class,
            seed=args.seed,
            progress=not args.quiet,
        )
        analysis.record.update(
            model=args.model,
            weights_sha1=fingerprint,
            input_shape=list(example.shape[1:]),
        )
        reused = False
        if scores_path is not None:
            analysis.save(scores_path)
            say(f"saved scores to {scores_path}")
    times["analyze"] = time.perf_counter() - t

    t = time.perf_counter()
    if args.alpha is not None:
        plan = analysis.plan(args.alpha)
        target = f"alpha {args.alpha:g}"
    elif args.params is not None:
        plan = analysis.plan_for(params=args.params)
        target = f"keep {args.params:g} of parameters"
    else:
        plan = analysis.plan_for(flops=args.flops)
        target = f"keep {args.flops:g} of MACs"
    times["plan"] = time.perf_counter() - t

    t = time.perf_counter()
    pruned = analysis.compress(plan)
    times["compress"] = time.perf_counter() - t

    t = time.perf_counter()
    check = verify(model, pruned, example)
    times["verify"] = time.perf_counter() - t
    if not check.passed:
        raise UserError(
            f"the pruned model does not match the masked original ({check}); nothing was written. "
            "This is a fairfx bug: please report the model",
            code=1,
        )

    history = None
    if args.finetune_epochs:
        t = time.perf_counter()
        say(f"fine-tuning {args.finetune_epochs} epoch(s) on the calibration data")
        train = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        finetune(pruned, train, epochs=args.finetune_epochs, lr=args.lr, progress=not args.quiet)
        history = pruned.meta["fairfx"]["finetune"]
        times["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = plan.summary()
    say(f"exporting to {out}")
    try:
        export = export_and_check(
            pruned,
            example,
            out,
            extra={"fairfx.json": json.dumps({"plan": summary}, default=_json_default)},
        )
    except Exception as exc:
        raise UserError(f"torch.export failed: {_first_line(exc)}", code=1) from exc
    times["export"] = time.perf_counter() - t

    groups = analysis.graph.groups if analysis.graph is not None else []
    per_group = [
        {
            "id": g.id,
            "producers": list(g.producers),
            "size": g.size,
            "kept": len(plan.units[g.id]) if g.id in plan.units else g.size,
            "prunable": g.prunable,
            "reason": g.reason,
        }
        for g in groups
    ]
    record = analysis.record
    report = {
        "model": args.model,
        "weights": args.weights,
        "data": args.data,
        "target": target,
        "plan": summary,
        "scores": {
            "reused": reused,
            "path": args.analysis,
            "samples": record.get("samples"),
            "classes": len(record.get("classes", [])),
        },
        "verify": {
            "passed": check.passed,
            "max_abs_diff": check.max_abs_diff,
            "tolerance": check.tolerance,
        },
        "finetune": history,
        "export": export,
        "timings_seconds": {k: round(v, 4) for k, v in times.items()},
        "groups": per_group,
    }
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        say(f"wrote {report_path}")
    if plot_path is not None:
        plot_kept(per_group, plot_path, f"{args.model}: {target}")
        say(f"wrote {plot_path}")
    print(_compress_table(args, target, summary, check, history, export, times, reused))
    return 0 if export["equal"] else 1


def _compress_table(args, target, s, check, history, export, times, reused) -> str:
    rows = [
        ("", "before", "after", "kept"),
        (
            "parameters",
            f"{s['params_before']:,}",
            f"{s['params_after']:,}",
            f"{s['params_kept']:.1%}",
        ),
        ("MACs", _human(s["macs_before"]), _human(s["macs_after"]), f"{s['macs_kept']:.1%}"),
    ]
    lines = [f"fairfx compress {args.model} ({target})", _table(rows, (False, True, True, True))]
    lines.append(
        f"groups pruned  {s['groups_pruned']} ({s['units_removed']} channel units removed)"
        + (f"; {s['note']}" if s["note"] else "")
    )
    lines.append(
        f"verify         {'PASS' if check.passed else 'FAIL'} (max |pruned - masked original| "
        f"{check.max_abs_diff:.2g}, tolerance {check.tolerance:.2g})"
    )
    if history is not None:
        lines.append(
            f"fine-tune      {history['epochs']} epoch(s) on the calibration data, train loss "
            + " -> ".join(f"{v:.4f}" for v in history["train_loss"])
        )
    batch = "dynamic batch >= 1" if export["dynamic_batch"] else export["note"]
    lines.append(
        f"export         {'OK' if export['equal'] else 'MISMATCH'} {export['path']} ({batch}; "
        f"reloaded and compared at batch {', '.join(map(str, export['batches']))}: max |diff| "
        f"{export['max_abs_diff']:.2g})"
    )
    names = {"analyze": "load scores" if reused else "analyze", "finetune": "fine-tune"}
    lines.append(
        "time           " + ", ".join(f"{names.get(k, k)} {v:.2f}s" for k, v in times.items())
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- parser
def _model_args(p: argparse.ArgumentParser, image_size: int | None, size_help: str) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME (built with weights=None) or package.module:factory",
    )
    p.add_argument("--weights", help="state_dict file (torch.save(model.state_dict(), path))")
    p.add_argument("--num-classes", type=int, help="passed to the factory as num_classes=")
    p.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        help=size_help,
    )
    p.add_argument(
        "--channels",
        type=int,
        default=3,
        help="input channels (default 3; 1 makes ImageFolder images grey)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="FAIR-Pruner structural pruning as a torch.fx pass.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "compress",
        help="score, prune, verify, (fine-tune,) export",
        description="Score channels on labelled data, prune, prove the rewrite, optionally "
        "fine-tune, export with torch.export and check the reloaded program.",
    )
    _model_args(
        c,
        224,
        "ImageFolder images are resized to this height and width (default 224); a .pt data "
        "file keeps its own size",
    )
    c.add_argument(
        "--data",
        required=True,
        help="labelled data: an ImageFolder directory (resized to --image-size) or a .pt file "
        "saved with torch.save((inputs, targets), path)",
    )
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--alpha", type=float, help="Tolerance of Difference, in [0, 1)")
    target.add_argument("--params", type=float, help="fraction of parameters to keep, (0, 1]")
    target.add_argument("--flops", type=float, help="fraction of MACs to keep, (0, 1]")
    c.add_argument("--out", required=True, help="exported program (.pt2, torch.export.save)")
    c.add_argument("--report", help="write a JSON report here")
    c.add_argument("--plot", help="write a PNG of kept channels per group (needs matplotlib)")
    c.add_argument(
        "--analysis",
        help="scores file: reused when it exists (no scoring), written after scoring otherwise",
    )
    c.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune the pruned model this many epochs with SGD (lr --lr, momentum 0.9, "
        "weight decay 1e-4) on the SAME data given by --data (there is no held-out split); "
        "default 0",
    )
    c.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (1e-3)")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    c.add_argument(
        "--samples-per-class",
        type=int,
        default=32,
        help="calibration samples per class for scoring (default 32)",
    )
    c.add_argument("--seed", type=int, default=0, help="seed of scoring and shuffling (0)")
    c.set_defaults(func=cmd_compress)

    i = sub.add_parser(
        "inspect",
        help="print the channel groups of a model",
        description="Print every channel group: size, producers, prunable or why not.",
    )
    _model_args(i, 224, "height and width of the example input (default 224)")
    i.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "plan",
        help="kept parameters/MACs per alpha from saved scores (no data)",
        description="Plan from scores saved by `fairfx compress --analysis`: no data needed.",
    )
    _model_args(
        p, None, "height and width of the example input (default: the scored input's, else 224)"
    )
    p.add_argument("--analysis", required=True, help="scores file from compress --analysis")
    p.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHAS),
        help="Tolerance of Difference values (default %(default)s)",
    )
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.code
    except FairfxError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable images, a full disk: the system's own message
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
