"""``fairfx inspect`` and ``fairfx plan``: the read-only commands (groups, and plans from saved
scores), which score nothing and write nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..method.plan_options import PlanOptions
from .cli_compress import _load_scores
from .cli_inputs import (
    UserError,
    _Chatter,
    _example_from_size,
    _human,
    _table,
    check_input_shape,
    load_model,
    weights_fingerprint,
)
from .cli_options import parse_model_args
from .cli_planning import check_ignored, plan_options

DEFAULT_ALPHAS = (0.001, 0.005, 0.01, 0.05)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..method.graph import channel_graph
    from ..method.memory import estimate_for_graph
    from ..method.scoring import logit_count

    model = load_model(
        args.model, args.weights, args.num_classes, parse_model_args(args.model_args)
    )
    graph = channel_graph(model, _example_from_size(args, args.image_size))
    groups = list(graph.groups)
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
    fixed = sum(len(g.producers) for g in groups if not g.prunable)
    print(
        f"\n{len(groups)} channel groups, {len(prunable)} prunable holding "
        f"{sum(g.size for g in prunable)} of {sum(g.size for g in groups)} units; {fixed} "
        f"producer(s) blocked, each with its reason "
        f"({args.model}, input {args.channels}x{args.image_size}x{args.image_size})"
    )
    if prunable:
        est = estimate_for_graph(graph, classes=min(100, logit_count(graph) or 100))
        print(f"scoring with the defaults (32 samples per class): {est.line()}")
    return 0


def _plan_targets(args: argparse.Namespace) -> list[tuple[str, PlanOptions]]:
    """``(label, options)`` per row: an alpha or a budget, all checked before any loading."""
    if args.params is not None:
        return [(f"params {v:g}", plan_options(args, params=v)) for v in args.params]
    if args.flops is not None:
        return [(f"MACs {v:g}", plan_options(args, flops=v)) for v in args.flops]
    alphas = args.alpha if args.alpha is not None else DEFAULT_ALPHAS
    return [(f"alpha {a:g}", plan_options(args, alpha=a, allocation=None)) for a in alphas]


def cmd_plan(args: argparse.Namespace) -> int:
    from ..method.fair import load_analysis

    targets = _plan_targets(args)
    path = Path(args.analysis)
    if not path.is_file():
        raise UserError(
            f"--analysis {args.analysis} does not exist (fairfx compress --analysis writes it)"
        )
    record = load_analysis(path).record  # a safe load: a crafted file is refused unread
    model = load_model(
        args.model, args.weights, args.num_classes, parse_model_args(args.model_args)
    )
    shape = record.get("input_shape")
    if shape is not None and args.image_size is None:
        check_input_shape(path, shape)
    if args.image_size is not None or not shape:
        example = _example_from_size(args, args.image_size or 224)
    else:
        example = torch.randn(2, *shape)
    saved = record.get("weights_sha1")
    if saved is not None and saved != weights_fingerprint(model):
        given = f"--weights {args.weights}" if args.weights else "no --weights (random init)"
        raise UserError(
            f"--analysis {path} holds scores of other weights of {args.model} than {given}; "
            "give the --weights the scores were computed with, or score these weights with "
            "fairfx compress --analysis"
        )
    analysis = _load_scores(path, model, example)
    say = _Chatter(args.quiet)
    say(
        f"scores from {path} ({record.get('samples', '?')} samples, "
        f"{len(record.get('classes', [])) or '?'} classes), input {tuple(example.shape[1:])}"
    )
    rows = [
        (
            "target",
            "alpha",
            "params after",
            "params kept",
            "MACs after",
            "MACs kept",
            "groups pruned",
            "units removed",
        )
    ]
    check_ignored(model, args.ignore)
    notes = []
    for label, options in targets:
        plan = analysis.plan(options)
        if options.budget is not None:
            notes.append(f"{label}: {plan.note}")
        s = plan.summary()
        rows.append(
            (
                label,
                f"{plan.alpha:.4g}",
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
    print(_table(rows, (False,) + (True,) * 7))
    for note in notes:
        print(note)
    return 0
