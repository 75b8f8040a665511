"""Deployment latency: does pruning make torchvision models faster on this CPU, and by how much
of what the MACs promise?

For each model (random weights, 224x224, 10 classes; latency does not depend on weight values),
scores come from a small synthetic calibration set. Then, per batch size and mode:

* ``latency=0.5``: :func:`fairfx.method.latency_plan.plan_for_latency` (latency table measured
  on this machine, plan, measure, correct): target vs achieved, and the table's cost in seconds.
* ``params=0.5`` and ``flops=0.5`` (``Analysis.plan_for``): measured speedup, the MACs ratio
  (original MACs / pruned MACs, the physical limit) and the speedup's share of the MACs gain,
  ``(speedup - 1) / (MACs ratio - 1)``, as the pruned GraphModule and in the deployment form
  ``save_pruned`` writes (``DEPLOY``; the original in its own deployment form for the "after"
  column, so the gain is pruning's, not folding's). ``--ablation`` times BatchNorm folding
  alone and channels_last on top of it, each against the step before.

Rules: the original and the pruned model run alternately, after warm-up, with the thread count
fixed; medians of ``--repeats`` runs; speedups are medians of the per-pair ratios (each pair
back to back, so load that comes and goes cancels). ``--cost-check`` also
times one ``fairfx.analyze`` of ResNet-50 at 224 on 320 images against measuring its table.

    python benchmarks/bench_latency.py                       # all six, batch 1 and 8, eager
    python benchmarks/bench_latency.py --modes eager compile
    python benchmarks/bench_latency.py --round-to 0 8 16     # also rounded params/flops plans
    python benchmarks/bench_latency.py --models resnet50 --batches 1 --cost-check

Results: ``benchmarks/results/latency.json`` (the command, the load average at start, the machine
and every cell).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

import fairfx
from fairfx.engine.artifact import DEPLOY
from fairfx.engine.deploy import deployment_form
from fairfx.engine.latency import graph_inputs, graph_table
from fairfx.engine.latency_cache import machine
from fairfx.engine.timing import paired_ms
from fairfx.files import atomic_path
from fairfx.method.latency_plan import plan_for_latency
from fairfx.method.plan_options import PlanOptions

MODELS = ["resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny", "vit_b_16"]


def synthetic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(0, n, 20):
        yield torch.randn(20, 3, 224, 224, generator=g), torch.randint(0, 10, (20,), generator=g)


def random_model(name: str) -> torch.nn.Module:
    """A torchvision model with random weights everywhere: torchvision zero-initialises some
    heads (ViT's), which would leave no loss gradient to score with (analyze refuses that)."""
    model = torchvision.models.get_model(name, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    return model


def share(speedup: float, macs_ratio: float) -> float | None:
    """The speedup's share of the MACs gain; None when the plan saved no MACs."""
    return (speedup - 1) / (macs_ratio - 1) if macs_ratio > 1.0001 else None


def _compiled(module, mode: str):
    return torch.compile(module) if mode == "compile" else module


def budget_cells(an, model, name, budget, batch, mode, args, round_to=None) -> dict:
    """Speedup of a params/flops plan, as pruned and in the deployment form."""
    plan = an.plan_for(**budget, round_to=round_to)
    pruned = an.compress(plan).eval()
    x = graph_inputs(an.graph, batch)
    macs_ratio = plan.base.macs / max(plan.cost.macs, 1)
    t0, t1, r = paired_ms(
        _compiled(model, mode), _compiled(pruned, mode), x, repeats=args.repeats,
        threads=args.threads,
    )  # fmt: skip
    original_d = deployment_form(an.graph.captured, **DEPLOY)
    pruned_d = deployment_form(pruned, **DEPLOY)
    d0, d1, rd = paired_ms(
        _compiled(original_d, mode), _compiled(pruned_d, mode), x, repeats=args.repeats,
        threads=args.threads,
    )  # fmt: skip
    extra = {}
    if args.ablation:  # what each part of the deployment form buys, on the pruned model
        folded = deployment_form(pruned, channels_last=False)
        nhwc = deployment_form(pruned, channels_last=True)
        extra["fold_gain"] = 1 / paired_ms(pruned, folded, x, repeats=args.repeats)[2]
        extra["channels_last_gain"] = 1 / paired_ms(folded, nhwc, x, repeats=args.repeats)[2]
    return {
        **extra,
        "model": name, "batch": batch, "mode": mode, "plan": next(iter(budget.items())),
        "round_to": round_to, "macs_ratio": macs_ratio, "params_kept": plan.params_kept,
        "ms": [t0, t1], "speedup": 1 / r, "share": share(1 / r, macs_ratio),
        "deploy_ms": [d0, d1], "deploy_speedup": 1 / rd,
        "deploy_share": share(1 / rd, macs_ratio),
    }  # fmt: skip


def latency_cell(an, name, batch, mode, args) -> dict:
    start = time.perf_counter()
    options = PlanOptions(latency=args.target, batch_size=batch, latency_mode=mode)
    plan = plan_for_latency(
        an.graph, an.scores, options, threads=args.threads, repeats=args.repeats, progress=False
    )
    info = plan.extra["latency"]
    return {
        "model": name, "batch": batch, "mode": mode, "plan": ["latency", args.target],
        "achieved": info["achieved"], "predicted": info["predicted"], "met": info["met"],
        "iterations": info["iterations"], "step": info["step"], "note": plan.note,
        "macs_ratio": plan.base.macs / max(plan.cost.macs, 1), "params_kept": plan.params_kept,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def cost_check(args) -> dict:
    """One analyze of ResNet-50 at 224 on 320 images (its defaults) vs measuring its table."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    an = fairfx.analyze(model, x, synthetic(320), progress=False)
    analyze_s = time.perf_counter() - start
    out = {"analyze_seconds": analyze_s}
    for batch in args.batches:
        start = time.perf_counter()
        table = graph_table(
            an.graph, batch=batch, threads=args.threads, progress=False,
            path=Path(args.cache or ".") / f"fairfx_cost_check_b{batch}.json",
        )  # fmt: skip
        out[f"table_seconds_b{batch}"] = time.perf_counter() - start
        out[f"table_note_b{batch}"] = table.note
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    p.add_argument("--modes", nargs="*", default=["eager"], choices=["eager", "compile"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--images", type=int, default=40, help="synthetic calibration images")
    p.add_argument("--cost-check", action="store_true")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also time BatchNorm folding alone and channels_last on top, on the pruned model",
    )
    p.add_argument(
        "--round-to",
        nargs="*",
        type=int,
        default=[0],
        help="round_to of the params/flops plans, one row each (0: unrounded, the default plan)",
    )
    p.add_argument("--cache", default=None, help="latency table folder ($FAIRFX_CACHE)")
    p.add_argument("--out", default="benchmarks/results/latency.json")
    args = p.parse_args()
    if args.cache:
        os.environ["FAIRFX_CACHE"] = args.cache
    torch.set_num_threads(args.threads)
    header = {
        "command": "python " + " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "repeats": args.repeats,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(header), flush=True)
    cells = []
    results = {"header": header, "cells": cells}
    if args.cost_check:
        results["cost_check"] = cost_check(args)
        print(json.dumps(results["cost_check"]), flush=True)
    for name in args.models:
        torch.manual_seed(0)
        model = random_model(name)
        an = fairfx.analyze(
            model, torch.randn(1, 3, 224, 224), synthetic(args.images), samples_per_class=4,
            projections=16, progress=False,
        )  # fmt: skip
        for mode in args.modes:
            for batch in args.batches:
                _record(cells, latency_cell(an, name, batch, mode, args))
                for budget in ({"params": 0.5}, {"flops": 0.5}):
                    for r in args.round_to:
                        cell = budget_cells(an, model, name, budget, batch, mode, args, r or None)
                        _record(cells, cell)
                _write(args.out, results)
    results["load_average_at_end"] = os.getloadavg()
    _write(args.out, results)
    print(report(results))


def _record(cells: list[dict], cell: dict) -> None:
    """Keep and print a cell, with the load average when it ended (was the machine quiet?)."""
    cell["load_1min"] = os.getloadavg()[0]
    cells.append(cell)
    print(json.dumps(cell), flush=True)


def _write(path: str, results: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1, default=str))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def report(results: dict) -> str:
    """Markdown tables of a results file (also: python benchmarks/bench_latency.py --report)."""
    lines = [
        "| model | mode | batch | target | achieved | predicted | within 5% | MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cells"]:
        if c["plan"][0] == "latency":
            ok = "yes" if c["met"] else "no"
            lines.append(
                f"| {c['model']} | {c['mode']} | {c['batch']} | {c['plan'][1]:.2f} | "
                f"{c['achieved']:.3f} | {c['predicted']:.3f} | {ok} | {c['macs_ratio']:.2f}x |"
            )
    lines += [
        "",
        "| model | mode | batch | plan | MACs ratio | speedup | share | deployed speedup | share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cells"]:
        if c["plan"][0] != "latency":
            rounded = f", round_to={c['round_to']}" if c.get("round_to") else ""
            lines.append(
                f"| {c['model']} | {c['mode']} | {c['batch']} | {c['plan'][0]}={c['plan'][1]}"
                f"{rounded} | {c['macs_ratio']:.2f}x | {c['speedup']:.2f}x | {_pct(c['share'])} | "
                f"{c['deploy_speedup']:.2f}x | {_pct(c['deploy_share'])} |"
            )
    ablation = [c for c in results["cells"] if "fold_gain" in c]
    if ablation:
        lines += [
            "",
            "| model | batch | plan | BatchNorm folded (vs pruned) | + channels_last (vs folded) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['model']} | {c['batch']} | {c['plan'][0]}={c['plan'][1]} | "
            f"{c['fold_gain']:.2f}x | {c['channels_last_gain']:.2f}x |"
            for c in ablation
        ]
    h = results["header"]
    lines.append(
        f"\n`{h['command']}`; {h['machine']}, {h['threads']} threads, medians of "
        f"{h['repeats']}, load average at start {h['load_average_at_start']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        print(report(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
