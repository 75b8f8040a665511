"""Scores against the authors' package: fairfx.analyze vs Network_Pruner.get_metrics.

One model, one calibration set, both tools:

* model: ``fairfx.apps.digits.VGGStyle(width=16, bn=False)`` trained on the digits train split
  (fixed seed); no BatchNorm and no Dropout, so the authors' train-mode R pass equals an eval-mode
  one.
* calibration set: the first ``--per-class`` training samples of each of the 10 classes, in data
  order, as one ``TensorDataset``; one ``DataLoader`` over it (``--batch``, no shuffle) is given
  to both tools. Because the set holds *exactly* ``per_class`` samples of every class, both tools
  use every sample: fairfx's sampler (first n per class in data order) takes all of them, the
  authors' ``random.sample`` of n out of n per class takes all of them too (order differs, W1 does
  not care), and their R pass (every batch of the loader) sees the same batches as fairfx's.
* layers: every Conv2d and the hidden Linear (not the output Linear), passed to the package
  explicitly as ``named_modules()`` indices (its default picks the same ones).

Tables printed (markdown):

1. Per layer: Spearman of U (fairfx vs theirs), of R, the max relative difference of R after the
   loss-reduction factor (fairfx sums the loss, their default ``CrossEntropyLoss()`` averages each
   batch, so with equal batches their R is fairfx's divided by the batch size), and noise floors:
   each tool against itself with another seed, and both against a near-exact sliced W1 (fairfx with
   ``--ref-projections`` directions). ``observe="module"`` is compared with their default (U on the
   raw conv/linear output). ``observe="post_act"`` (for information) is compared twice: with their
   ``layers2analysis`` = the module whose output fairfx observes (fairfx follows the channel through
   the ReLU *and* a following MaxPool, to where the next layer reads it), and with
   ``layers2analysis`` = the ReLU right after the layer (their example script's choice; for the
   layers followed by a MaxPool this is another tensor, so U differs by more than noise there).
2. Counts: for each alpha, ``get_ratios`` on their results vs ``fairfx.method.tod.prune_count`` on
   *their* U and R (must be identical), and fairfx's own counts from its own scores (for
   information).
3. Wall time of one full scoring run, median of ``--repeats`` (each repeat uses another seed, which
   also gives the self-noise floors above), and the ratio.

Run (CPU, 2 threads; on a machine shared with other jobs the timings are rough):

    python benchmarks/bench_scoring_reference.py
    python benchmarks/bench_scoring_reference.py --repeats 3 --observe both
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))  # the repo root, so an uninstalled fairfx imports

import fairfx  # noqa: E402
import fairfx.apps.digits as digits  # noqa: E402
from fairfx.method.tod import prune_count  # noqa: E402

ALPHAS = (0.005, 0.015, 0.05, 0.2)


# ---------------------------------------------------------------------------- setup
def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def calibration_set(split: digits.Split, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` training samples of every class, kept in data order."""
    counts: dict[int, int] = {}
    keep = []
    for i, c in enumerate(split.y_train.tolist()):
        if counts.get(c, 0) < per_class:
            counts[c] = counts.get(c, 0) + 1
            keep.append(i)
    if any(counts.get(c, 0) < per_class for c in range(10)):
        raise SystemExit(f"some class has fewer than {per_class} training samples: {counts}")
    idx = torch.tensor(keep)
    return split.x_train[idx], split.y_train[idx]


def layer_table(model: nn.Module) -> list[tuple[str, int, int]]:
    """(qualified name, named_modules() index, index of the following ReLU) of every
    Conv2d/Linear except the last one (the output layer)."""
    named = list(model.named_modules())
    rows = []
    for i, (name, m) in enumerate(named):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nxt = i + 1
            if not (nxt < len(named) and isinstance(named[nxt][1], nn.ReLU)):
                nxt = -1
            rows.append((name, i, nxt))
    rows = rows[:-1]
    if any(r[2] < 0 for r in rows):
        raise SystemExit(f"a prunable layer is not followed by a ReLU module: {rows}")
    return rows


def observed_modules(an, model: nn.Module, names: list[str]):
    """{producer: (module name, named_modules() index)} of the module whose output fairfx's
    ``post_act`` scoring observes, or None when some point is not a module call (then the
    package cannot be pointed at the same tensor)."""
    from fairfx.method.scoring import observation_points

    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    nodes = {n.name: n for n in an.graph.channel_pass.gm.graph.nodes}
    out = {}
    for p in observation_points(an.graph, "post_act"):
        node = nodes[p.node]
        if node.op != "call_module" or node.target not in index:
            return None
        out[p.producer] = (node.target, index[node.target])
    return out if all(n in out for n in names) else None


