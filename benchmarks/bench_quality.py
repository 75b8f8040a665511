"""Quality benchmark on real data: accuracy of small pruned CNNs at matched parameter budgets.

Data: scikit-learn's bundled digits (``fairfx.apps.digits``, 8x8 grey, fixed stratified 60/15/25
train/val/test split; the test split is only ever used for the reported numbers).
Models: ``digits.VGGStyle``, ``digits.ResNetStyle`` and ``digits.DenseNetStyle``, trained with
``digits.train`` for every seed (trained state_dicts are cached under ``artifacts/bench_quality``).

Calibration data, identical for every scoring method: 32 training samples per class (a seeded
choice per class), as 64-sample batches; fairfx keeps all of them (``samples_per_class=32``) and
the authors' package gets the same samples as one map-style dataset (its U samples 32 of 32 per
class, its R pass runs over every batch).

Methods, each hitting a *kept fraction of parameters* (``--budgets``, default 0.7 0.5 0.3):

========================  ====================================================================
FAIR                      fairfx: U ranking, ToD counts (``plan_for(params=b)`` bisects alpha)
L1+ToD                    fairfx: ToD counts, filter-L1 ranking
random+ToD                fairfx: ToD counts, random ranking
uniform L1                fairfx: one uniform ratio (bisected), filter-L1 ranking
TP uniform / TP global    Torch-Pruning 1.6 L1 magnitude, channel ratio bisected to the budget
                          (``peers.tp_prune_to_budget``), output layer protected
network-pruner            the authors' package 2.16: ``get_metrics`` once, ``get_ratios`` at a
                          ToD level bisected to the budget, ``get_skeleton`` + ``prune``
FAIR observe=module       (ResNet only) U on the raw conv output, as the authors' package does
FAIR member rule          (ResNet only) coupled groups counted per member, largest kept count
========================  ====================================================================

For every (architecture, seed, budget, method): prune, one-shot test accuracy, fine-tune
(``fairfx.finetune``: SGD lr 1e-3, momentum 0.9, wd 1e-4, ``--finetune-epochs`` over the train
split, best validation epoch kept), fine-tuned test accuracy, parameters, MACs (FlopCounterMode on
one sample, flops / 2) and wall time.  Timing split: fairfx scores once per model (``analyze``),
then every method/budget is planning (``plan_for``, includes its own bisection) + rewrite
(``compress``); Torch-Pruning's time is its whole bisection (one dependency graph and one pruning
per trial); network-pruner's is ``get_metrics`` once per model, then the ToD-level bisection
(one ``get_skeleton`` per distinct count vector) and the final ``prune``.

The authors' package runs on a deepcopy for scoring (its R pass runs the model in train mode and
would change BatchNorm running statistics); its ``prune`` copies weights from an untouched copy,
so all methods start from identical weights.

Run (CPU; the OpenMP policy and thread count are set before torch is imported):

    python benchmarks/bench_quality.py                      # everything, ~30 min on 2 cores
    python benchmarks/bench_quality.py --archs vgg --seeds 0 --budgets 0.5 --finetune-epochs 1

Writes ``benchmarks/RESULTS_quality.md`` (tables), ``artifacts/bench_quality/records.jsonl``
(one line per run) and ``artifacts/bench_quality/accuracy_vs_params.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import argparse
import contextlib
import copy
import datetime
import gc
import io
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path.insert(0, str(_ROOT))  # an uninstalled fairfx imports from the checkout
sys.path.insert(0, str(_HERE))  # peers.py

import peers  # noqa: E402

import fairfx  # noqa: E402
import fairfx.apps.digits as digits  # noqa: E402
from fairfx.apps.report import table  # noqa: E402

ART = _ROOT / "artifacts" / "bench_quality"
RESULTS_MD = _HERE / "RESULTS_quality.md"

# slug -> (display name, kind, options)
METHODS: dict[str, tuple[str, str, dict]] = {
    "fair": ("FAIR", "fairfx", {"importance": "fair"}),
    "l1-tod": ("L1+ToD", "fairfx", {"importance": "l1"}),
    "random-tod": ("random+ToD", "fairfx", {"importance": "random"}),
    "uniform-l1": ("uniform L1", "fairfx", {"importance": "l1", "uniform": True}),
    "tp-uniform": ("TP uniform", "tp", {"global_pruning": False}),
    "tp-global": ("TP global", "tp", {"global_pruning": True}),
    "network-pruner": ("network-pruner", "np", {}),
    "fair-module": ("FAIR observe=module", "fairfx", {"importance": "fair", "observe": "module"}),
    "fair-member": ("FAIR member rule", "fairfx", {"importance": "fair", "group_rule": "member"}),
    "network-pruner-flatten": (
        "network-pruner, torch.flatten forward",
        "np",
        {"variant": "flatten"},
    ),
}
RESNET_ONLY = {"fair-module", "fair-member"}
DENSENET_ONLY = {"network-pruner-flatten"}
DEFAULT_EPOCHS = {"vgg": 10, "resnet": 15, "densenet": 12}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet():
    """Swallow the prints of the authors' package."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def timed_block():
    """A timer with the cyclic collector paused (as timeit does); yields a 1-element list."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start
        if was:
            gc.enable()


# ---------------------------------------------------------------------------- models and data
def make_model(arch: str, args) -> nn.Module:
    if arch == "vgg":
        return digits.VGGStyle(width=args.width)
    if arch == "resnet":
        return digits.ResNetStyle(width=args.width)
    if arch == "densenet":
        return digits.DenseNetStyle(growth=args.growth)
    raise SystemExit(f"unknown architecture {arch!r}")


def trained_model(arch: str, seed: int, split: digits.Split, args) -> tuple[nn.Module, float]:
    """Train (or load the cached state_dict of) ``arch`` for ``seed``; returns (model, seconds)."""
    epochs = args.train_epochs or DEFAULT_EPOCHS[arch]
    size = args.growth if arch == "densenet" else args.width
    path = ART / "models" / f"{arch}_{size}_e{epochs}_seed{seed}.pt"
    torch.manual_seed(seed)
    model = make_model(arch, args)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0
    start = time.perf_counter()
    digits.train(model, split, epochs=epochs, seed=seed)
    took = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), took


def calibration_set(split: digits.Split, per_class: int, seed: int):
    """``per_class`` training samples of every class, a seeded choice, in data order."""
    g = torch.Generator().manual_seed(10_000 + seed)
    keep = []
    for c in range(10):
        idx = torch.nonzero(split.y_train == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    idx = torch.cat(keep).sort().values
    return split.x_train[idx], split.y_train[idx]


def train_loader(split: digits.Split, seed: int) -> DataLoader:
    """Shuffled train batches, the same order for every pruned model of one seed."""
    g = torch.Generator().manual_seed(20_000 + seed)
    return DataLoader(
        TensorDataset(split.x_train, split.y_train), batch_size=64, shuffle=True, generator=g
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    model.train(was)
    return int(counter.get_total_flops() // 2)


# ---------------------------------------------------------------------------- network-pruner
def _np():
    import Network_Pruner as NP  # the authors' package

    return NP


def np_dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    """A map-style dataset the package can read labels from (``.targets``, ``.classes``)."""
    ds = TensorDataset(x, y)
    ds.targets = y  # type: ignore[attr-defined]
    ds.classes = [str(c) for c in range(int(y.max()) + 1)]  # type: ignore[attr-defined]
    return ds


def np_unit_counts(model: nn.Module) -> list[int]:
    from Network_Pruner.FAIR_Pruner import _auto_prunable_layer_indices

    named = list(model.named_modules())
    out = []
    for i in _auto_prunable_layer_indices(model, exclude_output_layer=True):
        m = named[i][1]
        out.append(int(m.out_channels if hasattr(m, "out_channels") else m.out_features))
    return out


def np_check(model: nn.Module, example: torch.Tensor, tmp: str) -> str | None:
    """Run the package's skeleton + prune on fake scores (remove a quarter of every layer);
    None when it works, else the reason.  Cheap, so an unsupported architecture costs no
    scoring time."""
    NP = _np()
    sizes = np_unit_counts(model)
    results = {}
    for j, n in enumerate(sizes):
        results[f"D_{j}_s2b_idx"] = list(range(n))
        results[f"RE_{j}_hat_s2b_idx"] = list(range(n))
    counts = [n // 4 for n in sizes]
    stage = "get_skeleton"
    try:
        with quiet():
            skel = NP.get_skeleton(copy.deepcopy(model), counts, example)
            stage = "prune"
            pruned, _ = NP.prune(
                skel,
                copy.deepcopy(model),
                results,
                counts,
                example_inputs=example,
                pruned_model_save_path=os.path.join(tmp, "check.pht"),
                device=torch.device("cpu"),
            )
            stage = "forward of the pruned model"
            out = pruned(example)
        if tuple(out.shape) != (example.shape[0], 10):
            return f"pruned model returns shape {tuple(out.shape)}"
    except Exception as exc:  # the reason goes into the table
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return (
            f"{stage} raised {type(exc).__name__} (in {where.name}): "
            f"{str(exc).splitlines()[0][:160]}"
        )
    return None


class DenseNetTorchFlatten(digits.DenseNetStyle):
    """``digits.DenseNetStyle`` with ``torch.flatten(t, 1)`` instead of ``t.flatten(1)``: the same
    function (same weights, same outputs).  network-pruner's ``get_skeleton`` does not resize the
    output Linear when the pooled features reach it through the tensor *method* ``flatten``."""

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1), 1))


def np_variant(model: nn.Module, example: torch.Tensor, args) -> nn.Module:
    """The workaround model for the package: same weights, torch.flatten in forward."""
    if not isinstance(model, digits.DenseNetStyle):
        raise RuntimeError("no workaround variant for this architecture")
    other = DenseNetTorchFlatten(growth=args.growth)
    other.load_state_dict(model.state_dict())
    other.eval()
    with torch.no_grad():
        if not torch.equal(other(example), model(example)):
            raise RuntimeError("the workaround variant computes something else")
    return other


class NPScores:
    """get_metrics once per model; plans for a parameter budget by bisecting the ToD level."""

    def __init__(self, model, calib_x, calib_y, example, seed, tmp):
        NP = _np()
        self.model = copy.deepcopy(model).eval()  # untouched weights for the pruned copies
        self.example = example
        self.tmp = tmp
        scoring_copy = copy.deepcopy(model)
        loader = DataLoader(np_dataset(calib_x, calib_y), batch_size=64, shuffle=False)
        seed_all(seed)  # the package draws samples and directions from the global generators
        with quiet(), timed_block() as t:
            self.results = NP.get_metrics(
                scoring_copy,
                loader,
                device=torch.device("cpu"),
                the_samplesize_for_compute_distance=32,
                results_save_path=os.path.join(tmp, "results.pkl"),
            )
        self.seconds = t[0]
        self.n0 = count_params(self.model)
        self._skeletons: dict[tuple[int, ...], int] = {}

    def counts(self, level: float) -> list[int]:
        with quiet():
            return _np().get_ratios(self.model, self.results, ToD_level=level)

    def kept(self, counts: list[int]) -> float:
        key = tuple(counts)
        if key not in self._skeletons:
            with quiet():
                skel = _np().get_skeleton(self.model, counts, self.example)
            self._skeletons[key] = count_params(skel)
        return self._skeletons[key] / self.n0

    def prune_to(self, keep: float, steps: int = 20):
        """(pruned model, ToD level, achieved kept fraction, final plan+prune seconds)."""
        lo, hi = 0.0, 1.0
        tried = []
        for level in (lo, hi):
            tried.append((level, self.counts(level)))
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            c = self.counts(mid)
            tried.append((mid, c))
            if self.kept(c) > keep:
                lo = mid
            else:
                hi = mid
        level, counts = min(tried, key=lambda t: (abs(self.kept(t[1]) - keep), -self.kept(t[1])))
        NP = _np()
        with quiet(), timed_block() as t:
            counts = NP.get_ratios(self.model, self.results, ToD_level=level)
            skel = NP.get_skeleton(self.model, counts, self.example)
            pruned, _ = NP.prune(
                skel,
                self.model,
                self.results,
                counts,
                example_inputs=self.example,
                pruned_model_save_path=os.path.join(self.tmp, "pruned.pht"),
                device=torch.device("cpu"),
            )
        return pruned, level, count_params(pruned) / self.n0, t[0]


# ---------------------------------------------------------------------------- one model
def run_model(arch: str, seed: int, split: digits.Split, args, methods, done, sink) -> dict:
    """Every method and budget for one trained model; appends records to ``sink``."""
    model, train_s = trained_model(arch, seed, split, args)
    base_acc = digits.accuracy(model, split.x_test, split.y_test)
    example = split.x_train[:1]
    n0, macs0 = count_params(model), count_macs(model, example)
    log(
        f"{arch} seed {seed}: test acc {base_acc:.4f}, {n0} params, {macs0} MACs"
        + (f", trained in {train_s:.1f}s" if train_s else " (cached)")
    )
    info = {
        "arch": arch,
        "seed": seed,
        "base_acc": base_acc,
        "params": n0,
        "macs": macs0,
        "train_seconds": train_s,
    }
    calib_x, calib_y = calibration_set(split, args.per_class, seed)
    calib = list(digits.batches(calib_x, calib_y, 64))
    val = list(digits.batches(split.x_val, split.y_val, 256))

    todo = [
        (b, m)
        for b in args.budgets
        for m in methods
        if (arch, seed, m, b) not in done
        and (m not in RESNET_ONLY or arch == "resnet")
        and (m not in DENSENET_ONLY or arch == "densenet")
    ]
    analyses: dict[str, fairfx.Analysis] = {}

    def analysis(observe: str) -> fairfx.Analysis:
        if observe not in analyses:
            with timed_block() as t:
                analyses[observe] = fairfx.analyze(
                    model,
                    example,
                    calib,
                    samples_per_class=args.per_class,
                    observe=observe,
                    seed=seed,
                    progress=False,
                )
            info[f"fairfx_scoring_seconds_{observe}"] = t[0]
            log(f"  fairfx analyze(observe={observe!r}): {t[0]:.2f}s")
        return analyses[observe]

    np_scores: dict[str, NPScores] = {}
    tmp = tempfile.mkdtemp(prefix="bench_quality_np_")

    for budget, slug in todo:
        name, kind, opts = METHODS[slug]
        rec = {"arch": arch, "seed": seed, "method": slug, "budget": budget, "base_acc": base_acc}
        try:
            if kind == "fairfx":
                an = analysis(opts.get("observe", "post_act"))
                with timed_block() as tp_:
                    plan = an.plan_for(
                        params=budget,
                        importance=opts["importance"],
                        uniform=opts.get("uniform", False),
                        group_rule=opts.get("group_rule", "joint"),
                        seed=seed,
                    )
                with timed_block() as tr:
                    pruned = an.compress(plan)
                rec.update(
                    plan_seconds=tp_[0],
                    rewrite_seconds=tr[0],
                    prune_seconds=tp_[0] + tr[0],
                    alpha=plan.alpha,
                    uniform=plan.uniform,
                    note=plan.note,
                )
            elif kind == "tp":
                with timed_block() as t:
                    pruned = peers.tp_prune_to_budget(
                        model, example, 1.0 - budget, global_pruning=opts["global_pruning"]
                    )
                rec.update(prune_seconds=t[0], ratio=pruned._tp_pruning_ratio)
            else:  # network-pruner, on the model itself or on the workaround variant
                variant = opts.get("variant", "")
                key = f"{arch}{'/' + variant if variant else ''}"
                np_model = np_variant(model, example, args) if variant else model
                if key not in args.np_failures:
                    args.np_failures[key] = np_check(np_model, example, tmp)
                    if args.np_failures[key]:
                        log(f"  {name} cannot prune {arch}: {args.np_failures[key]}")
                if args.np_failures[key]:
                    raise RuntimeError(args.np_failures[key])
                if key not in np_scores:
                    log(f"  {name}: get_metrics ...")
                    np_scores[key] = NPScores(np_model, calib_x, calib_y, example, seed, tmp)
                    info[f"np_scoring_seconds{'_' + variant if variant else ''}"] = np_scores[
                        key
                    ].seconds
                    log(f"  {name}: get_metrics {np_scores[key].seconds:.2f}s")
                with timed_block() as t:
                    pruned, level, _, final_s = np_scores[key].prune_to(budget)
                rec.update(prune_seconds=t[0], final_seconds=final_s, tod_level=level)
        except Exception as exc:  # recorded, shown in the table
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if kind != "np":
                reason = f"{type(exc).__name__}: {reason}"
                traceback.print_exc()
            rec["failed"] = reason[:200]
            log(f"  {name:20s} keep {budget:.2f}: FAILED {rec['failed']}")
            sink(rec)
            continue

        rec["params_kept"] = count_params(pruned) / n0
        rec["macs_kept"] = count_macs(pruned, example) / macs0
        rec["oneshot_acc"] = digits.accuracy(pruned, split.x_test, split.y_test)
        torch.manual_seed(seed)
        with timed_block() as tf:
            fairfx.finetune(
                pruned,
                train_loader(split, seed),
                epochs=args.finetune_epochs,
                val_data=val,
                progress=False,
            )
        rec["finetune_seconds"] = tf[0]
        rec["finetuned_acc"] = digits.accuracy(pruned, split.x_test, split.y_test)
        log(
            f"  {name:20s} keep {budget:.2f}: params {rec['params_kept']:.3f} "
            f"MACs {rec['macs_kept']:.3f} one-shot {rec['oneshot_acc']:.4f} "
            f"fine-tuned {rec['finetuned_acc']:.4f} prune {rec['prune_seconds']:.2f}s "
            f"ft {tf[0]:.1f}s"
        )
        sink(rec)
    return info


# ---------------------------------------------------------------------------- reporting
def _ms(values: list[float], scale: float = 100.0, digits_: int = 1) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits_}f}"
    s = statistics.stdev(values) * scale
    return f"{m:.{digits_}f}±{s:.{digits_}f}"


def _methods_for(arch: str, records: list[dict], methods: list[str]) -> list[str]:
    present = {r["method"] for r in records if r["arch"] == arch}
    return [m for m in methods if m in present]


def quality_tables(records, infos, methods, budgets, archs) -> str:
    parts = []
    for arch in archs:
        recs = [r for r in records if r["arch"] == arch]
        if not recs:
            continue
        ai = [i for i in infos if i["arch"] == arch]
        base = [i["base_acc"] for i in ai]
        header = ["method"] + [f"keep {b:.0%} of params" for b in budgets]
        rows = []
        for m in _methods_for(arch, records, methods):
            row = [METHODS[m][0]]
            for b in budgets:
                cell = [r for r in recs if r["method"] == m and r["budget"] == b]
                ok = [r for r in cell if "failed" not in r]
                if not cell:
                    row.append("-")
                elif not ok:
                    row.append(f"failed: {cell[0]['failed']}")
                else:
                    txt = (
                        f"{_ms([r['oneshot_acc'] for r in ok])} / "
                        f"**{_ms([r['finetuned_acc'] for r in ok])}** "
                        f"(p {statistics.fmean(r['params_kept'] for r in ok):.3f})"
                    )
                    if len(ok) < len(cell):
                        txt += f" ({len(cell) - len(ok)} failed)"
                    row.append(txt)
            rows.append(row)
        n0 = ai[0]["params"] if ai else "?"
        macs0 = ai[0]["macs"] if ai else "?"
        parts.append(
            f"### {arch}: unpruned test accuracy {_ms(base)}% "
            f"({n0} params, {macs0} MACs; {len(ai)} seeds)\n\n"
            "Cells: one-shot / **fine-tuned** test accuracy in % (mean±std over seeds), "
            "(p kept fraction of parameters reached, mean).\n\n" + table(header, rows)
        )
    return "\n\n".join(parts)


def cost_tables(records, infos, methods, budgets, archs) -> str:
    parts = []
    for arch in archs:
        recs = [r for r in records if r["arch"] == arch and "failed" not in r]
        if not recs:
            continue
        ai = [i for i in infos if i["arch"] == arch]
        scoring = []
        for key, label in (
            ("fairfx_scoring_seconds_post_act", "fairfx analyze (observe=post_act)"),
            ("fairfx_scoring_seconds_module", "fairfx analyze (observe=module)"),
            ("np_scoring_seconds", "network-pruner get_metrics"),
            ("np_scoring_seconds_flatten", "network-pruner get_metrics (torch.flatten variant)"),
        ):
            vals = [i[key] for i in ai if key in i]
            if vals:
                scoring.append(f"{label} {_ms(vals, 1.0, 2)} s")
        fx_recs = [r for r in recs if "plan_seconds" in r]
        if fx_recs:
            scoring.append(
                "fairfx per budget: plan_for "
                f"{statistics.median(r['plan_seconds'] for r in fx_recs):.2f} s + compress "
                f"{statistics.median(r['rewrite_seconds'] for r in fx_recs):.2f} s (medians)"
            )
        header = ["method"] + [f"keep {b:.0%}: params / MACs / s" for b in budgets]
        rows = []
        for m in _methods_for(arch, recs, methods):
            row = [METHODS[m][0]]
            for b in budgets:
                ok = [r for r in recs if r["method"] == m and r["budget"] == b]
                if not ok:
                    row.append("-")
                    continue
                row.append(
                    f"{statistics.fmean(r['params_kept'] for r in ok):.3f} / "
                    f"{statistics.fmean(r['macs_kept'] for r in ok):.3f} / "
                    f"{statistics.median(r['prune_seconds'] for r in ok):.2f}"
                )
            rows.append(row)
        parts.append(
            f"### {arch}: kept fractions and pruning wall time\n\n"
            f"Scoring, once per model (mean±std over seeds): {'; '.join(scoring) or '-'}.\n"
            "Per cell: kept params / kept MACs (means) / seconds for this budget (median over "
            "seeds; fairfx: plan_for + compress; TP: its whole ratio bisection; "
            "network-pruner: ToD-level bisection + final get_ratios/get_skeleton/prune).\n\n"
            + table(header, rows)
        )
    return "\n\n".join(parts)


def plot(records, infos, methods, archs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in archs if any(r["arch"] == a for r in records)]
    if not archs:
        return
    fig, axes = plt.subplots(
        2, len(archs), figsize=(5.2 * len(archs), 8), squeeze=False, sharex=True
    )
    markers = "osD^v<>Px*"
    for col, arch in enumerate(archs):
        base = [i["base_acc"] for i in infos if i["arch"] == arch]
        for row, key in enumerate(("finetuned_acc", "oneshot_acc")):
            ax = axes[row][col]
            for k, m in enumerate(_methods_for(arch, records, methods)):
                xs, ys, es = [], [], []
                for b in sorted({r["budget"] for r in records}):
                    ok = [
                        r
                        for r in records
                        if r["arch"] == arch
                        and r["method"] == m
                        and r["budget"] == b
                        and "failed" not in r
                    ]
                    if ok:
                        xs.append(statistics.fmean(r["params_kept"] for r in ok))
                        vals = [100 * r[key] for r in ok]
                        ys.append(statistics.fmean(vals))
                        es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
                if xs:
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        marker=markers[k % len(markers)],
                        capsize=3,
                        label=METHODS[m][0],
                        alpha=0.85,
                    )
            if base:
                ax.axhline(
                    100 * statistics.fmean(base), color="k", ls="--", lw=0.8, label="unpruned"
                )
            ax.set_title(f"{arch}: {'fine-tuned' if row == 0 else 'one-shot'}")
            ax.set_xlabel("kept fraction of parameters")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown(args, records, infos, archs, total_s: float, finished: bool) -> None:
    import importlib.metadata as md

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    failures = [f"- {arch}: {reason}" for arch, reason in args.np_failures.items() if reason]
    train_epochs = args.train_epochs or ", ".join(f"{a} {DEFAULT_EPOCHS[a]}" for a in archs)
    status = "complete" if finished else "PARTIAL: still running or interrupted"
    head = [
        "# Quality benchmark: accuracy at matched parameter budgets (digits)",
        "",
        f"Generated by `benchmarks/bench_quality.py` ({status}).",
        "",
        f"- Command: `{args.command}`",
        f"- Date: {args.date} (UTC); total wall time {total_s / 60:.1f} min",
        f"- Machine: CPU, torch.set_num_threads({args.threads}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, shared with other jobs "
        "(timings are rough)",
        f"- Versions: torch {torch.__version__}, fairfx (this checkout), "
        f"torch-pruning {ver('torch-pruning')}, network-pruner {ver('network-pruner')}",
        f"- Data: sklearn digits 8x8, fixed split `digits.load(seed=0)` (train {args.n_train} / "
        f"val {args.n_val} / test {args.n_test}); test split only for the numbers below",
        f"- Models: VGGStyle(width={args.width}), ResNetStyle(width={args.width}), "
        f"DenseNetStyle(growth={args.growth}); Adam training epochs: {train_epochs}; "
        f"seeds {args.seeds} (init, training order, calibration choice, scoring seed)",
        f"- Calibration: {args.per_class} training samples per class (seeded), the same set "
        "for fairfx and network-pruner",
        f"- Fine-tuning: `fairfx.finetune`, SGD lr 1e-3 momentum 0.9 wd 1e-4, "
        f"{args.finetune_epochs} epochs on the train split, best validation epoch kept",
        f"- Budgets: kept fraction of parameters {args.budgets}; every method bisects its own "
        "knob to the budget and the table shows what it reached",
        "",
    ]
    text = (
        "\n".join(head)
        + f"""
