"""The zoo sweep's result record, its JSON-lines file and the tables printed from it.

One line per model, appended as each model finishes (:mod:`fairfx.apps.zoo_sweep`), so a long sweep
that is interrupted keeps every row it reached and ``--resume`` continues from there. The zoo
section of docs/results.md is generated from this file (``python -m fairfx.apps.readme --zoo``), so
the table says what a run measured, row by row. A model that failed, crashed or ran out of time has
a row with its one-line reason; no model is left out silently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import FairfxError


@dataclass
class ZooResult:
    name: str
    groups: int = 0
    prunable: int = 0
    params_before: int = 0
    params_after: int = 0
    handled: bool = False
    oracle_exact: bool = False
    oracle_diff: float = float("nan")
    inexact_groups: int = 0
    unlisted: tuple[str, ...] = ()  # parameters in no channel group (must be empty)
    exported: bool = False
    seconds: float = 0.0
    error: str = ""
    fair_run: bool = False  # the FAIR path was attempted (not --no-fair)
    fair_done: bool = False
    fair_params_after: int = 0
    fair_exact: bool = False
    fair_exported: bool = False
    fair_seconds: float = 0.0
    fair_error: str = ""
    # Filled by the sweep's parent process (0 / "" when a model runs in-process):
    worker_seconds: float = 0.0  # wall time of the model's worker process, start-up included
    cpu_seconds: float = 0.0  # user + system CPU time of the model's worker process
    peak_rss_mb: float = 0.0  # the worker's peak resident memory
    commit: str = ""  # the fairfx commit the row was measured with
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        row = asdict(self)
        row["unlisted"] = list(self.unlisted)
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        return json.dumps(row, sort_keys=True)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> ZooResult:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in row.items() if k in known}
        kw["unlisted"] = tuple(kw.get("unlisted", ()))
        if kw.get("oracle_diff") is None:
            kw["oracle_diff"] = float("nan")
        return cls(**kw)


def append_row(path: str | os.PathLike, result: ZooResult) -> None:
    """Append one finished model to ``path`` and flush it to disk, so a crash loses no row."""
    with open(path, "a") as f:
        f.write(result.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_rows(path: str | os.PathLike) -> dict[str, ZooResult]:
    """The rows of a sweep file by model name; a later row of a model replaces an earlier one
    (a rerun after a fix). A half-written last line (the machine stopped mid-write) is ignored."""
    p = Path(path)
    if not p.is_file():
        raise FairfxError(f"{p} does not exist; run `python -m fairfx.apps.zoo --out {p}` first")
    rows: dict[str, ZooResult] = {}
    lines = p.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            result = ZooResult.from_dict(json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            if i == len(lines) - 1:
                continue
            raise FairfxError(f"{p} line {i + 1} is not a zoo result ({exc}); delete it") from None
        rows[result.name] = result
    return rows


# ------------------------------------------------------------------------------------- tables
def _oracle(exact: bool, done: bool, inexact: int = 0) -> str:
    text = "exact" if exact else ("FAIL" if done else "-")
    if inexact:
        text += f" ({inexact} LN groups renormalized)"
    return text


def _fair_cells(r: ZooResult) -> str:
    if not r.fair_run:
        return " - | - | - |"
    if not r.fair_done:
        return " - | - | no |"
    kept = r.fair_params_after / r.params_before if r.params_before else 0.0
    return (
        f" {r.fair_params_after / 1e6:.2f}M ({kept:.0%}) | {_oracle(r.fair_exact, True)} | "
        f"{'yes' if r.fair_exported else 'no'} |"
    )


def note(r: ZooResult) -> str:
    """The row's reasons: the random column's error, then the FAIR path's."""
    parts = [r.error, r.fair_error and f"FAIR: {r.fair_error}"]
    return "; ".join(p for p in parts if p).replace("|", "\\|")


