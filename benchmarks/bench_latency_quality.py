"""Which allocation keeps the most accuracy for the same latency? Evidence for the latency plan.

On the three digits nets (VGG-, ResNet- and DenseNet-style, trained per seed, cached like
bench_quality's), one latency table per architecture (batch 64, 1 thread; the table's key has no
weights, so every seed reuses it). For each seed, plans are compared at **equal table-predicted
latency**: the latency plan (R per measured ms, ToD-bounded, on the table's width step) at
``--target``, and the params and FLOPs budget plans and a uniform L1 ratio (Torch-Pruning's
default criterion) each bisected until the table predicts the same fraction. Each pruned model
gets BatchNorm recalibration on the calibration set, then test accuracy; the report pairs them
by seed.

Equal *predicted* latency is deterministic, where equal *measured* latency on a shared machine
is not; the table's predictions are checked against measurement in bench_latency.py.

    python benchmarks/bench_latency_quality.py --seeds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from quality_lib import calibration_set, trained_model

import fairfx
import fairfx.apps.digits as digits
from fairfx.engine.latency import graph_table, predicted_fraction
from fairfx.files import atomic_path
from fairfx.method.latency_plan import plan_for_latency
from fairfx.method.plan_options import PlanOptions


def bisect_to(make, target: float, lo: float = 0.02, hi: float = 1.0, steps: int = 10):
    """The plan ``make(knob)`` whose predicted fraction is closest to ``target``; the
    prediction grows with the knob."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan, frac = make(mid)
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (plan, frac)
        if frac > target:
            hi = mid
        else:
            lo = mid
    return best


def one_seed(arch: str, seed: int, split, args) -> dict:
    model, _ = trained_model(arch, seed, split, args)
    xc, yc = calibration_set(split, 32, seed)
    calib = list(digits.batches(xc, yc, 64))
    an = fairfx.analyze(model, xc[:64], calib, progress=False, seed=seed)
    graph = an.graph
    table = graph_table(graph, threads=1, progress=False)
    options = PlanOptions(latency=args.target)
    lat = plan_for_latency(graph, an.scores, options, table=table, measure=False)
    target = lat.extra["latency"]["predicted"]

    def fraction(plan):
        return plan, predicted_fraction(graph, plan.units, table)

    plans = {
        "latency": (lat, target),
        "params": bisect_to(lambda b: fraction(an.plan_for(params=b)), target),
        "flops": bisect_to(lambda b: fraction(an.plan_for(flops=b)), target),
        "uniform_l1": bisect_to(
            lambda r: fraction(graph.plan(PlanOptions(ratio=1 - r, importance="l1"))), target
        ),
    }
    row = {"arch": arch, "seed": seed, "original": digits.accuracy(model, *_test(split))}
    for name, (plan, frac) in plans.items():
        pruned = graph.prune(plan)
        fairfx.recalibrate(pruned, calib, inplace=True)
        row[name] = {
            "accuracy": digits.accuracy(pruned, *_test(split)),
            "predicted": frac,
            "macs_kept": plan.macs_kept,
            "params_kept": plan.params_kept,
        }
    return row


def _test(split):
    return split.x_test, split.y_test


def report(rows: list[dict]) -> str:
    names = ["latency", "params", "flops", "uniform_l1"]
    lines = [
        "| net | seeds | " + " | ".join(names) + " | latency - best other (paired mean) |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        means = {n: statistics.mean(r[n]["accuracy"] for r in rs) for n in names}
        rival = max(names[1:], key=means.get)
        diff = statistics.mean(r["latency"]["accuracy"] - r[rival]["accuracy"] for r in rs)
        cells = " | ".join(
            f"{100 * means[n]:.1f}% (pred {statistics.mean(r[n]['predicted'] for r in rs):.2f})"
            for n in names
        )
        lines.append(f"| {arch} | {len(rs)} | {cells} | {100 * diff:+.1f} pts vs {rival} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=["vgg", "resnet", "densenet"])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--growth", type=int, default=12)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/latency_quality.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    split = digits.load(seed=0)
    header = {
        "command": "python " + " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    rows = []
    for arch in args.archs:
        for seed in range(args.seeds):
            rows.append(one_seed(arch, seed, split, args))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(report(rows))
    print(f"\n`{header['command']}`, load average at start {header['load_average_at_start']}")


if __name__ == "__main__":
    main()
