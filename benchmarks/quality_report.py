"""Tables and plot of the quality benchmark, from its records (see ``bench_quality.py``).

Paired differences: every seed trains one model, and every method prunes that same model, so
``default - method`` per seed removes the model-to-model spread that dominates one-shot
accuracy. Cells say the mean difference in points and how many seeds the default won (ties
count half).
"""

from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path

from fairfx.apps.report import table

ARCHS = ("vgg", "resnet", "densenet")
STAGES = (
    ("oneshot_acc", "one-shot"),
    ("recal_acc", "one-shot + BN recal"),
    ("finetuned_acc", "fine-tuned"),
)


def _ok(records, **match) -> list[dict]:
    return [
        r for r in records if "failed" not in r and all(r.get(k) == v for k, v in match.items())
    ]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.1f}"
    return f"{m:.1f}±{100 * statistics.stdev(values):.1f}"


def _budgets(records) -> list[float]:
    return sorted({r["budget"] for r in records}, reverse=True)


def _methods(records, arch, methods) -> list[str]:
    present = {r["method"] for r in records if r["arch"] == arch}
    return [m for m in methods if m in present]


def accuracy_tables(records, infos, methods) -> str:
    parts = []
    for arch in ARCHS:
        recs = [r for r in records if r["arch"] == arch]
        if not recs:
            continue
        base = [i["base_acc"] for i in infos if i["arch"] == arch]
        n0 = next((i["params"] for i in infos if i["arch"] == arch), "?")
        budgets = _budgets(recs)
        rows = []
        for m in _methods(records, arch, methods):
            row = [methods[m][0]]
            for b in budgets:
                cell = [r for r in recs if r["method"] == m and r["budget"] == b]
                ok = [r for r in cell if "failed" not in r]
                if not cell:
                    row.append("-")
                elif not ok:
                    row.append(f"failed: {cell[0]['failed'][:90]}")
                else:
                    vals = [_ms([r[k] for r in ok if k in r]) for k, _ in STAGES]
                    row.append(
                        f"{vals[0]} / {vals[1]} / **{vals[2]}** "
                        f"(p {statistics.fmean(r['params_kept'] for r in ok):.3f})"
                    )
            rows.append(row)
        seeds = len({i["seed"] for i in infos if i["arch"] == arch})
        parts.append(
            f"### {arch}: unpruned {_ms(base)}% ({n0} params; {seeds} seeds)\n\n"
            "Cells: one-shot / one-shot after BN recalibration / **fine-tuned** test accuracy in "
            "% (mean±std over seeds; fine-tuned only for the listed methods), (p kept fraction "
            "of parameters reached).\n\n"
            + table(["method"] + [f"keep {b:.0%}" for b in budgets], rows)
        )
    return "\n\n".join(parts)


def paired(records, a: str, b: str, arch: str, budget: float, key: str) -> tuple | None:
    """(mean of a - b in points, wins of a, seeds) over the seeds both have."""
    x = {r["seed"]: r[key] for r in _ok(records, arch=arch, method=a, budget=budget) if key in r}
    y = {r["seed"]: r[key] for r in _ok(records, arch=arch, method=b, budget=budget) if key in r}
    seeds = sorted(set(x) & set(y))
    if not seeds:
        return None
    d = [100 * (x[s] - y[s]) for s in seeds]
    wins = sum(1.0 if v > 0 else 0.5 if v == 0 else 0.0 for v in d)
    return statistics.fmean(d), wins, len(seeds)


def _pcell(p) -> str:
    if p is None:
        return "-"
    mean, wins, n = p
    return f"{mean:+.1f} ({wins:g}/{n})"


def paired_tables(records, methods, ref: str = "default") -> str:
    parts = []
    for arch in ARCHS:
        recs = [r for r in records if r["arch"] == arch]
        if not recs:
            continue
        budgets = _budgets([r for r in recs if r["method"] == ref])
        header = ["vs method"] + [f"{b:.0%}: {lab}" for b in budgets for _, lab in STAGES]
        rows = []
        for m in _methods(records, arch, methods):
            if m == ref:
                continue
            rows.append(
                [methods[m][0]]
                + [_pcell(paired(recs, ref, m, arch, b, k)) for b in budgets for k, _ in STAGES]
            )
        parts.append(
            f"### {arch}: `{ref}` minus each method, per seed\n\n"
            "Cells: mean paired difference in accuracy points (wins of the default out of the "
            "seeds both ran; ties count half), for one-shot, one-shot after BN recalibration "
            "(both sides recalibrated) and fine-tuned.\n\n" + table(header, rows)
        )
    return "\n\n".join(parts)


