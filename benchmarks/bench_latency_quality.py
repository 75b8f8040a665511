"""Which pruning keeps the most accuracy at the same MEASURED latency? Latency-plan evidence.

On the three digits nets (VGG-, ResNet- and DenseNet-style, trained per seed and cached like
bench_quality's), per seed: fairfx's latency plan at ``--target`` (``plan_for_latency`` at batch
64, 2 threads, with measurement) sets the latency every rival must match: its measured ratio T
(``plan.extra["latency"]["achieved"]``; ``--match remeasured``, or a planner measurement
taken while the machine was busy, uses this script's re-measurement of the plan instead).
Rivals, each searched on its knob until its measured latency ratio is T (``latency_match.
match_measured``: a proxy bisection, then at most ``--refine`` measured steps; within 5% of T
is the aim, misses are reported):

* fairfx params plan (``an.plan_for(params=b)``) and FLOPs plan (``an.plan_for(flops=b)``), on
  the latency table's prediction as proxy;
* Torch-Pruning (``benchmarks/peers.py``) with L1 and Taylor importance, global and uniform
  ranking, on the channel ratio with the MACs kept as proxy.

Every model, the latency plan included, is timed by one function (``latency_match.
measured_ratio``): original and pruned both in deployment form (BatchNorm folded,
channels_last), alternating pairs, medians, 2 threads, a batch of 64, repeated when the
machine was busy and flagged ``disturbed`` when it stayed so. Every pruned model gets
BatchNorm recalibration on the calibration set (``fairfx.recalibrate``), then test accuracy; no
fine-tuning. The report pairs methods by seed: the latency plan's mean accuracy difference to
each rival with a paired 95% t interval and the wins/ties/losses over seeds. OMP_WAIT_POLICY is
recorded, never set (PASSIVE distorts latency ratios).

    python benchmarks/bench_latency_quality.py --seeds 8

(``--target`` defaults to 0.8: at batch 64 these 8x8 nets run in about a millisecond; on a busy
machine, fairfx plans of the VGG-style net keeping 5-9% of its parameters measured 0.72-0.79.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import peers
import torch
from latency_match import DISTURBED, THREADS, TOLERANCE, match_measured, measured_ratio
from latency_report import METHODS, report
from quality_lib import calibration_set, count_macs, count_params, trained_model

import fairfx
import fairfx.apps.digits as digits
from fairfx.engine.latency import graph_inputs, graph_table, predicted_fraction
from fairfx.files import atomic_path
from fairfx.method.latency_plan import plan_for_latency
from fairfx.method.plan_options import PlanOptions

BATCH = 64
TP_VARIANTS = {  # name -> (importance, global ranking)
    "tp_l1_global": ("l1", True),
    "tp_l1_uniform": ("l1", False),
    "tp_taylor_global": ("taylor", True),
    "tp_taylor_uniform": ("taylor", False),
}
TP_MAX_RATIO = 0.9  # Torch-Pruning's per-layer cap for global ranking, and the uniform range


class Seed:
    """One trained net of one seed: data, analysis, latency table and the shared timing."""

    def __init__(self, arch: str, seed: int, split: digits.Split, args: argparse.Namespace):
        self.model, _ = trained_model(arch, seed, split, args)
        xc, yc = calibration_set(split, 32, seed)
        self.calib = list(digits.batches(xc, yc, BATCH))
        self.an = fairfx.analyze(self.model, xc[:BATCH], self.calib, progress=False, seed=seed)
        self.x = graph_inputs(self.an.graph, BATCH)[0]  # the input the planner times
        self.table = graph_table(self.an.graph, batch=BATCH, threads=THREADS, progress=False)
        self.test = (split.x_test, split.y_test)
        self.macs0 = count_macs(self.model, self.x[:1])

    def measure(self, pruned: torch.nn.Module) -> dict:
        return measured_ratio(self.model, pruned, self.x)

    def macs_kept(self, pruned: torch.nn.Module) -> float:
        return count_macs(pruned, self.x[:1]) / self.macs0

    def score(self, pruned: torch.nn.Module) -> dict:
        """Recalibrated test accuracy and the size kept, of a copy of ``pruned``."""
        ready = fairfx.recalibrate(pruned, self.calib)
        return {
            "accuracy": digits.accuracy(ready, *self.test),
            "params_kept": count_params(pruned) / count_params(self.model),
            "macs_kept": self.macs_kept(pruned),
        }


def latency_plan(s: Seed, target: float) -> tuple[torch.nn.Module, dict]:
    """The latency plan at ``target``, its planner's measured ratio T and this script's
    re-measurement; ``planner_disturbed`` when the planner's timing of the original was
    ``DISTURBED`` times slower than its fastest run here (the machine was busy)."""
    options = PlanOptions(latency=target, batch_size=BATCH)
    plan = plan_for_latency(
        s.an.graph, s.an.scores, options, table=s.table, threads=THREADS, progress=False
    )
    pruned = s.an.graph.prune(plan)
    info = plan.extra["latency"]
    chosen = next(h for h in info["iterations"] if h["achieved"] == info["achieved"])
    again = s.measure(pruned)
    record = {
        "planner_ratio": info["achieved"],
        "planner_met": info["met"],
        "planner_measurements": len(info["iterations"]),
        "planner_ms": chosen["ms"],
        "planner_disturbed": chosen["ms"][0] > DISTURBED * again["fastest_ms"],
        "note": plan.note,
        **again,
    }
    return pruned, record


def fairfx_rival(s: Seed, key: str, target: float, refine: int) -> tuple[torch.nn.Module, dict]:
    """The params (``key="params"``) or FLOPs budget plan matched to ``target``."""
    graph = s.an.graph
    plan, record = match_measured(
        lambda b: s.an.plan_for(**{key: b}),
        lambda p: predicted_fraction(graph, p.units, s.table),
        lambda p: s.measure(graph.prune(p)),
        target, 0.02, 1.0, refine=refine,
    )  # fmt: skip
    return graph.prune(plan), record


def tp_rival(s: Seed, name: str, target: float, refine: int, grads) -> tuple[torch.nn.Module, dict]:
    """A Torch-Pruning variant matched to ``target``; the knob is 1 - channel ratio."""
    importance, global_ = TP_VARIANTS[name]

    def make(kept: float) -> torch.nn.Module:
        return peers.tp_prune_ratio(
            s.model, s.x[:1], 1.0 - kept, global_pruning=global_, importance=importance,
            grads=grads, max_pruning_ratio=TP_MAX_RATIO,
        )  # fmt: skip

    return match_measured(
        make, s.macs_kept, s.measure, target, 1.0 - TP_MAX_RATIO, 1.0, refine=refine
    )


def one_seed(arch: str, seed: int, split, args) -> dict:
    s = Seed(arch, seed, split, args)
    row = {"arch": arch, "seed": seed, "original": digits.accuracy(s.model, *s.test)}
    pruned, rec = latency_plan(s, args.target)
    row["latency"] = {**rec, **s.score(pruned)}
    use_planner = args.match == "planner" and not rec["planner_disturbed"]
    target = rec["planner_ratio"] if use_planner else rec["ratio"]
    row["matched_to"] = target
    row["matched_source"] = "planner" if use_planner else "remeasured"
    grads = peers.taylor_gradients(s.model, s.calib)
    for name in METHODS[1:]:
        if name in ("params", "flops"):
            pruned, rec = fairfx_rival(s, name, target, args.refine)
        else:
            pruned, rec = tp_rival(s, name, target, args.refine, grads)
        row[name] = {**rec, **s.score(pruned)}
    return row


def summary(row: dict) -> str:
    cells = [f"{row['arch']} seed {row['seed']}: original {100 * row['original']:.1f}%"]
    cells += [
        f"{n} {100 * row[n]['accuracy']:.1f}% @ {row[n]['ratio']:.3f}"
        + ("" if abs(row[n]["ratio"] / row["matched_to"] - 1) <= TOLERANCE else " (MISS)")
        + (" (DISTURBED)" if row[n]["disturbed"] else "")
        + (" (busy)" if row[n]["busy"] else "")
        for n in METHODS
    ]
    return "; ".join(cells) + f" [T={row['matched_to']:.3f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*", default=["vgg", "resnet", "densenet"])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--match", choices=["planner", "remeasured"], default="planner")
    p.add_argument("--refine", type=int, default=4, help="measured steps after the proxy")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--growth", type=int, default=12)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/latency_quality.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # training, analysis and pruning; timing uses THREADS
    start = time.perf_counter()
    header = {
        "command": "python " + " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "arguments": vars(args),
        "threads": THREADS,
        "batch": BATCH,
        "tolerance": TOLERANCE,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "torch_pruning": peers.tp_version(),
    }
    split = digits.load(seed=0)
    rows = []
    for arch in args.archs:
        for seed in range(args.seeds):
            rows.append(one_seed(arch, seed, split, args))
            print(summary(rows[-1]), flush=True)
    header["load_average_at_end"] = os.getloadavg()
    header["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(report(rows))
    print(f"\n`{header['command']}`: {header['seconds']} s, load average at start "
          f"{header['load_average_at_start']}, at end {header['load_average_at_end']}")  # fmt: skip


if __name__ == "__main__":
    main()
