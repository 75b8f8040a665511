"""What a ``fairfx compress`` run reports: the JSON report and the printed table.

Both are made from the pipeline's :class:`~fairfx.method.pipeline.CompressResult` (one round or
several), so the CLI only prints and saves what the pipeline did.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli_inputs import _human, _table
from .cli_planning import recal_line


def target_text(options: Any) -> str:
    if options.latency is not None:
        return f"keep {options.latency:g} of the measured latency"
    if options.alpha is not None and options.budget is None:
        return f"alpha {options.alpha:g}"
    name, value = options.budget
    return f"keep {value:g} of {'parameters' if name == 'params' else 'MACs'}"


def reached_budget(result: Any, options: Any) -> dict[str, Any] | None:
    """The budget asked for against what the final model keeps of the original (all rounds)."""
    if options.budget is None:
        return None
    name, value = options.budget
    cost = "params" if name == "params" else "macs"
    first, last = result.rounds[0], result.rounds[-1]
    reached = last[f"{cost}_after"] / max(first[f"{cost}_before"], 1)
    return {
        "budget": name,
        "target": value,
        "reached": round(reached, 6),
        "met": abs(reached - value) <= 0.1 * value,
    }


def compress_report(
    args, options, result, export, times, reused, normalize, split
) -> dict[str, Any]:
    """The JSON report of a compress run (one round or several): what was asked, what came
    out, the accuracy and fine-tuning, the export, the timings and every group's kept count."""
    analysis = result.analysis
    per_group = []
    for g in result.groups:
        # Units kept of the ORIGINAL model's group, composed over rounds.
        width = sum(len(c) for c in g.channels(g.producers[0]))
        kept = len(result.keep.get(g.producers[0], range(width)))
        per_group.append(
            {
                "id": g.id,
                "producers": list(g.producers),
                "size": g.size,
                "kept": round(kept / max(width, 1) * g.size),
                "prunable": g.prunable,
                "reason": g.reason,
            }
        )
    first, last = result.rounds[0], result.rounds[-1]
    summary = dict(last)
    for cost in ("params", "macs"):
        summary[f"{cost}_before"] = first[f"{cost}_before"]
        summary[f"{cost}_kept"] = round(last[f"{cost}_after"] / max(first[f"{cost}_before"], 1), 6)
    record = analysis.record
    accuracy = result.accuracy
    if accuracy is not None:
        accuracy = {
            "split": "validation",
            "samples": split["validation"],
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            **accuracy,
        }
    return {
        "model": args.model,
        "weights": args.weights,
        "data": args.data,
        "split": split,
        "normalize": None if normalize is None else {"mean": normalize[0], "std": normalize[1]},
        "target": target_text(options),
        "reached": reached_budget(result, options),
        "rounds": result.rounds if args.rounds > 1 else None,
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
            "passed": result.verify.passed,
            "max_abs_diff": result.verify.max_abs_diff,
            "tolerance": result.verify.tolerance,
        },
        "recalibration": result.recalibration,
        "finetune": result.finetune,
        "export": export,
        "timings_seconds": {k: round(v, 4) for k, v in times.items()},
        "groups": per_group,
    }


def compress_table(args: argparse.Namespace, report: dict[str, Any]) -> str:
    s, accuracy, check = report["plan"], report["accuracy"], report["verify"]
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
    lines = [
        f"fairfx compress {args.model} ({report['target']})",
        _table(rows, (False, True, True, True)),
    ]
    if report["rounds"]:
        first = report["rounds"][0]
        table = [("round", "params kept", "MACs kept", "verified")]
        for i, r in enumerate(report["rounds"], 1):
            params = r["params_after"] / max(first["params_before"], 1)
            macs = r["macs_after"] / max(first["macs_before"], 1)
            table.append((str(i), f"{params:.1%}", f"{macs:.1%}", str(r["verify"])))
        lines.append(f"rounds         {len(report['rounds'])} (fine-tuned 1 epoch between)")
        lines.append(_table(table, (False, True, True, False)))
    lines.append(
        f"groups pruned  {s['groups_pruned']} ({s['units_removed']} channel units removed)"
        + (f"; {s['note']}" if s["note"] and not report["rounds"] else "")
    )
    reached = report["reached"]
    if reached is not None and not reached["met"]:
        what = "parameters" if reached["budget"] == "params" else "MACs"
        lines.append(
            f"target missed  kept {reached['reached']:.1%} of {what} for a target of "
            f"{reached['target']:.1%} (one round prunes at most about half of each group; "
            "more rounds or no --round-to get closer)"
        )
    recal = report["recalibration"]
    if recal:
        lines.append(recal_line(recal))
    lines.append(
        f"verify         {'PASS' if check['passed'] else 'FAIL'} (max |pruned - masked original| "
        f"{check['max_abs_diff']:.2g}, tolerance {check['tolerance']:.2g})"
    )
    if accuracy is not None:
        tuned = accuracy["fine_tuned"]
        lines.append(
            f"validation     {report['split']['validation']} held-out samples: accuracy original "
            f"{accuracy['original']:.1%}, one-shot {accuracy['one_shot']:.1%}"
            + ("" if tuned is None else f", fine-tuned {tuned:.1%} (best epoch kept)")
        )
    history = report["finetune"]
    if history is not None:
        where = "the training split" if accuracy is not None else "the calibration data"
        lines.append(
            f"fine-tune      {history['epochs']} epoch(s) on {where}, train loss "
            + " -> ".join(f"{v:.4f}" for v in history["train_loss"])
        )
    export = report["export"]
    batch = "dynamic batch >= 1" if export["dynamic_batch"] else export["note"]
    lines.append(
        f"export         {'OK' if export['equal'] else 'MISMATCH (not written)'} "
        f"{export['path']} ({batch}; "
        f"reloaded and compared at batch {', '.join(map(str, export['batches']))}: max |diff| "
        f"{export['max_abs_diff']:.2g})"
    )
    names = {"analyze": "load scores" if report["scores"]["reused"] else "analyze"}
    lines.append(
        "time           "
        + ", ".join(f"{names.get(k, k)} {v:.2f}s" for k, v in report["timings_seconds"].items())
    )
    return "\n".join(lines)
