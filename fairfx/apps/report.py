"""Reporting helpers shared by the demo, the command line and the benchmarks: per-group kept
counts, the kept-channels plot, latency, export round-trip checks and plain-text tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.artifact import export_program, write_program
from ..engine.oracle import flat_tensors
from ..engine.timing import median_ms, paired_ms
from ..files import atomic_path, atomic_write

EXPORT_RTOL = 1e-4


def group_rows(analysis: Any, plan: Any) -> list[dict[str, Any]]:
    """One row per channel group: id, first producer, size, kept units, prunable."""
    rows = []
    for g in analysis.graph.groups:
        kept = len(plan.units[g.id]) if g.id in plan.units else g.size
        rows.append(
            {
                "id": g.id,
                "producer": g.producers[0],
                "size": g.size,
                "kept": kept,
                "prunable": g.prunable,
            }
        )
    return rows


def _layer_label(row: dict[str, Any]) -> str:
    """A group's name on the plot: its first producer, and how many more share its channels."""
    producers = row.get("producers") or [row["producer"]]
    more = f" (+{len(producers) - 1})" if len(producers) > 1 else ""
    return f"{producers[0]}{more}"


def plot_kept(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Bar chart of channels before and kept per group, one bar per group labelled by its
    layer name (PNG; needs matplotlib)."""
    fig = kept_figure(rows, title)
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    finally:
        plt.close(fig)


def kept_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """The figure of :func:`plot_kept` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_layer_label(g) for g in rows]
    at = list(range(len(rows)))
    height = 3.0 + 0.065 * max((len(t) for t in labels), default=0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(rows) + 2), height))
    ax.bar(at, [g["size"] for g in rows], color="#d0d7e1", label="channels before")
    free = [i for i, g in enumerate(rows) if g["prunable"]]
    fixed = [i for i, g in enumerate(rows) if not g["prunable"]]
    ax.bar(free, [rows[i]["kept"] for i in free], color="#2f6db5", label="kept")
    if fixed:
        ax.bar(fixed, [rows[i]["kept"] for i in fixed], color="#9a9a9a", label="not prunable")
    ax.set_xticks(at)
    ax.set_xticklabels(labels, rotation=90, fontsize=7 if len(rows) < 40 else 5)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("channel group (first producer; +n: more layers share its channels)")
    ax.set_ylabel("channel units")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_formats() -> set[str]:
    """File extensions matplotlib can write (without importing pyplot)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return set(FigureCanvasBase.get_supported_filetypes())


@torch.no_grad()
def paired_latency_ms(
    a: Callable[..., Any],
    b: Callable[..., Any],
    x: torch.Tensor,
    *,
    repeats: int = 60,
    warmup: int = 5,
) -> tuple[float, float]:
    """Median wall times (ms) of ``a(x)`` and ``b(x)``, the two runs alternating.

    Alternating gives both the same share of a machine other jobs are loading, so their ratio
    means something even where the absolute times do not.
    """
    for m in (a, b):
        if isinstance(m, nn.Module):
            m.eval()
    first, second, _ = paired_ms(a, b, (x,), repeats=repeats, warmup=warmup)
    return first, second


@torch.no_grad()
def latency_ms(
    module: Callable[..., Any], x: torch.Tensor, *, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time of one forward pass in milliseconds (eval mode, no grad)."""
    if isinstance(module, nn.Module):
        module.eval()
    return median_ms(module, (x,), repeats=repeats, warmup=warmup)


@torch.no_grad()
def max_diff(a: Callable[..., Any], b: Callable[..., Any], x: torch.Tensor) -> tuple[float, float]:
    """Largest absolute difference of the outputs and the largest output magnitude."""
    want, got = flat_tensors(a(x)), flat_tensors(b(x))
    if len(want) != len(got) or any(w.shape != g.shape for w, g in zip(want, got, strict=True)):
        return float("inf"), 0.0
    diff = max((float((w - g).abs().max()) for w, g in zip(want, got, strict=True)), default=0.0)
    scale = max((float(w.abs().max()) for w in want), default=0.0)
    return diff, scale


def export_and_check(
    module: nn.Module, example: torch.Tensor, out: Path, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """``torch.export`` with a dynamic batch (static if the model fixes it), save (with ``extra``
    files such as the plan of :func:`fairfx.save_pruned`), reload, and compare the reloaded
    program with ``module`` at the example batch and at batches 1 and 5."""
    program, note = export_program(module, example)
    result: dict[str, Any] = {"path": str(out), "dynamic_batch": not note, "note": note}
    sizes = [len(example)] + ([1, 5] if result["dynamic_batch"] else [])
    # Saved to a temporary file and checked there; it replaces ``out`` only once it reloads and
    # computes what ``module`` computes, so a mismatch or an interruption keeps the old file.
    try:
        with atomic_path(out) as tmp:
            write_program(program, tmp, extra or {})  # a full disk: OSError, not an abort
            loaded = torch.export.load(str(tmp)).module()
            diffs = []
            for n in sizes:
                x = example.repeat(-(-n // len(example)), *([1] * (example.dim() - 1)))[:n]
                diff, scale = max_diff(module, loaded, x)
                diffs.append(diff)
                if not diff <= EXPORT_RTOL * max(scale, 1e-30):
                    result.update(equal=False, max_abs_diff=diff, batches=sizes, written=False)
                    raise _Mismatch
    except _Mismatch:
        return result
    result.update(equal=True, max_abs_diff=max(diffs), batches=sizes, written=True)
    return result


class _Mismatch(Exception):
    """The reloaded program differs: abandon the temporary file, keep the old output."""


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (readable as plain text too)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