def _mean(records, **match) -> dict[str, float]:
    ok = _ok(records, **match)
    return {
        k: 100 * statistics.fmean(r[k] for r in ok if k in r)
        for k, _ in STAGES
        if any(k in r for r in ok)
    }


def _cells(records, peers, ref: str):
    """Per (arch, budget) with numbers on both sides: the default's means, every peer's best
    one-shot (raw or recalibrated) and fine-tuned accuracy."""
    for arch in ARCHS:
        for b in _budgets([r for r in records if r["arch"] == arch and r["method"] == ref]):
            mine = _mean(records, arch=arch, method=ref, budget=b)
            one = {m: _mean(records, arch=arch, method=m, budget=b) for m in peers}
            one = {m: v for m, v in one.items() if v}
            if not mine or not one:
                continue
            shot = {m: max(v.get("oneshot_acc", 0), v.get("recal_acc", 0)) for m, v in one.items()}
            tuned = {m: v["finetuned_acc"] for m, v in one.items() if "finetuned_acc" in v}
            yield arch, b, mine, shot, tuned


def best_peer_table(records, methods, peers, ref: str = "default") -> str:
    """The default (recalibrated) against every peer's best variant, raw or recalibrated."""
    rows = []
    for arch, b, mine, shot, tuned in _cells(records, peers, ref):
        bs, bt = max(shot, key=shot.get), max(tuned, key=tuned.get) if tuned else None
        rows.append(
            [
                arch,
                f"{b:.0%}",
                f"{mine['recal_acc']:.1f}",
                f"{shot[bs]:.1f} ({methods[bs][0]})",
                f"{mine['recal_acc'] - shot[bs]:+.1f}",
                f"{mine.get('finetuned_acc', float('nan')):.1f}",
                f"{tuned[bt]:.1f} ({methods[bt][0]})" if bt else "-",
                f"{mine.get('finetuned_acc', float('nan')) - tuned[bt]:+.1f}" if bt else "-",
            ]
        )
    failed = sorted(
        {
            (r["arch"], r["method"], r["failed"])
            for r in records
            if "failed" in r and r["method"] in peers
        }
    )
    notes = "".join(
        f"\n- {methods[m][0]} could not prune the {a}-style net (no numbers, not in the best "
        f"peer): `{why}`"
        for a, m, why in failed
    )
    return table(
        [
            "arch",
            "keep",
            "default one-shot",
            "best peer one-shot (raw or recal)",
            "Δ",
            "default fine-tuned",
            "best peer fine-tuned",
            "Δ",
        ],
        rows,
    ) + (f"\n{notes}" if notes else "")


def shortfalls(records, methods, peers, ref: str = "default") -> list[str]:
    """Every cell where the default's mean is below the best peer's, one-shot and fine-tuned."""
    out = []
    for arch, b, mine, shot, tuned in _cells(records, peers, ref):
        for what, own, theirs in (
            ("one-shot", mine.get("recal_acc"), shot),
            ("fine-tuned", mine.get("finetuned_acc"), tuned),
        ):
            if own is None or not theirs:
                continue
            best = max(theirs, key=theirs.get)
            if own < theirs[best]:
                out.append(
                    f"{arch} {b:.0%} {what}: default {own:.1f} vs {methods[best][0]} "
                    f"{theirs[best]:.1f} ({own - theirs[best]:+.1f})"
                )
    return out


def seeds_table(records, methods) -> str:
    """How many seeds every method has per architecture (all budgets), and failures."""
    rows = []
    for m in methods:
        cells, seen = [methods[m][0]], False
        for arch in ARCHS:
            recs = [r for r in records if r["arch"] == arch and r["method"] == m]
            seen |= bool(recs)
            ok = {(r["seed"], r["budget"]) for r in recs if "failed" not in r}
            seeds = {s for s, _ in ok}
            full = {s for s in seeds if all((s, b) in ok for b in {r["budget"] for r in recs})}
            if not recs:
                cells.append("-")
            elif not ok:
                cells.append("failed")
            else:
                tuned = sum("finetuned_acc" in r for r in recs)
                cells.append(f"{len(full)} ({len(ok)} runs, {tuned} fine-tuned)")
        if seen:
            rows.append(cells)
    return table(["method", *(f"{a}: seeds with every budget" for a in ARCHS)], rows)