# ---------------------------------------------------------------------------- the two tools
def run_theirs(model, loader, per_class, layers2prune, layers2analysis, seed, workdir):
    """``get_metrics`` on a deepcopy (it flips requires_grad, leaves .grad, switches modes), its
    prints silenced, its cwd and results.pkl in a temp dir. Returns (results, seconds)."""
    import Network_Pruner as NP

    work = copy.deepcopy(model)
    seed_all(seed)  # the package draws from the global python and torch generators
    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with (
            contextlib.redirect_stdout(buf),
            contextlib.redirect_stderr(buf),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            res = NP.get_metrics(
                work,
                loader,
                list(layers2prune),
                list(layers2analysis),
                device=torch.device("cpu"),
                the_samplesize_for_compute_distance=per_class,
                results_save_path=os.path.join(workdir, f"results_{seed}.pkl"),
            )
            secs = time.perf_counter() - t
    finally:
        os.chdir(cwd)
    return res, secs


def their_counts(model, results, layers2prune, alpha, workdir):
    import Network_Pruner as NP

    buf = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(buf):
            return list(NP.get_ratios(model, results, list(layers2prune), ToD_level=alpha))
    finally:
        os.chdir(cwd)


def run_fairfx(model, example, loader, per_class, observe, seed, projections=128):
    t = time.perf_counter()
    an = fairfx.analyze(
        model,
        example,
        loader,
        samples_per_class=per_class,
        max_classes=100,
        projections=projections,
        observe=observe,
        seed=seed,
        progress=False,
    )
    return an, time.perf_counter() - t


# ---------------------------------------------------------------------------- comparisons
def rho(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def max_rel(a, b) -> float:
    """max_i |a_i - b_i| / max_i |b_i| (relative to the layer's scale, safe for tiny entries)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def ties(x) -> int:
    x = np.asarray(x, dtype=np.float64)
    return int(x.size - np.unique(x).size)


def np_(t) -> np.ndarray:
    return t.detach().double().cpu().numpy() if torch.is_tensor(t) else np.asarray(t, np.float64)


def fmt(x, spec=".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def batch_factor(loader) -> tuple[float | None, str]:
    """fairfx R / their R when their loss is the default per-batch mean: the batch size, if every
    batch has the same size (otherwise no single factor exists)."""
    sizes = {len(y) for _, y in loader}
    if len(sizes) == 1:
        b = float(sizes.pop())
        return b, f"every batch holds {int(b)} samples"
    return None, f"batch sizes differ ({sorted(sizes)}): no single factor"


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per tool (seeds 0, 1, ...)")
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0, help="model/training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--ref-projections",
        type=int,
        default=4096,
        help="directions of the near-exact sliced W1 reference (0: skip)",
    )
    ap.add_argument(
        "--observe",
        choices=("module", "post_act", "both"),
        default="both",
        help="module: compare with their default; post_act: with their ReLU analysis",
    )
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    torch.set_num_threads(args.threads)
    import importlib.metadata as md

    print(
        f"# fairfx vs Network_Pruner {md.version('network-pruner')} scoring "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads, CPU)\n"
    )

    # model and data
    seed_all(args.seed)
    split = digits.load(seed=args.seed)
    model = digits.VGGStyle(width=args.width, bn=False)
    digits.train(model, split, epochs=args.epochs, seed=args.seed)
    model.eval()
    acc = digits.accuracy(model, split.x_val, split.y_val)
    x_cal, y_cal = calibration_set(split, args.per_class)
    loader = DataLoader(TensorDataset(x_cal, y_cal), batch_size=args.batch, shuffle=False)
    example = x_cal[: args.batch]
    layers = layer_table(model)
    names = [n for n, _, _ in layers]
    l2p = [i for _, i, _ in layers]
    relu = [j for _, _, j in layers]
    factor, factor_why = batch_factor(loader)
    print(
        f"Model: VGGStyle(width={args.width}, bn=False), trained {args.epochs} epochs "
        f"(seed {args.seed}), val accuracy {acc:.3f}. Calibration: {len(y_cal)} training "
        f"samples = {args.per_class} x 10 classes, one DataLoader (batch {args.batch}, no "
        f"shuffle, {len(loader)} batches) given to both tools."
    )
    print(
        "Layers (name: named_modules index -> their layers2prune; ReLU index -> their "
        "post-activation layers2analysis): "
        + ", ".join(f"`{n}`: {i} / {j}" for n, i, j in layers)
        + "\n"
    )

    # Variants: (key, fairfx observe, their layers2analysis, label, timed with repeats?)
    # "post_act" is compared twice: at the very module fairfx observes (it follows the channel
    # through ReLU *and* MaxPool to where the next layer reads it), and at the ReLU right after
    # the layer (their example script's choice), for information.
    probe = fairfx.analyze(
        model, example, loader, samples_per_class=args.per_class, observe="post_act", progress=False
    )
    fx_point = observed_modules(probe, model, names)
    variants = []
    if args.observe in ("module", "both"):
        variants.append(("module", "module", l2p, "default: raw layer output", True))
    if args.observe in ("post_act", "both"):
        if fx_point is not None:
            variants.append(
                (
                    "post_act",
                    "post_act",
                    [fx_point[n][1] for n in names],
                    "same module as fairfx",
                    True,
                )
            )
        variants.append(
            ("post_act/relu", "post_act", relu, "following ReLU (info)", fx_point is None)
        )
    if fx_point is not None and args.observe != "module":
        print(
            "fairfx `post_act` observes: "
            + ", ".join(f"`{n}` -> `{fx_point[n][0]}` (index {fx_point[n][1]})" for n in names)
            + "\n"
        )
    tmp = tempfile.TemporaryDirectory(prefix="bench_scoring_ref_")  # results.pkl goes here
    workdir = tmp.name

    fx_runs: dict[str, list] = {}
    refs: dict[str, object] = {}
    th_runs: dict[str, list] = {}
    for key, obs, a_idx, _, timed in variants:
        reps = args.repeats if timed else 1
        fxr = fx_runs.setdefault(obs, [])
        thr = th_runs.setdefault(key, [])
        for rep in range(reps):
            # alternate the order so that load drifts hit both tools alike
            order = ("fx", "th") if rep % 2 == 0 else ("th", "fx")
            for who in order:
                if who == "fx" and len(fxr) <= rep:
                    fxr.append(run_fairfx(model, example, loader, args.per_class, obs, seed=rep))
                elif who == "th":
                    thr.append(run_theirs(model, loader, args.per_class, l2p, a_idx, rep, workdir))
        if args.ref_projections and obs not in refs:
            refs[obs], _ = run_fairfx(
                model,
                example,
                loader,
                args.per_class,
                obs,
                seed=12345,
                projections=args.ref_projections,
            )
        rec = fxr[0][0].record
        if rec.get("samples") != len(y_cal):
            print(f"WARNING: fairfx used {rec.get('samples')} samples, expected {len(y_cal)}")

    # ------------------------------------------------------------------ table 1
    print("## 1. Scores per layer (seed 0 of each tool)\n")
    print(
        f"R factor = median over units of fairfx R / their R; expected {fmt(factor, '.0f')} "
        f"({factor_why}): fairfx sums the cross-entropy over samples, their default "
        "`CrossEntropyLoss()` averages it per batch. `R rel` = max |fairfx R / factor - their R| "
        "/ max their R. `U rel` = max |fairfx U - their U| / max their U; `U ratio` = mean "
        "their U / fairfx U (units with U > 0). Noise floors: `U self fx` / `U self th` = "
        "Spearman of a tool's U with seed 0 vs seed 1 (needs --repeats >= 2); `U ref fx` / "
        f"`U ref th` = Spearman with a near-exact sliced W1 ({args.ref_projections} fixed "
        "directions, fairfx, another seed; only where both measure at the same point). Linear "
        "units are exact 1-D W1 in both tools. `ties` = tied values in their U / R (dead units "
        "give R = 0, and U = 0 after a ReLU).\n"
    )
    print(
        "| fairfx observe | their layers2analysis | layer | units | Spearman U | U rel | U ratio |"
        " U self fx | U self th | U ref fx | U ref th | Spearman R | R factor | R rel | "
        "ties U/R |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, obs, _, label, _ in variants:
        fx = fx_runs[obs][0][0].by_producer()
        fx1 = fx_runs[obs][1][0].by_producer() if len(fx_runs[obs]) > 1 else None
        th = th_runs[key][0][0]
        th1 = th_runs[key][1][0] if len(th_runs[key]) > 1 else None
        same_point = key != "post_act/relu"
        ref = refs[obs].by_producer() if obs in refs and same_point else None
        for j, name in enumerate(names):
            fu, fr = fx[name]["u"], fx[name]["r"]
            tu, tr = np_(th[f"D_{j}"]), np_(th[f"RE_{j}_hat"])
            pos = tr > 0
            fac = float(np.median(fr[pos] / tr[pos])) if pos.any() else float("nan")
            scale = factor if factor is not None else fac
            live = fu > 0
            cells = [
                obs,
                label,
                f"`{name}`",
                str(len(fu)),
                fmt(rho(fu, tu)),
                fmt(max_rel(fu, tu), ".2e"),
                fmt(float(np.mean(tu[live] / fu[live])) if live.any() else float("nan"), ".3f"),
                fmt(rho(fu, fx1[name]["u"])) if fx1 else "n/a",
                fmt(rho(tu, np_(th1[f"D_{j}"]))) if th1 else "n/a",
                fmt(rho(fu, ref[name]["u"])) if ref else "n/a",
                fmt(rho(tu, ref[name]["u"])) if ref else "n/a",
                fmt(rho(fr, tr)),
                fmt(fac, ".3f"),
                fmt(max_rel(fr / scale, tr), ".2e"),
                f"{ties(tu)}/{ties(tr)}",
            ]
            print("| " + " | ".join(cells) + " |")
    print()

    # ------------------------------------------------------------------ table 2
    print("## 2. Per-layer counts of units to remove\n")
    print(
        "`theirs` = `get_ratios(model, results, layers2prune, ToD_level=alpha)` on their "
        "results; `fx(their U,R)` = `fairfx.method.tod.prune_count(their U, their R, alpha)`; "
        "`fx own` = `prune_count` on fairfx's own U and R; `fx plan` = "
        "`Analysis.plan(alpha).removed` of that producer's group (fairfx's own scores).\n"
    )
    print(
        "| fairfx observe | their layers2analysis | alpha | layer | units | theirs | "
        "fx(their U,R) | same | fx own | fx plan |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    identical = True
    mismatches = []
    rows = 0
    for key, obs, _, label, _ in variants:
        an = fx_runs[obs][0][0]
        fx = an.by_producer()
        th = th_runs[key][0][0]
        gid_of = {p: g.id for g in an.graph.groups for p in g.producers}
        for alpha in ALPHAS:
            theirs = their_counts(model, th, l2p, alpha, workdir)
            plan = an.plan(alpha)
            for j, name in enumerate(names):
                tu, tr = np_(th[f"D_{j}"]), np_(th[f"RE_{j}_hat"])
                mine = prune_count(tu, tr, alpha)
                same = mine == theirs[j]
                identical &= same
                rows += 1
                if not same:
                    mismatches.append((key, alpha, name, theirs[j], mine))
                own = prune_count(fx[name]["u"], fx[name]["r"], alpha)
                planned = plan.removed.get(gid_of.get(name), 0)
                print(
                    f"| {obs} | {label} | {alpha} | `{name}` | {len(tu)} | {theirs[j]} | {mine} "
                    f"| {'yes' if same else '**NO**'} | {own} | {planned} |"
                )
    print()
    print(
        f"Counts from the same scores identical in all {rows} rows: "
        f"**{'yes' if identical else 'NO'}**"
    )
    for m in mismatches:
        print(
            f"- mismatch {m}: check ties (their torch.argsort is not stable; fairfx breaks ties "
            "by unit index)"
        )
    print()

    # ------------------------------------------------------------------ table 3
    print(
        f"## 3. Scoring wall time (median of the runs; seeds 0, 1, ...; "
        f"{torch.get_num_threads()} threads; CPU shared with other jobs: rough)\n"
    )
    print(
        "fairfx = `fairfx.analyze` (capture + one streaming pass: U and R of every layer); "
        "theirs = `get_metrics` (per layer: one loader pass for R, K(K-1) forwards and "
        "K(K-1)/2 x units sliced-W1 calls for U). Other jobs share the 2 cores: single runs "
        "of the same call vary by up to ~5x here, so read the ratio as an order of magnitude; "
        "the ratio of the fastest runs is the least load-sensitive figure.\n"
    )
    print(
        "| fairfx observe | their layers2analysis | runs | fairfx s (capture + scoring) | "
        "get_metrics s | theirs / fairfx | ratio of minima | all fairfx runs | "
        "all their runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, obs, _, label, _ in variants:
        fxr, thr = fx_runs[obs], th_runs[key]
        fxt = [s for _, s in fxr]
        tht = [s for _, s in thr]
        cap = statistics.median(a.record["capture_seconds"] for a, _ in fxr)
        sco = statistics.median(a.record["scoring_seconds"] for a, _ in fxr)
        mf, mt = statistics.median(fxt), statistics.median(tht)
        print(
            f"| {obs} | {label} | {len(fxt)} / {len(tht)} | {mf:.3f} ({cap:.3f} + {sco:.3f}) "
            f"| {mt:.2f} | {mt / mf:.0f}x | {min(tht) / min(fxt):.0f}x | "
            f"{', '.join(f'{s:.3f}' for s in fxt)} | "
            f"{', '.join(f'{s:.2f}' for s in tht)} |"
        )
    print()
    tmp.cleanup()


if __name__ == "__main__":
    main()
