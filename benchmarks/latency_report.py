"""The table of bench_latency_quality.py: accuracy at matched measured latency, paired by seed.

Per net and method: mean test accuracy, mean measured latency ratio, how many seeds it missed
the matched ratio T by more than 5% (the latency plan's own re-measurement included) and how
many final measurements stayed disturbed by other load (``latency_match.DISTURBED``) or ran on a
busy machine (load average above 2 threads + 1), then the
latency plan's paired difference to that method: the mean over seeds with a 95% t interval
(needs two seeds or more) and the wins/ties/losses count.
"""

from __future__ import annotations

import statistics

from latency_match import TOLERANCE
from scipy import stats

METHODS = [
    "latency",
    "params",
    "flops",
    "tp_l1_global",
    "tp_l1_uniform",
    "tp_taylor_global",
    "tp_taylor_uniform",
]


def paired(diffs: list[float]) -> str:
    """Mean difference in points, its 95% t interval, and W/T/L over seeds."""
    mean = statistics.mean(diffs)
    wtl = (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs))
    text = f"{100 * mean:+.1f} pts"
    if len(diffs) >= 2:
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        text += f" [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]"
    return text + " {}W/{}T/{}L".format(*wtl)


def _net(rows: list[dict]) -> list[str]:
    lines = []
    for name in METHODS:
        acc = statistics.mean(r[name]["accuracy"] for r in rows)
        ratio = statistics.mean(r[name]["ratio"] for r in rows)
        misses = sum(
            abs(r[name]["ratio"] - r["matched_to"]) > TOLERANCE * r["matched_to"] for r in rows
        )
        disturbed = sum(r[name]["disturbed"] for r in rows)
        busy = sum(r[name]["busy"] for r in rows)
        diff = (
            paired([r["latency"]["accuracy"] - r[name]["accuracy"] for r in rows])
            if name != "latency"
            else "-"
        )
        lines.append(
            f"| {rows[0]['arch']} | {name} | {100 * acc:.1f}% | {ratio:.3f} | {misses} "
            f"| {disturbed} | {busy} | {diff} |"
        )
    return lines


def report(rows: list[dict]) -> str:
    """Markdown: one table row per (net, method), and per net the target and the latency
    plan's own two measurements."""
    lines = [
        "| net | method | accuracy | measured ratio | >5% off T | disturbed | busy "
        "| latency plan - method, 95% CI, W/T/L |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        lines += _net(rs)
        original = statistics.mean(r["original"] for r in rs)
        notes.append(
            f"{arch}: {len(rs)} seed(s), original {100 * original:.1f}%, "
            f"T mean {statistics.mean(r['matched_to'] for r in rs):.3f}; latency plan measured "
            f"{statistics.mean(r['latency']['planner_ratio'] for r in rs):.3f} by its planner, "
            f"{statistics.mean(r['latency']['ratio'] for r in rs):.3f} re-measured here; "
            f"{sum(r['latency']['planner_disturbed'] for r in rs)} planner measurement(s) disturbed"
        )
    return "\n".join([*lines, "", *notes])
