"""``fairfx compress`` planning flags: checks before any work, and pruning in ``--rounds``."""

from __future__ import annotations

import argparse
import json
import time

from torch import nn

from ..files import write_text
from ..method.allocation import BOUNDED
from ..method.recalibrate import recalibrate
from .cli_inputs import UserError, _json_default, _table, _writable
from .report import export_and_check


def _check_planning(args: argparse.Namespace) -> None:
    """The planning flags, before any loading or scoring."""
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    if args.round_to is not None and args.round_to < 1:
        raise UserError(f"--round-to must be at least 1, got {args.round_to}")
    if args.rounds > 1 and args.analysis:
        raise UserError("--rounds re-scores the model every round; it cannot reuse --analysis")
    if args.alpha is not None and args.allocation not in (None, "tod", *BOUNDED):
        raise UserError(
            f"--allocation {args.allocation} spreads a budget: give --params or --flops, not "
            "--alpha (alpha sets the paper's ToD counts)"
        )


def _check_ignored(model: nn.Module, names: list[str]) -> None:
    known = [n for n, _ in model.named_modules() if n]
    for name in names:
        if not any(k == name or k.startswith(name + ".") for k in known):
            raise UserError(
                f"--ignore {name}: the model has no such layer; names look like "
                f"{', '.join(known[:4])}"
            )


def _compress_in_rounds(args, model, example, loader, planning, say, times) -> int:
    """--rounds k: fairfx.compress in rounds (fine-tune 1 epoch on --data between them)."""
    from ..method.pipeline import compress

    t = time.perf_counter()
    budget = {"params": args.params} if args.params is not None else {"flops": args.flops}
    if args.alpha is not None:
        budget = {"alpha": args.alpha}
    say(f"pruning in {args.rounds} rounds on {args.data}")
    pruned = compress(
        model,
        example,
        data=loader,
        rounds=args.rounds,
        recalibrate=not args.no_recalibrate,
        samples_per_class=args.samples_per_class,
        seed=args.seed,
        observe=args.observe,
        progress=not args.quiet,
        **budget,
        **{k: v for k, v in planning.items() if v is not None},
    )
    times["rounds"] = time.perf_counter() - t
    info = pruned.meta["fairfx"]
    if args.finetune_epochs:
        from ..method.finetune import finetune

        finetune(pruned, loader, epochs=args.finetune_epochs, lr=args.lr, progress=not args.quiet)
    export = export_and_check(pruned, example, _writable(args.out, "--out"))
    first = info["rounds"][0]
    rows = [("round", "params kept", "MACs kept", "verified")]
    for i, r in enumerate(info["rounds"], 1):
        params = r["params_after"] / max(first["params_before"], 1)
        macs = r["macs_after"] / max(first["macs_before"], 1)
        rows.append((str(i), f"{params:.1%}", f"{macs:.1%}", str(r["verify"])))
    print(f"fairfx compress {args.model} in {args.rounds} rounds")
    print(_table(rows, (False, True, True, False)))
    print(f"export         {'OK' if export['equal'] else 'MISMATCH'} {export['path']}")
    report_path = _writable(args.report, "--report")
    if report_path is not None:
        report = {"model": args.model, "rounds": info["rounds"], "export": export}
        write_text(report_path, json.dumps(report, indent=2, default=_json_default) + "\n")
    return 0 if export["equal"] and all(r["verify"] for r in info["rounds"]) else 1


def planning_options(args: argparse.Namespace, model: nn.Module) -> dict:
    """``plan`` / ``plan_for`` keywords from the flags (ignored names checked on the model)."""
    _check_ignored(model, args.ignore)
    planning = {"round_to": args.round_to, "ignored_layers": args.ignore or None}
    if args.allocation is not None:
        planning["allocation"] = args.allocation
    return planning


def recalibrate_step(args: argparse.Namespace, pruned, loader, say, times) -> dict | None:
    """BatchNorm statistics re-estimated on the scoring data, unless --no-recalibrate."""
    if args.no_recalibrate:
        return None
    t = time.perf_counter()
    recalibrate(pruned, loader, inplace=True)
    recal = pruned.meta["fairfx"]["recalibration"]
    times["recalibrate"] = time.perf_counter() - t
    say(f"recalibrated {recal['modules']} BatchNorm layer(s) on {recal['samples']} samples")
    return recal


def recal_line(recal: dict) -> str:
    return (
        f"recalibrate    BatchNorm statistics of {recal['modules']} layer(s) re-estimated on "
        f"{recal['samples']} samples (--no-recalibrate skips it)"
    )
