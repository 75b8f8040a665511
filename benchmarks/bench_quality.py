"""Quality benchmark on real data: accuracy of small pruned CNNs at matched parameter budgets.

Data: scikit-learn's bundled digits (``fairfx.apps.digits``, 8x8 grey, fixed stratified 60/15/25
train/val/test split; the test split is only ever used for the reported numbers).
Models: ``digits.VGGStyle``, ``digits.ResNetStyle`` and ``digits.DenseNetStyle``, trained with
``digits.train`` for every seed (trained state_dicts are cached under ``artifacts/bench_quality``).

Calibration data, identical for every method: 32 training samples per class (a seeded choice per
class), as 64-sample batches. fairfx scores on them, Torch-Pruning's Taylor importance takes its
gradients on them, the authors' package gets them as one map-style dataset, and **every** pruned
model, whoever pruned it, has its BatchNorm statistics re-estimated on them
(``fairfx.recalibrate``): the comparison is of what each method removes.

Methods, each hitting a *kept fraction of parameters* (``--budgets``, default 0.7 0.5 0.3):

- ``default``: the recommended configuration ``DEFAULT`` (fairfx's shipped defaults; the report
  says whether they still agree).
- ``fair-<allocation>`` (and ``-c``: ``observe="consumer"``): U ranking, per-group counts from an
  allocation of ``fairfx.method.allocation`` (``tod`` is the paper's ToD counts).
- ``l1-tod`` / ``random-tod``: ToD counts, units chosen by filter L1 / at random (paper's claim).
- ``tp-<l1|taylor>-<uniform|global>``: Torch-Pruning 1.6 magnitude (L1) or Taylor importance,
  channel ratio bisected to the budget (``peers.tp_prune_to_budget``), output layer protected.
- ``network-pruner``: the authors' package 2.16 (``get_metrics`` once, ToD level bisected).
- Rounds (budget ``--rounds-budgets``, 3 rounds): ``default-rounds`` is exactly the shipped
  ``fairfx.compress(model, x, data=calib, params=b, rounds=3, finetune_data=train)`` (its
  default counts and observation point, 1 fine-tune epoch between rounds); ``tp-iterative`` is
  Torch-Pruning Taylor global pruned in the same 3 geometric steps with the same recalibration
  and epochs between steps.

For every (architecture, seed, budget, method): one-shot test accuracy without and with BN
recalibration, then (for the methods in ``FINETUNED``) fine-tuning from the recalibrated model
(``fairfx.finetune``: SGD lr ``--finetune-lr`` 1e-3, momentum 0.9, wd 1e-4,
``--finetune-epochs`` 5 over the train split, the best validation epoch kept, the starting
weights included) and the fine-tuned test accuracy; parameters, MACs, wall and CPU time
(``resource.getrusage``).

The default methods are the headline set (``HEADLINE``: the default, the paper's ToD counts,
every peer, rounds): about 35 CPU-minutes for 8 seeds x 3 nets x 3 budgets, i.e. under 30
minutes on 2 cores. ``--methods STUDY --no-finetune`` adds the allocation study.

Run (CPU, 1 thread per process); shards (``--tag``) run in parallel and ``--report`` merges them:

    python benchmarks/bench_quality.py --tag a --archs resnet --seeds 0,1,2,3 &
    python benchmarks/bench_quality.py --tag b --archs resnet --seeds 4,5,6,7 &
    python benchmarks/bench_quality.py --tag c --archs vgg,densenet && wait
    python benchmarks/bench_quality.py --report

Writes ``benchmarks/results/quality.md`` (tables), ``artifacts/bench_quality/records_<tag>.jsonl``
(one line per run) and ``benchmarks/results/accuracy_vs_params.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import argparse
import datetime
import json
import resource
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch import nn

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path.insert(0, str(_ROOT))  # an uninstalled fairfx imports from the checkout
sys.path.insert(0, str(_HERE))  # peers.py, quality_*.py

import peers  # noqa: E402
import quality_report as report  # noqa: E402
from quality_lib import (  # noqa: E402
    ART,
    ROUND_STEPS,
    NPScores,
    _finetune,
    calibration_set,
    count_macs,
    count_params,
    log,
    np_check,
    np_variant,
    timed_block,
    tp_iterative,
    train_loader,
    trained_model,
)

import fairfx  # noqa: E402
import fairfx.apps.digits as digits  # noqa: E402

RESULTS_MD = _HERE / "results" / "quality.md"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (getrusage): on a
    shared machine this, not the wall clock, says what the run costs on a quiet one."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


PLOT = _HERE / "results" / "accuracy_vs_params.png"


def _fair(name, allocation, observe="post_act", importance="fair"):
    return (
        name,
        "fairfx",
        {"allocation": allocation, "observe": observe, "importance": importance},
    )


# The configuration the README recommends (and fairfx ships as its budget default): the
# report checks it against fairfx's own defaults.
DEFAULT = {"allocation": "hybrid_cost", "observe": "consumer", "importance": "fair"}
GLOBAL_R_C = {"allocation": "global_r", "observe": "consumer", "importance": "fair"}
HYBRID_C = {"allocation": "hybrid", "observe": "consumer", "importance": "fair"}
COST_C = {"allocation": "hybrid_cost", "observe": "consumer", "importance": "fair"}

# slug -> (display name, kind, options)
METHODS: dict[str, tuple[str, str, dict]] = {
    "default": ("fairfx default (U at consumer, hybrid_cost counts)", "fairfx", DEFAULT),
    "fair-global_r-c": ("U at consumer, global R counts", "fairfx", GLOBAL_R_C),
    "fair-hybrid-c": ("U at consumer, hybrid counts (the default before)", "fairfx", HYBRID_C),
    "fair-hybrid_cost-c": ("U at consumer, hybrid_cost counts (R per parameter)", "fairfx", COST_C),
    "fair-tod": _fair("FAIR paper: ToD counts", "tod"),
    "fair-tod-c": _fair("ToD counts, observe=consumer", "tod", "consumer"),
    "fair-uniform": _fair("U, uniform counts", "uniform"),
    "fair-global_r": _fair("U, global R counts, observe=post_act", "global_r"),
    "fair-taylor": _fair("U, group-normalised R counts", "taylor"),
    "fair-hybrid": _fair("U, hybrid ToD bound + global R", "hybrid"),
    "fair-global": _fair("global U ranking (allocation=global, TP-style)", "global"),
    "l1-tod": _fair("L1 ranking, ToD counts", "tod", importance="l1"),
    "tp-l1-uniform": ("TP L1 uniform", "tp", {"global_pruning": False, "importance": "l1"}),
    "tp-l1-global": ("TP L1 global", "tp", {"global_pruning": True, "importance": "l1"}),
    "tp-taylor-uniform": (
        "TP Taylor uniform",
        "tp",
        {"global_pruning": False, "importance": "taylor"},
    ),
    "tp-taylor-global": (
        "TP Taylor global",
        "tp",
        {"global_pruning": True, "importance": "taylor"},
    ),
    "network-pruner": ("network-pruner", "np", {}),
    "network-pruner-flatten": ("network-pruner, torch.flatten fwd", "np", {"variant": "flatten"}),
    "default-rounds": ("fairfx 3 rounds (shipped compress(params=b, rounds=3))", "rounds", {}),
    "tp-iterative": ("TP Taylor global, 3 iterative steps", "tp-iter", {}),
    "hybrid-rounds": ("fairfx 3 rounds, hybrid counts (the default before)", "rounds", HYBRID_C),
}
DENSENET_ONLY = {"network-pruner-flatten"}
ROUNDS = {"default-rounds", "tp-iterative", "hybrid-rounds"}
# The peers of the headline table: Torch-Pruning, the authors' package, and L1 ranking with the
# paper's ToD counts (the paper's own baseline).
PEERS = [m for m, v in METHODS.items() if v[1] in ("tp", "np")] + ["l1-tod"]
# What a plain run measures (sized to fit 30 minutes on 2 cores, README): the default, the
# paper's counts, every peer, rounds. The allocation study (the other fairfx variants) runs with
# ``--methods STUDY`` (one-shot numbers are what it compares: add ``--no-finetune``).
HEADLINE = ["default", "fair-tod", *PEERS, "default-rounds", "tp-iterative"]
STUDY = [m for m, v in METHODS.items() if v[1] == "fairfx" and m not in HEADLINE]
STUDY.append("hybrid-rounds")
# Fine-tuned: the default, the paper's counts, the candidates for the default, peers, rounds.
FINETUNED = {
    "default",
    "fair-tod",
    "l1-tod",
    "fair-global_r-c",
    "fair-hybrid-c",
    "fair-hybrid_cost-c",
    "fair-global_r",
    "fair-hybrid",
    *PEERS,
    *ROUNDS,
}


class Runner:
    """Everything for one trained model: scores cached per observe point, np scores once."""

    def __init__(self, arch, seed, split, args, info):
        self.arch, self.seed, self.split, self.args, self.info = arch, seed, split, args, info
        self.model, info["train_seconds"] = trained_model(arch, seed, split, args)
        self.example = split.x_train[:1]
        cx, cy = calibration_set(split, args.per_class, seed)
        self.calib_xy = (cx, cy)
        self.calib = list(digits.batches(cx, cy, 64))
        self.analyses: dict[str, fairfx.Analysis] = {}
        self.np_scores: dict[str, NPScores] = {}
        self.tmp = tempfile.mkdtemp(prefix="bench_quality_np_")

    def analysis(self, observe: str) -> fairfx.Analysis:
        key = observe
        if key not in self.analyses:
            extra = {"observe": observe}
            with timed_block() as t:
                self.analyses[key] = fairfx.analyze(
                    self.model,
                    self.example,
                    self.calib,
                    samples_per_class=self.args.per_class,
                    seed=self.seed,
                    progress=False,
                    **extra,
                )
            self.info[f"fairfx_scoring_seconds_{key}"] = t[0]
        return self.analyses[key]

    def prune(self, slug: str, budget: float, rec: dict) -> nn.Module:
        _, kind, opts = METHODS[slug]
        if kind == "fairfx":
            an = self.channel_pass(opts["observe"])
            with timed_block() as tp_:
                plan = an.plan_for(
                    params=budget,
                    seed=self.seed,
                    allocation=opts["allocation"],
                    importance=opts["importance"],
                )
            with timed_block() as tr:
                pruned = an.compress(plan)
            rec.update(plan_seconds=tp_[0], rewrite_seconds=tr[0], prune_seconds=tp_[0] + tr[0])
            rec.update(alpha=plan.alpha, allocation=plan.extra.get("allocation"), note=plan.note)
            return pruned
        if kind == "tp":
            with timed_block() as t:
                pruned = peers.tp_prune_to_budget(
                    self.model,
                    self.example,
                    1.0 - budget,
                    global_pruning=opts["global_pruning"],
                    importance=opts["importance"],
                    calib=self.calib,
                    tol=0.01,
                    max_iter=12,
                )
            rec.update(prune_seconds=t[0], ratio=pruned._tp_pruning_ratio)
            return pruned
        if kind == "rounds":
            # Exactly the shipped call: no allocation/observe options (the defaults decide),
            # the training split for the fine-tuning between rounds, its default epochs.
            with timed_block() as t:
                pruned = fairfx.compress(
                    self.model,
                    self.example,
                    data=self.calib,
                    params=budget,
                    rounds=ROUND_STEPS,
                    finetune_data=train_loader(self.split, self.seed),
                    samples_per_class=self.args.per_class,
                    seed=self.seed,
                    progress=False,
                    **opts,
                )
            rec.update(prune_seconds=t[0], rounds=pruned.meta["fairfx"].get("rounds"))
            return pruned
        if kind == "tp-iter":
            with timed_block() as t:
                pruned = tp_iterative(
                    self.model, self.example, self.calib, budget, self.split, self.seed
                )
            rec.update(prune_seconds=t[0])
            return pruned
        return self._np(slug, budget, rec)

    def _np(self, slug: str, budget: float, rec: dict) -> nn.Module:
        variant = METHODS[slug][2].get("variant", "")
        key = f"{self.arch}{'/' + variant if variant else ''}"
        np_model = np_variant(self.model, self.example, self.args) if variant else self.model
        failures = self.args.np_failures
        if key not in failures:
            failures[key] = np_check(np_model, self.example, self.tmp)
            if failures[key]:
                log(f"  network-pruner cannot prune {key}: {failures[key]}")
        if failures[key]:
            raise RuntimeError(failures[key])
        if key not in self.np_scores:
            cx, cy = self.calib_xy
            self.np_scores[key] = NPScores(np_model, cx, cy, self.example, self.seed, self.tmp)
            self.info[f"np_scoring_seconds{'_' + variant if variant else ''}"] = self.np_scores[
                key
            ].seconds
        with timed_block() as t:
            pruned, level, _, final_s = self.np_scores[key].prune_to(budget)
        rec.update(prune_seconds=t[0], final_seconds=final_s, tod_level=level)
        return pruned


def run_model(arch: str, seed: int, split: digits.Split, args, done, sink) -> dict:
    """Every method and budget for one trained model; appends records to ``sink``."""
    info: dict = {"arch": arch, "seed": seed}
    cpu0 = cpu_seconds()
    r = Runner(arch, seed, split, args, info)
    info["setup_cpu_seconds"] = cpu_seconds() - cpu0  # training (unless cached), calibration set
    base_acc = digits.accuracy(r.model, split.x_test, split.y_test)
    n0, macs0 = count_params(r.model), count_macs(r.model, r.example)
    info.update(base_acc=base_acc, params=n0, macs=macs0)
    log(f"{arch} seed {seed}: test acc {base_acc:.4f}, {n0} params, {macs0} MACs")
    val = list(digits.batches(split.x_val, split.y_val, 256))
    for budget in args.budgets:
        for slug in args.methods:
            if (arch, seed, slug, budget) in done:
                continue
            if slug in DENSENET_ONLY and arch != "densenet":
                continue
            if slug in ROUNDS and budget not in args.rounds_budgets:
                continue
            rec = {"arch": arch, "seed": seed, "method": slug, "budget": budget}
            rec["base_acc"] = base_acc
            cpu0 = cpu_seconds()
            try:
                pruned = r.prune(slug, budget, rec)
            except Exception as exc:  # recorded, shown in the table
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if METHODS[slug][1] != "np":
                    reason = f"{type(exc).__name__}: {reason}"
                    traceback.print_exc()
                rec["failed"] = reason[:200]
                rec["cpu_seconds"] = cpu_seconds() - cpu0
                log(f"  {slug:20s} keep {budget:.2f}: FAILED {rec['failed']}")
                sink(rec)
                continue
            rec["params_kept"] = count_params(pruned) / n0
            rec["macs_kept"] = count_macs(pruned, r.example) / macs0
            if slug not in ROUNDS:  # rounds recalibrate and fine-tune inside
                rec["oneshot_acc"] = digits.accuracy(pruned, split.x_test, split.y_test)
                pruned = fairfx.recalibrate(pruned, r.calib)
            rec["recal_acc"] = digits.accuracy(pruned, split.x_test, split.y_test)
            if (slug in FINETUNED or args.finetune_all) and not args.no_finetune:
                rec["finetune_seconds"] = _finetune(
                    pruned, split, seed, args.finetune_epochs, val, lr=args.finetune_lr
                )
                rec["finetuned_acc"] = digits.accuracy(pruned, split.x_test, split.y_test)
            rec["cpu_seconds"] = cpu_seconds() - cpu0
            log(
                f"  {slug:18s} keep {budget:.2f}: params {rec['params_kept']:.3f} one-shot "
                f"{rec.get('oneshot_acc', float('nan')):.3f} recal {rec['recal_acc']:.3f} "
                f"ft {rec.get('finetuned_acc', float('nan')):.3f} "
                f"prune {rec['prune_seconds']:.1f}s"
            )
            sink(rec)
    return info


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vgg,resnet,densenet")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    p.add_argument("--budgets", default="0.7,0.5,0.3", help="kept fractions of parameters")
    p.add_argument("--rounds-budgets", default="0.3", help="budgets that also run in rounds")
    p.add_argument(
        "--methods",
        default=",".join(HEADLINE),
        help=f"from {','.join(METHODS)}; STUDY: the other fairfx variants",
    )
    p.add_argument("--skip-methods", default="", help="methods to leave out")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-all", action="store_true", help="fine-tune every method")
    p.add_argument("--no-finetune", action="store_true", help="one-shot numbers only")
    p.add_argument("--train-epochs", type=int, default=0, help="0: per-architecture default")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--growth", type=int, default=12)
    p.add_argument("--per-class", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="main", help="shard name: records_<tag>.jsonl")
    p.add_argument("--resume", action="store_true", help="keep this tag's records, skip done runs")
    p.add_argument("--report", action="store_true", help="only merge all shards and write")
    args = p.parse_args(argv)
    args.archs = [a for a in args.archs.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    args.rounds_budgets = [float(b) for b in args.rounds_budgets.split(",") if b]
    skip = set(args.skip_methods.split(","))
    names = [m for m in args.methods.split(",") if m]
    names = [x for m in names for x in (STUDY if m == "STUDY" else [m])]
    args.methods = [m for m in dict.fromkeys(names) if m not in skip]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; choose from {list(METHODS)}")
    args.command = " ".join(
        ["python benchmarks/bench_quality.py"]
        + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])]
    )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report:
        report.write(ART, RESULTS_MD, PLOT, METHODS, PEERS)
        return
    torch.set_num_threads(args.threads)
    args.np_failures = {}
    start = time.perf_counter()
    cpu_start = cpu_seconds()
    ART.mkdir(parents=True, exist_ok=True)
    rec_path = ART / f"records_{args.tag}.jsonl"
    info_path = ART / f"models_{args.tag}.jsonl"
    records = report.read([rec_path]) if args.resume and rec_path.exists() else []
    infos = report.read([info_path]) if args.resume and info_path.exists() else []
    if not args.resume:
        rec_path.write_text("")
        info_path.write_text("")
    done = {(r["arch"], r["seed"], r["method"], r["budget"]) for r in records}

    def sink(rec: dict) -> None:
        with rec_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    split = digits.load(seed=0)
    log(f"command: {args.command}; threads {torch.get_num_threads()}")
    for arch in args.archs:
        for seed in args.seeds:
            info = run_model(arch, seed, split, args, done, sink)
            infos = [i for i in infos if (i["arch"], i["seed"]) != (arch, seed)]
            infos.append(info)
            info_path.write_text("".join(json.dumps(i) + "\n" for i in infos))
    total = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    run = {
        "tag": args.tag,
        "command": args.command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "minutes": total / 60,
        "cpu_minutes": cpu / 60,
        "resumed": bool(args.resume and records),
        "threads": args.threads,
        "finetune_epochs": args.finetune_epochs,
        "finetune_lr": args.finetune_lr,
        "seeds": args.seeds,
        "split": [len(split.y_train), len(split.y_val), len(split.y_test)],
    }
    (ART / f"run_{args.tag}.json").write_text(json.dumps(run) + "\n")
    log(f"done in {total / 60:.1f} min wall, {cpu / 60:.1f} min CPU")


if __name__ == "__main__":
    main()