def versus_table(records, methods, a: str, b: str) -> str:
    """``a`` against ``b`` in every (arch, budget) cell: means and the paired difference."""
    rows = []
    for arch in ARCHS:
        for bud in _budgets([r for r in records if r["arch"] == arch and r["method"] == a]):
            ma, mb = (
                _mean(records, arch=arch, method=a, budget=bud),
                _mean(records, arch=arch, method=b, budget=bud),
            )
            if not ma or not mb:
                continue
            cells = [arch, f"{bud:.0%}"]
            for key in ("recal_acc", "finetuned_acc"):
                p = paired(records, a, b, arch, bud, key)
                cells.append(f"{ma.get(key, float('nan')):.1f} vs {mb.get(key, float('nan')):.1f}")
                cells.append(_pcell(p))
            rows.append(cells)
    return table(
        [
            "arch",
            "keep",
            f"one-shot: {methods[a][0]} vs {methods[b][0]}",
            "paired Δ (wins)",
            "fine-tuned",
            "paired Δ (wins)",
        ],
        rows,
    )


def rounds_table(records, methods) -> str:
    rows = []
    for arch in ARCHS:
        for b in _budgets(
            [r for r in records if r["arch"] == arch and r["method"] == "default-rounds"]
        ):
            cells = [arch, f"{b:.0%}"]
            for m in ("default", "default-rounds", "tp-iterative", "tp-taylor-global"):
                v = _mean(records, arch=arch, method=m, budget=b)
                nan = float("nan")
                recal, tuned = v.get("recal_acc", nan), v.get("finetuned_acc", nan)
                cells.append(f"{recal:.1f} / **{tuned:.1f}**" if v else "-")
            for m in ("default", "tp-iterative"):
                p1 = paired(records, "default-rounds", m, arch, b, "recal_acc")
                p2 = paired(records, "default-rounds", m, arch, b, "finetuned_acc")
                cells.append(f"{_pcell(p1)} / {_pcell(p2)}")
            rows.append(cells)
    return table(
        [
            "arch",
            "keep",
            "default one-shot",
            "fairfx compress(params=0.3, rounds=3)",
            "TP iterative (3 steps)",
            "TP Taylor global one-shot",
            "rounds - one-shot (paired)",
            "rounds - TP iterative (paired)",
        ],
        rows,
    )


def cost_table(records, infos, methods) -> str:
    rows = []
    for arch in ARCHS:
        ai = [i for i in infos if i["arch"] == arch]
        if not ai:
            continue
        for key, label in (
            ("fairfx_scoring_seconds_post_act", "fairfx analyze (observe=post_act)"),
            ("fairfx_scoring_seconds_consumer", "fairfx analyze (observe=consumer)"),
            ("np_scoring_seconds", "network-pruner get_metrics"),
            ("np_scoring_seconds_flatten", "network-pruner get_metrics (flatten variant)"),
        ):
            vals = [i[key] for i in ai if key in i]
            if vals:
                rows.append([arch, label, f"{statistics.median(vals):.2f}"])
        for m in ("default", "fair-tod", "tp-taylor-global", "network-pruner", "default-rounds"):
            vals = [r["prune_seconds"] for r in _ok(records, arch=arch, method=m)]
            if vals:
                rows.append(
                    [
                        arch,
                        f"{methods[m][0]}: plan + prune per budget",
                        f"{statistics.median(vals):.2f}",
                    ]
                )
    return table(["arch", "step", "seconds (median)"], rows)


