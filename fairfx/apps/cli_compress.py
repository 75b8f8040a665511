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

from ..engine.artifact import META_FILE, metadata_json
from ..errors import FairfxError
from ..files import write_text
from .cli_inputs import (
    UserError,
    _Chatter,
    _check_alpha,
    _first_line,
    _fraction,
    _human,
    _json_default,
    _no_clashes,
    _table,
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
from .cli_rounds import (
    _check_planning,
    _compress_in_rounds,
    planning_options,
    recal_line,
    recalibrate_step,
)
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
    from ..engine.groups import build
    from ..engine.oracle import verify
    from ..method.fair import analyze
    from ..method.finetune import evaluate_accuracy, finetune

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
    _check_planning(args)
    out = _writable(args.out, "--out")
    report_path = _writable(args.report, "--report")
    plot_path = _writable(args.plot, "--plot")
    scores_path = Path(args.analysis) if args.analysis is not None else None
    if scores_path is not None and not scores_path.is_file():  # to be written, not read
        _writable(args.analysis, "--analysis")
    if plot_path is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError("--plot needs matplotlib: pip install matplotlib (or fairfx[demo])")
        formats = plot_formats()
        if plot_path.suffix.lower().lstrip(".") not in formats:
            ext = plot_path.suffix or "(no extension)"
            raise UserError(
                f"--plot {plot_path}: matplotlib cannot write {ext} files; use one of "
                + ", ".join("." + f for f in sorted(formats))
            )
    assert out is not None

    times: dict[str, float] = {}
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
    fingerprint = weights_fingerprint(model)
    times["load"] = time.perf_counter() - t
    planning = planning_options(args, model)
    if args.rounds > 1:
        return _compress_in_rounds(args, model, example, loader, planning, say, times)

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
        held = f", {len(val_idx)} held out for validation" if val_idx else ""
        say(
            f"scoring channels on {args.data} ({len(train_set)} samples, "
            f"{_classes(dataset)} classes{held})"
        )
        graph = build(model, example)  # one capture for the estimate and the scoring
        say(_memory_line(graph, loader, args))
        analysis = analyze(
            model,
            example,
            loader,
            graph=graph,
            samples_per_class=args.samples_per_class,
            max_classes=args.max_classes,
            seed=args.seed,
            observe=args.observe,
            progress=not args.quiet,
            state_dtype=args.state_dtype,
            memory_check=not args.no_memory_check,
        )
        rec = analysis.record
        say(
            f"scored {rec['samples']} of {rec['samples_seen']} samples, "
            f"{len(rec['classes'])} of {rec['classes_seen']} classes seen"
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
        plan = analysis.plan(args.alpha, **planning)
        target = f"alpha {args.alpha:g}"
    elif args.params is not None:
        plan = analysis.plan_for(params=args.params, **planning)
        target = f"keep {args.params:g} of parameters"
    else:
        plan = analysis.plan_for(flops=args.flops, **planning)
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

    recal = recalibrate_step(args, pruned, loader, say, times)

    accuracy = None
    if val_loader is not None:
        t = time.perf_counter()
        accuracy = {
            "split": "validation",
            "samples": len(val_idx),
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "original": evaluate_accuracy(model, val_loader),
            "one_shot": evaluate_accuracy(pruned, val_loader),
            "fine_tuned": None,
        }
        times["accuracy"] = time.perf_counter() - t

    history = None
    if args.finetune_epochs:
        t = time.perf_counter()
        where = "the training split" if val_idx else "the calibration data (no validation split)"
        say(f"fine-tuning {args.finetune_epochs} epoch(s) on {where}")
        train = torch.utils.data.DataLoader(
            train_set,
            batch_size=args.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        finetune(
            pruned,
            train,
            epochs=args.finetune_epochs,
            lr=args.lr,
            val_data=val_loader,
            progress=not args.quiet,
        )
        history = pruned.meta["fairfx"]["finetune"]
        if accuracy is not None:
            # The best epoch's weights were restored: its validation accuracy is the result.
            accuracy["fine_tuned"] = history["best_val_accuracy"]
            accuracy["best_epoch"] = history["best_epoch"]
        times["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    summary = plan.summary()
    say(f"exporting to {out}")
    try:
        export = export_and_check(
            pruned,
            example,
            out,
            extra={META_FILE: metadata_json(pruned)},  # fairfx.load_pruned reads it
        )
    except OSError as exc:  # checked up front, so a full disk or a folder removed meanwhile
        raise UserError(f"cannot write --out {out}: {_first_line(exc)}", code=1) from exc
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
        "split": {"train": len(train_idx), "validation": len(val_idx), "seed": args.seed},
        "normalize": None if normalize is None else {"mean": normalize[0], "std": normalize[1]},
        "model_args": model_args,
        "target": target,
        "accuracy": accuracy,
        "plan": summary,
        "scores": {
            "reused": reused,
            "path": args.analysis,
            "samples": record.get("samples"),
            "classes": len(record.get("classes", [])),
            "samples_seen": record.get("samples_seen"),
            "classes_seen": record.get("classes_seen"),
            "memory": record.get("memory"),
        },
        "verify": {
            "passed": check.passed,
            "max_abs_diff": check.max_abs_diff,
            "tolerance": check.tolerance,
        },
        "recalibration": recal,
        "finetune": history,
        "export": export,
        "timings_seconds": {k: round(v, 4) for k, v in times.items()},
        "groups": per_group,
    }
    if report_path is not None:
        write_text(report_path, json.dumps(report, indent=2, default=_json_default) + "\n")
        say(f"wrote {report_path}")
    if plot_path is not None:
        plot_kept(per_group, plot_path, f"{args.model}: {target}")
        say(f"wrote {plot_path}")
    table = _compress_table(args, target, summary, check, history, export, times, reused, accuracy)
    print(table.replace("\nverify", f"\n{recal_line(recal)}\nverify") if recal else table)
    return 0 if export["equal"] else 1


def _compress_table(args, target, s, check, history, export, times, reused, accuracy) -> str:
    final = None
    if accuracy is not None:
        final = (
            accuracy["fine_tuned"] if accuracy["fine_tuned"] is not None else accuracy["one_shot"]
        )
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
    if accuracy is not None:
        rows.append(("accuracy", f"{accuracy['original']:.1%}", f"{final:.1%}", ""))
    lines = [f"fairfx compress {args.model} ({target})", _table(rows, (False, True, True, True))]
    lines.append(
        f"groups pruned  {s['groups_pruned']} ({s['units_removed']} channel units removed)"
        + (f"; {s['note']}" if s["note"] else "")
    )
    lines.append(
        f"verify         {'PASS' if check.passed else 'FAIL'} (max |pruned - masked original| "
        f"{check.max_abs_diff:.2g}, tolerance {check.tolerance:.2g})"
    )
    if accuracy is not None:
        tuned = accuracy["fine_tuned"]
        lines.append(
            f"validation     {accuracy['samples']} held-out samples: accuracy original "
            f"{accuracy['original']:.1%}, one-shot {accuracy['one_shot']:.1%}"
            + ("" if tuned is None else f", fine-tuned {tuned:.1%} (best epoch kept)")
        )
    if history is not None:
        where = "the training split" if accuracy is not None else "the calibration data"
        lines.append(
            f"fine-tune      {history['epochs']} epoch(s) on {where}, train loss "
            + " -> ".join(f"{v:.4f}" for v in history["train_loss"])
        )
    batch = "dynamic batch >= 1" if export["dynamic_batch"] else export["note"]
    lines.append(
        f"export         {'OK' if export['equal'] else 'MISMATCH (not written)'} "
        f"{export['path']} ({batch}; "
        f"reloaded and compared at batch {', '.join(map(str, export['batches']))}: max |diff| "
        f"{export['max_abs_diff']:.2g})"
    )
    names = {"analyze": "load scores" if reused else "analyze", "finetune": "fine-tune"}
    lines.append(
        "time           " + ", ".join(f"{names.get(k, k)} {v:.2f}s" for k, v in times.items())
    )
    return "\n".join(lines)