## Accuracy

{quality_tables(records, infos, args.methods, args.budgets, archs)}

## Kept fractions and time

{cost_tables(records, infos, args.methods, args.budgets, archs)}

## network-pruner failures

{chr(10).join(failures) if failures else "none"}

How the failure was checked: before scoring, the package's `get_skeleton` + `prune` run on fake
scores (a quarter of every layer removed) and the pruned model is called once. On
`DenseNetStyle` the skeleton builder leaves the output Linear at its original input width as soon
as a conv whose channels reach the final pooled features (the transition conv, the block-2 convs)
loses channels; the stem and block-1 convs prune fine, so concatenation itself is handled. The
trigger is the tensor *method* `t.flatten(1)` in the model's forward: the same model written with
`torch.flatten(t, 1)` (identical weights and outputs, class `DenseNetTorchFlatten` in the script)
prunes, and the row "network-pruner, torch.flatten forward" shows the package on that copy.

Plot: `artifacts/bench_quality/accuracy_vs_params.png` (top: fine-tuned, bottom: one-shot;
mean ± std over seeds).
Raw records: `artifacts/bench_quality/records.jsonl`.
"""
    )
    RESULTS_MD.write_text(text)


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vgg,resnet,densenet")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="0.7,0.5,0.3", help="kept fractions of parameters")
    p.add_argument("--methods", default=",".join(METHODS), help=f"from {','.join(METHODS)}")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--train-epochs", type=int, default=0, help="0: per-architecture default")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--growth", type=int, default=12)
    p.add_argument("--per-class", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="keep records.jsonl, skip done runs")
    p.add_argument("--no-markdown", action="store_true", help="do not write RESULTS_quality.md")
    args = p.parse_args(argv)
    args.archs = [a for a in args.archs.split(",") if a]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    args.methods = [m for m in args.methods.split(",") if m]
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
    torch.set_num_threads(args.threads)
    args.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    args.np_failures = {}
    start = time.perf_counter()
    ART.mkdir(parents=True, exist_ok=True)
    rec_path = ART / "records.jsonl"
    info_path = ART / "models.jsonl"
    records: list[dict] = []
    infos: list[dict] = []
    if args.resume:
        for path, into in ((rec_path, records), (info_path, infos)):
            if path.exists():
                into.extend(json.loads(line) for line in path.read_text().splitlines() if line)
        for r in records:
            if r["method"] == "network-pruner" and "failed" in r:
                args.np_failures.setdefault(r["arch"], r["failed"])
            if r["method"] == "network-pruner-flatten" and "failed" in r:
                args.np_failures.setdefault(r["arch"] + "/flatten", r["failed"])
    else:
        rec_path.write_text("")
        info_path.write_text("")
    done = {(r["arch"], r["seed"], r["method"], r["budget"]) for r in records}

    def sink(rec: dict) -> None:
        records.append(rec)
        with rec_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    split = digits.load(seed=0)
    args.n_train, args.n_val, args.n_test = len(split.y_train), len(split.y_val), len(split.y_test)
    log(f"command: {args.command}; threads {torch.get_num_threads()}")
    for arch in args.archs:
        for seed in args.seeds:
            info = run_model(arch, seed, split, args, args.methods, done, sink)
            infos = [i for i in infos if (i["arch"], i["seed"]) != (arch, seed)]
            infos.append(info)
            info_path.write_text("".join(json.dumps(i) + "\n" for i in infos))
        if not args.no_markdown:
            write_markdown(args, records, infos, args.archs, time.perf_counter() - start, False)
        plot(records, infos, args.methods, args.archs, ART / "accuracy_vs_params.png")
    total = time.perf_counter() - start
    if not args.no_markdown:
        write_markdown(args, records, infos, args.archs, total, True)
    plot(records, infos, args.methods, args.archs, ART / "accuracy_vs_params.png")
    print()
    print(quality_tables(records, infos, args.methods, args.budgets, args.archs))
    print()
    print(cost_tables(records, infos, args.methods, args.budgets, args.archs))
    log(f"done in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