def runtime_lines(records, infos, runs) -> list[str]:
    """Wall and CPU time: per shard as it ran, and the total CPU from the records themselves
    (every record carries its own getrusage time, so a resumed shard still counts fully)."""
    lines = []
    for run in runs:
        cpu = run.get("cpu_minutes")
        lines.append(
            f"- shard `{run['tag']}`: {run['minutes']:.1f} min wall, "
            + (f"{cpu:.1f} min CPU" if cpu is not None else "CPU not recorded")
            + (" (resumed: this invocation only)" if run.get("resumed") else "")
        )
    rec_cpu = sum(r.get("cpu_seconds", 0.0) for r in records)
    setup = sum(i.get("setup_cpu_seconds", 0.0) for i in infos)
    total = (rec_cpu + setup) / 60
    wall = max((run["minutes"] for run in runs), default=0.0)
    ends = [datetime.datetime.strptime(run["date"], "%Y-%m-%d %H:%M") for run in runs]
    starts = [
        e - datetime.timedelta(minutes=run["minutes"]) for e, run in zip(ends, runs, strict=True)
    ]
    span = (max(ends) - min(starts)).total_seconds() / 60 if runs else 0.0
    lines.append(
        f"- **total CPU {total:.1f} min** (pruning, evaluation and fine-tuning {rec_cpu / 60:.1f}, "
        f"training + setup {setup / 60:.1f}): **{total / 2:.1f} min on 2 cores** if the shards "
        f"share them evenly (the issue's bound: 30 min); on the shared machine the longest "
        f"shard took {wall:.1f} min wall and all shards {span:.0f} min from the first start to "
        "the last end"
    )
    by_method: dict[str, float] = {}
    for r in records:
        by_method[r["method"]] = by_method.get(r["method"], 0.0) + r.get("cpu_seconds", 0.0)
    lines.append(
        "- CPU minutes by method (all archs, seeds, budgets): "
        + ", ".join(
            f"{m} {v / 60:.1f}" for m, v in sorted(by_method.items(), key=lambda kv: -kv[1])
        )
    )
    return lines


def markdown(records, infos, runs, methods, peers) -> str:
    head = [
        "# Quality benchmark: accuracy at matched parameter budgets (digits)",
        "",
        "Generated by `benchmarks/bench_quality.py --report` from these runs (shards in parallel "
        "processes, CPU, 1 thread each, machine shared with other jobs: timings are rough):",
        "",
    ]
    for run in runs:
        head.append(
            f"- `{run['command']}`: {run['date']} UTC, fine-tune {run['finetune_epochs']} epochs "
            f"at lr {run.get('finetune_lr', 1e-3):g}, seeds {run['seeds']}"
        )
    head += [
        "",
        "Every pruned model, whichever method pruned it, is BatchNorm-recalibrated on the same "
        "calibration images (320 training samples) before the recalibrated and fine-tuned "
        "numbers; fine-tuning is `fairfx.finetune` (SGD, momentum 0.9, wd 1e-4, the same epochs "
        "and lr for every method, the best validation epoch kept, the starting weights "
        "included). `default` is fairfx as shipped: `analyze` + `plan_for(params=b)`.",
        "",
        "Run time (CPU time from `resource.getrusage` per process; wall time is inflated: the "
        "2-core machine was shared with other jobs):",
        "",
        *runtime_lines(records, infos, runs),
        "",
    ]
    return "\n".join(head) + (
        "\n## The default against every peer's best variant (means over seeds)\n\n"
        + best_peer_table(records, methods, peers)
        + "\n\nWhere the default is below the best peer:\n\n"
        + ("\n".join(f"- {x}" for x in shortfalls(records, methods, peers)) or "- nowhere")
        + "\n\nSeeds per method:\n\n"
        + seeds_table(records, methods)
        + (
            "\n\n## The default against the previous default (hybrid counts)\n\n"
            + versus_table(records, methods, "default", "fair-hybrid-c")
            if any(r["method"] == "fair-hybrid-c" for r in records)
            else ""
        )
        + "\n\n## Allocations (which layers lose how much), one-shot after BN recalibration\n\n"
        "Mean over seeds 0-3 (a variant is shown in a cell only where it ran all four), U "
        "ranking unless named.\n\n"
        + allocation_table(records, methods)
        + "\n\n## 30% of parameters in rounds\n\n"
        "One-shot cells: after BN recalibration / **fine-tuned**. The rounds column is exactly "
        "the shipped `fairfx.compress(model, x, data=calib, params=0.3, rounds=3, "
        "finetune_data=train)` (its default counts, observation point and 1 fine-tune epoch "
        "between rounds); TP iterative gets the same recalibration and 1 epoch between its 3 "
        "steps, and both get the same final fine-tuning as the one-shot methods.\n\n"
        + rounds_table(records, methods)
        + "\n\n## Paired differences\n\n"
        + paired_tables(records, methods)
        + "\n\n## Accuracy of every method\n\n"
        + accuracy_tables(records, infos, methods)
        + "\n\n## Time\n\n"
        + cost_table(records, infos, methods)
        + "\n\nPlot: `benchmarks/results/accuracy_vs_params.png`. Raw records: "
        "`artifacts/bench_quality/records_*.jsonl`.\n"
    )


