"""``fairfx compress``: score, plan, rewrite, verify, fine-tune, export and report in one run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.artifact import DEPLOY, META_FILE, metadata_json
from ..engine.deploy import deployment_form
from ..errors import FairfxError, PlanError
from ..files import json_default, write_text
from .cli_inputs import (
    UserError,
    _Chatter,
    _first_line,
    _no_clashes,
    _writable,
    example_batch,
    load_data,
    load_model,
    weights_fingerprint,
)
from .cli_options import (
    check_fraction,
    dataset_labels,
    parse_model_args,
    parse_normalize,
    split_indices,
)
from .cli_planning import check_ignored, flag_error, plan_options
from .cli_report import compress_report, compress_table
from .report import export_and_check, plot_formats, plot_kept


def _load_scores(path: Path, model: nn.Module, example: torch.Tensor) -> Any:
    from ..method.fair import load_analysis

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


def _memory_line(graph: Any, loader: Any, args: Any) -> str:
    """The memory estimate, printed before scoring starts (analyze refuses when it won't fit)."""
    from ..method.memory import class_hint, estimate_for_graph

    est = estimate_for_graph(
        graph,
        classes=class_hint(graph, loader, args.max_classes),
        samples_per_class=args.samples_per_class,
        state_dtype=args.state_dtype,
    )
    return est.line()


def cmd_compress(args: argparse.Namespace) -> int:
    from ..method.graph import channel_graph
    from ..method.pipeline import run

    say = _Chatter(args.quiet)
    # Cheap checks first: a typo must not cost an analysis.
    options = plan_options(args)
    for flag, value in (
        ("--image-size", args.image_size),
        ("--batch-size", args.batch_size),
        ("--samples-per-class", args.samples_per_class),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be 0 or more, got {args.finetune_epochs}")
    check_fraction(args.val_fraction)
    normalize = parse_normalize(args.normalize, args.channels)
    model_args = parse_model_args(args.model_args)
    # Outputs: writable, never an input or another output, checked before any work.
    _no_clashes(
        {
            "--out": args.out,
            "--report": args.report,
            "--plot": args.plot,
            "--analysis": args.analysis,
        },
        {"--weights": args.weights, "--data": args.data},
    )
    out = _writable(args.out, "--out")
    report_path = _writable(args.report, "--report")
    plot_path = _writable(args.plot, "--plot")
    scores_path = Path(args.analysis) if args.analysis is not None else None
    if scores_path is not None and not scores_path.is_file():  # to be written, not read
        _writable(args.analysis, "--analysis")
    if plot_path is not None:
        _check_plot(plot_path)
    assert out is not None

    t = time.perf_counter()
    model = load_model(args.model, args.weights, args.num_classes, model_args)
    dataset = load_data(args.data, args.image_size, args.channels, normalize)
    train_idx, val_idx = split_indices(dataset_labels(dataset), args.val_fraction, args.seed)
    train_set = torch.utils.data.Subset(dataset, train_idx) if val_idx else dataset
    val_loader = None
    if val_idx:
        val_set = torch.utils.data.Subset(dataset, val_idx)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size)
    example = example_batch(train_set)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=False)
    shuffled = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    fingerprint = weights_fingerprint(model)
    check_ignored(model, args.ignore)
    load_seconds = time.perf_counter() - t

    analyze_options: dict[str, Any] = {
        "samples_per_class": args.samples_per_class,
        "max_classes": args.max_classes,
        "seed": args.seed,
        "observe": args.observe,
        "progress": not args.quiet,
        "state_dtype": args.state_dtype,
        "memory_check": not args.no_memory_check,
    }
    reused = None
    if scores_path is not None and scores_path.exists():
        reused = _load_scores(scores_path, model, example)
        saved = reused.record.get("weights_sha1")
        if saved is not None and saved != fingerprint:
            raise UserError(
                f"--analysis {scores_path} holds scores of other weights of this model; delete "
                "it or give another path to score these weights"
            )
        say(f"reusing scores from {scores_path} (delete it to score again)")
    else:
        held = f", {len(val_idx)} held out for validation" if val_idx else ""
        rounds = f" in {args.rounds} rounds" if args.rounds > 1 else ""
        say(
            f"scoring channels on {args.data} ({len(train_set)} samples, "
            f"{_classes(dataset)} classes{held}){rounds}"
        )
        if args.rounds == 1:
            graph = channel_graph(model, example)  # one capture for the estimate and the scoring
            say(_memory_line(graph, loader, args))
            analyze_options["graph"] = graph

    def on_scored(analysis: Any) -> None:
        rec = analysis.record
        say(
            f"scored {rec['samples']} of {rec['samples_seen']} samples, "
            f"{len(rec['classes'])} of {rec['classes_seen']} classes seen"
        )
        analysis.record.update(
            model=args.model, weights_sha1=fingerprint, input_shape=list(example.shape[1:])
        )
        if scores_path is not None and args.rounds == 1:
            analysis.save(scores_path)
            say(f"saved scores to {scores_path}")

    if args.finetune_epochs:
        where = "the training split" if val_idx else "the calibration data (no validation split)"
        say(f"fine-tuning {args.finetune_epochs} epoch(s) on {where} after pruning")
    try:
        result = run(
            model,
            example,
            options,
            loader,
            rounds=args.rounds,
            recalibrate=not args.no_recalibrate,
            finetune_data=shuffled,
            finetune_epochs=1,
            final_finetune_epochs=args.finetune_epochs,
            lr=args.lr,
            val_data=val_loader,
            analysis=reused,
            analyze_options=analyze_options,
            on_scored=on_scored,
        )
    except PlanError as exc:
        raise flag_error(exc) from None
    times = {"load": load_seconds, **result.timings}
    if reused is not None:
        times["analyze"] = 0.0
    if not all(r["verify"] for r in result.rounds):
        raise UserError(
            f"the pruned model does not match the masked original ({result.verify}); nothing "
            "was written. This is a fairfx bug: please report the model",
            code=1,
        )
    if result.recalibration is not None:
        say(
            f"recalibrated {result.recalibration['modules']} BatchNorm layer(s) on "
            f"{result.recalibration['samples']} samples"
        )
    pruned = result.pruned

    t = time.perf_counter()
    say(f"exporting to {out}")
    # The deployment form (BatchNorm folded, channels_last; docs/latency.md) unless --no-deploy.
    shipped = pruned if args.no_deploy else deployment_form(pruned, **DEPLOY)
    try:
        export = export_and_check(
            shipped,
            example,
            out,
            extra={META_FILE: metadata_json(shipped)},  # fairfx.load_pruned reads it
        )
        export["deploy"] = shipped.meta["fairfx"].get("deploy")
    except OSError as exc:  # checked up front, so a full disk or a folder removed meanwhile
        raise UserError(f"cannot write --out {out}: {_first_line(exc)}", code=1) from exc
    except Exception as exc:
        raise UserError(f"torch.export failed: {_first_line(exc)}", code=1) from exc
    times["export"] = time.perf_counter() - t

    split = {"train": len(train_idx), "validation": len(val_idx), "seed": args.seed}
    report = compress_report(
        args, options, result, export, times, reused is not None, normalize, split
    )
    report["model_args"] = model_args
    if report_path is not None:
        write_text(report_path, json.dumps(report, indent=2, default=json_default) + "\n")
        say(f"wrote {report_path}")
    if plot_path is not None:
        plot_kept(report["groups"], plot_path, f"{args.model}: {report['target']}")
        say(f"wrote {plot_path}")
    print(compress_table(args, report))
    return 0 if export["equal"] else 1


def _check_plot(plot_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install matplotlib (or fairfx[demo])")
    formats = plot_formats()
    if plot_path.suffix.lower().lstrip(".") not in formats:
        ext = plot_path.suffix or "(no extension)"
        raise UserError(
            f"--plot {plot_path}: matplotlib cannot write {ext} files; use one of "
            + ", ".join("." + f for f in sorted(formats))
        )