def format_table(results: list[ZooResult]) -> str:
    """The per-model table: both columns, seconds, and the one-line reason of any failure."""
    lines = [
        "| model | groups (prunable) | random half: params before -> after | oracle | export | "
        "FAIR `plan_for(params=0.5)`: params after (kept) | oracle | export | s (CPU s) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r.name):
        before = (
            f"{r.params_before / 1e6:.2f}M -> {r.params_after / 1e6:.2f}M" if r.handled else "-"
        )
        lines.append(
            f"| {r.name} | {r.groups} ({r.prunable}) | {before} | "
            f"{_oracle(r.oracle_exact, r.handled, r.inexact_groups)} | "
            f"{'yes' if r.exported else 'no'} |{_fair_cells(r)} "
            f"{r.worker_seconds or r.seconds + r.fair_seconds:.0f} ({r.cpu_seconds:.0f}) | "
            f"{note(r)} |"
        )
    return "\n".join(lines)


def summary(results: list[ZooResult], total: int | None = None) -> str:
    """One line of totals for both columns, out of ``total`` models (default: the rows)."""
    n = len(results) if total is None else total
    text = (
        f"random half: handled {sum(r.handled for r in results)}/{n}, oracle-exact "
        f"{sum(r.oracle_exact for r in results)}/{n}, exported "
        f"{sum(r.exported for r in results)}/{n}"
    )
    if any(r.fair_run for r in results):
        text += (
            f"; FAIR: compressed {sum(r.fair_done for r in results)}/{n}, oracle-exact "
            f"{sum(r.fair_exact for r in results)}/{n}, exported "
            f"{sum(r.fair_exported for r in results)}/{n}"
        )
    return text


# ------------------------------------------------------------------- docs/results.md section
ROWS_FILE = "benchmarks/results/zoo.jsonl"
SWEEP_COMMAND = (
    "OMP_NUM_THREADS=1 nice -n 15 python -m fairfx.apps.zoo --out benchmarks/results/zoo.jsonl "
    "--resume --jobs 4 --timeout 2400 --cpu-limit 2400"
)


def failures(r: ZooResult) -> bool:
    """The row misses something either column promises."""
    random_ok = r.handled and r.oracle_exact and r.exported and not r.unlisted
    return not (random_ok and r.fair_done and r.fair_exact and r.fair_exported)


def readme_section(rows: dict[str, ZooResult], names: list[str]) -> str:
    """The zoo section (docs/results.md) for the models ``names``, from the sweep's rows."""
    missing = [n for n in names if n not in rows]
    results = [rows[n] for n in names if n in rows]
    kept = sorted(r.fair_params_after / r.params_before for r in results if r.fair_done)
    wall = sum(r.worker_seconds for r in results)
    cpu = sum(r.cpu_seconds for r in results)
    peak = max(results, key=lambda r: r.peak_rss_mb, default=None)
    commits: dict[str, int] = {}
    for r in results:
        commits[r.commit or "?"] = commits.get(r.commit or "?", 0) + 1
    lines = [
        f"**{summary(results, len(names))}**",
        "",
        f"Measured by `{SWEEP_COMMAND}` (one forked worker per model; a row is appended to "
        f"`{ROWS_FILE}` as each model finishes) on the shared 2-core machine; this section is "
        "generated from that file by `python -m fairfx.apps.readme --zoo`.",
    ]
    if kept:
        lines[-1] += (
            f" The FAIR plan kept {kept[0]:.1%}-{kept[-1]:.1%} of the parameters (median "
            f"{kept[len(kept) // 2]:.1%}) where `plan_for(params=0.5)` asked for 50%."
        )
    if results:
        lines[-1] += (
            f" Worker time summed over the models: {wall / 60:.0f} min wall, {cpu / 60:.0f} min "
            f"CPU; the largest peak resident memory was {peak.peak_rss_mb / 1024:.1f} GiB "
            f"({peak.name}). Rows by fairfx commit: "
            + ", ".join(f"`{c}` {n}" for c, n in sorted(commits.items()))
            + "."
        )
    bad = [r for r in results if failures(r)]
    if bad or missing:
        lines += ["", "Failures and gaps (each with its reason):", ""]
        lines += [f"- {r.name}: {note(r) or 'see the row'}" for r in bad]
        if missing:
            lines.append(
                f"- no row in `{ROWS_FILE}` for {len(missing)} models (the sweep did not reach "
                f"them): {', '.join(missing)}"
            )
    lines += [
        "",
        "<details><summary>Per-model table (groups: all (prunable); random half: a random plan "
        "keeping half of every prunable group; s: the model's worker, wall and CPU)</summary>",
        "",
        format_table(results),
        "</details>",
    ]
    return "\n".join(lines)


def zoo_section(root: Path) -> str:
    """The zoo section from ``root``'s sweep file, over every torchvision classification model."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return readme_section(load_rows(root / ROWS_FILE), names)