def summary(records, methods, peers) -> str:
    return "\n\n".join(
        [
            best_peer_table(records, methods, peers),
            "\n".join(shortfalls(records, methods, peers)),
            rounds_table(records, methods),
        ]
    )


def plot(records, infos, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = [a for a in ARCHS if any(r["arch"] == a for r in records)]
    if not archs:
        return
    shown = [m for m in ("default", "fair-tod", *methods) if m in methods]
    shown = list(
        dict.fromkeys(
            m for m in shown if methods[m][1] in ("tp", "np") or m in ("default", "fair-tod")
        )
    )
    fig, axes = plt.subplots(2, len(archs), figsize=(5.2 * len(archs), 8), squeeze=False)
    for col, arch in enumerate(archs):
        base = [i["base_acc"] for i in infos if i["arch"] == arch]
        for row, key in enumerate(("recal_acc", "finetuned_acc")):
            ax = axes[row][col]
            for k, m in enumerate(shown):
                pts = []
                for b in _budgets(records):
                    ok = [r for r in _ok(records, arch=arch, method=m, budget=b) if key in r]
                    if ok:
                        vals = [100 * r[key] for r in ok]
                        pts.append(
                            (
                                statistics.fmean(r["params_kept"] for r in ok),
                                statistics.fmean(vals),
                                statistics.stdev(vals) if len(vals) > 1 else 0.0,
                            )
                        )
                if pts:
                    xs, ys, es = zip(*pts, strict=True)
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        marker="osD^v<>Px*"[k % 10],
                        capsize=3,
                        label=methods[m][0],
                        lw=2.2 if m == "default" else 1,
                        alpha=0.85,
                    )
            if base:
                ax.axhline(
                    100 * statistics.fmean(base), color="k", ls="--", lw=0.8, label="unpruned"
                )
            ax.set_title(f"{arch}: {'one-shot + BN recal' if row == 0 else 'fine-tuned'}")
            ax.set_xlabel("kept fraction of parameters")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read(paths) -> list[dict]:
    out = []
    for path in paths:
        out.extend(json.loads(line) for line in Path(path).read_text().splitlines() if line)
    return out


def dedupe(records: list[dict]) -> list[dict]:
    """One record per (arch, seed, method, budget): a method rerun with fine-tuning in another
    shard replaces its one-shot-only record."""
    best: dict[tuple, dict] = {}
    for r in records:
        key = (r["arch"], r["seed"], r["method"], r["budget"])
        if key not in best or len(r) >= len(best[key]):
            best[key] = r
    return list(best.values())


def write(art: Path, results_md: Path, plot_path: Path, methods, peers) -> None:
    """Merge every shard's records and write the markdown tables and the plot."""
    records = dedupe(read(sorted(art.glob("records_*.jsonl"))))
    infos = read(sorted(art.glob("models_*.jsonl")))
    runs = read(sorted(art.glob("run_*.json")))
    results_md.write_text(markdown(records, infos, runs, methods, peers))
    plot(records, infos, methods, plot_path)
    print(summary(records, methods, peers))
    print(f"wrote {results_md} and {plot_path}")


def allocation_table(records, methods, key: str = "recal_acc", seeds=range(4)) -> str:
    """fairfx's allocations and observation points side by side: one-shot accuracy after BN
    recalibration, mean over the seeds every variant ran (the study shard)."""
    fair = [m for m in methods if methods[m][1] == "fairfx"]
    cols = [(a, b) for a in ARCHS for b in _budgets(records)]
    rows = []
    for m in fair:
        row = [methods[m][0]]
        for a, b in cols:
            got = {
                r["seed"]: r[key]
                for r in _ok(records, arch=a, method=m, budget=b)
                if r["seed"] in seeds and key in r
            }
            full = len(got) == len(seeds)  # a variant missing a seed is not comparable
            row.append(f"{100 * statistics.fmean(got.values()):.1f}" if full else "-")
        ok = [float(c) for c in row[1:] if c != "-"]
        row.append(f"{statistics.fmean(ok):.1f}" if len(ok) == len(cols) else "-")
        if ok:
            rows.append(row)
    header = ["allocation (U ranking unless named)"] + [f"{a} {b:.0%}" for a, b in cols]
    return table([*header, "mean"], rows)
